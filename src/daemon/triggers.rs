//! Whether to compact now: a pure function of the WAL's figures, its policy, its persisted
//! state, any explicit request and the clock. No I/O, so every rule is unit-tested here.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::state::{LastOutcome, WalState};
use super::stats::WalStats;
use crate::policy::Triggers;

/// First backoff delay after a failed run.
const BACKOFF_BASE: Duration = Duration::from_secs(60);
/// Backoff never waits longer than this, so a fixed problem is retried within the hour.
const BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// After a skipped attempt (writer holds the WAL, hook refused, lock busy) wait at least
/// this long before retrying, even with `min_interval = 0`: no retry storm on every append.
pub const SKIP_RETRY: Duration = Duration::from_secs(10);

/// An explicit request, as opposed to a threshold the figures crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// A cron schedule fired: bypasses backoff, not the guards.
    Scheduled,
    /// An alert with the "compact" action asked: subject to every guard.
    Alert,
}

/// Why a compaction is wanted; several can hold at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    Size { size: u64, max: u64 },
    Commits { since: u64, max: u64 },
    Ratio { ratio: f64, min: f64 },
    FreeDisk { percent: f64, min: f64 },
    Requested(Request),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Size { size, max } => write!(f, "size {size} > {max}"),
            Reason::Commits { since, max } => write!(f, "commits_since {since} >= {max}"),
            Reason::Ratio { ratio, min } => write!(f, "reclaimable_ratio {ratio:.3} >= {min}"),
            Reason::FreeDisk { percent, min } => write!(f, "free_disk {percent:.1}% < {min}%"),
            Reason::Requested(Request::Scheduled) => f.write_str("scheduled"),
            Reason::Requested(Request::Alert) => f.write_str("alert"),
        }
    }
}

/// Joins reasons for the `trigger` log field.
pub fn describe(reasons: &[Reason]) -> String {
    let parts: Vec<String> = reasons.iter().map(ToString::to_string).collect();
    parts.join(", ")
}

/// The verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No trigger holds.
    Idle,
    /// Run the pipeline now.
    Compact(Vec<Reason>),
    /// Triggers hold but too little is reclaimable: compacting would loop for nothing.
    Blocked {
        reasons: Vec<Reason>,
        reclaimable: u64,
        min: u64,
    },
    /// Triggers hold; `min_interval` (or the skip retry delay) has not passed.
    Cooldown {
        reasons: Vec<Reason>,
        until: DateTime<Utc>,
    },
    /// Triggers hold; backing off after consecutive failures.
    Backoff {
        reasons: Vec<Reason>,
        until: DateTime<Utc>,
    },
}

/// The backoff delay after `failures` failed runs in a row: 1 min doubling, 60 min cap.
pub fn backoff_delay(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
    BACKOFF_BASE.saturating_mul(factor).min(BACKOFF_CAP)
}

/// Thresholds the figures cross, in a fixed order.
pub fn threshold_reasons(stats: &WalStats, t: &Triggers, commit_base: u64) -> Vec<Reason> {
    let mut reasons = Vec::new();
    if let Some(max) = t.max_size_bytes.filter(|&m| stats.size_bytes > m) {
        reasons.push(Reason::Size {
            size: stats.size_bytes,
            max,
        });
    }
    let since = stats.commit_lines.saturating_sub(commit_base);
    if let Some(max) = t.max_commits_since_compaction.filter(|&m| since >= m) {
        reasons.push(Reason::Commits { since, max });
    }
    let ratio = stats.reclaimable_ratio();
    if let Some(min) = t
        .min_reclaimable_ratio
        .filter(|&m| stats.size_bytes > 0 && ratio >= m)
    {
        reasons.push(Reason::Ratio { ratio, min });
    }
    if let (Some(min), Some(percent)) = (t.min_free_disk_percent, stats.free_percent)
        && percent < min
    {
        reasons.push(Reason::FreeDisk { percent, min });
    }
    reasons
}

/// Decides whether to compact now. Order: any reason at all → enough to reclaim →
/// cooldown → backoff (a scheduled request skips backoff).
pub fn decide(
    stats: &WalStats,
    triggers: &Triggers,
    state: &WalState,
    request: Option<Request>,
    now: DateTime<Utc>,
) -> Decision {
    let mut reasons = threshold_reasons(stats, triggers, state.commit_base);
    reasons.extend(request.map(Reason::Requested));
    if reasons.is_empty() {
        return Decision::Idle;
    }
    let min = triggers.min_reclaimable_bytes;
    if stats.reclaimable_bytes == 0 || stats.reclaimable_bytes < min {
        return Decision::Blocked {
            reasons,
            reclaimable: stats.reclaimable_bytes,
            min,
        };
    }
    if let Some(until) = cooldown_until(triggers, state, now).filter(|u| now < *u) {
        return Decision::Cooldown { reasons, until };
    }
    if request != Some(Request::Scheduled)
        && let Some(until) = backoff_until(state, now).filter(|u| now < *u)
    {
        return Decision::Backoff { reasons, until };
    }
    Decision::Compact(reasons)
}

fn cooldown_until(t: &Triggers, state: &WalState, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let wait = match state.last_outcome {
        Some(LastOutcome::Skipped | LastOutcome::NothingToDo) => t.min_interval.max(SKIP_RETRY),
        _ => t.min_interval,
    };
    hold_until(state.last_run?, wait, now)
}

fn backoff_until(state: &WalState, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    hold_until(
        state.last_run?,
        backoff_delay(state.consecutive_failures),
        now,
    )
}

/// The end of a cooldown or backoff of `wait` after the last run, judged by the wall clock.
/// Saturates instead of overflowing: a huge `min_interval_secs` holds (it used to panic, or
/// drop the cooldown when it did not fit a `TimeDelta`).
/// A last run more than `wait` in the future means the clock jumped backward: how long ago
/// the run really was is unknown, and waiting for the clock to catch up could block for
/// years, so the hold is over (the run that follows records the new time). A smaller
/// backward step keeps `last + wait`, which is at most `2 * wait` away.
fn hold_until(last: DateTime<Utc>, wait: Duration, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if wait.is_zero() {
        return None;
    }
    let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    let latest = now
        .checked_add_signed(wait)
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if last > latest {
        return None;
    }
    Some(
        last.checked_add_signed(wait)
            .unwrap_or(DateTime::<Utc>::MAX_UTC),
    )
}

#[cfg(test)]
mod tests;
