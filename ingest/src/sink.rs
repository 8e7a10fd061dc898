//! Where upload bytes go, durably, before their offset is acknowledged.
//!
//! * A local store: the bytes are appended to the upload's object file (`uploads/{id}`), fsynced
//!   before each commit; on resume the file is cut back to the durable offset.
//! * S3: bytes are gathered into parts of the configured size and uploaded as multipart parts;
//!   what is left below one part is kept as its own object (`uploads/{id}.part`, like tusd's
//!   `.part`), so any ingest node can resume the upload. Completion uploads the tail as the last
//!   part and assembles the object.

use std::io::SeekFrom;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use common::db::Db;
use common::store::{Key, PutOptions, Store};
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
    upload_id: Option<String>,
    part_size: usize,
    buf: BytesMut,
    /// Bytes in committed parts before this request.
    parts_bytes: u64,
    /// Parts uploaded by this request, not yet committed.
    pending: Vec<(common::store::Part, u64)>,
}

impl Writer {
    /// Prepares to append to `up` at its durable offset.
    pub async fn open(
        store: &Store,
        db: &Db,
        up: &Upload,
        part_size: u64,
    ) -> Result<Writer, Error> {
        let key = Key::new(record::source_key(&up.id))?;
        if let Some(path) = store.local_path(&key) {
            return Ok(Writer::File(FileWriter::open(path, up.received).await?));
        }
        if store.multipart().is_none() {
            return Err(Error::Unsupported);
        }
        let mut buf = BytesMut::with_capacity(part_size as usize);
        if up.tail_size > 0 {
            let tail = store
                .get_bytes(&Key::new(record::tail_key(&up.id))?, part_size)
                .await?;
            if tail.len() as u64 != up.tail_size {
                return Err(Error::Store(common::store::Error::Io(
                    std::io::Error::other(format!(
                        "tail object of upload {} has {} bytes, expected {}",
                        up.id,
                        tail.len(),
                        up.tail_size
                    )),
                )));
            }
            buf.extend_from_slice(&tail);
        }
        Ok(Writer::S3(S3Writer {
            store: store.clone(),
            db: db.clone(),
            id: up.id.clone(),
            key,
            upload_id: up.s3_upload_id.clone(),
            part_size: part_size as usize,
            buf,
            parts_bytes: up.received - up.tail_size,
            pending: Vec::new(),
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
                let parts: Vec<_> = std::mem::take(&mut w.pending);
                w.parts_bytes += parts.iter().map(|(_, s)| *s).sum::<u64>();
                let tail_size = if tail {
                    let key = Key::new(record::tail_key(&w.id))?;
                    if w.buf.is_empty() {
                        w.store.delete(&key).await?;
                    } else {
                        w.store
                            .put_bytes(&key, w.buf.clone().freeze(), &PutOptions::default())
                            .await?;
                    }
                    Some(w.buf.len() as u64)
                } else {
                    None
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
                w.parts_bytes + w.pending.iter().map(|(_, s)| *s).sum::<u64>() + w.buf.len() as u64
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
            Writer::S3(_) => Ok(()),
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
            Writer::S3(_) => Ok(()),
        }
    }

    /// Finishes a fully received upload: assembles the S3 object (the local file already is
    /// the object).
    pub async fn finish(self, up: &Upload) -> Result<(), Error> {
        match self {
            Writer::File(mut w) => {
                if !w.buf.is_empty() {
                    w.file.write_all(&w.buf).await?;
                    w.buf.clear();
                }
                w.file.flush().await?;
                w.file.sync_all().await?;
                Ok(())
            }
            Writer::S3(mut w) => {
                let store = w.store.clone();
                let Some(mp) = store.multipart() else {
                    return Err(Error::Unsupported);
                };
                let tail_key = Key::new(record::tail_key(&w.id))?;
                match w.upload_id.clone() {
                    None => {
                        // Everything fits in the tail: one plain object.
                        let bytes = w.buf.split().freeze();
                        w.store
                            .put_bytes(&w.key, bytes, &PutOptions::default())
                            .await?;
                    }
                    Some(upload_id) => {
                        if !w.buf.is_empty() {
                            let last = w.buf.split().freeze();
                            w.upload(last).await?;
                        }
                        // committed parts plus any this request uploaded since its last commit
                        let mut parts = record::parts(&w.db, &up.id).await?;
                        for (p, _) in w.pending.drain(..) {
                            parts.push(p);
                        }
                        parts.sort_by_key(|p| p.number);
                        parts.dedup_by_key(|p| p.number);
                        mp.complete_multipart(&w.key, &upload_id, &parts).await?;
                    }
                }
                w.store.delete(&tail_key).await?;
                Ok(())
            }
        }
    }
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

impl S3Writer {
    async fn upload(&mut self, part: Bytes) -> Result<(), Error> {
        let Some(mp) = self.store.multipart() else {
            return Err(Error::Unsupported);
        };
        let upload_id = match &self.upload_id {
            Some(u) => u.clone(),
            None => {
                let u = mp
                    .create_multipart(&self.key, &PutOptions::default())
                    .await?;
                record::set_s3_upload_id(&self.db, &self.id, &u).await?;
                self.upload_id = Some(u.clone());
                u
            }
        };
        let number = record::next_part(&self.db, &self.id).await?;
        let size = part.len() as u64;
        let p = mp.upload_part(&self.key, &upload_id, number, part).await?;
        self.pending.push((p, size));
        Ok(())
    }
}

/// Frees an abandoned upload's storage: the local file, or the S3 multipart upload and tail.
pub async fn remove(store: &Store, up: &Upload) -> Result<(), Error> {
    let key = Key::new(record::source_key(&up.id))?;
    if store.local_path(&key).is_some() {
        store.delete(&key).await?;
        return Ok(());
    }
    if let (Some(mp), Some(upload_id)) = (store.multipart(), &up.s3_upload_id) {
        let _ = mp.abort_multipart(&key, upload_id).await;
    }
    store.delete(&Key::new(record::tail_key(&up.id))?).await?;
    if up.complete {
        store.delete(&key).await?;
    }
    Ok(())
}
