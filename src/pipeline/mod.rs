//! The compaction pipeline: backup → compact → verify → (quarantine →) swap (→ rollback),
//! one module per stage, sequenced by [`run`]. Knows nothing of the daemon: callers pass a [`Request`] and
//! get a [`Report`] or a [`PipelineError`] naming the stage.
//!
//! At every moment the WAL's path holds a complete WAL that replays to the original state:
//! the original until the rename, the verified compacted file after it. Everything else
//! (temp file, journal) is beside it under names [`journal::recover`] recognizes.

pub mod backup;
pub mod compact;
mod error;
mod handoff;
pub mod journal;
pub mod links;
mod litter;
pub mod lock;
pub mod online;
pub mod quarantine;
mod report;
pub mod rollback;
mod snapshot;
pub mod swap;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub use error::{PipelineError, exit_code};
pub use online::{Online, OnlineStats};
use report::{Clock, ms, report};
pub use report::{Outcome, Report, Stage, StageTime};
pub use snapshot::{Snapshot, open_wal};

/// A rollback must not give up on the writer lock as quickly as a compaction: it is putting
/// the original WAL back.
pub(crate) const ROLLBACK_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

use crate::fsutil::{FileId, available_bytes, parent_dir, sibling};
use crate::rules::CorruptLines;

/// A post-swap check of the new WAL (the application's own verify hook): `Err` rolls back.
pub type CheckFn<'a> = &'a (dyn Fn(&Path, &Path) -> Result<(), String> + Sync);
/// Progress callback: stage, bytes done, bytes in all.
pub type ProgressFn<'a> = &'a (dyn Fn(Stage, u64, u64) + Sync);

/// What to compact and how.
#[derive(Clone)]
pub struct Request<'a> {
    pub wal: PathBuf,
    /// Where backups go; `None` = the WAL's directory.
    pub backup_dir: Option<PathBuf>,
    /// Who runs it, recorded in the lock file (`walcompactd compact`, `daemon`).
    pub who: String,
    pub check: Option<CheckFn<'a>>,
    pub progress: Option<ProgressFn<'a>>,
    /// Set by the daemon at shutdown: the run stops at the next safe point (before the
    /// backup, before writing, before the swap), leaving the WAL as it was.
    pub cancel: Option<&'a AtomicBool>,
    /// Online mode: writers following the lock protocol keep appending during the run.
    pub online: Option<Online>,
    /// What happens to corrupt lines (policy `corrupt_lines`).
    pub corrupt_lines: CorruptLines,
    /// Compact a WAL whose inode has other hard links too (they keep the old file).
    pub allow_hard_links: bool,
}

impl Request<'_> {
    /// A request with defaults: backups beside the WAL, no check, no progress.
    pub fn new(wal: impl Into<PathBuf>, who: &str) -> Request<'static> {
        Request {
            wal: wal.into(),
            backup_dir: None,
            who: who.into(),
            check: None,
            progress: None,
            cancel: None,
            online: None,
            corrupt_lines: CorruptLines::default(),
            allow_hard_links: false,
        }
    }
}

/// Runs backup → compact → verify → swap (→ rollback) on one WAL. A symlink at the WAL's
/// path is resolved once, here: every stage works on the real file (see [`links`]).
pub fn run(req: &Request) -> Result<Report, PipelineError> {
    links::on_real_file(req, run_resolved)
}

fn run_resolved(req: &Request) -> Result<Report, PipelineError> {
    let mut clock = Clock::start();
    let mut snap = clock.stage(Stage::Analyze, || Snapshot::take(req))?;
    let backup_dir = backup::backup_dir(&req.wal, req.backup_dir.as_deref());
    backup::check_dir(&backup_dir)?;
    if snap.plan.reclaimable_bytes() == 0 && !journal::journal_path(&req.wal).exists() {
        return Ok(report(req, &snap, &clock, Outcome::Skipped, None, None));
    }
    let _lock = clock.stage(Stage::Lock, || lock::acquire(&req.wal, &req.who))?;
    let recovered = clock.stage(Stage::Recover, || journal::recover(&req.wal))?;
    if open_wal(&req.wal)?.1 != snap.id {
        // Recovery or another compaction changed the WAL since it was analyzed.
        snap = clock.stage(Stage::Analyze, || Snapshot::take(req))?;
    }
    let recovered = (recovered != journal::Recovered::Nothing).then(|| format!("{recovered:?}"));
    if snap.plan.reclaimable_bytes() == 0 {
        return Ok(report(
            req,
            &snap,
            &clock,
            Outcome::Skipped,
            None,
            recovered,
        ));
    }
    let (backup, online) = compact_and_swap(req, &mut snap, &backup_dir, &mut clock)?;
    let mut r = report(
        req,
        &snap,
        &clock,
        Outcome::Success,
        Some(backup),
        recovered,
    );
    if r.quarantined_lines > 0 {
        r.quarantine = Some(quarantine::quarantine_path(&req.wal, &backup_dir));
    }
    if let Some(o) = online {
        // Lines appended during the run are in the new WAL too.
        r.bytes_after += o.appended_bytes;
        r.online = Some(o);
    }
    Ok(r)
}

/// The stages that change files, each preceded by its journal entry.
fn compact_and_swap(
    req: &Request,
    snap: &mut Snapshot,
    backup_dir: &Path,
    clock: &mut Clock,
) -> Result<(backup::Backup, Option<OnlineStats>), PipelineError> {
    let wal = req.wal.as_path();
    checkpoint(req, Stage::Backup)?;
    if !req.allow_hard_links {
        links::refuse_other_hard_links(wal, &snap.file, backup_dir)?;
    }
    precheck_space(wal, snap, backup_dir)?;
    let backup = clock.stage(Stage::Backup, || {
        backup::create(wal, &snap.file, backup_dir, chrono::Utc::now())
    })?;
    let temp_path = sibling(wal, journal::TEMP_SUFFIX);
    let mut entry = journal::Journal {
        phase: journal::Phase::Writing,
        temp: temp_path.clone(),
        backup: Some(backup.path.clone()),
        original_digest: None,
        pid: std::process::id(),
        len_at_swap: None,
        temp_ino: None,
        quarantine: match snap.plan.set_aside.is_empty() {
            true => None,
            false => Some(quarantine::Mark::take(quarantine::quarantine_path(
                wal, backup_dir,
            ))?),
        },
    };
    let result = journal::write(wal, &entry)
        .and_then(|()| write_verify_swap(req, snap, &temp_path, &backup, &mut entry, clock));
    if result.is_err() {
        // The WAL is intact (or rolled back): the corrupt lines are still in it, and a run
        // that never swapped leaves no backup. Both are undone BEFORE the journal naming
        // them is cleared; the temp was removed by its guard.
        let undone = entry.undo_quarantine(wal, Stage::Quarantine);
        litter::after_failed_run(wal, &snap.id, &backup.path);
        if undone.is_ok() {
            let _ = journal::clear(wal);
        }
    }
    result.map(|online| (backup, online))
}

fn write_verify_swap(
    req: &Request,
    snap: &mut Snapshot,
    temp_path: &Path,
    backup: &backup::Backup,
    entry: &mut journal::Journal,
    clock: &mut Clock,
) -> Result<Option<OnlineStats>, PipelineError> {
    let wal = req.wal.as_path();
    checkpoint(req, Stage::Compact)?;
    let mut temp = compact::create_temp(temp_path, &snap.meta)?;
    entry.temp_ino = Some(temp.ino()?);
    let expected_len = snap.plan.survivor_bytes() + (snap.id.len - snap.plan.scanned_len);
    write_and_verify(&mut temp, wal, snap, expected_len, clock)?;
    // Verification waited for the original's replay state: this does not block.
    entry.original_digest = Some(snap.replay.get().digest_hex());
    if let Some(mark) = &entry.quarantine {
        // Durable and checked BEFORE the swap, or a crash after it loses the corrupt lines.
        clock.stage(Stage::Quarantine, || {
            quarantine::append(
                mark,
                wal,
                &snap.file,
                &snap.plan.set_aside,
                &snap.replay.get().set_aside,
                &snap.meta,
            )
        })?;
    }
    checkpoint(req, Stage::Swap)?;
    let stats = match req.online {
        None => {
            // Lets tests change the WAL between verification and the offline swap.
            fail::fail_point!("swap::before_check::delay");
            ensure_unchanged(wal, &snap.id)?;
            swap_journaled(wal, &temp.path, entry, clock)?;
            None
        }
        Some(online) => Some(swap_online(
            req, snap, &temp.path, backup, entry, online, clock,
        )?),
    };
    temp.keep();
    check_or_rollback(req, backup, entry, stats.as_ref(), clock)?;
    journal::clear(wal)?;
    Ok(stats)
}

/// Writes the temp file while verification re-reads it (handed the written length), then
/// fsyncs it while verification finishes: the writes and the flush wait on the kernel and
/// the device, verification on the CPU. All must succeed before the rename (fsync the temp
/// file BEFORE rename, or a crash can leave an empty WAL). A write or fsync error is
/// reported first. The compact stage times the writing, the verify stage what is left.
fn write_and_verify(
    temp: &mut compact::TempFile,
    wal: &Path,
    snap: &mut Snapshot,
    expected_len: u64,
    clock: &mut Clock,
) -> Result<(), PipelineError> {
    let handoff = handoff::Handoff::default();
    let (expected, txs) = (&snap.replay, snap.transactions);
    let temp_path = temp.path.clone();
    std::thread::scope(|scope| {
        let verified = scope
            .spawn(|| verify::verify_temp(&temp_path, wal, expected, expected_len, txs, &handoff));
        let written = clock.stage(Stage::Compact, || {
            temp.write(&snap.file, &snap.plan, snap.id.len, &handoff)
        });
        // Written: the plan's lines are not needed any more.
        snap.plan.release_lines();
        clock.stage(Stage::Verify, || {
            let synced = written
                .and_then(|n| check_len(wal, n, expected_len))
                .and_then(|()| temp.sync())
                .and_then(|()| check_len(wal, temp.len_on_disk()?, expected_len));
            let verified = verified
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            synced.and(verified.map(|_| ()))
        })
    })
}

/// The compacted file must be exactly as long as the plan says, as written and on disk.
fn check_len(wal: &Path, len: u64, expected: u64) -> Result<(), PipelineError> {
    match len == expected {
        true => Ok(()),
        false => Err(PipelineError::VerifyFailed {
            path: wal.to_path_buf(),
            detail: format!("the compacted file has {len} bytes, the plan expects {expected}"),
        }),
    }
}

/// Records the swap in the journal, then renames the temp over the WAL.
fn swap_journaled(
    wal: &Path,
    temp: &Path,
    entry: &mut journal::Journal,
    clock: &mut Clock,
) -> Result<(), PipelineError> {
    entry.phase = journal::Phase::Swapping;
    journal::write(wal, entry)?;
    clock.stage(Stage::Swap, || swap::swap(temp, wal))
}

/// Online: catch up on appended bytes, then copy the last delta and swap under the writers' lock.
fn swap_online(
    req: &Request,
    snap: &Snapshot,
    temp: &Path,
    backup: &backup::Backup,
    entry: &mut journal::Journal,
    online: Online,
    clock: &mut Clock,
) -> Result<OnlineStats, PipelineError> {
    let wal = req.wal.as_path();
    let io_err = |what| PipelineError::io(Stage::Compact, what, temp);
    let mut temp_file = std::fs::OpenOptions::new()
        .append(true)
        .open(temp)
        .map_err(io_err("open"))?;
    let mut backup_copy = match backup.linked {
        true => None,
        false => {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(&backup.path)
                .map_err(PipelineError::io(Stage::Backup, "open", &backup.path))?;
            let len = f
                .metadata()
                .map_err(PipelineError::io(Stage::Backup, "stat", &backup.path))?
                .len();
            Some((f, len))
        }
    };
    let mut sinks = online::Sinks {
        temp: &mut temp_file,
        backup: backup_copy.as_mut().map(|(f, n)| (f, *n)),
    };
    let mut check = online::TailCheck::new(wal, snap, req.corrupt_lines);
    let mut stats = OnlineStats::default();
    // The torn fragment after the last complete line was already copied; the check reads it again.
    let fragment = online::read_range(&snap.file, snap.plan.scanned_len, snap.id.len, wal)?;
    check.feed(&fragment)?;
    fail::fail_point!("online::catch_up::delay");
    let copied = clock.stage(Stage::Compact, || {
        online::catch_up(&snap.file, snap.id.len, &mut sinks, &mut check, &mut stats)
    })?;
    // Flush the catch-up before locking, so the fsync under the lock covers only the last delta.
    sinks.temp.sync_data().map_err(io_err("fsync"))?;
    // Journal the swap before locking too: recovery decides by whether the temp still exists,
    // which holds whether or not the rename below happens. Writers wait for none of this.
    entry.phase = journal::Phase::Swapping;
    journal::write(wal, entry)?;
    let wait = Instant::now();
    let lock = online::acquire_writer_lock(wal, online.lock_timeout)?;
    stats.lock_wait_ms = ms(wait);
    let end = online::final_delta(wal, snap, copied, &mut sinks, &mut check, &mut stats)?;
    crate::crash_point!("online::under_lock::crash");
    clock.stage(Stage::Swap, || swap::swap(temp, wal))?;
    stats.lock_held_ms = ms(lock.acquired);
    drop(lock);
    stats.appended_bytes = end - snap.id.len;
    stats.len_at_swap = temp_file.metadata().map_err(io_err("stat"))?.len();
    Ok(stats)
}

/// Runs the application's check of the swapped WAL; on failure restores the backup,
/// keeping (online) every line appended since the swap.
fn check_or_rollback(
    req: &Request,
    backup: &backup::Backup,
    entry: &mut journal::Journal,
    online: Option<&OnlineStats>,
    clock: &mut Clock,
) -> Result<(), PipelineError> {
    let wal = req.wal.as_path();
    let Some(check) = req.check else {
        return Ok(());
    };
    let Err(detail) = clock.stage(Stage::Check, || check(wal, &backup.path)) else {
        return Ok(());
    };
    entry.phase = journal::Phase::RollingBack;
    entry.len_at_swap = online.map(|s| s.len_at_swap);
    journal::write(wal, entry)?;
    clock.stage(Stage::Rollback, || match (online, req.online) {
        (Some(stats), Some(o)) => {
            let _lock =
                online::acquire_writer_lock(wal, o.lock_timeout.max(ROLLBACK_LOCK_TIMEOUT))?;
            rollback::restore_keeping(&backup.path, wal, Stage::Rollback, Some(stats.len_at_swap))
        }
        _ => rollback::restore_copy(&backup.path, wal, Stage::Rollback),
    })?;
    Err(PipelineError::CheckFailed {
        path: wal.into(),
        backup: backup.path.clone(),
        detail,
    })
}

/// A safe point: stop here if cancellation was requested.
fn checkpoint(req: &Request, next: Stage) -> Result<(), PipelineError> {
    match req.cancel {
        Some(flag) if flag.load(Ordering::SeqCst) => Err(PipelineError::Cancelled {
            path: req.wal.clone(),
            stage: next,
        }),
        _ => Ok(()),
    }
}

/// Offline mode has no writers: if the WAL changed since it was read, someone is writing.
fn ensure_unchanged(wal: &Path, id: &FileId) -> Result<(), PipelineError> {
    let (_, now) = open_wal(wal)?;
    if now == *id {
        return Ok(());
    }
    let what = if !now.same_inode(id) {
        "replaced by another file".to_string()
    } else if now.len < id.len {
        format!("truncated from {} to {} bytes", id.len, now.len)
    } else {
        format!("{} bytes appended", now.len.saturating_sub(id.len))
    };
    Err(PipelineError::Changed {
        path: wal.into(),
        what,
    })
}

/// Refuses to start when the new file (and a copied backup) cannot fit.
fn precheck_space(wal: &Path, snap: &Snapshot, backup_dir: &Path) -> Result<(), PipelineError> {
    let dir = parent_dir(wal);
    let needed = snap.plan.survivor_bytes()
        + (snap.id.len - snap.plan.scanned_len)
        + compact::SPACE_MARGIN_BYTES;
    let available =
        available_bytes(&dir).map_err(PipelineError::io(Stage::Compact, "statvfs", &dir))?;
    fail::fail_point!("precheck::no_space", |_| Err(PipelineError::NoSpace {
        stage: Stage::Compact,
        path: dir.clone(),
        needed,
        available: 0
    }));
    if available < needed {
        return Err(PipelineError::NoSpace {
            stage: Stage::Compact,
            path: dir,
            needed,
            available,
        });
    }
    let same_fs = std::fs::metadata(backup_dir)
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m) == snap.id.dev)
        .unwrap_or(true);
    if !same_fs {
        let available = available_bytes(backup_dir).map_err(PipelineError::io(
            Stage::Backup,
            "statvfs",
            backup_dir,
        ))?;
        let needed = snap.id.len + compact::SPACE_MARGIN_BYTES;
        if available < needed {
            return Err(PipelineError::NoSpace {
                stage: Stage::Backup,
                path: backup_dir.into(),
                needed,
                available,
            });
        }
    }
    Ok(())
}
