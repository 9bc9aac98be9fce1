//! Lease mode: for writers that open the WAL for every append and take no lock (the
//! Diotec360 application). The prefix was compacted and verified holding nothing; here the
//! lines appended since are caught up without any lease while much remains (as online mode
//! does), then the last delta is copied and the WAL exchanged under a kernel read lease, and
//! lines writers still append to the old inode are merged (see [`super::late`]). Writers
//! wait only for the last delta, the exchange and the merge: not for anything that grows
//! with the WAL.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, Write};
use std::path::Path;
use std::time::Duration;

use super::super::compact::TempFile;
use super::super::{PipelineError, Run, Stage, journal, open_wal, rollback};
use super::Swapped;
use super::late::{self, Exchange, Sink};
use super::online::{self, OnlineStats, Sinks, TailCheck};
use crate::fsutil::sibling;
use crate::lease::{LeaseError, ReadLease, check_filesystem, lease_break_time};

/// Lease-mode settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Give up (cleanly) if no read lease is granted within this time: writers kept the
    /// WAL open all along.
    pub lock_timeout: Duration,
}

/// What must hold before a lease-mode run does any work, each refusal naming what to do:
/// a filesystem whose leases see every writer, a `lease-break-time` above 0, and a lease
/// this process may take on the WAL (a trial: `EACCES`, `EINVAL` now rather than after
/// the compaction; a writer with the WAL open at this instant is fine).
pub fn preflight(wal: &Path) -> Result<(), LeaseError> {
    check_filesystem(wal)?;
    lease_break_time()?;
    ReadLease::try_take(wal, None).map(drop)
}

/// Catches up without a lease, then exchanges under the lease and merges late lines.
pub(in crate::pipeline) fn swap(
    run: &mut Run,
    temp: &mut TempFile,
    lease: &Lease,
) -> Result<Swapped, PipelineError> {
    let wal = run.req.wal.clone();
    let temp_path = temp.path.clone();
    let mut backup_copy = online::open_copied_backup(&run.backup)?;
    let backup_path = run.backup.path.clone();
    let file = temp.file_mut();
    file.seek(io::SeekFrom::End(0)).map_err(PipelineError::io(
        Stage::Compact,
        "seek",
        &temp_path,
    ))?;
    let sinks = Sinks {
        temp: file,
        temp_path: &temp_path,
        backup: backup_copy
            .as_mut()
            .map(|(f, n)| (f, *n, backup_path.as_path())),
    };
    let mut copier = Copier {
        sinks,
        check: TailCheck::new(&wal, &run.snap, run.req.corrupt_lines),
        warned: false,
    };
    let mut stats = OnlineStats::default();
    let snap = &run.snap;
    // The torn fragment after the last complete line was already copied; the check reads it again.
    let fragment = online::read_range(&snap.file, snap.plan.scanned_len, snap.id.len, &wal)?;
    copier.check.feed(&fragment)?;
    fail::fail_point!("online::catch_up::delay");
    let copied = run.clock.stage(Stage::Compact, || {
        let (sinks, check) = (&mut copier.sinks, &mut copier.check);
        online::catch_up(&snap.file, snap.id.len, sinks, check, &mut stats)
    })?;
    // Flush the catch-up before the lease, so the fsync under it covers only the last delta.
    copier.sync()?;
    // Journal the swap before the lease too: writers wait for none of this.
    journal::advance(&mut run.journal, &wal, journal::Phase::Swapping)?;
    let x = Exchange {
        wal: &wal,
        new_path: &temp_path,
        old: run.snap.id,
        copied,
        timeout: lease.lock_timeout,
        stage: Stage::Swap,
    };
    let leased = run
        .clock
        .stage(Stage::Swap, || late::exchange(&x, None, &mut copier))?;
    stats.appended_bytes = leased.old_len_at_swap - run.snap.id.len;
    stats.bytes_under_lock = leased.bytes_under_lease;
    stats.lock_wait_ms = leased.lease_wait_ms;
    stats.lock_held_ms = leased.lease_held_ms;
    stats.len_at_swap = leased.new_len_at_swap;
    Ok(Swapped {
        // The new WAL's bytes after the late lines are what the old inode (the backup) lacks.
        len_at_swap: leased.new_len_at_swap + leased.late_bytes,
        online: Some(stats),
        lease: Some(leased),
    })
}

/// The compacted temp and, for the last delta, a copied backup; appended lines are checked
/// as online mode checks them.
struct Copier<'a> {
    sinks: Sinks<'a>,
    check: TailCheck<'a>,
    /// A late line failed the check (logged once; it is merged all the same).
    warned: bool,
}

impl Sink for Copier<'_> {
    fn new_file(&self) -> &File {
        self.sinks.temp
    }

    fn copy(&mut self, old: &File, from: u64, to: u64, late: bool) -> Result<(), PipelineError> {
        if !late {
            return online::copy_tail(old, from, to, &mut self.sinks, &mut self.check);
        }
        // After the exchange the swap cannot be taken back (writers may hold the new WAL):
        // a late line that fails the tail check is merged and reported, the backup keeps the original.
        let (temp, path) = (&mut *self.sinks.temp, self.sinks.temp_path);
        let (check, warned) = (&mut self.check, &mut self.warned);
        let read_err = |e| PipelineError::io(Stage::Swap, "read late lines of", path)(e);
        online::for_each_chunk(old, from, to, read_err, |chunk| {
            if !*warned && let Err(e) = check.feed(chunk) {
                *warned = true;
                tracing::error!(event = "lease", wal = %path.display(), error = %e,
                    "a line appended to the old WAL after the swap fails the tail check; merged anyway, the backup keeps the original");
            }
            temp.write_all(chunk).map_err(PipelineError::io(
                Stage::Swap,
                "append late lines to",
                path,
            ))
        })?;
        // The backup stays the old inode's bytes exactly (a linked backup is that inode): a
        // rollback restores it and keeps what follows the late lines in the new WAL.
        online::append_backup(old, to, &mut self.sinks)
    }

    fn sync(&mut self) -> Result<(), PipelineError> {
        self.sinks.temp.sync_all().map_err(PipelineError::io(
            Stage::Swap,
            "fsync",
            self.sinks.temp_path,
        ))?;
        if let Some((backup, _, path)) = self.sinks.backup.as_mut() {
            backup
                .sync_all()
                .map_err(PipelineError::io(Stage::Backup, "fsync", *path))?;
        }
        Ok(())
    }
}

/// A new file that copies the old inode's bytes verbatim (a restore, the offline swap).
pub(super) struct Plain<'a> {
    pub file: &'a mut File,
    pub path: &'a Path,
}

impl Sink for Plain<'_> {
    fn new_file(&self) -> &File {
        self.file
    }

    fn copy(&mut self, old: &File, from: u64, to: u64, _late: bool) -> Result<(), PipelineError> {
        let (file, path) = (&mut *self.file, self.path);
        let read_err = |e| PipelineError::io(Stage::Swap, "read", path)(e);
        online::for_each_chunk(old, from, to, read_err, |chunk| {
            file.write_all(chunk)
                .map_err(PipelineError::io(Stage::Swap, "append to", path))
        })
    }

    fn sync(&mut self) -> Result<(), PipelineError> {
        self.file
            .sync_all()
            .map_err(PipelineError::io(Stage::Swap, "fsync", self.path))
    }
}

/// Restores `backup` at `wal` by a leased exchange: the backup's bytes, then (after a swap,
/// `len_at_swap`) what writers appended to the WAL since, then whatever they append until
/// the exchange and, late, to the old inode. Writers wait only for the exchange.
pub(super) fn restore(
    backup: &Path,
    wal: &Path,
    stage: Stage,
    lease: &Lease,
    len_at_swap: Option<u64>,
) -> Result<(), PipelineError> {
    if !wal.exists() {
        // No WAL, so no writer to hold back: a plain restore.
        return rollback::restore_copy(backup, wal, stage);
    }
    let (old, id) = open_wal(wal)?;
    let from = len_at_swap.unwrap_or(id.len);
    if from > id.len {
        return Err(PipelineError::Changed {
            path: wal.into(),
            what: format!("shorter ({} bytes) than at the swap ({from})", id.len),
        });
    }
    let tmp = sibling(wal, journal::ROLLBACK_SUFFIX);
    let restored = (|| {
        rollback::copy_backup(backup, &tmp, wal).map_err(PipelineError::io(
            stage,
            "copy backup to",
            &tmp,
        ))?;
        // The only descriptor of the copy (the write lease needs that), appending.
        let mut file = OpenOptions::new()
            .append(true)
            .open(&tmp)
            .map_err(PipelineError::io(stage, "open", &tmp))?;
        let mut sink = Plain {
            file: &mut file,
            path: &tmp,
        };
        sink.copy(&old, from, id.len, false)?;
        sink.sync()?;
        let x = Exchange {
            wal,
            new_path: &tmp,
            old: id,
            copied: id.len,
            timeout: lease.lock_timeout,
            stage,
        };
        late::exchange(&x, None, &mut sink).map(drop)
    })();
    if restored.is_err() && !late::record_path(wal).exists() {
        // Not exchanged (or exchanged back): the copy is ours alone.
        let _ = std::fs::remove_file(&tmp);
    }
    restored
}
