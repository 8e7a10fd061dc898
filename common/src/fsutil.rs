//! Small file helpers shared by the key and certificate code.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `bytes` to `path` with permission `mode` (created with that mode, so a private key is
/// never readable by others even for a moment), via a temporary file and rename.
pub fn write_private(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    publish(path, bytes, mode, |tmp, path| std::fs::rename(tmp, path))
}

/// Like [`write_private`], but only when `path` does not exist yet: `Ok(false)` (and nothing
/// written) when another process made it first, so two processes starting on one data
/// directory end with the same file.
pub fn write_private_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
    let result = publish(path, bytes, mode, |tmp, path| {
        // a hard link fails when the name exists, where a rename would replace it
        std::fs::hard_link(tmp, path)?;
        std::fs::remove_file(tmp)
    });
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes `bytes` to a temporary file beside `path` with `mode`, then `place`s it.
fn publish(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    place: impl FnOnce(&Path, &Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        crate::ids::new_id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        place(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
