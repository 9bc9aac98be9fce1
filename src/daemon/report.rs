//! `walcompactd status WAL --policy P`: what the daemon would see and decide for one WAL.
//!
//! When the WAL is one of the policy's `[[wal]]` entries (matched by resolved path), the
//! plain [`Status`] is extended with the daemon's persisted state, the backups, the free disk
//! ratio, the pure [`triggers::decide`] verdict for this moment, and every applicable alert
//! rule evaluated once. One look cannot judge `for_secs`: an alert reports whether its
//! condition holds and whether it would fire on this look (it holds and `for_secs` is 0).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::observe;
use super::state::{Loaded, StateFile, WalState};
use super::stats::WalStats;
use super::supervisor::WalStatus;
use super::triggers::{self, Decision};
use crate::commands::{self, Status};
use crate::fsutil::{free_ratio, parent_dir};
use crate::pipeline::retain::RetentionRequest;
use crate::pipeline::{PipelineError, backup};
use crate::policy::{self, Policy, PolicySource, WalPolicy};
use crate::rules::Counts;

/// `status --json`, plus `policy` when the WAL is in the policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyStatus {
    #[serde(flatten)]
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<WalReport>,
}

/// The daemon's view of one WAL of the policy.
#[derive(Debug, Clone, Serialize)]
pub struct WalReport {
    /// The `[[wal]]` name (the metrics' `wal` label).
    pub name: String,
    /// Where the policy came from.
    pub source: String,
    pub mode: String,
    pub state_file: PathBuf,
    /// `found`, `fresh` (no state file yet) or `rebuilt: <why>`.
    pub state_file_status: String,
    /// Last run, last outcome, last success, consecutive failures, commit base.
    pub state: WalState,
    pub commits_since_compaction: u64,
    pub seconds_since_last_success: Option<f64>,
    /// Unix time of the last success (0 if none), as the metric reports it.
    pub last_success_timestamp_seconds: f64,
    pub backups: Option<Backups>,
    /// Free space on the WAL's filesystem, 0..=1.
    pub disk_free_ratio: Option<f64>,
    pub decision: DecisionReport,
    pub alerts: Vec<AlertReport>,
    /// With `[wal.offsite]`: where copies go and what still waits for one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsite: Option<OffsiteReport>,
}

/// The WAL's off-host copies as the queue records them.
#[derive(Debug, Clone, Serialize)]
pub struct OffsiteReport {
    pub target: String,
    pub pending: Vec<crate::offsite::queue::Pending>,
    pub pending_bytes: u64,
    pub last_success: Option<DateTime<Utc>>,
    /// The queue could not be read (then nothing is pruned locally).
    pub error: Option<String>,
}

/// The offsite report and the board's figures of `w`, if it has `[wal.offsite]`.
fn offsite_report(
    w: &WalPolicy,
    state_dir: &Path,
) -> Option<(OffsiteReport, super::offsite::OffsiteStatus)> {
    let o = w.offsite.as_ref()?;
    let target = o
        .target(&w.name)
        .map_or_else(|e| format!("(invalid: {e})"), |t| t.to_string());
    let (queue, error) = match crate::offsite::cli::queue_file(w, state_dir).load() {
        Ok(q) => (q, None),
        Err(e) => (Default::default(), Some(e.to_string())),
    };
    let status = super::offsite::OffsiteStatus {
        pending: queue.pending.len(),
        pending_bytes: queue.pending_bytes(),
        oldest_pending: queue.oldest_pending(),
        last_success: queue.last_success,
    };
    let report = OffsiteReport {
        target,
        pending_bytes: queue.pending_bytes(),
        last_success: queue.last_success,
        pending: queue.pending,
        error,
    };
    Some((report, status))
}

/// Backups kept for the WAL.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Backups {
    pub count: u64,
    pub bytes: u64,
}

/// [`triggers::decide`] for this moment, without any request.
#[derive(Debug, Clone, Serialize)]
pub struct DecisionReport {
    /// `idle`, `compact`, `blocked`, `cooldown` or `backoff`.
    pub verdict: &'static str,
    pub would_compact: bool,
    /// The triggers that hold, as the daemon logs them.
    pub triggers: Vec<String>,
    /// Until when cooldown or backoff hold the triggers back (RFC 3339).
    pub until: Option<String>,
    pub explanation: String,
}

/// One alert rule evaluated once.
#[derive(Debug, Clone, Serialize)]
pub struct AlertReport {
    pub name: String,
    pub severity: &'static str,
    pub metric: &'static str,
    /// `above 10` or `below 5`.
    pub threshold: String,
    /// The metric's value now; `null` when unknown (e.g. never succeeded).
    pub value: Option<f64>,
    pub for_secs: u64,
    pub condition_holds: bool,
    /// The condition holds and `for_secs` is 0: the daemon fires it on its first look.
    /// With `for_secs` > 0 it fires only if the condition keeps holding that long.
    pub would_fire: bool,
    pub actions: Vec<&'static str>,
}

/// The policy entry whose resolved path is `wal` (made absolute and normalized like the
/// policy's paths; symlinks are compared by canonical path as a fallback).
pub fn find_wal<'a>(policy: &'a Policy, wal: &Path) -> Option<&'a WalPolicy> {
    let abs = if wal.is_absolute() {
        wal.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(wal)
    };
    let abs = policy::normalize(&abs);
    let canonical = std::fs::canonicalize(&abs).ok();
    policy.wals.iter().find(|w| {
        w.resolved_path == abs
            || canonical
                .as_ref()
                .is_some_and(|c| std::fs::canonicalize(&w.resolved_path).ok().as_ref() == Some(c))
    })
}

/// `status` of `wal`, extended with the daemon's view when `policy` has it. What would
/// expire is shown for `retention` (the command line's), else for the WAL's
/// `[wal.retention]`; its bytes count as reclaimable, as the daemon's triggers count them.
pub fn status_with_policy(
    wal: &Path,
    policy: Option<(&Policy, &PolicySource)>,
    retention: Option<&RetentionRequest>,
) -> Result<PolicyStatus, PipelineError> {
    let configured = policy.and_then(|(p, _)| find_wal(p, wal));
    let corrupt_lines = configured.map(|w| w.corrupt_lines).unwrap_or_default();
    let from_policy = configured.and_then(WalPolicy::retention_request);
    let retention = retention.or(from_policy.as_ref());
    let now = Utc::now();
    let status = commands::status_at(wal, corrupt_lines, retention, now)?;
    let report =
        policy.and_then(|(p, source)| configured.map(|w| wal_report(&status, p, w, source, now)));
    Ok(PolicyStatus {
        status,
        policy: report,
    })
}

fn wal_report(
    status: &Status,
    policy: &Policy,
    w: &WalPolicy,
    source: &PolicySource,
    now: DateTime<Utc>,
) -> WalReport {
    let file = StateFile::new(&policy.daemon.state_dir, &w.name);
    let (state, state_file_status) = match file.load() {
        Loaded::Found(s) => (s, "found".to_string()),
        Loaded::Fresh(s) => (s, "fresh".to_string()),
        Loaded::Rebuilt(s, why) => (s, format!("rebuilt: {why}")),
    };
    let disk_free_ratio = free_ratio(&parent_dir(&w.resolved_path)).ok();
    let stats = stats_of(status, disk_free_ratio);
    // Backups are named after and (by default) beside the real file behind a symlink.
    let real = crate::pipeline::links::real_path_or_given(&w.resolved_path);
    let dir = backup::backup_dir(&real, w.backup_dir.as_deref());
    let backups = match backup::list(&real, &dir) {
        Ok(list) => Some(Backups {
            count: list.len() as u64,
            bytes: list.iter().map(|b| b.bytes).sum(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Backups { count: 0, bytes: 0 }),
        Err(_) => None,
    };
    let decision = decision_report(
        &triggers::decide(&stats, &w.triggers, &state, None, now),
        &state,
    );
    let offsite = offsite_report(w, &policy.daemon.state_dir);
    let board = WalStatus {
        stats,
        state: state.clone(),
        offsite: offsite.as_ref().map(|(_, s)| s.clone()),
        ..WalStatus::default()
    };
    let values = observe::alert_values(&board, now, w.triggers.min_reclaimable_bytes);
    let alerts = policy
        .alerts
        .iter()
        .filter(|r| r.wal.as_deref().is_none_or(|n| n == w.name))
        .map(|r| {
            let value = values.value(r.metric).filter(|v| !v.is_nan());
            let holds = value.is_some_and(|v| r.threshold.is_breached(v));
            AlertReport {
                name: r.name.clone(),
                severity: r.severity.as_str(),
                metric: r.metric.as_str(),
                threshold: match r.threshold {
                    policy::Threshold::Above(v) => format!("above {v}"),
                    policy::Threshold::Below(v) => format!("below {v}"),
                },
                value,
                for_secs: r.for_duration.as_secs(),
                condition_holds: holds,
                would_fire: holds && r.for_duration.is_zero(),
                actions: r.actions.iter().map(|a| a.as_str()).collect(),
            }
        })
        .collect();
    WalReport {
        name: w.name.clone(),
        source: source.to_string(),
        mode: w.mode.to_string(),
        state_file: file.path().to_path_buf(),
        state_file_status,
        commits_since_compaction: stats.commit_lines.saturating_sub(state.commit_base),
        seconds_since_last_success: values.seconds_since_last_success,
        last_success_timestamp_seconds: state
            .last_success
            .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0),
        state,
        backups,
        disk_free_ratio,
        decision,
        alerts,
        offsite: offsite.map(|(r, _)| r),
    }
}

/// The offsite lines of `status`: the target, the last copy, each pending file.
fn render_offsite(o: &mut String, off: &OffsiteReport) {
    let _ = writeln!(
        o,
        "offsite        {}: {} pending ({} bytes), last copy {}",
        off.target,
        off.pending.len(),
        off.pending_bytes,
        off.last_success
            .map_or("never".to_string(), |t| t.to_rfc3339())
    );
    if let Some(e) = &off.error {
        let _ = writeln!(o, "offsite        queue unreadable: {e}");
    }
    for p in &off.pending {
        let retry = p
            .next_attempt
            .map_or(String::new(), |t| format!(", next try {}", t.to_rfc3339()));
        let _ = writeln!(
            o,
            "  pending      {} {} ({} bytes, queued {}, {} failed attempts{retry})",
            p.kind.as_str(),
            p.path.display(),
            p.bytes,
            p.queued_at.to_rfc3339(),
            p.attempts
        );
    }
}

/// The supervisor's figures, from a full status pass.
fn stats_of(s: &Status, free: Option<f64>) -> WalStats {
    WalStats {
        size_bytes: s.size_bytes,
        reclaimable_bytes: s.reclaimable_bytes,
        expirable_bytes: s.expirable.as_ref().map_or(0, |e| e.bytes),
        commit_lines: s.entries.commit,
        torn_tail_bytes: s.torn_tail_bytes,
        corrupt_lines: s.corrupt_lines,
        free_percent: free.map(|r| r * 100.0),
        entries: Counts {
            lines: s.lines,
            prepare: s.entries.prepare,
            commit: s.entries.commit,
            abort: s.entries.abort,
            blank: s.blank_lines,
            unrecognized: s.unrecognized_lines,
            corrupt: s.corrupt_lines,
        },
        transactions: s.transactions,
    }
}

fn decision_report(d: &Decision, state: &WalState) -> DecisionReport {
    let list = |r: &[triggers::Reason]| r.iter().map(ToString::to_string).collect::<Vec<_>>();
    let (verdict, triggers, until, explanation) = match d {
        Decision::Idle => (
            "idle",
            vec![],
            None,
            "no trigger holds; would not compact".to_string(),
        ),
        Decision::Compact(r) => (
            "compact",
            list(r),
            None,
            format!("would compact now ({})", triggers::describe(r)),
        ),
        Decision::Blocked {
            reasons,
            reclaimable,
            min,
        } => (
            "blocked",
            list(reasons),
            None,
            format!(
                "triggers hold ({}) but too little is reclaimable ({reclaimable} bytes, minimum {min}); would not compact",
                triggers::describe(reasons)
            ),
        ),
        Decision::Cooldown { reasons, until } => (
            "cooldown",
            list(reasons),
            Some(until.to_rfc3339()),
            format!(
                "triggers hold ({}) but the cooldown after the last run ({}) lasts until {}; would compact then",
                triggers::describe(reasons),
                state.last_outcome.map_or("none", |o| o.as_str()),
                until.to_rfc3339()
            ),
        ),
        Decision::Backoff { reasons, until } => (
            "backoff",
            list(reasons),
            Some(until.to_rfc3339()),
            format!(
                "triggers hold ({}) but backing off after {} consecutive failures until {}; would compact then",
                triggers::describe(reasons),
                state.consecutive_failures,
                until.to_rfc3339()
            ),
        ),
    };
    DecisionReport {
        verdict,
        would_compact: verdict == "compact",
        triggers,
        until,
        explanation,
    }
}

/// Human rendering: today's status, then the daemon's view if any.
pub fn render(p: &PolicyStatus) -> String {
    let mut o = crate::output::status(&p.status);
    let Some(r) = &p.policy else {
        return o;
    };
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("unknown".to_string(), f);
    let _ = writeln!(
        o,
        "\npolicy         wal {:?} ({} mode) from {}",
        r.name, r.mode, r.source
    );
    let _ = writeln!(
        o,
        "state file     {} ({})",
        r.state_file.display(),
        r.state_file_status
    );
    let s = &r.state;
    let _ = writeln!(
        o,
        "last run       {} ({})",
        s.last_run.map_or("never".to_string(), |t| t.to_rfc3339()),
        s.last_outcome.map_or("none", |o| o.as_str())
    );
    let _ = writeln!(
        o,
        "last success   {} ({})",
        s.last_success
            .map_or("never".to_string(), |t| t.to_rfc3339()),
        opt(r.seconds_since_last_success, &|v| format!("{v:.0} s ago"))
    );
    let _ = writeln!(o, "failures       {} in a row", s.consecutive_failures);
    let _ = writeln!(
        o,
        "commits since  {} (since the last compaction)",
        r.commits_since_compaction
    );
    let _ = writeln!(
        o,
        "backups        {}",
        r.backups.map_or("unknown".to_string(), |b| format!(
            "{} ({} bytes)",
            b.count, b.bytes
        ))
    );
    let _ = writeln!(
        o,
        "disk free      {}",
        opt(r.disk_free_ratio, &|v| format!("{:.1}%", v * 100.0))
    );
    let _ = writeln!(
        o,
        "decision       {}: {}",
        r.decision.verdict, r.decision.explanation
    );
    if let Some(off) = &r.offsite {
        render_offsite(&mut o, off);
    }
    if r.alerts.is_empty() {
        let _ = writeln!(o, "alerts         no rule applies");
    }
    for a in &r.alerts {
        let state = match (a.condition_holds, a.would_fire) {
            (true, true) => "would fire".to_string(),
            (true, false) => format!("condition holds (fires after {} s)", a.for_secs),
            (false, _) => "ok".to_string(),
        };
        let _ = writeln!(
            o,
            "alert          {} [{}]: {} = {} ({}): {state}",
            a.name,
            a.severity,
            a.metric,
            opt(a.value, &|v| format!("{v}")),
            a.threshold
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::state::LastOutcome;

    #[test]
    fn default_policy_alerts_fire_on_a_large_wal() {
        let p = policy::parse(
            policy::EMBEDDED_POLICY,
            "embedded",
            &policy::ParseEnv::bare("/tmp", Utc::now()),
        )
        .unwrap();
        let status = WalStatus {
            stats: WalStats {
                size_bytes: 60_000_000,
                reclaimable_bytes: 40_000_000,
                ..WalStats::default()
            },
            ..WalStatus::default()
        };
        let v = observe::alert_values(&status, Utc::now(), 65536);
        let mut states = crate::alerts::AlertStates::new();
        let edges =
            crate::alerts::evaluate(&p.alerts, "w", &v, &mut states, std::time::Instant::now());
        let names: Vec<&str> = edges.iter().map(|t| t.rule().name.as_str()).collect();
        assert_eq!(
            names,
            [
                "WAL Size Warning",
                "WAL Size Critical",
                "Reclaimable Ratio High"
            ]
        );
        assert!(edges[1].requests_compaction() && !edges[0].requests_compaction());
    }

    #[test]
    fn decision_explains_cooldown() {
        let now: DateTime<Utc> = "2025-01-01T00:01:00Z".parse().unwrap();
        let mut state = WalState::default();
        state.record(
            LastOutcome::Success,
            "2025-01-01T00:00:00Z".parse().unwrap(),
        );
        let d = Decision::Cooldown {
            reasons: vec![triggers::Reason::Size { size: 10, max: 5 }],
            until: "2025-01-01T00:05:00Z".parse().unwrap(),
        };
        let r = decision_report(&d, &state);
        assert_eq!(r.verdict, "cooldown");
        assert!(!r.would_compact);
        assert_eq!(r.triggers, ["size 10 > 5"]);
        assert!(r.explanation.contains("cooldown"), "{}", r.explanation);
        let _ = now;
    }
}
