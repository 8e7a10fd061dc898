//! Object storage: one trait, two implementations — a local directory (the embedded default)
//! and S3-compatible storage (MinIO, AWS S3, R2, …) through aws-sdk-s3.
//!
//! Bodies are streams of byte chunks, never whole objects in memory. Keys are validated before
//! they reach a backend ([`Key`]), so nothing can be written outside the store's root.

pub mod growing;
mod local;
pub mod s3;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Deserialize;

pub use growing::{Extent, Growing, NoneGrowing, Piece};
pub use local::Local;
pub use s3::S3;

/// A stream of body chunks.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A shared store handle.
pub type Store = Arc<dyn ObjectStore>;

/// `[storage]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `file://DIR` or `s3://bucket/prefix`; unset means `file://$DATA/objects`.
    pub url: Option<String>,
    /// S3 endpoint (e.g. `http://127.0.0.1:9000` for MinIO); unset uses AWS's.
    pub s3_endpoint: Option<String>,
    /// S3 region; unset uses `AWS_REGION`, else `us-east-1`.
    pub s3_region: Option<String>,
    /// Address buckets as `endpoint/bucket/key` (needed by most S3-compatible servers).
    pub s3_path_style: bool,
    /// Objects larger than this are uploaded to S3 in parts of this size (bytes, ≥ 5 MiB).
    pub s3_part_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            url: None,
            s3_endpoint: None,
            s3_region: None,
            s3_path_style: true,
            s3_part_size: 8 * 1024 * 1024,
        }
    }
}

impl Config {
    /// The URL to use, with the data-dir default applied.
    pub fn url_or_default(&self, data_dir: &Path) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => format!("file://{}", data_dir.join("objects").display()),
        }
    }
}

/// Opens the store the URL names.
pub async fn open(config: &Config, data_dir: &Path) -> Result<Store, Error> {
    let url = config.url_or_default(data_dir);
    if let Some(dir) = url.strip_prefix("file://") {
        Ok(Arc::new(Local::open(PathBuf::from(dir)).await?))
    } else if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Config(format!(
                "storage URL {url:?} names no bucket"
            )));
        }
        Ok(Arc::new(S3::from_env(config, bucket, prefix).await?))
    } else {
        Err(Error::Config(format!(
            "unsupported storage URL {url:?}: use file://DIR or s3://BUCKET/PREFIX"
        )))
    }
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key would escape the store or is not a plain relative path (abusive input).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No object with that key.
    #[error("no such object: {0}")]
    NotFound(String),
    /// The requested byte range starts past the end.
    #[error("range not satisfiable for an object of {size} bytes")]
    RangeNotSatisfiable {
        /// The object's size.
        size: u64,
    },
    /// A local file-system error.
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    /// The S3 service answered with an error or could not be reached.
    #[error("S3 error: {0}")]
    S3(String),
    /// The storage configuration is unusable.
    #[error("storage configuration: {0}")]
    Config(String),
}

/// A validated object key: a relative path of `/`-separated segments, none empty, none starting
/// with `.` (so no `.` or `..`, and our hidden bookkeeping names stay hidden), no NUL or
/// backslash, at most 1024 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Validates `key`.
    pub fn new(key: impl Into<String>) -> Result<Key, Error> {
        let key = key.into();
        let bad = |reason| Error::InvalidKey {
            key: key.chars().take(200).collect(),
            reason,
        };
        if key.is_empty() {
            return Err(bad("empty"));
        }
        if key.len() > 1024 {
            return Err(bad("longer than 1024 bytes"));
        }
        if key.starts_with('/') {
            return Err(bad("absolute path"));
        }
        if key.contains('\0') {
            return Err(bad("contains NUL"));
        }
        if key.contains('\\') {
            return Err(bad("contains a backslash"));
        }
        if key.chars().any(char::is_control) {
            return Err(bad("contains a control character"));
        }
        for segment in key.split('/') {
            if segment.is_empty() {
                return Err(bad("empty path segment"));
            }
            if segment.starts_with('.') {
                return Err(bad("segment starts with '.' (no . or .. allowed)"));
            }
        }
        Ok(Key(key))
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Headers stored with an object and served back with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PutOptions {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
}

/// What is known about a stored object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectMeta {
    /// Its key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// `Content-Type` given at put.
    pub content_type: Option<String>,
    /// `Cache-Control` given at put.
    pub cache_control: Option<String>,
    /// A strong validator (quoted, as in HTTP).
    pub etag: Option<String>,
    /// Last modification, ms since the epoch.
    pub modified_ms: i64,
}

/// A byte range as HTTP asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=N-`
    From(u64),
    /// `bytes=N-M` (inclusive)
    Between(u64, u64),
    /// `bytes=-N` (the last N bytes)
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header value with one range. `None` means "ignore the header" (RFC 9110
    /// lets a server serve the whole object for a range it does not support, e.g. multi-range).
    pub fn parse_header(value: &str) -> Option<ByteRange> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        match (a.is_empty(), b.is_empty()) {
            (true, false) => b.parse().ok().map(ByteRange::Suffix),
            (false, true) => a.parse().ok().map(ByteRange::From),
            (false, false) => {
                let (s, e) = (a.parse().ok()?, b.parse().ok()?);
                (s <= e).then_some(ByteRange::Between(s, e))
            }
            (true, true) => None,
        }
    }

    /// The inclusive `(first, last)` byte positions within an object of `size` bytes, or
    /// `RangeNotSatisfiable`.
    pub fn resolve(self, size: u64) -> Result<(u64, u64), Error> {
        let unsat = Error::RangeNotSatisfiable { size };
        match self {
            ByteRange::From(s) if s < size => Ok((s, size - 1)),
            ByteRange::Between(s, e) if s < size => Ok((s, e.min(size - 1))),
            ByteRange::Suffix(n) if n > 0 && size > 0 => Ok((size.saturating_sub(n), size - 1)),
            _ => Err(unsat),
        }
    }

    /// The `Range` header value for this range.
    pub fn header_value(self) -> String {
        match self {
            ByteRange::From(s) => format!("bytes={s}-"),
            ByteRange::Between(s, e) => format!("bytes={s}-{e}"),
            ByteRange::Suffix(n) => format!("bytes=-{n}"),
        }
    }
}

/// An object being read.
pub struct Object {
    /// Its metadata (size is the whole object's).
    pub meta: ObjectMeta,
    /// The inclusive byte positions being returned, when a range was asked for.
    pub range: Option<(u64, u64)>,
    /// The bytes.
    pub body: ByteStream,
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// One uploaded part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Part number (1..=10000; ascending, not necessarily contiguous).
    pub number: i32,
    /// The service's ETag for it.
    pub etag: String,
}

/// S3-style multipart uploads: parts of at least 5 MiB (except the last) assembled into one
/// object on completion. Nothing is visible under the key until completion.
#[async_trait]
pub trait Multipart: Send + Sync {
    /// Starts a multipart upload of `key`; returns its upload id.
    async fn create_multipart(&self, key: &Key, opts: &PutOptions) -> Result<String, Error>;
    /// Uploads one part; returns it with its ETag.
    async fn upload_part(
        &self,
        key: &Key,
        upload_id: &str,
        number: i32,
        data: Bytes,
    ) -> Result<Part, Error>;
    /// Copies the whole object at `source` in as part `number`, inside the service (no bytes
    /// travel through us). Every part but the last must be at least 5 MiB.
    async fn upload_part_copy(
        &self,
        key: &Key,
        upload_id: &str,
        number: i32,
        source: &Key,
    ) -> Result<Part, Error>;
    /// Assembles the listed parts (ascending numbers) into the object.
    async fn complete_multipart(
        &self,
        key: &Key,
        upload_id: &str,
        parts: &[Part],
    ) -> Result<(), Error>;
    /// Abandons the upload and frees its parts.
    async fn abort_multipart(&self, key: &Key, upload_id: &str) -> Result<(), Error>;
}

/// An object store. Implementations must be safe to share between tasks.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `body` under `key`, replacing any object there. Readers see either the old or the
    /// new object, never a part.
    async fn put(
        &self,
        key: &Key,
        body: ByteStream,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, Error>;

    /// Reads an object, or a byte range of it.
    async fn get(&self, key: &Key, range: Option<ByteRange>) -> Result<Object, Error>;

    /// Metadata only.
    async fn head(&self, key: &Key) -> Result<ObjectMeta, Error>;

    /// Removes an object; removing a missing object is not an error.
    async fn delete(&self, key: &Key) -> Result<(), Error>;

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, Error>;

    /// Proves the store is reachable and writable (readiness).
    async fn check(&self) -> Result<(), Error>;

    /// Where this store keeps things, for logs (`file:///…`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// The local file holding `key`, when objects are plain files on this machine (lets tools
    /// such as FFmpeg read them in place instead of through a copy).
    fn local_path(&self, _key: &Key) -> Option<PathBuf> {
        None
    }

    /// Multipart uploads, when the backend has them (S3): how resumable uploads reach remote
    /// storage part by part.
    fn multipart(&self) -> Option<&dyn Multipart> {
        None
    }

    /// Stores a byte buffer.
    async fn put_bytes(
        &self,
        key: &Key,
        bytes: Bytes,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, Error> {
        self.put(
            key,
            Box::pin(futures::stream::once(async { Ok(bytes) })),
            opts,
        )
        .await
    }

    /// Stores a local file, streamed.
    async fn put_file(
        &self,
        key: &Key,
        path: &Path,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, Error> {
        let file = tokio::fs::File::open(path).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
        self.put(key, Box::pin(stream), opts).await
    }

    /// Reads a whole object into memory, refusing objects larger than `max` bytes. Only for
    /// small objects (playlists, metadata, posters).
    async fn get_bytes(&self, key: &Key, max: u64) -> Result<Bytes, Error> {
        let obj = self.get(key, None).await?;
        if obj.meta.size > max {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "object {key} is {} bytes, over the {max} byte limit",
                    obj.meta.size
                ),
            )));
        }
        let mut out = bytes::BytesMut::with_capacity(obj.meta.size as usize);
        let mut body = obj.body;
        while let Some(chunk) = body.try_next().await? {
            if (out.len() + chunk.len()) as u64 > max {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("object {key} grew past the {max} byte limit while reading"),
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    /// Copies an object into a local file (streamed), returning its size.
    async fn download_to(&self, key: &Key, path: &Path) -> Result<u64, Error> {
        use tokio::io::AsyncWriteExt;
        let obj = self.get(key, None).await?;
        let mut file = tokio::fs::File::create(path).await?;
        let mut body = obj.body;
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_reject_traversal_and_odd_shapes() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            ".meta/x",
            "a\\b",
            "a\0b",
            "a\nb",
            "..",
        ] {
            assert!(Key::new(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Key::new("x".repeat(1025)).is_err());
        for good in ["uploads/abc", "hls/abc/720p/seg_00001.m4s", "a", "a..b/c.d"] {
            assert!(Key::new(good).is_ok(), "{good:?} should be accepted");
        }
    }

    #[test]
    fn range_header_parsing() {
        assert_eq!(
            ByteRange::parse_header("bytes=0-99"),
            Some(ByteRange::Between(0, 99))
        );
        assert_eq!(
            ByteRange::parse_header("bytes=100-"),
            Some(ByteRange::From(100))
        );
        assert_eq!(
            ByteRange::parse_header("bytes=-5"),
            Some(ByteRange::Suffix(5))
        );
        assert_eq!(ByteRange::parse_header("bytes=5-1"), None);
        assert_eq!(ByteRange::parse_header("bytes=0-1,5-6"), None);
        assert_eq!(ByteRange::parse_header("items=0-1"), None);
        assert_eq!(ByteRange::parse_header("bytes=-"), None);
        assert_eq!(ByteRange::parse_header("bytes=a-b"), None);
    }

    #[test]
    fn range_resolution() {
        assert_eq!(ByteRange::Between(0, 99).resolve(50).ok(), Some((0, 49)));
        assert_eq!(ByteRange::From(10).resolve(50).ok(), Some((10, 49)));
        assert_eq!(ByteRange::Suffix(10).resolve(50).ok(), Some((40, 49)));
        assert_eq!(ByteRange::Suffix(100).resolve(50).ok(), Some((0, 49)));
        assert!(ByteRange::From(50).resolve(50).is_err());
        assert!(ByteRange::Between(60, 70).resolve(50).is_err());
        assert!(ByteRange::Suffix(0).resolve(50).is_err());
        assert!(ByteRange::Suffix(5).resolve(0).is_err());
    }
}
