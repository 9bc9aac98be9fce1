//! The swap: the verified temp file replaces the WAL by rename.

use std::fs;
use std::path::Path;

use super::{PipelineError, Stage};
use crate::fsutil::{fsync_dir, parent_dir};

/// Renames `temp` over `wal`, then fsyncs the directory. The temp was fsynced before this
/// (else a crash could leave an empty WAL); fsync the directory AFTER the rename, or a
/// crash can bring the old WAL back while its backup was already pruned.
pub fn swap(temp: &Path, wal: &Path) -> Result<(), PipelineError> {
    crate::crash_point!("swap::before_rename::crash");
    fail::fail_point!("swap::before_rename::error", |_| Err(PipelineError::io(
        Stage::Swap,
        "rename to",
        wal
    )(
        std::io::Error::other("injected failure before rename")
    )));
    fs::rename(temp, wal).map_err(PipelineError::io(Stage::Swap, "rename to", wal))?;
    crate::crash_point!("swap::after_rename::crash");
    fail::fail_point!("swap::after_rename::error", |_| Err(PipelineError::io(
        Stage::Swap,
        "fsync dir of",
        wal
    )(
        std::io::Error::other("injected failure after rename")
    )));
    fsync_dir(&parent_dir(wal)).map_err(PipelineError::io(Stage::Swap, "fsync dir of", wal))
}
