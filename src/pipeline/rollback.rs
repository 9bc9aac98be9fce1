//! Rollback and restore: put a backup's bytes back at the WAL's path, crash-safely.
//! The backup is copied, never linked back: the WAL keeps growing after a restore and a
//! backup must stay as it was.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::backup::open_reader;
use super::journal::ROLLBACK_SUFFIX;
use super::{PipelineError, Stage};
use crate::fsutil::{fsync_dir, parent_dir, sibling};

/// Copies `backup` (decompressing `.zst`) to a temp beside `wal`, fsyncs it, renames it over
/// `wal` and fsyncs the directory. fsync BEFORE rename, or a crash can leave an empty WAL.
pub fn restore_copy(backup: &Path, wal: &Path, stage: Stage) -> Result<(), PipelineError> {
    restore_keeping(backup, wal, stage, None)
}

/// Like [`restore_copy`], and appends the current WAL's bytes from `appended_from` on:
/// the lines writers appended after an online swap survive the rollback. The caller holds
/// the writers' lock, so nothing is appended meanwhile.
pub fn restore_keeping(
    backup: &Path,
    wal: &Path,
    stage: Stage,
    appended_from: Option<u64>,
) -> Result<(), PipelineError> {
    let tmp = sibling(wal, ROLLBACK_SUFFIX);
    let result = copy_to(backup, &tmp, wal, appended_from);
    crate::crash_point!("rollback::copy::crash");
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(PipelineError::io(stage, "copy backup to", &tmp)(e));
    }
    crate::io_fault!(error "rollback::before_rename")
        .and_then(|()| fs::rename(&tmp, wal))
        .map_err(PipelineError::io(stage, "rename to", wal))?;
    fsync_dir(&parent_dir(wal)).map_err(PipelineError::io(stage, "fsync dir of", wal))
}

/// Copies `backup` (decompressing `.zst`) to `tmp`, with the owner and mode of `wal`;
/// not fsynced. The descriptor is closed: lease mode reopens it as the copy's only one.
pub(super) fn copy_backup(backup: &Path, tmp: &Path, wal: &Path) -> io::Result<()> {
    open_copy(backup, tmp, wal).map(drop)
}

fn open_copy(backup: &Path, tmp: &Path, wal: &Path) -> io::Result<fs::File> {
    let mut reader = open_reader(backup)?;
    // Never through a link planted at the temp's name (see `fsutil::safe`).
    let (dir, name) = crate::fsutil::safe::Dir::of(tmp)?;
    let mut out = dir.create_new(&name, 0o600)?;
    if let Ok(meta) = fs::metadata(wal) {
        let _ = std::os::unix::fs::fchown(&out, Some(meta.uid()), Some(meta.gid()));
        out.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    io::copy(&mut reader, &mut out)?;
    Ok(out)
}

fn copy_to(backup: &Path, tmp: &Path, wal: &Path, appended_from: Option<u64>) -> io::Result<()> {
    let mut out = open_copy(backup, tmp, wal)?;
    if let Some(from) = appended_from {
        let mut current = fs::File::open(wal)?;
        io::Seek::seek(&mut current, io::SeekFrom::Start(from))?;
        io::copy(&mut current, &mut out)?;
    }
    out.sync_all()
}
