//! Where upload bytes go, durably, before their offset is acknowledged.
//!
//! * A local store: the bytes are appended to the upload's object file (`uploads/{id}`), fsynced
//!   before each commit; on resume the file is cut back to the durable offset.
//! * S3: bytes are gathered into parts of the configured size, each stored as its own object
//!   (`uploads/{id}.parts/{n}`); what is left below one part at the end of a request is kept as
//!   a tail object named by where it starts (`uploads/{id}.tail/{offset}`, like tusd's
//!   `.part`), so any ingest node can resume the upload — and any worker can read the upload
//!   while it is still arriving (multipart parts cannot be read before completion). Completion
//!   assembles the object with a multipart upload that copies the parts inside S3
//!   (UploadPartCopy: no bytes travel again) plus the tail as the last part. That copying
//!   costs the store a full rewrite of the object (twice, on stores that copy the part and
//!   then concatenate), so it runs off the request path: the last PATCH is answered as soon
//!   as the tail is stored and the completion recorded, with the assembly queued in the same
//!   transaction (a job on the durable queue, see [`assemble`]). Until it is done, readers are
//!   given the part and tail objects (the upload's [`record::Sources`] extent names them);
//!   once it is recorded, the object; the pieces are removed after that.
//!
//!   Parts are stored concurrently while the body keeps arriving (at most
//!   `ingest.s3_parts_in_flight` at once; the body waits when that many are on their way, so
//!   memory stays bounded). A mid-request checkpoint commits only the parts that are stored and
//!   contiguous from the committed offset; the end of the request waits for all of them. A part
//!   still in flight is never counted, so an acknowledged offset is always backed by stored
//!   objects.

use std::collections::VecDeque;
use std::io::SeekFrom;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use common::db::Db;
use common::store::{Key, PutOptions, Store};
use futures::StreamExt;
use tokio::fs::OpenOptions;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::record::{self, Commit, Upload};

/// Sink errors (all are our side's: retryable by the client).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Local file trouble.
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Object store trouble.
    #[error("{0}")]
    Store(#[from] common::store::Error),
    /// Database trouble.
    #[error("{0}")]
    Db(#[from] common::db::Error),
    /// The store can neither append locally nor do multipart uploads.
    #[error("the configured storage cannot take resumable uploads")]
    Unsupported,
}

/// Writes one request's bytes for one upload.
pub enum Writer {
    /// Appending to a local file.
    File(FileWriter),
    /// Gathering S3 parts.
    S3(S3Writer),
}

/// Body chunks are gathered up to this size before a write (HTTP/3 hands over one packet's
/// payload at a time; a blocking-pool round trip per packet would dominate).
const FILE_BUFFER: usize = 256 * 1024;

/// Local-file writer.
pub struct FileWriter {
    file: tokio::fs::File,
    buf: Vec<u8>,
    /// Durable offset at the start of this request.
    start: u64,
    /// Bytes written so far (from the file start).
    written: u64,
    /// Written and fsynced (from the file start).
    synced: u64,
}

/// S3 writer.
pub struct S3Writer {
    store: Store,
    db: Db,
    id: String,
    key: Key,
    part_size: usize,
    buf: BytesMut,
    /// Bytes in committed parts (where `buf` starts in the upload).
    parts_bytes: u64,
    /// Parts stored by this request, not yet committed.
    pending: Vec<(common::store::Part, u64)>,
    /// Parts on their way to the store, oldest first, with their sizes.
    in_flight: VecDeque<(PartTask, u64)>,
    /// Most parts on their way at once.
    max_in_flight: usize,
}

type PartTask = tokio::task::JoinHandle<Result<common::store::Part, Error>>;

impl Writer {
    /// Prepares to append to `up` at its durable offset.
    pub async fn open(
        store: &Store,
        db: &Db,
        up: &Upload,
        part_size: u64,
        parts_in_flight: usize,
    ) -> Result<Writer, Error> {
        let key = Key::new(record::source_key(&up.id))?;
        if let Some(path) = store.local_path(&key) {
            return Ok(Writer::File(FileWriter::open(path, up.received).await?));
        }
        if store.multipart().is_none() {
            return Err(Error::Unsupported);
        }
        let mut buf = BytesMut::with_capacity(part_size as usize);
        let parts_bytes = up.received - up.tail_size;
        if up.tail_size > 0 {
            buf.extend_from_slice(&durable_tail(store, up).await?);
        }
        Ok(Writer::S3(S3Writer {
            store: store.clone(),
            db: db.clone(),
            id: up.id.clone(),
            key,
            part_size: part_size as usize,
            buf,
            parts_bytes,
            pending: Vec::new(),
            in_flight: VecDeque::new(),
            max_in_flight: parts_in_flight.max(1),
        }))
    }

    /// Writes a chunk of the request body.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        match self {
            Writer::File(w) => {
                w.buf.extend_from_slice(chunk);
                w.written += chunk.len() as u64;
                if w.buf.len() >= FILE_BUFFER {
                    w.file.write_all(&w.buf).await?;
                    w.buf.clear();
                }
                Ok(())
            }
            Writer::S3(w) => {
                w.buf.extend_from_slice(chunk);
                while w.buf.len() >= w.part_size {
                    let part = w.buf.split_to(w.part_size).freeze();
                    w.upload(part).await?;
                    w.buf.reserve(w.part_size);
                }
                Ok(())
            }
        }
    }

    /// Makes everything written so far durable and returns what to record. With `tail`, S3
    /// bytes below a part are stored as the tail object (end of request); without, only whole
    /// parts count (mid-request checkpoints).
    pub async fn checkpoint(&mut self, tail: bool) -> Result<Commit, Error> {
        match self {
            Writer::File(w) => {
                if w.written > w.synced {
                    if !w.buf.is_empty() {
                        w.file.write_all(&w.buf).await?;
                        w.buf.clear();
                    }
                    w.file.sync_data().await?;
                    w.synced = w.written;
                }
                Ok(Commit {
                    received: w.synced,
                    parts: Vec::new(),
                    tail_size: None,
                })
            }
            Writer::S3(w) => {
                if tail {
                    w.wait_all().await?;
                } else {
                    w.collect_stored().await?;
                }
                let parts: Vec<_> = std::mem::take(&mut w.pending);
                w.parts_bytes += parts.iter().map(|(_, s)| *s).sum::<u64>();
                let tail_size = if tail {
                    if !w.buf.is_empty() {
                        let key = Key::new(record::tail_key(&w.id, w.parts_bytes))?;
                        w.store
                            .put_bytes(&key, w.buf.clone().freeze(), &PutOptions::default())
                            .await?;
                    }
                    Some(w.buf.len() as u64)
                } else if parts.is_empty() {
                    None
                } else {
                    // The old tail's bytes went into the first new part: no tail is durable
                    // past the parts until the end of the request stores one.
                    Some(0)
                };
                let received = w.parts_bytes + if tail { w.buf.len() as u64 } else { 0 };
                Ok(Commit {
                    received,
                    parts,
                    tail_size,
                })
            }
        }
    }

    /// Bytes this request has made durable or holds pending, counted from the upload's start.
    pub fn position(&self) -> u64 {
        match self {
            Writer::File(w) => w.written,
            Writer::S3(w) => {
                w.parts_bytes
                    + w.pending.iter().map(|(_, s)| *s).sum::<u64>()
                    + w.in_flight.iter().map(|(_, s)| *s).sum::<u64>()
                    + w.buf.len() as u64
            }
        }
    }

    /// Forgets everything this request wrote (checksum mismatch): the file is cut back, S3
    /// parts stay uncommitted (they are never listed at completion).
    pub async fn discard(self) -> Result<(), Error> {
        match self {
            Writer::File(w) => {
                w.file.set_len(w.start).await?;
                w.file.sync_data().await?;
                Ok(())
            }
            Writer::S3(mut w) => {
                w.abort_in_flight();
                Ok(())
            }
        }
    }

    /// Forgets what this request wrote since its last checkpoint (it lost the upload to a newer
    /// request, whose client saw the checkpointed offset).
    pub async fn rollback(self) -> Result<(), Error> {
        match self {
            Writer::File(w) => {
                w.file.set_len(w.synced).await?;
                w.file.sync_data().await?;
                Ok(())
            }
            Writer::S3(mut w) => {
                w.abort_in_flight();
                Ok(())
            }
        }
    }

    /// Finishes a fully received upload. The local file already is the object; on S3 an
    /// upload that fits in one part is stored whole now, and one made of parts is left for
    /// [`assemble`] (returns [`Finish::Pieces`]). The S3 part and tail objects stay until
    /// [`cleanup`] runs after the completion (or the assembly) is recorded, so a reader of the
    /// growing upload never finds them gone before the upload says where else to look.
    pub async fn finish(self, up: &Upload) -> Result<Finish, Error> {
        match self {
            Writer::File(mut w) => {
                if !w.buf.is_empty() {
                    w.file.write_all(&w.buf).await?;
                    w.buf.clear();
                }
                w.file.flush().await?;
                w.file.sync_all().await?;
                Ok(Finish::Whole)
            }
            Writer::S3(mut w) => {
                w.wait_all().await?;
                let stored_parts =
                    !w.pending.is_empty() || !record::parts(&w.db, &up.id).await?.is_empty();
                if stored_parts {
                    return Ok(Finish::Pieces);
                }
                // Everything fits in the buffer: one plain object.
                let bytes = w.buf.split().freeze();
                w.store
                    .put_bytes(&w.key, bytes, &PutOptions::default())
                    .await?;
                Ok(Finish::Whole)
            }
        }
    }
}

/// Where a finished upload's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// In the upload's object.
    Whole,
    /// In its S3 part and tail objects, until [`assemble`] has run.
    Pieces,
}

impl FileWriter {
    async fn open(path: PathBuf, received: u64) -> Result<FileWriter, Error> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&path)
            .await?;
        // Bytes past the durable offset were never acknowledged (crash mid-request): drop them.
        let len = file.metadata().await?.len();
        if len != received {
            file.set_len(received).await?;
            file.sync_data().await?;
        }
        file.seek(SeekFrom::Start(received)).await?;
        Ok(FileWriter {
            file,
            buf: Vec::with_capacity(FILE_BUFFER),
            start: received,
            written: received,
            synced: received,
        })
    }
}

/// Parts copied into the assembled object at once.
const COPY_CONCURRENCY: usize = 4;

impl S3Writer {
    /// Starts storing one full part as its own object under a fresh part number; waits for
    /// the oldest part first when `max_in_flight` are already on their way.
    async fn upload(&mut self, part: Bytes) -> Result<(), Error> {
        while self.in_flight.len() >= self.max_in_flight {
            self.wait_oldest().await?;
        }
        let number = record::next_part(&self.db, &self.id).await?;
        let size = part.len() as u64;
        let key = Key::new(record::part_key(&self.id, number))?;
        let store = self.store.clone();
        let task = tokio::spawn(async move {
            let meta = store.put_bytes(&key, part, &PutOptions::default()).await?;
            Ok(common::store::Part {
                number,
                etag: meta.etag.unwrap_or_default(),
            })
        });
        self.in_flight.push_back((task, size));
        Ok(())
    }

    /// Waits for the oldest part on its way and moves it to `pending`.
    async fn wait_oldest(&mut self) -> Result<(), Error> {
        let Some((task, size)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let part = task
            .await
            .map_err(|e| Error::Io(std::io::Error::other(format!("part upload task: {e}"))))??;
        self.pending.push((part, size));
        Ok(())
    }

    /// Moves the parts already stored, in order from the oldest, to `pending` (a stored part
    /// behind one still on its way waits: only a contiguous run can be committed).
    async fn collect_stored(&mut self) -> Result<(), Error> {
        while self.in_flight.front().is_some_and(|(t, _)| t.is_finished()) {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    /// Waits for every part on its way.
    async fn wait_all(&mut self) -> Result<(), Error> {
        while !self.in_flight.is_empty() {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    /// Stops the parts on their way (their objects, if any, are never committed and are
    /// removed with the upload's other pieces).
    fn abort_in_flight(&mut self) {
        for (task, _) in self.in_flight.drain(..) {
            task.abort();
        }
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // A request that ends with an error stops its uncommitted parts.
        self.abort_in_flight();
    }
}

/// The durable bytes of `up`'s tail object (`tail_size` bytes after its stored parts). A
/// request that stored a longer tail but lost its commit left more bytes than are durable; they
/// start with the same durable bytes, which are all that is read.
async fn durable_tail(store: &Store, up: &Upload) -> Result<Bytes, Error> {
    use futures::TryStreamExt;
    let base = up.received - up.tail_size;
    let range = common::store::ByteRange::Between(0, up.tail_size - 1);
    let body = store
        .get(&Key::new(record::tail_key(&up.id, base))?, Some(range))
        .await?
        .body;
    let chunks: Vec<Bytes> = body.try_collect().await?;
    let tail = Bytes::from(chunks.concat());
    if (tail.len() as u64) < up.tail_size {
        return Err(Error::Store(common::store::Error::Io(
            std::io::Error::other(format!(
                "tail object of upload {} has {} bytes, expected {}",
                up.id,
                tail.len(),
                up.tail_size
            )),
        )));
    }
    Ok(tail.slice(..up.tail_size as usize))
}

/// Assembles a complete S3 upload's object from its committed parts (copied inside S3) and
/// its tail (the last part, at most one part's size through this process). Safe to run again:
/// a run that died half-way left a multipart upload behind, which is abandoned.
pub async fn assemble(store: &Store, db: &Db, up: &Upload) -> Result<(), Error> {
    let Some(mp) = store.multipart() else {
        return Err(Error::Unsupported);
    };
    let key = Key::new(record::source_key(&up.id))?;
    let numbers: Vec<i32> = record::parts(db, &up.id)
        .await?
        .iter()
        .map(|p| p.number)
        .collect();
    if let Some(old) = &up.s3_upload_id {
        let _ = mp.abort_multipart(&key, old).await;
    }
    let upload_id = mp.create_multipart(&key, &PutOptions::default()).await?;
    record::set_s3_upload_id(db, &up.id, &upload_id).await?;
    let copies: Vec<_> = numbers
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let (store, key, upload_id) = (store.clone(), key.clone(), upload_id.clone());
            let source = Key::new(record::part_key(&up.id, n));
            async move {
                let Some(mp) = store.multipart() else {
                    return Err(Error::Unsupported);
                };
                Ok(mp
                    .upload_part_copy(&key, &upload_id, i as i32 + 1, &source?)
                    .await?)
            }
        })
        .collect();
    let mut parts: Vec<common::store::Part> = futures::stream::iter(copies)
        .buffered(COPY_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    if up.tail_size > 0 {
        let tail = durable_tail(store, up).await?;
        parts.push(
            mp.upload_part(&key, &upload_id, parts.len() as i32 + 1, tail)
                .await?,
        );
    }
    mp.complete_multipart(&key, &upload_id, &parts).await?;
    Ok(())
}

/// Digest of a fully received upload (for `Repr-Digest`), read back from wherever its bytes
/// are (the object, or the S3 pieces of an upload not yet assembled) in a stream.
pub async fn digest(
    store: &Store,
    db: &Db,
    up: &Upload,
    algorithm: crate::tus::Algorithm,
) -> Result<Vec<u8>, Error> {
    use common::store::Growing as _;
    use futures::TryStreamExt;
    use sha1::Digest as _;
    let key = Key::new(record::source_key(&up.id))?;
    let extent = record::Sources::new(db.clone(), store.clone())
        .extent(&key)
        .await?
        .unwrap_or_else(|| common::store::Extent::whole(key.clone(), up.length));
    let (mut a, mut b) = (sha1::Sha1::new(), sha2::Sha256::new());
    for piece in &extent.pieces {
        if piece.size == 0 {
            continue;
        }
        let range = common::store::ByteRange::Between(0, piece.size - 1);
        let mut body = store.get(&piece.key, Some(range)).await?.body;
        while let Some(chunk) = body.try_next().await? {
            match algorithm {
                crate::tus::Algorithm::Sha1 => a.update(&chunk),
                crate::tus::Algorithm::Sha256 => b.update(&chunk),
            }
        }
    }
    Ok(match algorithm {
        crate::tus::Algorithm::Sha1 => a.finalize().to_vec(),
        crate::tus::Algorithm::Sha256 => b.finalize().to_vec(),
    })
}

/// Removes an S3 upload's part and tail objects once its completion is recorded (the
/// assembled object holds every byte). Nothing to do on a local store.
pub async fn cleanup(store: &Store, up: &Upload) -> Result<(), Error> {
    let key = Key::new(record::source_key(&up.id))?;
    if store.local_path(&key).is_some() {
        return Ok(());
    }
    for obj in store.list(&record::pieces_prefix(&up.id)).await? {
        store.delete(&Key::new(obj.key)?).await?;
    }
    Ok(())
}

/// Frees an abandoned upload's storage: the local file, or the S3 parts, tail and any
/// half-finished multipart assembly.
pub async fn remove(store: &Store, up: &Upload) -> Result<(), Error> {
    let key = Key::new(record::source_key(&up.id))?;
    if store.local_path(&key).is_some() {
        store.delete(&key).await?;
        return Ok(());
    }
    if let (Some(mp), Some(upload_id)) = (store.multipart(), &up.s3_upload_id) {
        let _ = mp.abort_multipart(&key, upload_id).await;
    }
    cleanup(store, up).await?;
    if up.complete {
        // (not there yet when the upload was complete but not assembled)
        match store.delete(&key).await {
            Ok(()) | Err(common::store::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
