//! The backup of a run that ended without replacing the WAL. A backup is the rollback path
//! of a swap; a run that never swapped needs none, so its backup is litter (a refused run
//! against a live writer used to leave one per attempt). It is removed, unless removing it
//! could lose a byte.
//!
//! Crash-ordering rule: the run's journal names its backup, so remove the backup (unlink,
//! then fsync its directory) BEFORE clearing the journal. A crash in between leaves the
//! journal, and recovery removes the backup (or finds it gone). Recovery applies the same
//! rule: a journal that says the run never swapped (`writing`, or `swapping` with the temp
//! still there) means its backup is litter; one that says it swapped (or was rolling back)
//! means the backup is the rollback path and stays.
//!
//! One window is left: a crash after the backup is linked and before the first journal
//! entry is durable leaves a backup no journal names. Nothing reads it by mistake (it is an
//! ordinary backup of the WAL as it was), the hard-link check does not count it
//! and pruning removes it in time.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{PipelineError, Stage};
use crate::fsutil::{FileId, fsync_dir, parent_dir};

/// Removes `backup`, made by a run that did not replace `wal`, when that loses no byte: it
/// is another name for the inode still at the WAL's path (a hard link), or a copy whose
/// every byte the WAL still begins with. Otherwise (the WAL was replaced or truncated by
/// someone else, so the backup may hold the only copy of what the run read) it is kept.
/// Returns whether it was removed (true too when it was already gone).
pub fn discard_unswapped(wal: &Path, backup: &Path, stage: Stage) -> Result<bool, PipelineError> {
    let b = match fs::symlink_metadata(backup) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(PipelineError::io(stage, "stat backup", backup)(e)),
    };
    let w = match fs::metadata(wal) {
        Ok(m) => m,
        // No WAL to compare with: keep the backup, it may be all there is.
        Err(_) => return Ok(false),
    };
    let same_inode = b.dev() == w.dev() && b.ino() == w.ino();
    let redundant = same_inode
        || (b.is_file()
            && b.len() <= w.len()
            && super::journal::starts_with(wal, backup).map_err(PipelineError::io(
                stage,
                "compare with backup",
                wal,
            ))?);
    if !redundant {
        return Ok(false);
    }
    crate::crash_point!("litter::remove::crash");
    fs::remove_file(backup).map_err(PipelineError::io(stage, "remove backup", backup))?;
    let dir = parent_dir(backup);
    fsync_dir(&dir).map_err(PipelineError::io(stage, "fsync dir", &dir))?;
    Ok(true)
}

/// After a run failed in-process: removes its backup if the WAL's path still names the
/// inode the run read (so the rename never happened, and nobody replaced the file), by
/// [`discard_unswapped`]'s rule. A backup that stays is logged with the reason. Never
/// fails: the run's own error is what the caller reports.
pub fn after_failed_run(wal: &Path, read: &FileId, backup: &Path) {
    let at_path = fs::metadata(wal).map(|m| FileId::of(&m));
    let why_kept = match at_path {
        Ok(now) if now.same_inode(read) => match discard_unswapped(wal, backup, Stage::Backup) {
            Ok(true) => return,
            Ok(false) => "the WAL no longer begins with its bytes".to_string(),
            Err(e) => format!("removing it failed: {e}"),
        },
        Ok(_) => {
            "the WAL at the path is another file now (swapped, rolled back or replaced)".to_string()
        }
        Err(e) => format!("the WAL cannot be examined: {e}"),
    };
    tracing::warn!(
        event = "backup_kept",
        wal = %wal.display(),
        backup = %backup.display(),
        "the run did not complete; kept its backup {}: {why_kept}",
        backup.display()
    );
}
