//! The swap: the verified temp file replaces the WAL by rename.

use std::fs;
use std::path::Path;

use super::{PipelineError, Stage};
use crate::fsutil::{fsync_dir, parent_dir};

/// Renames `temp` over `wal`, then fsyncs the directory. The temp was fsynced before this
/// (else a crash could leave an empty WAL); fsync the directory AFTER the rename, or a
/// crash can bring the old WAL back while its backup was already pruned.
pub fn swap(temp: &Path, wal: &Path) -> Result<(), PipelineError> {
    crate::io_fault!("swap::before_rename")
        .and_then(|()| fs::rename(temp, wal))
        .map_err(PipelineError::io(Stage::Swap, "rename to", wal))?;
    crate::io_fault!("swap::after_rename")
        .and_then(|()| fsync_dir(&parent_dir(wal)))
        .map_err(PipelineError::io(Stage::Swap, "fsync dir of", wal))
}
