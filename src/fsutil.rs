//! Small durable-filesystem helpers shared by the pipeline stages and the daemon's state.

pub mod safe;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `path` with `suffix` appended to its file name: `wal.log` + `.lock` = `wal.log.lock`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    parent_dir(path).join(name)
}

/// fsync a directory so that renames, links and unlinks in it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically with `mode`: temp file, fsync, rename, fsync the
/// directory. fsync the temp file BEFORE the rename, or a crash can leave an empty file at
/// `path`. The temp is created by the directory's descriptor, `O_EXCL | O_NOFOLLOW`, and
/// renamed within it (see [`safe`]): a link planted at either name is never written through.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    atomic_write_then(path, bytes, mode, || {})
}

/// [`atomic_write`] that calls `before_rename` once the temp file is durable: a seam for the
/// crash suite to stop between the two steps.
pub fn atomic_write_then(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    before_rename: impl FnOnce(),
) -> io::Result<()> {
    let (dir, name) = safe::Dir::of(path)?;
    let mut tmp = name.clone();
    tmp.push(".tmp");
    let mut f = dir.create_new(&tmp, mode)?;
    let result = (|| {
        // The umask may have narrowed it; never wider than asked.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        before_rename();
        dir.rename(&tmp, &name)?;
        dir.sync()
    })();
    if result.is_err() {
        let _ = dir.unlink(&tmp);
    }
    result
}

/// Bytes available to an unprivileged writer on the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// Free space on the filesystem holding `dir`, as a fraction of its size.
pub fn free_ratio(dir: &Path) -> io::Result<f64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    let total = st.blocks() as f64;
    Ok(if total == 0.0 {
        1.0
    } else {
        st.blocks_available() as f64 / total
    })
}

/// Identity of a file's contents as of one look: a different value means it was replaced,
/// truncated or appended to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
}

impl FileId {
    /// Reads the identity from metadata.
    pub fn of(meta: &fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    /// Same inode, whatever its length.
    pub fn same_inode(&self, other: &FileId) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_and_parent() {
        assert_eq!(
            sibling(Path::new("a/wal.log"), ".lock"),
            PathBuf::from("a/wal.log.lock")
        );
        assert_eq!(
            sibling(Path::new("wal.log"), ".lock"),
            PathBuf::from("./wal.log.lock")
        );
        assert_eq!(parent_dir(Path::new("/x/y")), PathBuf::from("/x"));
    }

    #[test]
    fn atomic_write_replaces_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&p).unwrap().permissions());
        assert_eq!(
            mode & 0o777,
            0o640,
            "the mode asked, never the umask's default"
        );
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temp left behind"
        );
    }
}
