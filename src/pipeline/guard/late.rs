//! The leased exchange: how a new file replaces the WAL while writers that open it per
//! append (no lock, `open(path, 'a')`) are held back by the kernel, and how the lines such a
//! writer still appends to the old inode after the swap reach the new WAL. Lease mode's
//! swap, its restore and the kernel-enforced offline swap all go through [`exchange`].
//!
//! 1. The late record (`<wal>.compact.late`) says durably where the old inode will be after
//!    the exchange (the new file's path), both inodes, and the offsets from which the new
//!    file is a verbatim copy of the old one. It is written BEFORE the lease, so writers
//!    never wait for a journal write, yet a crash after the exchange and before the merge
//!    loses nothing: recovery appends what lies in the old inode beyond the copy.
//! 2. A read lease on the WAL (retried until the timeout): every `open` for writing blocks.
//! 3. The last delta is copied and made durable (fsync BEFORE the exchange, or a crash can
//!    lose lines writers already saw written).
//! 4. A write lease on the new file (nobody else has it open): writers that open the WAL's
//!    path after the exchange block on it until the merge below is done.
//! 5. `RENAME_EXCHANGE`, then the old inode must be at the new file's path, as long as it
//!    was copied; otherwise the exchange is undone and nothing was replaced.
//! 6. The directory is fsynced and the read lease released. Writers blocked on the old
//!    inode, and any that looked the path up before the exchange, append to the old inode.
//! 7. The merge: the read lease is taken again on the old inode through the kept
//!    descriptor; what writers appended is copied; done once the lease is granted and stays
//!    unbroken for [`QUIET_GRACE`]. The old file is then quiet.
//! 8. The new file is fsynced and the write lease released: writers go on at the new file.
//! 9. The record is removed and the old inode's name unlinked.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::super::{PipelineError, Stage, swap};
use crate::fsutil::{FileId, atomic_write, fsync_dir, parent_dir, sibling};
use crate::lease::{LEASE_RETRY, LeaseError, ReadLease, WriteLease};

/// Suffix of the late record.
pub const LATE_SUFFIX: &str = ".compact.late";
/// How long the re-taken lease on the old inode must stay unbroken before the old file
/// counts as quiet: a writer between its path lookup and its open's lease check is a few
/// microseconds from breaking it, and writers at the new file wait this long.
const QUIET_GRACE: Duration = Duration::from_millis(2);
/// How long the merge may keep writers at the new file waiting for the old one to go
/// quiet; after it they go on, and the merge goes on behind them (by appending).
const MERGE_HOLD_MAX: Duration = Duration::from_secs(2);
/// How long the merge waits for the old inode to go quiet at all; after it, the record and
/// the old inode stay, and the next run's recovery merges what came later.
const MERGE_MAX: Duration = Duration::from_secs(60);

/// Where the old inode is after the exchange and which bytes of it the new file copies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LateRecord {
    /// The new file's path before the exchange; the old inode's after it.
    pub old_at: PathBuf,
    pub dev: u64,
    pub old_ino: u64,
    pub new_ino: u64,
    /// The new file from `new_from` on is a copy of the old inode from `old_from` on.
    pub old_from: u64,
    pub new_from: u64,
}

/// The late record's path for `wal`.
pub fn record_path(wal: &Path) -> PathBuf {
    sibling(wal, LATE_SUFFIX)
}

/// Copies bytes of the old inode to the new file (and whatever else must follow them).
pub(in crate::pipeline) trait Sink {
    /// The new file's one open descriptor, which the sink appends through.
    fn new_file(&self) -> &File;
    /// Copies `[from, to)` of `old`: the last delta (`late` false, under the read lease) or
    /// lines appended to the old inode after the exchange (`late`).
    fn copy(&mut self, old: &File, from: u64, to: u64, late: bool) -> Result<(), PipelineError>;
    /// Makes everything copied so far durable.
    fn sync(&mut self) -> Result<(), PipelineError>;
}

/// One leased exchange.
pub(in crate::pipeline) struct Exchange<'a> {
    pub wal: &'a Path,
    /// The new file: the sink's descriptor of it must be its only one (the write lease
    /// needs that).
    pub new_path: &'a Path,
    /// The WAL's inode as the run read it.
    pub old: FileId,
    /// Bytes of the old inode already in the new file.
    pub copied: u64,
    /// How long to retry the read lease while writers have the WAL open.
    pub timeout: Duration,
    pub stage: Stage,
}

/// What the exchange measured: how long writers waited for it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeaseStats {
    /// Waiting for the read lease (writers had the WAL open).
    pub lease_wait_ms: f64,
    /// The read lease on the WAL, from grant to release: writers opening it wait.
    pub lease_held_ms: f64,
    /// From the read lease's grant to the write lease's release: the longest any writer waited.
    pub writers_paused_ms: f64,
    /// Bytes copied under the read lease.
    pub bytes_under_lease: u64,
    /// Bytes writers appended to the old inode after the exchange, merged into the new WAL.
    pub late_bytes: u64,
    /// Length of the WAL's old inode at the exchange.
    pub old_len_at_swap: u64,
    /// Length of the new WAL at the exchange: what follows came late or after.
    pub new_len_at_swap: u64,
}

/// Replaces the WAL by the new file under leases and merges late lines (see the module
/// header). `held` is a read lease the caller already holds on the WAL (offline mode);
/// otherwise one is taken. On error before the exchange nothing was replaced.
pub(in crate::pipeline) fn exchange(
    x: &Exchange,
    held: Option<ReadLease>,
    sink: &mut dyn Sink,
) -> Result<LeaseStats, PipelineError> {
    let mut stats = LeaseStats::default();
    set_append(sink.new_file(), x.new_path)?;
    let new_meta = sink
        .new_file()
        .metadata()
        .map_err(io(x.stage, "stat", x.new_path))?;
    let record = LateRecord {
        old_at: x.new_path.into(),
        dev: x.old.dev,
        old_ino: x.old.ino,
        new_ino: new_meta.ino(),
        old_from: x.copied,
        new_from: new_meta.len(),
    };
    write_record(x.wal, &record)?;
    let swapped = leased_swap(x, held, sink, &mut stats);
    let (old, write_lease, granted, synced) = match swapped {
        Ok(swapped) => swapped,
        Err(e) => {
            let _ = remove_record(x.wal);
            return Err(e);
        }
    };
    crate::crash_point!("lease::before_merge::crash");
    let quiet = merge(x, old, write_lease, sink, &mut stats, granted)?;
    if quiet {
        finish(x)?;
    }
    // A directory fsync that failed after the exchange is reported once the swap is finished
    // (late lines merged, the old inode's name gone): the swap itself did happen.
    synced.map(|()| stats)
}

/// What the exchange leaves: the old inode's descriptor (its lease released), the write
/// lease on the new file (now the WAL), when the read lease was granted, and whether the
/// directory fsync after the exchange succeeded.
type Exchanged = (File, WriteLease, Instant, Result<(), PipelineError>);

/// Steps 2 to 6.
fn leased_swap(
    x: &Exchange,
    held: Option<ReadLease>,
    sink: &mut dyn Sink,
    stats: &mut LeaseStats,
) -> Result<Exchanged, PipelineError> {
    let wait = Instant::now();
    let lease = match held {
        Some(lease) => lease,
        None => ReadLease::take(x.wal, Some((x.old.dev, x.old.ino)), x.timeout)
            .map_err(|e| PipelineError::lease(x.wal, e))?,
    };
    let granted = Instant::now();
    stats.lease_wait_ms = ms(granted - wait);
    fail::fail_point!("lease::held::delay");
    let len = lease
        .file()
        .metadata()
        .map_err(io(x.stage, "stat", x.wal))?
        .len();
    if len < x.copied {
        return Err(PipelineError::Changed {
            path: x.wal.into(),
            what: format!("truncated to {len} bytes"),
        });
    }
    sink.copy(lease.file(), x.copied, len, false)?;
    stats.bytes_under_lease = len - x.copied;
    stats.old_len_at_swap = len;
    sink.sync()?;
    stats.new_len_at_swap = sink
        .new_file()
        .metadata()
        .map_err(io(x.stage, "stat", x.new_path))?
        .len();
    let write_lease = WriteLease::try_take(sink.new_file(), x.new_path)
        .map_err(|e| PipelineError::lease(x.new_path, e))?
        .ok_or_else(|| PipelineError::Changed {
            path: x.wal.into(),
            what: format!("{} is open in another process", x.new_path.display()),
        })?;
    let copied = FileId { len, ..x.old };
    swap::exchange_checked(x.new_path, x.wal, &copied)?;
    let synced = swap::sync_dir(x.wal);
    let old = lease.unlock();
    stats.lease_held_ms = ms(granted.elapsed());
    Ok((old, write_lease, granted, synced))
}

/// Step 7 and 8: copies what writers append to the old inode until it is quiet, then
/// fsyncs the new file and releases the write lease. False when the old inode never went
/// quiet within [`MERGE_MAX`]: the record and the old inode stay for recovery.
fn merge(
    x: &Exchange,
    mut old: File,
    write_lease: WriteLease,
    sink: &mut dyn Sink,
    stats: &mut LeaseStats,
    granted: Instant,
) -> Result<bool, PipelineError> {
    fail::fail_point!("lease::merge::delay");
    let start = Instant::now();
    let mut pos = stats.old_len_at_swap;
    let mut write_lease = Some(write_lease);
    let quiet = loop {
        if write_lease.is_some() && start.elapsed() > MERGE_HOLD_MAX {
            // A writer keeps the old inode open: let the others go on at the new file.
            write_lease = None;
            tracing::warn!(event = "lease", wal = %x.wal.display(),
                "a writer kept the old WAL open after the swap; writers go on, its lines are merged as they come");
        }
        if start.elapsed() > MERGE_MAX {
            break None;
        }
        let lease =
            match ReadLease::try_on(old, x.new_path).map_err(|e| PipelineError::lease(x.wal, e))? {
                Ok(lease) => lease,
                Err(file) => {
                    old = file;
                    std::thread::sleep(LEASE_RETRY);
                    continue;
                }
            };
        let len = lease
            .file()
            .metadata()
            .map_err(io(x.stage, "stat", x.new_path))?
            .len();
        if len > pos {
            sink.copy(lease.file(), pos, len, true)?;
            stats.late_bytes += len - pos;
            pos = len;
        }
        match stays_unbroken(&lease, x.wal)? {
            true => break Some(lease),
            false => old = lease.unlock(),
        }
    };
    sink.sync()?;
    drop(write_lease);
    stats.writers_paused_ms = ms(granted.elapsed());
    if quiet.is_none() {
        tracing::error!(event = "lease", wal = %x.wal.display(), old = %x.new_path.display(),
            "the old WAL never went quiet after the swap; it stays with its late record, and the next run merges what was appended to it");
    }
    Ok(quiet.is_some())
}

/// Polls the lease for [`QUIET_GRACE`]: false as soon as a writer's open breaks it.
fn stays_unbroken(lease: &ReadLease, wal: &Path) -> Result<bool, PipelineError> {
    let since = Instant::now();
    while since.elapsed() < QUIET_GRACE {
        if lease.broken().map_err(|e| PipelineError::lease(wal, e))? {
            return Ok(false);
        }
        std::thread::sleep(LEASE_RETRY);
    }
    Ok(true)
}

/// Step 9: the old inode is merged and quiet: the record goes, then the old inode's name.
fn finish(x: &Exchange) -> Result<(), PipelineError> {
    remove_record(x.wal)?;
    if fs::symlink_metadata(x.new_path).is_ok_and(|m| m.ino() == x.old.ino && m.dev() == x.old.dev)
    {
        let _ = fs::remove_file(x.new_path);
    }
    fsync_dir(&parent_dir(x.wal)).map_err(io(x.stage, "fsync dir of", x.wal))
}

/// Every write to the new file appends: once the write lease is released (or broken by the
/// kernel after `lease-break-time`), writers append to it too, and a positioned write of
/// ours would overwrite their lines.
fn set_append(file: &File, path: &Path) -> Result<(), PipelineError> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_APPEND) } < 0 {
        return Err(io(Stage::Swap, "set O_APPEND on", path)(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn write_record(wal: &Path, record: &LateRecord) -> Result<(), PipelineError> {
    let path = record_path(wal);
    let bytes = serde_json::to_vec_pretty(record).expect("late record serializes");
    crate::io_fault!(error "lease::record")
        .and_then(|()| atomic_write(&path, &bytes, 0o600))
        .map_err(io(Stage::Journal, "write", &path))
}

fn remove_record(wal: &Path) -> Result<(), PipelineError> {
    let path = record_path(wal);
    match fs::remove_file(&path) {
        Ok(()) => fsync_dir(&parent_dir(wal)).map_err(io(Stage::Journal, "fsync dir of", &path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(Stage::Journal, "remove", &path)(e)),
    }
}

/// Recovery of an exchange interrupted after the swap: appends to the WAL what writers
/// wrote to the old inode beyond what the new WAL already copies, then removes the old
/// inode and the record. Returns the inodes the record named (recovery may remove what is
/// left at their names), or `None` if there was no record. Call only under the compaction lock.
pub fn recover(wal: &Path) -> Result<Option<Vec<u64>>, PipelineError> {
    let path = record_path(wal);
    // Not through a link planted at its name.
    let bytes = crate::fsutil::safe::Dir::of(&path).and_then(|(dir, name)| {
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut dir.open_read(&name)?, &mut bytes).map(|_| bytes)
    });
    let record: LateRecord = match bytes {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PipelineError::BadInput {
            path: path.clone(),
            what: format!("unreadable late record ({e}); inspect it, then remove it to continue"),
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(Stage::Recover, "read", &path)(e)),
    };
    let is = |p: &Path, ino| {
        fs::symlink_metadata(p).is_ok_and(|m| m.ino() == ino && m.dev() == record.dev)
    };
    if is(wal, record.new_ino) && is(&record.old_at, record.old_ino) {
        merge_from_record(wal, &record)?;
        let _ = fs::remove_file(&record.old_at);
    }
    remove_record(wal)?;
    Ok(Some(vec![record.old_ino, record.new_ino]))
}

/// The new WAL from `new_from` on copies the old inode from `old_from` on, as far as the
/// interrupted run got; the rest of the old inode (from the last line boundary both share)
/// is appended in one write, so writers appending meanwhile are not interleaved into it.
fn merge_from_record(wal: &Path, r: &LateRecord) -> Result<u64, PipelineError> {
    // The old inode's tail is the last delta and the late lines: small. Of the new WAL only
    // as many bytes are compared.
    // Opened without following a link, and checked to be the inode recorded: the bytes
    // appended to the WAL come only from the old inode itself.
    let read = |p: &Path, from: u64, max: u64| -> io::Result<Vec<u8>> {
        let (dir, name) = crate::fsutil::safe::Dir::of(p)?;
        let f = dir.open_read(&name)?;
        let m = f.metadata()?;
        if ![r.old_ino, r.new_ino].contains(&m.ino()) || m.dev() != r.dev {
            return Err(io::Error::other("not the inode the late record names"));
        }
        let len = m.len();
        let mut buf = vec![0; len.saturating_sub(from).min(max) as usize];
        f.read_exact_at(&mut buf, from)?;
        Ok(buf)
    };
    let old =
        read(&r.old_at, r.old_from, u64::MAX).map_err(io(Stage::Recover, "read", &r.old_at))?;
    let new = read(wal, r.new_from, old.len() as u64).map_err(io(Stage::Recover, "read", wal))?;
    let same = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    if same == old.len() {
        return Ok(0);
    }
    let from = old[..same]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let rest = &old[from..];
    let mut out =
        OpenOptions::new()
            .append(true)
            .open(wal)
            .map_err(io(Stage::Recover, "open", wal))?;
    out.write_all(rest)
        .and_then(|()| out.sync_all())
        .map_err(io(Stage::Recover, "append late lines to", wal))?;
    tracing::warn!(event = "recover", wal = %wal.display(), bytes = rest.len(),
        "merged lines writers appended to the old WAL after an interrupted swap");
    Ok(rest.len() as u64)
}

fn io(stage: Stage, op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PipelineError {
    PipelineError::io(stage, op, path)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Maps a lease error to the pipeline's.
impl PipelineError {
    pub(in crate::pipeline) fn lease(path: &Path, e: LeaseError) -> PipelineError {
        PipelineError::Lease {
            path: path.into(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests;
