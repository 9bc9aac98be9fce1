//! Alert rules: a pure evaluation ([`evaluate`]) that turns per-WAL figures into edges
//! ([`Transition`]), and the edge actions the daemon runs for them ([`log_transition`],
//! [`run_command`]).
//!
//! An alert is per rule × WAL. Its condition must hold continuously for the rule's
//! `for_duration` (pending) before it fires; it fires once, stays firing while the condition
//! holds, and resolves once when it stops holding. Evaluations in between produce nothing.
//!
//! A value the daemon does not know (`None`, or NaN) is not a breach: it never starts or
//! advances a pending alert (it resets one), and it does not resolve a firing alert either —
//! "we cannot tell" is not "it is fine", and a transient read error must not make alerts flap.
//!
//! The `compact` action is the daemon's: it goes through the WAL's supervisor like any other
//! trigger. [`Transition::requests_compaction`] says when to ask.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::policy::{AlertAction, AlertMetric, AlertRule, Severity};
use crate::process::{self, Spec, Stdout};

/// How long an alert command may run before its process group is killed.
pub const ALERT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The per-WAL figures an alert can watch. `None` means unknown (not measured yet, the
/// measurement failed, or — for the success ages — never succeeded).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AlertValues {
    /// WAL size in bytes; also gives `wal_size_mb` (bytes / 1e6).
    pub wal_size_bytes: Option<u64>,
    pub wal_reclaimable_bytes: Option<u64>,
    /// Reclaimable bytes / size, 0..=1.
    pub wal_reclaimable_ratio: Option<f64>,
    pub wal_torn_tail_bytes: Option<u64>,
    pub wal_corrupt_lines: Option<u64>,
    pub wal_in_flight_transactions: Option<u64>,
    pub seconds_since_last_success: Option<f64>,
    /// See [`stalled_seconds`].
    pub compaction_stalled_seconds: Option<f64>,
    pub consecutive_failures: Option<u64>,
    /// Free space on the WAL's filesystem, 0..=100.
    pub disk_free_percent: Option<f64>,
    /// See [`AlertMetric::OffsitePendingSeconds`].
    pub offsite_pending_seconds: Option<f64>,
}

impl AlertValues {
    /// The value of `m`, or `None` when unknown.
    pub fn value(&self, m: AlertMetric) -> Option<f64> {
        let n = |v: Option<u64>| v.map(|v| v as f64);
        match m {
            AlertMetric::WalSizeMb => self.wal_size_bytes.map(|b| b as f64 / 1e6),
            AlertMetric::WalSizeBytes => n(self.wal_size_bytes),
            AlertMetric::WalReclaimableBytes => n(self.wal_reclaimable_bytes),
            AlertMetric::WalReclaimableRatio => self.wal_reclaimable_ratio,
            AlertMetric::WalTornTailBytes => n(self.wal_torn_tail_bytes),
            AlertMetric::WalCorruptLines => n(self.wal_corrupt_lines),
            AlertMetric::WalInFlightTransactions => n(self.wal_in_flight_transactions),
            AlertMetric::SecondsSinceLastSuccess => self.seconds_since_last_success,
            AlertMetric::CompactionStalledSeconds => self.compaction_stalled_seconds,
            AlertMetric::ConsecutiveFailures => n(self.consecutive_failures),
            AlertMetric::DiskFreePercent => self.disk_free_percent,
            AlertMetric::OffsitePendingSeconds => self.offsite_pending_seconds,
        }
    }
}

/// `compaction_stalled_seconds`: the seconds since the last success while there is something
/// worth compacting (reclaimable bytes > 0 and ≥ the WAL's `min_reclaimable_bytes` guard),
/// else 0. `None` while the time since the last success is unknown.
pub fn stalled_seconds(
    seconds_since_last_success: Option<f64>,
    reclaimable_bytes: u64,
    min_reclaimable_bytes: u64,
) -> Option<f64> {
    let since = seconds_since_last_success?;
    let worth = reclaimable_bytes > 0 && reclaimable_bytes >= min_reclaimable_bytes;
    Some(if worth { since } else { 0.0 })
}

/// The state of one rule for one WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlertState {
    /// Since when the condition has held without interruption; `None` when it does not hold.
    pub pending_since: Option<Instant>,
    /// Whether the alert has fired and not resolved since.
    pub firing: bool,
}

/// Every (rule name, WAL name) state. Owned by the daemon, passed to each [`evaluate`].
#[derive(Debug, Clone, Default)]
pub struct AlertStates {
    states: HashMap<(String, String), AlertState>,
}

impl AlertStates {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of `rule` for `wal`, if it was ever evaluated.
    pub fn get(&self, rule: &str, wal: &str) -> Option<&AlertState> {
        self.states.get(&(rule.to_string(), wal.to_string()))
    }

    /// The (rule, WAL) pairs currently firing, sorted.
    pub fn firing(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .states
            .iter()
            .filter(|(_, s)| s.firing)
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// After a policy reload: drops the states of rules that no longer exist or no longer
    /// apply to their WAL. Returns the dropped pairs that were firing (sorted), so the daemon
    /// can clear their `alert_active` series; no `Resolved` edge is produced for them.
    /// A rule kept under the same name keeps its state, even if its condition changed.
    pub fn retain_rules(&mut self, rules: &[AlertRule]) -> Vec<(String, String)> {
        let keep = |(rule, wal): &(String, String)| {
            rules.iter().any(|r| &r.name == rule && applies(r, wal))
        };
        self.drop_where(|k| !keep(k))
    }

    /// Drops every state of `wal` (removed from the policy). Returns the pairs that were firing.
    pub fn forget_wal(&mut self, wal: &str) -> Vec<(String, String)> {
        self.drop_where(|(_, w)| w == wal)
    }

    fn drop_where(&mut self, gone: impl Fn(&(String, String)) -> bool) -> Vec<(String, String)> {
        let mut dropped = Vec::new();
        self.states.retain(|k, s| {
            if !gone(k) {
                return true;
            }
            if s.firing {
                dropped.push(k.clone());
            }
            false
        });
        dropped.sort();
        dropped
    }
}

fn applies(rule: &AlertRule, wal: &str) -> bool {
    rule.wal.as_deref().is_none_or(|w| w == wal)
}

/// Which edge an alert crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertEdge {
    Firing,
    Resolved,
}

impl AlertEdge {
    /// `firing` or `resolved`, as in logs and `ALERT_STATE`.
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertEdge::Firing => "firing",
            AlertEdge::Resolved => "resolved",
        }
    }
}

/// An alert crossing an edge for one WAL; produced once per edge by [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// The condition held for `for_duration`: the alert fires. `value` is the current value.
    Fired { rule: AlertRule, value: f64 },
    /// The condition stopped holding: the alert resolves. `value` is the current value.
    Resolved { rule: AlertRule, value: f64 },
}

impl Transition {
    pub fn rule(&self) -> &AlertRule {
        match self {
            Transition::Fired { rule, .. } | Transition::Resolved { rule, .. } => rule,
        }
    }

    pub fn value(&self) -> f64 {
        match self {
            Transition::Fired { value, .. } | Transition::Resolved { value, .. } => *value,
        }
    }

    pub fn edge(&self) -> AlertEdge {
        match self {
            Transition::Fired { .. } => AlertEdge::Firing,
            Transition::Resolved { .. } => AlertEdge::Resolved,
        }
    }

    /// Whether the rule lists `action`.
    pub fn has_action(&self, action: AlertAction) -> bool {
        self.rule().actions.contains(&action)
    }

    /// Whether the daemon should request a compaction: a fired rule with the `compact` action.
    pub fn requests_compaction(&self) -> bool {
        matches!(self, Transition::Fired { .. }) && self.has_action(AlertAction::Compact)
    }
}

/// Evaluates every rule that applies to `wal` against `values` at `now`, updating `states`,
/// and returns the edges crossed (in rule order). Pure: no clock, no I/O.
///
/// `now` must not go backwards between calls for the same states (use `Instant`s from one
/// monotonic clock).
pub fn evaluate(
    rules: &[AlertRule],
    wal: &str,
    values: &AlertValues,
    states: &mut AlertStates,
    now: Instant,
) -> Vec<Transition> {
    let mut edges = Vec::new();
    for rule in rules.iter().filter(|r| applies(r, wal)) {
        let value = values.value(rule.metric).filter(|v| !v.is_nan());
        let state = states
            .states
            .entry((rule.name.clone(), wal.to_string()))
            .or_default();
        match value {
            Some(v) if rule.threshold.is_breached(v) => {
                let since = *state.pending_since.get_or_insert(now);
                if !state.firing && now.saturating_duration_since(since) >= rule.for_duration {
                    state.firing = true;
                    edges.push(Transition::Fired {
                        rule: rule.clone(),
                        value: v,
                    });
                }
            }
            Some(v) => {
                state.pending_since = None;
                if state.firing {
                    state.firing = false;
                    edges.push(Transition::Resolved {
                        rule: rule.clone(),
                        value: v,
                    });
                }
            }
            // Unknown: the condition is not known to hold, so pending restarts; a firing
            // alert stays firing until a known value clears it.
            None => state.pending_since = None,
        }
    }
    edges
}

/// Logs an edge: fired warning → WARN, fired critical → ERROR, resolved → INFO. Fields:
/// `wal`, `alert`, `severity`, `value`, `state`. The daemon calls it for rules with the
/// `log` action.
pub fn log_transition(wal: &str, t: &Transition) {
    let rule = t.rule();
    let (alert, severity, value, state) = (
        rule.name.as_str(),
        rule.severity.as_str(),
        t.value(),
        t.edge().as_str(),
    );
    match (t.edge(), rule.severity) {
        (AlertEdge::Firing, Severity::Critical) => {
            tracing::error!(
                event = "alert",
                wal,
                alert,
                severity,
                value,
                state,
                "alert firing"
            )
        }
        (AlertEdge::Firing, Severity::Warning) => {
            tracing::warn!(
                event = "alert",
                wal,
                alert,
                severity,
                value,
                state,
                "alert firing"
            )
        }
        (AlertEdge::Resolved, _) => {
            tracing::info!(
                event = "alert",
                wal,
                alert,
                severity,
                value,
                state,
                "alert resolved"
            )
        }
    }
}

/// The environment given to an alert command.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertEnv {
    pub alert_name: String,
    pub severity: Severity,
    pub value: f64,
    pub wal_name: String,
    pub wal_path: PathBuf,
    pub state: AlertEdge,
}

impl AlertEnv {
    /// The environment for an edge of `wal_name` (whose file is `wal_path`).
    pub fn new(t: &Transition, wal_name: &str, wal_path: &Path) -> Self {
        AlertEnv {
            alert_name: t.rule().name.clone(),
            severity: t.rule().severity,
            value: t.value(),
            wal_name: wal_name.to_string(),
            wal_path: wal_path.to_path_buf(),
            state: t.edge(),
        }
    }

    /// `ALERT_NAME`, `ALERT_SEVERITY`, `ALERT_VALUE`, `ALERT_STATE`, `WAL_NAME`, `WAL_PATH`.
    pub fn vars(&self) -> [(&'static str, std::ffi::OsString); 6] {
        [
            ("ALERT_NAME", self.alert_name.clone().into()),
            ("ALERT_SEVERITY", self.severity.as_str().into()),
            ("ALERT_VALUE", self.value.to_string().into()),
            ("ALERT_STATE", self.state.as_str().into()),
            ("WAL_NAME", self.wal_name.clone().into()),
            ("WAL_PATH", self.wal_path.clone().into()),
        ]
    }
}

/// Runs an alert command (`argv[0]` looked up in `PATH`, no shell) with the daemon's
/// environment plus [`AlertEnv::vars`], stdin and stdout closed, in its own process group,
/// through [`crate::process`] on the blocking pool (so it must be awaited inside a tokio
/// runtime).
///
/// Its stderr is captured (the first [`process::CAPTURE_BYTES`]) and logged at WARN if the
/// command fails, so it never interleaves with the daemon's own log lines. After
/// [`ALERT_COMMAND_TIMEOUT`] the whole process group is killed and the result is an
/// `io::ErrorKind::TimedOut` error; if the returned future is dropped (the daemon shuts
/// down), the group is killed too.
pub async fn run_command(argv: &[String], env: &AlertEnv) -> io::Result<ExitStatus> {
    run_command_with_timeout(argv, env, ALERT_COMMAND_TIMEOUT).await
}

async fn run_command_with_timeout(
    argv: &[String],
    env: &AlertEnv,
    timeout: Duration,
) -> io::Result<ExitStatus> {
    if argv.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty alert command",
        ));
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop(Arc::clone(&cancel));
    let argv = argv.to_vec();
    let vars = env.vars().map(|(k, v)| (k.into(), v)).to_vec();
    let finished = tokio::task::spawn_blocking(move || {
        process::run(&Spec {
            argv: &argv,
            env: vars,
            stdout: Stdout::Null,
            timeout,
            cancel: Some(&cancel),
        })
    })
    .await
    .map_err(io::Error::other)??;
    if !finished.status.success() {
        tracing::warn!(
            wal = env.wal_name.as_str(),
            alert = env.alert_name.as_str(),
            status = %finished.status,
            stderr = %finished.stderr_text(),
            "alert command failed"
        );
    }
    Ok(finished.status)
}

/// Sets the flag when dropped: a command whose awaiting future is dropped is stopped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests;
