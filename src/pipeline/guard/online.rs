//! Online compaction: writers that follow `docs/PROTOCOL.md` keep appending while the WAL
//! is compacted. The prefix `[0, N)` was compacted and verified without any lock; here the
//! bytes appended since are copied verbatim after it — first without the lock while the
//! remaining tail is large, then under the writers' `<wal>.lock` for the last few — and the
//! result is renamed over the WAL while writers wait. The lock is held only for the last
//! delta: its cost does not grow with the WAL's size.
//!
//! Copying appended lines verbatim after the compacted prefix replays to the same state as
//! the original, except for one pattern the tail check refuses (see `TailCheck`).

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::super::{PipelineError, Run, Snapshot, Stage, backup, journal, open_wal, swap};
use super::Swapped;
use crate::rules::CorruptLines;
use crate::wal::{Entry, Op, decode};

/// Catch up without the lock until at most this much is left: copying and checking it under
/// the lock then takes about a millisecond.
pub const CATCH_UP_TAIL_BYTES: u64 = 256 << 10;
/// Catch-up rounds before taking the lock anyway, so a writer faster than the copy cannot
/// postpone the swap forever (the lock then covers what that writer added in one round).
const MAX_CATCH_UP_ROUNDS: u32 = 16;
/// How often a waiting compactor retries the writer lock.
const LOCK_POLL: Duration = Duration::from_millis(1);
/// Chunk size for copying the tail.
const COPY_CHUNK_BYTES: usize = 256 << 10;

/// Online-mode settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Online {
    /// Give up (cleanly) if the writer lock is not acquired within this time.
    pub lock_timeout: Duration,
}

/// What the online phase measured, for the report and the latency benchmark.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OnlineStats {
    pub catch_up_rounds: u32,
    /// Bytes appended by writers between the snapshot and the swap.
    pub appended_bytes: u64,
    pub lock_wait_ms: f64,
    /// How long writers were paused.
    pub lock_held_ms: f64,
    /// Bytes copied while holding the lock.
    pub bytes_under_lock: u64,
    /// Length of the new WAL at the swap (a rollback keeps what was appended after it).
    pub len_at_swap: u64,
}

/// Destinations of the appended bytes: the temp file, and a copied backup (a hard-linked
/// backup is the original inode and needs nothing).
pub(super) struct Sinks<'a> {
    pub temp: &'a mut File,
    pub temp_path: &'a Path,
    /// A copied backup, the length it has, and its path.
    pub backup: Option<(&'a mut File, u64, &'a Path)>,
}

/// Reads `[from, to)` of `src` in chunks and hands each to `f`: one positioned-read loop for
/// every copy of appended bytes, with bounded memory.
pub(super) fn for_each_chunk<E>(
    src: &File,
    from: u64,
    to: u64,
    read_err: impl Fn(io::Error) -> E,
    mut f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut buf = vec![0; COPY_CHUNK_BYTES];
    let mut pos = from;
    while pos < to {
        let want = usize::try_from(to - pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        src.read_exact_at(&mut buf[..want], pos)
            .map_err(&read_err)?;
        f(&buf[..want])?;
        pos += want as u64;
    }
    Ok(())
}

/// Copies `[from, to)` of the WAL to the sinks, checking each complete line on the way.
pub(super) fn copy_tail(
    src: &File,
    from: u64,
    to: u64,
    sinks: &mut Sinks,
    check: &mut TailCheck,
) -> Result<(), PipelineError> {
    let wal = check.wal;
    let read_err = |e| PipelineError::io(Stage::Compact, "read appended bytes of", wal)(e);
    for_each_chunk(src, from, to, read_err, |chunk| {
        check.feed(chunk)?;
        let write_err = PipelineError::io(Stage::Compact, "append to", sinks.temp_path);
        sinks.temp.write_all(chunk).map_err(write_err)
    })?;
    append_backup(src, to, sinks)
}

/// Brings a copied backup level with `src` up to `to` (a linked backup is `src` itself).
pub(super) fn append_backup(src: &File, to: u64, sinks: &mut Sinks) -> Result<(), PipelineError> {
    if let Some((backup, backup_len, path)) = sinks.backup.as_mut() {
        for_each_chunk(src, *backup_len, to, |e| e, |chunk| backup.write_all(chunk))
            .map_err(PipelineError::io(Stage::Backup, "append to", *path))?;
        *backup_len = to.max(*backup_len);
    }
    Ok(())
}

/// Reads `[from, to)` of the WAL into memory (a torn fragment: at most one line).
pub(super) fn read_range(
    src: &File,
    from: u64,
    to: u64,
    wal: &Path,
) -> Result<Vec<u8>, PipelineError> {
    let mut buf = vec![0; usize::try_from(to - from).unwrap_or(usize::MAX)];
    src.read_exact_at(&mut buf, from)
        .map_err(PipelineError::io(Stage::Compact, "read", wal))?;
    Ok(buf)
}

/// Checks the lines appended after the snapshot before they are copied verbatim behind the
/// compacted prefix: each must be a valid line, and none may be a COMMIT for a transaction
/// whose deciding PREPARE the plan dropped (it was ABORTed in the prefix, and no new
/// PREPARE came first) — replaying the compacted WAL would then lose that PREPARE's data.
/// Such a run is refused and retried later, when the COMMIT is part of the prefix.
pub(super) struct TailCheck<'a> {
    pub(super) wal: &'a Path,
    at_risk: &'a HashSet<String>,
    expiring: &'a HashSet<String>,
    prepared: HashSet<String>,
    /// Appended corrupt lines: `refuse` gives the run up; otherwise they are copied in
    /// place (the delta under the writers' lock is copied verbatim, so that the lock stays
    /// short), and a later run quarantines them if the policy says so.
    corrupt_lines: CorruptLines,
    carry: Vec<u8>,
    /// Offset of `carry[0]` in the WAL.
    offset: u64,
    /// Complete lines before `offset`.
    lines: u64,
}

impl<'a> TailCheck<'a> {
    /// Starts at the first byte after the snapshot's last complete line.
    pub fn new(wal: &'a Path, snap: &'a Snapshot, corrupt_lines: CorruptLines) -> TailCheck<'a> {
        TailCheck {
            wal,
            at_risk: &snap.at_risk,
            expiring: &snap.expiring,
            prepared: HashSet::new(),
            corrupt_lines,
            carry: Vec::new(),
            offset: snap.plan.scanned_len,
            lines: snap.counts.lines,
        }
    }

    /// Checks the complete lines in `bytes` (a line may continue in the next call).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), PipelineError> {
        self.carry.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(i) = self.carry[start..].iter().position(|&b| b == b'\n') {
            let line = self.carry[start..start + i].to_vec();
            self.lines += 1;
            self.check_line(&line, self.offset + start as u64)?;
            start += i + 1;
        }
        self.carry.drain(..start);
        self.offset += start as u64;
        Ok(())
    }

    fn check_line(&mut self, line: &[u8], offset: u64) -> Result<(), PipelineError> {
        let entry = match decode(line) {
            Ok(entry) => entry,
            Err(_) if self.corrupt_lines != CorruptLines::Refuse => return Ok(()),
            Err(e) => {
                return Err(PipelineError::Corrupt {
                    path: self.wal.into(),
                    line: self.lines,
                    offset,
                    reason: format!("appended during online compaction: {e}"),
                    more: 0,
                });
            }
        };
        let Entry::Tx(t) = entry else { return Ok(()) };
        if !self.expiring.is_empty() && self.expiring.contains(t.tx_id.as_ref()) {
            return Err(PipelineError::Changed {
                path: self.wal.into(),
                what: format!(
                    "a line of {:?}, which this run expires, was appended at byte {offset}; retry later",
                    t.tx_id
                ),
            });
        }
        if !self.at_risk.contains(t.tx_id.as_ref()) {
            return Ok(());
        }
        match t.op {
            Op::Prepare => {
                self.prepared.insert(t.tx_id.into_owned());
                Ok(())
            }
            Op::Commit if !self.prepared.contains(t.tx_id.as_ref()) => {
                Err(PipelineError::Changed {
                    path: self.wal.into(),
                    what: format!(
                        "a COMMIT of {:?} (ABORTed earlier; its PREPARE is compacted away) was appended at byte {offset}; retry later",
                        t.tx_id
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The writers' lock, held until dropped.
pub(super) struct WriterLock {
    _file: File,
    pub acquired: Instant,
}

/// Takes `LOCK_EX` on `<wal>.lock`, polling until `timeout`.
pub(super) fn acquire_writer_lock(
    wal: &Path,
    timeout: Duration,
) -> Result<WriterLock, PipelineError> {
    let path = crate::writer::lock_path(wal);
    // The writers' lock is usually theirs (owner may differ), but never a link to another
    // file: opened by the directory's descriptor, one link, regular (see `fsutil::safe`).
    let file = crate::fsutil::safe::Dir::of(&path)
        .and_then(|(dir, name)| {
            dir.open_persistent(&name, 0o600, crate::fsutil::safe::Owners::Anyone)
        })
        .map_err(PipelineError::io(Stage::Swap, "open writer lock", &path))?;
    give_to_wal_owner(&file, wal);
    let deadline = Instant::now() + timeout;
    loop {
        match file.try_lock() {
            Ok(()) => {
                return Ok(WriterLock {
                    _file: file,
                    acquired: Instant::now(),
                });
            }
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(LOCK_POLL)
            }
            Err(TryLockError::WouldBlock) => {
                return Err(PipelineError::LockTimeout {
                    path: wal.into(),
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(PipelineError::io(Stage::Swap, "lock", &path)(e));
            }
        }
    }
}

/// A writers' lock this run just created belongs to the WAL's owner, with the WAL's mode:
/// the writers (the application's user) must be able to open it.
fn give_to_wal_owner(lock: &File, wal: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (Ok(l), Ok(w)) = (lock.metadata(), std::fs::metadata(wal)) else {
        return;
    };
    if l.len() == 0 && l.uid() != w.uid() && l.uid() == unsafe { libc::geteuid() } {
        let _ = std::os::unix::fs::fchown(lock, Some(w.uid()), Some(w.gid()));
        let _ = lock.set_permissions(std::fs::Permissions::from_mode(w.mode() & 0o666));
    }
}

/// Catches up without the lock: copies appended bytes until the rest is small.
pub(super) fn catch_up(
    src: &File,
    mut copied: u64,
    sinks: &mut Sinks,
    check: &mut TailCheck,
    stats: &mut OnlineStats,
) -> Result<u64, PipelineError> {
    for _ in 0..MAX_CATCH_UP_ROUNDS {
        let len = src
            .metadata()
            .map_err(PipelineError::io(Stage::Compact, "stat", check.wal))?
            .len();
        if len < copied {
            return Err(PipelineError::Changed {
                path: check.wal.into(),
                what: format!("truncated to {len} bytes"),
            });
        }
        if len - copied <= CATCH_UP_TAIL_BYTES {
            break;
        }
        copy_tail(src, copied, len, sinks, check)?;
        copied = len;
        stats.catch_up_rounds += 1;
    }
    Ok(copied)
}

/// Under the writer lock: copies the last delta and makes the temp (and a copied backup)
/// durable. Returns the WAL length copied up to. The path must still name the snapshot's
/// inode: someone else replacing the WAL is a change this run must not paper over.
pub(super) fn final_delta(
    wal: &Path,
    snap: &Snapshot,
    copied: u64,
    sinks: &mut Sinks,
    check: &mut TailCheck,
    stats: &mut OnlineStats,
) -> Result<u64, PipelineError> {
    let (_, now) = open_wal(wal)?;
    if !now.same_inode(&snap.id) {
        return Err(PipelineError::Changed {
            path: wal.into(),
            what: "replaced by another file".into(),
        });
    }
    if now.len < copied {
        return Err(PipelineError::Changed {
            path: wal.into(),
            what: format!("truncated to {} bytes", now.len),
        });
    }
    copy_tail(&snap.file, copied, now.len, sinks, check)?;
    stats.bytes_under_lock = now.len - copied;
    // fsync the temp BEFORE the rename, or a crash can lose lines writers already saw written.
    sinks
        .temp
        .sync_all()
        .map_err(PipelineError::io(Stage::Compact, "fsync", sinks.temp_path))?;
    if let Some((backup, _, path)) = sinks.backup.as_mut() {
        backup
            .sync_all()
            .map_err(PipelineError::io(Stage::Backup, "fsync", *path))?;
    }
    Ok(now.len)
}

/// Catches up on appended bytes without the lock, then copies the last delta and swaps
/// under the writers' lock: writers wait for that alone.
pub(in crate::pipeline) fn swap(
    run: &mut Run,
    temp: &Path,
    online: &Online,
) -> Result<Swapped, PipelineError> {
    let wal = run.req.wal.clone();
    let io_err = |what| PipelineError::io(Stage::Compact, what, temp);
    let mut temp_file = OpenOptions::new()
        .append(true)
        .open(temp)
        .map_err(io_err("open"))?;
    let mut backup_copy = open_copied_backup(&run.backup)?;
    let backup_path = run.backup.path.clone();
    let mut sinks = Sinks {
        temp: &mut temp_file,
        temp_path: temp,
        backup: backup_copy
            .as_mut()
            .map(|(f, n)| (f, *n, backup_path.as_path())),
    };
    let mut check = TailCheck::new(&wal, &run.snap, run.req.corrupt_lines);
    let mut stats = OnlineStats::default();
    let snap = &run.snap;
    // The torn fragment after the last complete line was already copied; the check reads it again.
    let fragment = read_range(&snap.file, snap.plan.scanned_len, snap.id.len, &wal)?;
    check.feed(&fragment)?;
    fail::fail_point!("online::catch_up::delay");
    let copied = run.clock.stage(Stage::Compact, || {
        catch_up(&snap.file, snap.id.len, &mut sinks, &mut check, &mut stats)
    })?;
    // Flush the catch-up before locking, so the fsync under the lock covers only the last delta.
    sinks.temp.sync_data().map_err(io_err("fsync"))?;
    // Journal the swap before locking too: recovery decides by whether the WAL's path holds
    // the temp's inode, which holds whether or not the rename below happens. Writers wait
    // for none of this.
    journal::advance(&mut run.journal, &wal, journal::Phase::Swapping)?;
    let wait = Instant::now();
    let lock = acquire_writer_lock(&wal, online.lock_timeout)?;
    stats.lock_wait_ms = ms(wait);
    let end = final_delta(&wal, &run.snap, copied, &mut sinks, &mut check, &mut stats)?;
    crate::crash_point!("online::under_lock::crash");
    // The WAL as copied: the snapshot's inode, as long as the last delta made it.
    let copied = crate::fsutil::FileId {
        len: end,
        ..run.snap.id
    };
    run.clock
        .stage(Stage::Swap, || swap::swap(temp, &wal, &copied))?;
    stats.lock_held_ms = ms(lock.acquired);
    drop(lock);
    stats.appended_bytes = end - run.snap.id.len;
    stats.len_at_swap = temp_file.metadata().map_err(io_err("stat"))?.len();
    Ok(Swapped {
        len_at_swap: stats.len_at_swap,
        online: Some(stats),
        lease: None,
    })
}

/// A copied backup (another filesystem) open for appending, with its length: the lines
/// appended during the run go there too. A hard-linked backup is the original inode.
pub(super) fn open_copied_backup(b: &backup::Backup) -> Result<Option<(File, u64)>, PipelineError> {
    if b.linked {
        return Ok(None);
    }
    let f = OpenOptions::new()
        .append(true)
        .open(&b.path)
        .map_err(PipelineError::io(Stage::Backup, "open", &b.path))?;
    let len = f
        .metadata()
        .map_err(PipelineError::io(Stage::Backup, "stat", &b.path))?
        .len();
    Ok(Some((f, len)))
}

/// Restores `backup` at `wal` under the writers' lock; after a swap (`len_at_swap`), the
/// bytes writers appended since are kept.
pub(super) fn restore(
    backup: &Path,
    wal: &Path,
    stage: Stage,
    online: &Online,
    len_at_swap: Option<u64>,
) -> Result<(), PipelineError> {
    let _lock = acquire_writer_lock(wal, online.lock_timeout)?;
    super::super::rollback::restore_keeping(backup, wal, stage, len_at_swap)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
