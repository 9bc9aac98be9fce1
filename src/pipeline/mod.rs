//! The compaction pipeline: backup → compact → verify → swap (→ rollback), one module per
//! stage, sequenced by [`run`]. Knows nothing of the daemon: callers pass a [`Request`] and
//! get a [`Report`] or a [`PipelineError`] naming the stage.
//!
//! At every moment the WAL's path holds a complete WAL that replays to the original state:
//! the original until the rename, the verified compacted file after it. Everything else
//! (temp file, journal) is beside it under names [`journal::recover`] recognizes.

pub mod backup;
pub mod compact;
mod error;
pub mod journal;
pub mod lock;
pub mod rollback;
mod snapshot;
pub mod swap;
pub mod verify;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;

pub use error::{PipelineError, exit_code};
pub use snapshot::{Snapshot, open_wal};

use crate::fsutil::{FileId, available_bytes, parent_dir, sibling};

/// A step of a run; logs and metrics name stages with these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Analyze,
    Lock,
    Recover,
    Backup,
    Compact,
    Verify,
    Swap,
    Check,
    Rollback,
    Journal,
    Prune,
}

impl Stage {
    /// Lowercase name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Analyze => "analyze",
            Stage::Lock => "lock",
            Stage::Recover => "recover",
            Stage::Backup => "backup",
            Stage::Compact => "compact",
            Stage::Verify => "verify",
            Stage::Swap => "swap",
            Stage::Check => "check",
            Stage::Rollback => "rollback",
            Stage::Journal => "journal",
            Stage::Prune => "prune",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a run ended; the metric label `outcome` uses [`Outcome::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The WAL was replaced by its verified compaction.
    Success,
    /// Nothing to reclaim: nothing was touched.
    Skipped,
    /// `--dry-run`: reported, nothing touched.
    DryRun,
}

impl Outcome {
    /// Label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Skipped => "skipped",
            Outcome::DryRun => "dry_run",
        }
    }
}

/// A post-swap check of the new WAL (the application's own verify hook): `Err` rolls back.
pub type CheckFn<'a> = &'a (dyn Fn(&Path, &Path) -> Result<(), String> + Sync);
/// Progress callback: stage, bytes done, bytes in all.
pub type ProgressFn<'a> = &'a (dyn Fn(Stage, u64, u64) + Sync);

/// What to compact and how.
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
        }
    }
}

/// Time spent in one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    pub stage: Stage,
    pub duration_ms: f64,
}

/// What a run did, for the CLI's output, logs and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub wal: PathBuf,
    pub outcome: Outcome,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub reclaimed_bytes: u64,
    pub lines_before: u64,
    pub lines_after: u64,
    pub backup: Option<PathBuf>,
    /// True when the backup is a hard link to the original inode.
    pub backup_linked: Option<bool>,
    /// Replay digest shared by the original and the compacted WAL.
    pub digest: String,
    /// What recovery of an earlier interrupted run did, if anything.
    pub recovered: Option<String>,
    pub duration_ms: f64,
    pub stages: Vec<StageTime>,
}

/// Timing of stages in a run.
struct Clock {
    start: Instant,
    stages: Vec<StageTime>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            start: Instant::now(),
            stages: Vec::new(),
        }
    }

    fn stage<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.stages.push(StageTime {
            stage,
            duration_ms: ms(t),
        });
        out
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Runs backup → compact → verify → swap (→ rollback) on one WAL.
pub fn run(req: &Request) -> Result<Report, PipelineError> {
    let mut clock = Clock::start();
    let mut snap = clock.stage(Stage::Analyze, || Snapshot::take(&req.wal, req.progress))?;
    let backup_dir = backup::backup_dir(&req.wal, req.backup_dir.as_deref());
    backup::check_dir(&backup_dir)?;
    if snap.plan.reclaimable_bytes() == 0 && !journal::journal_path(&req.wal).exists() {
        return Ok(report(req, &snap, &clock, Outcome::Skipped, None, None));
    }
    let _lock = clock.stage(Stage::Lock, || lock::acquire(&req.wal, &req.who))?;
    let recovered = clock.stage(Stage::Recover, || journal::recover(&req.wal))?;
    if open_wal(&req.wal)?.1 != snap.id {
        // Recovery or another compaction changed the WAL since it was analyzed.
        snap = clock.stage(Stage::Analyze, || Snapshot::take(&req.wal, req.progress))?;
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
    let backup = compact_and_swap(req, &snap, &backup_dir, &mut clock)?;
    Ok(report(
        req,
        &snap,
        &clock,
        Outcome::Success,
        Some(backup),
        recovered,
    ))
}

/// The stages that change files, each preceded by its journal entry.
fn compact_and_swap(
    req: &Request,
    snap: &Snapshot,
    backup_dir: &Path,
    clock: &mut Clock,
) -> Result<backup::Backup, PipelineError> {
    let wal = req.wal.as_path();
    checkpoint(req, Stage::Backup)?;
    precheck_space(wal, snap, backup_dir)?;
    let backup = clock.stage(Stage::Backup, || {
        backup::create(wal, &snap.file, backup_dir, chrono::Utc::now())
    })?;
    let temp_path = sibling(wal, journal::TEMP_SUFFIX);
    let mut entry = journal::Journal {
        phase: journal::Phase::Writing,
        temp: temp_path.clone(),
        backup: Some(backup.path.clone()),
        original_digest: snap.replay.digest_hex(),
        pid: std::process::id(),
    };
    journal::write(wal, &entry)?;
    let result = write_verify_swap(req, snap, &temp_path, &backup, &mut entry, clock);
    if result.is_err() {
        // The WAL is intact (or rolled back); the temp was removed by its guard.
        let _ = journal::clear(wal);
    }
    result.map(|()| backup)
}

fn write_verify_swap(
    req: &Request,
    snap: &Snapshot,
    temp_path: &Path,
    backup: &backup::Backup,
    entry: &mut journal::Journal,
    clock: &mut Clock,
) -> Result<(), PipelineError> {
    let wal = req.wal.as_path();
    checkpoint(req, Stage::Compact)?;
    let mut temp = clock.stage(Stage::Compact, || {
        compact::write_temp(&snap.file, &snap.plan, snap.id.len, temp_path, &snap.meta)
    })?;
    let expected_len = snap.plan.survivor_bytes() + (snap.id.len - snap.plan.scanned_len);
    clock.stage(Stage::Verify, || {
        verify::verify_temp(&temp.path, wal, &snap.replay, expected_len)
    })?;
    ensure_unchanged(wal, &snap.id)?;
    checkpoint(req, Stage::Swap)?;
    entry.phase = journal::Phase::Swapping;
    journal::write(wal, entry)?;
    clock.stage(Stage::Swap, || swap::swap(&temp.path, wal))?;
    temp.keep();
    if let Some(check) = req.check
        && let Err(detail) = clock.stage(Stage::Check, || check(wal, &backup.path))
    {
        entry.phase = journal::Phase::RollingBack;
        journal::write(wal, entry)?;
        clock.stage(Stage::Rollback, || {
            rollback::restore_copy(&backup.path, wal, Stage::Rollback)
        })?;
        return Err(PipelineError::CheckFailed {
            path: wal.into(),
            backup: backup.path.clone(),
            detail,
        });
    }
    journal::clear(wal)
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

fn report(
    req: &Request,
    snap: &Snapshot,
    clock: &Clock,
    outcome: Outcome,
    backup: Option<backup::Backup>,
    recovered: Option<String>,
) -> Report {
    let changed = outcome == Outcome::Success;
    let reclaimed = if changed {
        snap.plan.reclaimable_bytes()
    } else {
        0
    };
    let counts = snap.counts;
    Report {
        wal: req.wal.clone(),
        outcome,
        bytes_before: snap.id.len,
        bytes_after: snap.id.len - reclaimed,
        reclaimed_bytes: reclaimed,
        lines_before: counts.lines,
        lines_after: if changed {
            snap.plan.survivor_lines
        } else {
            counts.lines
        },
        backup_linked: backup.as_ref().map(|b| b.linked),
        backup: backup.map(|b| b.path),
        digest: snap.replay.digest_hex(),
        recovered,
        duration_ms: ms(clock.start),
        stages: clock.stages.clone(),
    }
}
