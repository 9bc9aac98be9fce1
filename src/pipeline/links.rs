//! Symbolic links at the WAL's path. A WAL path is often a symlink (`wal.log ->
//! /data/wal.log`, data on another volume) while the application writes through the real
//! path. A rename over the symlink would replace the link with a regular file and leave the
//! real file, where the application writes, uncompacted; a hard link "backup" of the path
//! would link the symlink itself. So a run resolves the path once, at its start, and works
//! on the real file in its real directory (lock, journal, temp, default backup directory,
//! swap, recovery): the symlink stays a symlink and points at the compacted file.
//!
//! Hard links are another matter: a second name for the WAL's inode (`ln wal.log
//! alias.log`) keeps the old inode after the swap, so a writer using it writes where
//! nobody reads. A run refuses such a WAL before making its backup, unless allowed. The
//! tool's own hard-link backups (`<stem>_backup_*` in the backup directory or beside the
//! WAL) are not counted: one left by a run killed before its journal named it must not
//! block every later run.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{PipelineError, Report, Request, Stage, backup};
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

/// Runs `run` on `req` with its WAL resolved by [`resolve_wal`]; the report's `wal` is the
/// path as given, its `compacted` the real file.
pub(super) fn on_real_file(
    req: &Request,
    run: impl FnOnce(&Request) -> Result<Report, PipelineError>,
) -> Result<Report, PipelineError> {
    let real = resolve_wal(&req.wal)?;
    if real == req.wal {
        return run(req);
    }
    let mut resolved = req.clone();
    resolved.wal = real;
    let mut report = run(&resolved)?;
    report.wal = req.wal.clone();
    Ok(report)
}

/// [`resolve_wal`] for callers that only locate files beside the WAL (backups, watches):
/// the path as given when it cannot be resolved (the run itself reports why).
pub fn real_path_or_given(wal: &Path) -> PathBuf {
    resolve_wal(wal).unwrap_or_else(|_| wal.to_path_buf())
}

/// Names of the WAL's inode: `st_nlink`, and how many of them are this tool's backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkCount {
    pub nlink: u64,
    pub own_backups: u64,
}

impl LinkCount {
    /// Names other than the WAL's own path and our backups.
    pub fn others(&self) -> u64 {
        self.nlink
            .saturating_sub(self.own_backups)
            .saturating_sub(1)
    }
}

/// Counts the names of `file` (the WAL opened at `wal`): `st_nlink`, less the entries named
/// like a backup of `wal` (uncompressed `<stem>_backup_*`) in `backup_dir` and in the WAL's
/// directory that are the same inode. Reads the directories only when `st_nlink` > 1.
pub fn count(wal: &Path, file: &File, backup_dir: &Path) -> Result<LinkCount, PipelineError> {
    let meta = file
        .metadata()
        .map_err(PipelineError::io(Stage::Backup, "stat", wal))?;
    let mut n = LinkCount {
        nlink: meta.nlink(),
        own_backups: 0,
    };
    if n.nlink <= 1 {
        return Ok(n);
    }
    let wal_dir = parent_dir(wal);
    let mut dirs = vec![wal_dir.as_path()];
    if !same_dir(&wal_dir, backup_dir) {
        dirs.push(backup_dir);
    }
    for dir in dirs {
        let entries = fs::read_dir(dir).map_err(PipelineError::io(Stage::Backup, "list", dir))?;
        for entry in entries {
            let entry = entry.map_err(PipelineError::io(Stage::Backup, "list", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !matches!(backup::parse_backup_name(wal, name), Some((_, false))) {
                continue;
            }
            // Vanished meanwhile (pruned): not a name of the WAL any more.
            if let Ok(m) = fs::symlink_metadata(entry.path())
                && m.dev() == meta.dev()
                && m.ino() == meta.ino()
            {
                n.own_backups += 1;
            }
        }
    }
    Ok(n)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => a == b,
    }
}

/// Refuses a WAL whose inode has names other than its path and this tool's backups: after
/// the swap they would still name the old file.
pub fn refuse_other_hard_links(
    wal: &Path,
    file: &File,
    backup_dir: &Path,
) -> Result<(), PipelineError> {
    let n = count(wal, file, backup_dir)?;
    if n.others() == 0 {
        return Ok(());
    }
    let ours = match n.own_backups {
        0 => String::new(),
        k => format!(", not counting {k} of walcompactd's own backups"),
    };
    Err(PipelineError::BadInput {
        path: wal.into(),
        what: format!(
            "has {} hard links (st_nlink = {}{ours}); a writer using another name would \
             write to the old file after the swap; nothing changed. Remove the other link, \
             or set allow_hard_links = true (compact --allow-hard-links)",
            n.nlink - n.own_backups,
            n.nlink
        ),
    })
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
