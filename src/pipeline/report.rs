//! What a run reports: its stages and their timing, its outcome, and the [`Report`] the CLI
//! prints, the daemon logs and the metrics count.

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::{OnlineStats, Request, Snapshot, backup};
use crate::rules::CorruptLines;

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
    Quarantine,
    Swap,
    Check,
    Rollback,
    Journal,
    Prune,
    /// Writing, reading back or restoring an archive of expired transactions.
    Archive,
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
            Stage::Quarantine => "quarantine",
            Stage::Swap => "swap",
            Stage::Check => "check",
            Stage::Rollback => "rollback",
            Stage::Journal => "journal",
            Stage::Prune => "prune",
            Stage::Archive => "archive",
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

/// Time spent in one stage.
#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    pub stage: Stage,
    pub duration_ms: f64,
}

/// What a run did, for the CLI's output, logs and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The WAL as the caller named it.
    pub wal: PathBuf,
    /// The file actually compacted: `wal`, or the real file when `wal` is a symlink.
    pub compacted: PathBuf,
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
    pub recovered: Option<super::journal::Recovered>,
    pub duration_ms: f64,
    pub stages: Vec<StageTime>,
    /// Online and lease modes: catch-up and writer-lock (or lease) figures.
    pub online: Option<OnlineStats>,
    /// Lease mode (and offline under a lease): how long writers waited, late lines merged.
    pub lease: Option<super::LeaseStats>,
    /// Corrupt complete lines in the WAL as read (reported whatever the policy).
    pub corrupt_lines: u64,
    /// The policy applied to them.
    pub corrupt_lines_policy: CorruptLines,
    /// Corrupt lines this run moved to the quarantine file.
    pub quarantined_lines: u64,
    /// The quarantine file, when this run appended to it.
    pub quarantine: Option<PathBuf>,
    /// Retention: what expired (or, before the swap, would), when anything did.
    pub expired: Option<crate::rules::Expiry>,
    /// The archive the expired transactions' lines went to.
    pub archive: Option<PathBuf>,
}

/// Timing of stages in a run.
pub(super) struct Clock {
    start: Instant,
    stages: Vec<StageTime>,
}

impl Clock {
    pub(super) fn start() -> Clock {
        Clock {
            start: Instant::now(),
            stages: Vec::new(),
        }
    }

    pub(super) fn stage<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.stages.push(StageTime {
            stage,
            duration_ms: ms(t),
        });
        out
    }

    /// Records a stage that ran on a thread of its own for `duration_ms` (it overlapped the
    /// stages recorded around it).
    pub(super) fn record(&mut self, stage: Stage, duration_ms: f64) {
        self.stages.push(StageTime { stage, duration_ms });
    }
}

/// Milliseconds since `t`, as stage timings report them.
pub(super) fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// The report of a run that ended with `outcome` (nothing reclaimed unless it succeeded).
pub(super) fn report(
    req: &Request,
    snap: &Snapshot,
    clock: &Clock,
    outcome: Outcome,
    backup: Option<backup::Backup>,
    recovered: Option<super::journal::Recovered>,
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
        compacted: req.wal.clone(),
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
        digest: snap.replay.get().digest_hex(),
        recovered,
        duration_ms: ms(clock.start),
        stages: clock.stages.clone(),
        online: None,
        lease: None,
        corrupt_lines: counts.corrupt,
        corrupt_lines_policy: req.corrupt_lines,
        quarantined_lines: if changed {
            snap.plan.set_aside.len() as u64
        } else {
            0
        },
        quarantine: None,
        expired: (changed && snap.plan.expiry.transactions > 0).then_some(snap.plan.expiry),
        archive: None,
    }
}
