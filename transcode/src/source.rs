//! The transcoder's input as a byte stream: a blocking `Read + Seek` over a source that may
//! still be arriving, for FFmpeg's custom I/O (see `media::input`). No FFmpeg types here.
//!
//! Reads never go past the durable extent ([`Extent`]): a read there waits until more bytes are
//! durable (woken at once by this process's ingest, else by polling the database), so FFmpeg
//! never sees a file that is merely "truncated so far". Seeking anywhere is allowed; reading
//! past what has arrived waits. While it waits, the reader may decide to stop ([`Stop`]): the
//! job was cancelled, the upload was abandoned, it stalled, other work wants this worker, or it
//! has streamed for too long. The stop is reported to FFmpeg as an I/O error and to the job
//! through the shared [`Monitor`], which also tells how much has arrived.
//!
//! Local pieces are read in place (`pread` on the upload's own file); remote ones (S3 parts,
//! tail, or the finished object) in 1 MiB range requests, two blocks cached: memory stays
//! bounded however large or slow the upload is.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::db::{Change, Db};
use common::queue::Context;
use common::store::{ByteRange, Extent, Growing, Key, Piece, Store};
use futures::TryStreamExt;
use tokio::runtime::Handle;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Why the reader stopped waiting for bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// The job was cancelled (lease lost, shutdown, time limit).
    Cancelled,
    /// The upload is gone (terminated or expired).
    Gone,
    /// No new bytes arrived for this long.
    Stalled(Duration),
    /// Jobs of finished uploads are waiting for this worker.
    Yield,
    /// The upload has been streaming for longer than allowed; finish after its last byte.
    TooLong(Duration),
    /// Reading failed on our side (storage or database).
    Io(String),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Cancelled => f.write_str("cancelled"),
            Stop::Gone => f.write_str("the upload was abandoned"),
            Stop::Stalled(d) => {
                write!(f, "the upload stalled (no new bytes for {} s)", d.as_secs())
            }
            Stop::Yield => f.write_str("finished uploads were waiting for this worker"),
            Stop::TooLong(d) => write!(f, "the upload was still arriving after {} s", d.as_secs()),
            Stop::Io(e) => write!(f, "reading the source: {e}"),
        }
    }
}

/// When the reader gives up waiting.
#[derive(Debug, Clone)]
pub struct Policy {
    /// No new durable bytes for this long: stop ([`Stop::Stalled`]).
    pub stall: Duration,
    /// A normal job of this worker's pool waited this long for a worker: stop
    /// ([`Stop::Yield`]). `None`: never yield.
    pub yield_after: Option<Duration>,
    /// Waiting for bytes for longer than this in all: stop ([`Stop::TooLong`]).
    pub max_streaming: Duration,
    /// How often the extent is read again when nothing in this process says it changed.
    pub poll: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            stall: Duration::from_secs(20),
            yield_after: Some(Duration::from_secs(2)),
            max_streaming: Duration::from_secs(900),
            poll: Duration::from_millis(250),
        }
    }
}

/// What the job sees of its reader: how much has arrived, and why it stopped.
#[derive(Debug)]
pub struct Monitor {
    length: u64,
    durable: AtomicU64,
    stop: Mutex<Option<Stop>>,
}

impl Monitor {
    /// The source's final size.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Bytes durable so far (the final size once complete).
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Relaxed)
    }

    /// Every byte has arrived.
    pub fn complete(&self) -> bool {
        self.durable() >= self.length
    }

    /// Why reading stopped, if it did.
    pub fn stop(&self) -> Option<Stop> {
        self.stop.lock().ok().and_then(|s| s.clone())
    }

    fn set_stop(&self, stop: Stop) {
        if let Ok(mut s) = self.stop.lock()
            && s.is_none()
        {
            *s = Some(stop);
        }
    }
}

/// A remote block held in memory.
struct Block {
    key: Key,
    start: u64,
    bytes: Bytes,
}

const BLOCK: u64 = 1 << 20;

/// The reader. Create it on the async side ([`Reader::open`]), then hand it to a blocking
/// thread: every call blocks.
pub struct Reader {
    rt: Handle,
    store: Store,
    growing: Option<Arc<dyn Growing>>,
    changes: Option<tokio::sync::broadcast::Receiver<Change>>,
    key: Key,
    extent: Extent,
    pos: u64,
    monitor: Arc<Monitor>,
    policy: Policy,
    cancel: CancellationToken,
    ctx: Option<Context>,
    files: HashMap<Key, std::fs::File>,
    blocks: [Option<Block>; 2],
    next_block: usize,
    started: Instant,
    grew: Instant,
    last_yield_check: Instant,
}

impl Reader {
    /// A reader of `extent` (the source's extent now). With `growing`, the extent is read
    /// again whenever more is needed; `db` wakes it when this process's ingest commits; `ctx`
    /// lets it yield to waiting jobs.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        store: Store,
        key: Key,
        extent: Extent,
        growing: Option<Arc<dyn Growing>>,
        db: Option<Db>,
        policy: Policy,
        cancel: CancellationToken,
        ctx: Option<Context>,
    ) -> Reader {
        let monitor = Arc::new(Monitor {
            length: extent.length,
            durable: AtomicU64::new(extent.durable),
            stop: Mutex::new(None),
        });
        Reader {
            rt: Handle::current(),
            changes: db.as_ref().map(Db::subscribe),
            store,
            growing,
            key,
            extent,
            pos: 0,
            monitor,
            policy,
            cancel,
            ctx,
            files: HashMap::new(),
            blocks: [None, None],
            next_block: 0,
            started: Instant::now(),
            grew: Instant::now(),
            last_yield_check: Instant::now(),
        }
    }

    /// The shared view of this reader.
    pub fn monitor(&self) -> Arc<Monitor> {
        self.monitor.clone()
    }

    /// Reads the first `n` bytes (or all of a shorter source), waiting for them.
    pub fn head(&mut self, n: u64) -> io::Result<Vec<u8>> {
        let n = n.min(self.extent.length);
        let mut out = vec![0u8; n as usize];
        self.pos = 0;
        let mut got = 0usize;
        while got < out.len() {
            let k = self.read(&mut out[got..])?;
            if k == 0 {
                break;
            }
            got += k;
        }
        out.truncate(got);
        self.pos = 0;
        Ok(out)
    }

    fn stop(&self, stop: Stop) -> io::Error {
        let e = io::Error::other(stop.to_string());
        self.monitor.set_stop(stop);
        e
    }

    /// Reads the extent again (no waiting). Errors are ours: they stop the reader.
    fn refresh(&mut self) -> io::Result<()> {
        let Some(g) = self.growing.clone() else {
            return Ok(());
        };
        let key = self.key.clone();
        match self.rt.block_on(async move { g.extent(&key).await }) {
            Ok(Some(e)) => {
                if e.durable > self.extent.durable || e.complete && !self.extent.complete {
                    self.grew = Instant::now();
                }
                self.monitor.durable.store(e.durable, Ordering::Relaxed);
                self.extent = e;
                Ok(())
            }
            Ok(None) => Err(self.stop(Stop::Gone)),
            Err(e) => Err(self.stop(Stop::Io(e.to_string()))),
        }
    }

    /// Waits until byte `pos` is durable (or the source is complete).
    fn wait_for(&mut self, pos: u64) -> io::Result<()> {
        loop {
            if self.cancel.is_cancelled() {
                return Err(self.stop(Stop::Cancelled));
            }
            self.refresh()?;
            if pos < self.extent.durable || self.extent.complete {
                return Ok(());
            }
            if self.grew.elapsed() >= self.policy.stall {
                return Err(self.stop(Stop::Stalled(self.policy.stall)));
            }
            if self.started.elapsed() >= self.policy.max_streaming {
                return Err(self.stop(Stop::TooLong(self.policy.max_streaming)));
            }
            if let (Some(after), Some(ctx)) = (self.policy.yield_after, &self.ctx)
                && self.last_yield_check.elapsed() >= Duration::from_secs(1)
            {
                self.last_yield_check = Instant::now();
                let ctx = ctx.clone();
                if let Ok(true) = self
                    .rt
                    .block_on(async move { ctx.others_waiting(after).await })
                {
                    return Err(self.stop(Stop::Yield));
                }
            }
            self.sleep();
        }
    }

    /// Sleeps until this process says the source changed, the poll interval passes or the
    /// job is cancelled.
    fn sleep(&mut self) {
        let key = self.key.as_str().to_string();
        let poll = self.policy.poll;
        let cancel = self.cancel.clone();
        let changes = self.changes.as_mut();
        self.rt.block_on(async move {
            let wait = async {
                match changes {
                    Some(rx) => loop {
                        match rx.recv().await {
                            Ok(Change::Object(k)) if k == key => return,
                            Ok(_) => {}
                            Err(RecvError::Lagged(_)) => return,
                            Err(RecvError::Closed) => std::future::pending::<()>().await,
                        }
                    },
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = tokio::time::sleep(poll) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }

    /// Reads from `piece` at the current position.
    fn read_piece(&mut self, piece: &Piece, buf: &mut [u8]) -> io::Result<usize> {
        let within = self.pos - piece.offset;
        let left = piece.size - within;
        let want = (buf.len() as u64).min(left) as usize;
        if let Some(path) = self.store.local_path(&piece.key) {
            let file = match self.files.get(&piece.key) {
                Some(f) => f,
                None => {
                    let f = std::fs::File::open(&path)?;
                    self.files.entry(piece.key.clone()).or_insert(f)
                }
            };
            return file.read_at(&mut buf[..want], within);
        }
        let block_start = within / BLOCK * BLOCK;
        let cached = self.blocks.iter().flatten().find(|b| {
            b.key == piece.key
                && b.start == block_start
                && (b.bytes.len() as u64) > within - b.start
        });
        let bytes = match cached {
            Some(b) => b.bytes.clone(),
            None => {
                let end = (block_start + BLOCK).min(piece.size) - 1;
                let (store, key) = (self.store.clone(), piece.key.clone());
                let fetched = self.rt.block_on(async move {
                    let obj = store
                        .get(&key, Some(ByteRange::Between(block_start, end)))
                        .await?;
                    let chunks: Vec<Bytes> = obj.body.try_collect().await?;
                    Ok::<_, common::store::Error>(Bytes::from(chunks.concat()))
                });
                let bytes = match fetched {
                    Ok(b) => b,
                    Err(common::store::Error::NotFound(k)) => {
                        return Err(io::Error::new(io::ErrorKind::NotFound, k));
                    }
                    Err(e) => return Err(io::Error::other(e.to_string())),
                };
                self.blocks[self.next_block] = Some(Block {
                    key: piece.key.clone(),
                    start: block_start,
                    bytes: bytes.clone(),
                });
                self.next_block = (self.next_block + 1) % self.blocks.len();
                bytes
            }
        };
        let from = (within - block_start) as usize;
        let n = want.min(bytes.len().saturating_sub(from));
        buf[..n].copy_from_slice(&bytes[from..from + n]);
        Ok(n)
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.extent.length {
            return Ok(0);
        }
        let mut missing = 0;
        loop {
            if self.cancel.is_cancelled() {
                return Err(self.stop(Stop::Cancelled));
            }
            let Some(piece) = self.extent.piece_at(self.pos).cloned() else {
                self.wait_for(self.pos)?;
                continue;
            };
            match self.read_piece(&piece, buf) {
                Ok(0) => {
                    return Err(self.stop(Stop::Io(format!(
                        "{} ends before byte {} it was said to hold",
                        piece.key,
                        self.pos - piece.offset + 1
                    ))));
                }
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                // A piece named by an older extent was superseded (a tail that moved into a
                // part, parts assembled at completion): ask again.
                Err(e) if e.kind() == io::ErrorKind::NotFound && missing < 3 => {
                    missing += 1;
                    self.files.remove(&piece.key);
                    self.refresh()?;
                }
                Err(e) => return Err(self.stop(Stop::Io(e.to_string()))),
            }
        }
    }
}

impl Seek for Reader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.extent.length.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            )),
        }
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("key", &self.key)
            .field("pos", &self.pos)
            .field("extent", &self.extent)
            .finish_non_exhaustive()
    }
}
