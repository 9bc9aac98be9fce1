//! Symbolic links at the WAL's path. A WAL path is often a symlink (`wal.log ->
//! /data/wal.log`, data on another volume) while the application writes through the real
//! path. A rename over the symlink would replace the link with a regular file and leave the
//! real file, where the application writes, uncompacted; a hard link "backup" of the path
//! would link the symlink itself. So a run resolves the path once, at its start, and works
//! on the real file in its real directory (lock, journal, temp, default backup directory,
//! swap, recovery): the symlink stays a symlink and points at the compacted file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::PipelineError;
use crate::fsutil::parent_dir;

/// Symlinks followed before giving up, as the kernel does (Linux's limit is 40).
const MAX_SYMLINK_HOPS: u32 = 40;

/// The real file behind `wal`: if its last component is a symlink, the chain is followed to
/// the file it ends at, named by that file's canonical directory and its own name. A path
/// that is not a symlink is returned as given (nothing is made absolute), and so is a path
/// that does not exist (opening it reports that). A dangling symlink or a loop is refused.
pub fn resolve_wal(wal: &Path) -> Result<PathBuf, PipelineError> {
    let bad = |what: String| PipelineError::BadInput {
        path: wal.into(),
        what,
    };
    let mut path = wal.to_path_buf();
    for _ in 0..MAX_SYMLINK_HOPS {
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(_) if path == wal => return Ok(path),
            Ok(_) => {
                let dir = parent_dir(&path);
                let real_dir = fs::canonicalize(&dir).map_err(|e| {
                    bad(format!(
                        "is a symlink to {}, whose directory cannot be resolved: {e}",
                        path.display()
                    ))
                })?;
                let name = path.file_name().expect("a symlink target names a file");
                return Ok(real_dir.join(name));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && path == wal => return Ok(path),
            Err(e) => {
                return Err(bad(format!(
                    "is a symlink to {}, which cannot be opened ({e}); fix or remove the link",
                    path.display()
                )));
            }
        }
        let target = fs::read_link(&path).map_err(|e| bad(format!("unreadable symlink: {e}")))?;
        path = parent_dir(&path).join(target);
        if path.file_name().is_none() {
            return Err(bad(format!(
                "is a symlink to {}, which does not name a file",
                path.display()
            )));
        }
    }
    Err(bad(format!(
        "more than {MAX_SYMLINK_HOPS} levels of symlinks; fix the link"
    )))
}

/// [`resolve_wal`] for callers that only locate files beside the WAL (backups, watches):
/// the path as given when it cannot be resolved (the run itself reports why).
pub fn real_path_or_given(wal: &Path) -> PathBuf {
    resolve_wal(wal).unwrap_or_else(|_| wal.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn follows_a_chain_to_the_real_file_and_leaves_plain_paths_alone() {
        let d = tempfile::tempdir().unwrap();
        let real_dir = fs::canonicalize(d.path()).unwrap();
        fs::create_dir(d.path().join("data")).unwrap();
        fs::write(d.path().join("data/wal.log"), "").unwrap();
        symlink("data/wal.log", d.path().join("hop.log")).unwrap();
        symlink(d.path().join("hop.log"), d.path().join("wal.log")).unwrap();
        assert_eq!(
            resolve_wal(&d.path().join("wal.log")).unwrap(),
            real_dir.join("data/wal.log")
        );
        let plain = d.path().join("data/wal.log");
        assert_eq!(resolve_wal(&plain).unwrap(), plain, "not made absolute");
        let missing = d.path().join("missing.log");
        assert_eq!(resolve_wal(&missing).unwrap(), missing);
    }

    #[test]
    fn refuses_dangling_links_and_loops() {
        let d = tempfile::tempdir().unwrap();
        symlink("nowhere.log", d.path().join("dangling.log")).unwrap();
        let e = resolve_wal(&d.path().join("dangling.log")).unwrap_err();
        assert!(e.to_string().contains("nowhere.log"), "{e}");
        symlink("b.log", d.path().join("a.log")).unwrap();
        symlink("a.log", d.path().join("b.log")).unwrap();
        let e = resolve_wal(&d.path().join("a.log")).unwrap_err();
        assert!(e.to_string().contains("levels of symlinks"), "{e}");
    }
}
