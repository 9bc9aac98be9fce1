//! The swap: the verified temp file replaces the WAL.
//!
//! Where the filesystem has it, the swap is `renameat2(RENAME_EXCHANGE)` relative to the WAL's
//! directory: the WAL's path gets the compacted file and the temp's path the file that was
//! the WAL, which is then checked to be the inode compacted. Someone who replaced the WAL
//! between the run's last check and the swap (the application's own rewrite, a restore) gets
//! their file back by a second exchange: a WAL that is not the one compacted is never
//! clobbered. Filesystems without `RENAME_EXCHANGE` (NFS, some FUSE) get `rename(2)` after the
//! same last check, as before.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{RenameFlags, renameat2};

use super::{PipelineError, Stage};
use crate::fsutil::{FileId, fsync_dir, parent_dir};

/// Replaces the WAL at `wal` (which must still be the inode of `compacted`, as long as it
/// was when compacted) by `temp`, then
/// fsyncs the directory. The temp was fsynced before this (else a crash could leave an empty
/// WAL); fsync the directory AFTER the swap, or a crash can bring the old WAL back while its
/// backup was already pruned. The old WAL's inode, left at the temp's path by the exchange,
/// is unlinked last: it is the backup's inode (or copied into it), and recovery removes it
/// if a crash comes first.
pub fn swap(temp: &Path, wal: &Path, compacted: &FileId) -> Result<(), PipelineError> {
    // Lets tests replace the WAL between the run's last check and the swap.
    fail::fail_point!("swap::before_exchange::delay");
    let exchanged = crate::io_fault!("swap::before_rename").and_then(|()| exchange(temp, wal));
    match exchanged {
        Ok(()) => {
            // Exchanged, not yet checked: recovery tells our old WAL from someone else's file.
            crate::crash_point!("swap::exchange::crash");
            check_exchanged(temp, wal, compacted)?;
            let synced = sync_dir(wal);
            // The old WAL: already a backup's inode, or copied into one. Removed even if the
            // fsync failed: the swap happened, and once the run's journal is cleared nothing
            // would tell this name from a file planted there.
            let _ = fs::remove_file(temp);
            synced
        }
        Err(e) if exchange_unsupported(&e) => {
            fs::rename(temp, wal).map_err(PipelineError::io(Stage::Swap, "rename to", wal))?;
            sync_dir(wal)
        }
        Err(e) => Err(PipelineError::io(Stage::Swap, "exchange with", wal)(e)),
    }
}

/// The leased swap: `RENAME_EXCHANGE` only, since the old inode must stay at the temp's
/// path for the lines writers still append to it (a plain rename would unlink it). The
/// old inode is checked as in [`swap`] (someone else's file goes back); the old inode stays
/// where the exchange put it. The caller fsyncs the directory ([`sync_dir`]): a failure
/// there comes after the swap, which must then still be finished.
pub fn exchange_checked(temp: &Path, wal: &Path, compacted: &FileId) -> Result<(), PipelineError> {
    fail::fail_point!("swap::before_exchange::delay");
    match crate::io_fault!("swap::before_rename").and_then(|()| exchange(temp, wal)) {
        Ok(()) => {
            crate::crash_point!("swap::exchange::crash");
            check_exchanged(temp, wal, compacted)
        }
        Err(e) if exchange_unsupported(&e) => Err(PipelineError::Lease {
            path: wal.into(),
            source: crate::lease::LeaseError::NoExchange { path: wal.into() },
        }),
        Err(e) => Err(PipelineError::io(Stage::Swap, "exchange with", wal)(e)),
    }
}

/// `renameat2(RENAME_EXCHANGE)` of two names in the WAL's directory, through one directory
/// descriptor so both names are looked up in the same directory.
fn exchange(temp: &Path, wal: &Path) -> io::Result<()> {
    fail::fail_point!("swap::exchange::unsupported", |_| Err(
        io::Error::from_raw_os_error(libc::EINVAL)
    ));
    let dir = File::open(parent_dir(wal))?;
    let (Some(from), Some(to)) = (temp.file_name(), wal.file_name()) else {
        return Err(io::Error::other("the WAL's path has no file name"));
    };
    renameat2(&dir, from, &dir, to, RenameFlags::RENAME_EXCHANGE).map_err(io::Error::from)
}

/// `EINVAL` (the filesystem has no `RENAME_EXCHANGE`) or `ENOSYS` (the kernel has no
/// `renameat2`): plain rename is the only swap there is.
fn exchange_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EINVAL | Errno::ENOSYS)
    )
}

/// After the exchange the temp's path holds what was the WAL: it must be the inode
/// compacted, as long as it was then (a line appended after the last check would be in
/// neither file). Otherwise the exchange is undone, putting that file back at the WAL's path.
fn check_exchanged(temp: &Path, wal: &Path, compacted: &FileId) -> Result<(), PipelineError> {
    let came_back =
        fs::symlink_metadata(temp).map_err(PipelineError::io(Stage::Swap, "stat", temp))?;
    let what = if (came_back.dev(), came_back.ino()) != (compacted.dev, compacted.ino) {
        "replaced by another file just before the swap; it was put back".to_string()
    } else if came_back.len() != compacted.len {
        format!(
            "{} bytes appended just before the swap; the WAL was put back",
            came_back.len().abs_diff(compacted.len)
        )
    } else {
        return Ok(());
    };
    exchange_back(temp, wal)?;
    Err(PipelineError::Changed {
        path: wal.into(),
        what,
    })
}

/// Undoes an exchange: what is at the temp's path goes back to the WAL's path, durably.
pub(super) fn exchange_back(temp: &Path, wal: &Path) -> Result<(), PipelineError> {
    exchange(temp, wal).map_err(PipelineError::io(Stage::Swap, "exchange back with", wal))?;
    sync_dir(wal)
}

/// fsyncs the WAL's directory after a swap.
pub fn sync_dir(wal: &Path) -> Result<(), PipelineError> {
    crate::io_fault!("swap::after_rename")
        .and_then(|()| fsync_dir(&parent_dir(wal)))
        .map_err(PipelineError::io(Stage::Swap, "fsync dir of", wal))
}
