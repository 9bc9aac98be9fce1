//! Single-flight per WAL: only one compaction (CLI or daemon) at a time, held by `flock` on
//! `<wal>.compact.lock`. The lock file records who holds it so a second caller can say so.
//! It is never deleted: deleting a lock file while someone waits on it breaks the lock.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::{PipelineError, Stage};
use crate::fsutil::safe::{Dir, Owners};
use crate::fsutil::sibling;

/// The lock file names the holder's pid: ours alone to write, readable for diagnosis.
const LOCK_FILE_MODE: u32 = 0o644;

/// Suffix of the compaction lock file (the writers' protocol lock is `<wal>.lock`).
pub const LOCK_SUFFIX: &str = ".compact.lock";

/// Held for the whole run; dropping it releases the lock.
#[derive(Debug)]
pub struct CompactionLock {
    _file: File,
    pub path: PathBuf,
}

/// The lock file's path for `wal`.
pub fn lock_path(wal: &Path) -> PathBuf {
    sibling(wal, LOCK_SUFFIX)
}

/// Takes the lock without waiting, or reports who holds it.
pub fn acquire(wal: &Path, who: &str) -> Result<CompactionLock, PipelineError> {
    let path = lock_path(wal);
    // By the directory's descriptor, never through a link planted at the name (it persists
    // between runs, so it is reopened, checked to be our own one-link file, never truncated
    // before it is ours).
    // The WAL's owner may have run this tool first: their lock file is theirs to keep.
    let wal_owner = std::fs::metadata(wal)
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let owners = Owners::UsOr(wal_owner);
    let mut file = Dir::of(&path)
        .and_then(|(dir, name)| dir.open_persistent(&name, LOCK_FILE_MODE, owners))
        .map_err(PipelineError::io(Stage::Lock, "open lock file", &path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = read_holder(&mut file);
            return Err(PipelineError::Busy {
                path: wal.to_path_buf(),
                holder,
            });
        }
        Err(TryLockError::Error(e)) => {
            return Err(PipelineError::io(Stage::Lock, "lock", &path)(e));
        }
    }
    write_holder(&mut file, who).map_err(PipelineError::io(
        Stage::Lock,
        "write lock file",
        &path,
    ))?;
    Ok(CompactionLock { _file: file, path })
}

fn read_holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.read_to_string(&mut s);
    let s = s.trim();
    if s.is_empty() {
        "holder unknown".into()
    } else {
        s.to_string()
    }
}

fn write_holder(file: &mut File, who: &str) -> std::io::Result<()> {
    let since = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "pid {} ({who}) since {since}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_busy_and_names_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("wal.log");
        let held = acquire(&wal, "test one").unwrap();
        match acquire(&wal, "test two") {
            Err(PipelineError::Busy { holder, .. }) => {
                assert!(holder.contains("test one"), "{holder}");
                assert!(holder.contains(&std::process::id().to_string()));
            }
            other => panic!("{other:?}"),
        }
        drop(held);
        acquire(&wal, "test three").unwrap();
    }
}
