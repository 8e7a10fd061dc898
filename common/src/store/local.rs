//! Objects as files under one root directory.
//!
//! A put writes a hidden temporary file beside the target, fsyncs it and renames it into place
//! (then fsyncs the directory), so a reader never sees a partial object and an acknowledged
//! object survives a crash. Headers given at put live in a sidecar under `ROOT/.meta/`, written
//! before the data is renamed into place. Keys cannot start a segment with `.`, so the sidecars
//! and temporary files are never addressable as objects.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::fs;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{ByteRange, ByteStream, Error, Key, Object, ObjectMeta, ObjectStore, PutOptions};

const META_DIR: &str = ".meta";

/// A local-directory store.
#[derive(Debug, Clone)]
pub struct Local {
    root: PathBuf,
}

#[derive(Serialize, Deserialize, Default)]
struct Sidecar {
    content_type: Option<String>,
    cache_control: Option<String>,
    sha256: Option<String>,
    size: u64,
}

impl Local {
    /// Opens (creating) the root directory.
    pub async fn open(root: PathBuf) -> Result<Local, Error> {
        fs::create_dir_all(&root).await.map_err(|e| {
            Error::Config(format!(
                "cannot create storage directory {}: {e}",
                root.display()
            ))
        })?;
        let root = fs::canonicalize(&root).await?;
        Ok(Local { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn data_path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn meta_path(&self, key: &Key) -> PathBuf {
        self.root
            .join(META_DIR)
            .join(format!("{}.json", key.as_str()))
    }

    async fn read_meta(&self, key: &Key, file_meta: &std::fs::Metadata) -> ObjectMeta {
        let sidecar: Sidecar = match fs::read(self.meta_path(key)).await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(_) => Sidecar::default(),
        };
        let modified_ms = file_meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        // The sidecar's hash is only trusted when it describes this very file (same size);
        // otherwise fall back to a weak-but-changing validator from size and time.
        let etag = match sidecar.sha256 {
            Some(h) if sidecar.size == file_meta.len() => format!("\"{}\"", &h[..32.min(h.len())]),
            _ => format!("\"{:x}-{:x}\"", file_meta.len(), modified_ms),
        };
        ObjectMeta {
            key: key.as_str().to_string(),
            size: file_meta.len(),
            content_type: sidecar.content_type,
            cache_control: sidecar.cache_control,
            etag: Some(etag),
            modified_ms,
        }
    }
}

fn temp_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp-{}", crate::ids::new_id()))
}

async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

/// Writes `bytes` to `path` atomically (temp + fsync + rename + fsync dir).
async fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).await?;
    let tmp = temp_name(path);
    let result = async {
        let mut f = fs::File::create(&tmp).await?;
        f.write_all(bytes).await?;
        f.sync_all().await?;
        fs::rename(&tmp, path).await?;
        sync_dir(parent).await
    }
    .await;
    if result.is_err() {
        let _ = fs::remove_file(&tmp).await;
    }
    result
}

fn not_found_as(key: &Key) -> impl Fn(io::Error) -> Error + '_ {
    move |e| {
        if e.kind() == io::ErrorKind::NotFound {
            Error::NotFound(key.to_string())
        } else {
            Error::Io(e)
        }
    }
}

#[async_trait]
impl ObjectStore for Local {
    async fn put(
        &self,
        key: &Key,
        mut body: ByteStream,
        opts: &PutOptions,
    ) -> Result<ObjectMeta, Error> {
        let path = self.data_path(key);
        let parent = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&parent).await?;
        let tmp = temp_name(&path);
        let written = async {
            let mut file = fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                size += chunk.len() as u64;
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            let sidecar = Sidecar {
                content_type: opts.content_type.clone(),
                cache_control: opts.cache_control.clone(),
                sha256: Some(hex::encode(hasher.finalize())),
                size,
            };
            write_atomic(&self.meta_path(key), &serde_json::to_vec(&sidecar)?).await?;
            fs::rename(&tmp, &path).await?;
            sync_dir(&parent).await?;
            Ok::<_, io::Error>(())
        }
        .await;
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp).await;
            return Err(Error::Io(e));
        }
        self.head(key).await
    }

    async fn get(&self, key: &Key, range: Option<ByteRange>) -> Result<Object, Error> {
        let mut file = fs::File::open(self.data_path(key))
            .await
            .map_err(not_found_as(key))?;
        let file_meta = file.metadata().await?;
        if !file_meta.is_file() {
            return Err(Error::NotFound(key.to_string()));
        }
        let meta = self.read_meta(key, &file_meta).await;
        let resolved = range.map(|r| r.resolve(meta.size)).transpose()?;
        let body: ByteStream = match resolved {
            Some((first, last)) => {
                file.seek(SeekFrom::Start(first)).await?;
                let limited = file.take(last - first + 1);
                Box::pin(tokio_util::io::ReaderStream::with_capacity(
                    limited,
                    64 * 1024,
                ))
            }
            None => Box::pin(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024)),
        };
        Ok(Object {
            meta,
            range: resolved,
            body,
        })
    }

    async fn head(&self, key: &Key) -> Result<ObjectMeta, Error> {
        let file_meta = fs::metadata(self.data_path(key))
            .await
            .map_err(not_found_as(key))?;
        if !file_meta.is_file() {
            return Err(Error::NotFound(key.to_string()));
        }
        Ok(self.read_meta(key, &file_meta).await)
    }

    async fn delete(&self, key: &Key) -> Result<(), Error> {
        for path in [self.data_path(key), self.meta_path(key)] {
            match fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io(e)),
            }
            // Tidy now-empty directories up to the root (best effort; a concurrent put may
            // refill one, in which case removal simply fails).
            let mut dir = path.parent().map(Path::to_path_buf);
            while let Some(d) = dir {
                if d == self.root || !d.starts_with(&self.root) || fs::remove_dir(&d).await.is_err()
                {
                    break;
                }
                dir = d.parent().map(Path::to_path_buf);
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, Error> {
        // Start the walk at the deepest directory the prefix names, then filter by prefix.
        let start_rel = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        if !start_rel.is_empty() {
            Key::new(start_rel)?;
        }
        let start = self.root.join(start_rel);
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let mut entries = match fs::read_dir(&dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::Io(e)),
            };
            while let Some(entry) = entries.next_entry().await? {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue; // sidecars, temporary files
                }
                let path = entry.path();
                let ft = entry.file_type().await?;
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() {
                    let Ok(rel) = path.strip_prefix(&self.root) else {
                        continue;
                    };
                    let rel = rel.to_string_lossy().into_owned();
                    if rel.starts_with(prefix)
                        && let Ok(key) = Key::new(rel)
                    {
                        let m = entry.metadata().await?;
                        out.push(self.read_meta(&key, &m).await);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn check(&self) -> Result<(), Error> {
        let probe = self.root.join(".ready-probe");
        fs::write(&probe, b"ok").await?;
        fs::remove_file(&probe).await?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn local_path(&self, key: &Key) -> Option<PathBuf> {
        Some(self.data_path(key))
    }
}
