//! Alerts and the node_exporter textfile over the supervisors' status board.
//!
//! Supervisors export their own gauges and run counters as they observe (see
//! `supervisor::publish_metrics`); this module, driven by the daemon's loop, evaluates the
//! policy's `[[alert]]` rules for every WAL after each board update and on a periodic tick
//! (so `for_secs` and the time-based figures advance without appends), runs the edge actions,
//! keeps `alert_active` current, and writes the textfile (rate-limited).
//!
//! Actions: `log` logs both edges; `command` runs on the firing edge in a spawned task (never
//! blocking the daemon loop; killed with its process group if still running at shutdown); `compact` asks the WAL's supervisor, whose guards (single
//! flight, cooldown, backoff, minimum reclaimable) still apply.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::supervisor::{StatusBoard, WalStatus};
use crate::alerts::{self, AlertEnv, AlertStates, AlertValues, Transition};
use crate::metrics::{self, Metrics};
use crate::policy::{AlertAction, AlertRule, DaemonPolicy, Policy};

/// How often alerts are re-evaluated without a board update.
pub const TICK: Duration = Duration::from_secs(1);
/// The textfile is written at most this often (and within this long of a change).
pub const TEXTFILE_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What the observer needs about one watched WAL.
#[derive(Debug, Clone)]
pub struct Watched {
    pub path: PathBuf,
    pub min_reclaimable_bytes: u64,
    /// The supervisor's alert-request queue.
    pub alerts: mpsc::Sender<String>,
}

/// Alert states, the installed exporter (if any), and the textfile writer.
pub struct Observer {
    metrics: Option<Metrics>,
    rules: Vec<AlertRule>,
    wals: BTreeMap<String, Watched>,
    states: AlertStates,
    dirty: bool,
    last_write: Option<Instant>,
    writing: Arc<AtomicBool>,
    /// The daemon's shutdown: alert commands still running then are killed (process group).
    shutdown: CancellationToken,
}

impl Observer {
    /// Installs the Prometheus exporter when `metrics_listen` or `metrics_textfile` is set.
    /// Must be called inside the daemon's runtime (the HTTP listener is spawned on it). A
    /// failure (address in use, ...) is logged; the daemon keeps compacting without metrics.
    pub fn start(daemon: &DaemonPolicy, shutdown: CancellationToken) -> Observer {
        let metrics = if daemon.metrics_listen.is_none() && daemon.metrics_textfile.is_none() {
            info!(
                event = "metrics",
                "metrics disabled (no metrics_listen, no metrics_textfile)"
            );
            None
        } else {
            match Metrics::install(daemon.metrics_listen, daemon.metrics_textfile.clone()) {
                Ok(m) => {
                    let listen = daemon
                        .metrics_listen
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    let textfile = daemon
                        .metrics_textfile
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default();
                    info!(event = "metrics", listen = %listen, textfile = %textfile,
                        "metrics exporter started");
                    if let Some(addr) = daemon.metrics_listen.filter(|a| beyond_loopback(*a)) {
                        warn!(event = "metrics", listen = %addr, "{}", exposure_note(addr));
                    }
                    Some(m)
                }
                Err(e) => {
                    error!(event = "metrics", "{e}; running without metrics");
                    None
                }
            }
        };
        Observer {
            metrics,
            rules: Vec::new(),
            wals: BTreeMap::new(),
            states: AlertStates::new(),
            dirty: true,
            last_write: None,
            writing: Arc::new(AtomicBool::new(false)),
            shutdown,
        }
    }

    /// Replaces the rules and the watched WALs (start and every reload). Alerts of removed
    /// rules or WALs stop: their `alert_active` goes to 0 (no "resolved" edge is logged).
    pub fn set_policy(&mut self, policy: &Policy, wals: BTreeMap<String, Watched>) {
        let mut stopped = self.states.retain_rules(&policy.alerts);
        for gone in self.wals.keys().filter(|w| !wals.contains_key(*w)) {
            stopped.extend(self.states.forget_wal(gone));
        }
        for (alert, wal) in stopped {
            info!(event = "alert", wal = %wal, alert = %alert,
                "alert rule or WAL removed from the policy; alert no longer active");
            metrics::set_alert_active(&wal, &alert, false);
        }
        self.rules = policy.alerts.clone();
        self.wals = wals;
        self.dirty = true;
    }

    /// Evaluates every rule for every WAL on the board, runs the actions of the edges crossed,
    /// and writes the textfile if due.
    pub fn observe(&mut self, board: &StatusBoard) {
        let snapshot: Vec<(String, WalStatus)> = {
            let b = board.lock().unwrap_or_else(|e| e.into_inner());
            b.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let now = Instant::now();
        let wall = Utc::now();
        for (wal, status) in &snapshot {
            let Some(watched) = self.wals.get(wal) else {
                continue;
            };
            let values = alert_values(status, wall, watched.min_reclaimable_bytes);
            let edges = alerts::evaluate(&self.rules, wal, &values, &mut self.states, now);
            for t in &edges {
                act(wal, watched, t, &self.shutdown);
            }
            for rule in self.rules.iter().filter(|r| applies(r, wal)) {
                let firing = self.states.get(&rule.name, wal).is_some_and(|s| s.firing);
                metrics::set_alert_active(wal, &rule.name, firing);
            }
        }
        self.dirty = true;
        self.flush_textfile();
    }

    /// Writes the textfile in a blocking thread if something changed since the last write,
    /// at most once per [`TEXTFILE_MIN_INTERVAL`]; a skipped write happens on a later tick.
    fn flush_textfile(&mut self) {
        let Some(m) = self.metrics.as_ref().filter(|m| m.textfile().is_some()) else {
            return;
        };
        let due = self
            .last_write
            .is_none_or(|t| t.elapsed() >= TEXTFILE_MIN_INTERVAL);
        if !self.dirty || !due || self.writing.swap(true, Ordering::SeqCst) {
            return;
        }
        self.dirty = false;
        self.last_write = Some(Instant::now());
        let m = m.clone();
        let writing = Arc::clone(&self.writing);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = m.write_textfile() {
                let path = m
                    .textfile()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                warn!(event = "metrics", textfile = %path, "cannot write the metrics textfile: {e}");
            }
            writing.store(false, Ordering::SeqCst);
        });
    }
}

/// Whether a listener bound to `addr` answers other hosts: anything but a loopback address
/// (`0.0.0.0` and `::` mean every interface). An IPv4-mapped loopback (`::ffff:127.0.0.1`)
/// is loopback.
pub fn beyond_loopback(addr: SocketAddr) -> bool {
    !addr.ip().to_canonical().is_loopback()
}

/// The warning for a metrics listener beyond loopback: allowed (a Prometheus server on
/// another host may scrape it directly), but the operator should know what it exposes.
pub fn exposure_note(addr: SocketAddr) -> String {
    format!(
        "daemon.metrics_listen = {addr} is not a loopback address: /metrics answers every host \
         that can reach the port, without authentication or TLS (it carries WAL names and \
         figures, never transaction ids or payloads); bind 127.0.0.1 or firewall the port"
    )
}

fn applies(rule: &AlertRule, wal: &str) -> bool {
    rule.wal.as_deref().is_none_or(|w| w == wal)
}

/// The figures alert rules read, from a supervisor's status at wall-clock `now`. Unknown
/// while the WAL is missing (a firing alert then stays firing until a figure clears it).
pub fn alert_values(status: &WalStatus, now: DateTime<Utc>, min_reclaimable: u64) -> AlertValues {
    let since = status
        .state
        .last_success
        .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
    let consecutive_failures = Some(u64::from(status.state.consecutive_failures));
    let offsite_pending_seconds = status.offsite.as_ref().map(|o| {
        o.oldest_pending
            .map_or(0.0, |t| (now - t).num_milliseconds().max(0) as f64 / 1000.0)
    });
    if status.missing {
        return AlertValues {
            seconds_since_last_success: since,
            consecutive_failures,
            offsite_pending_seconds,
            ..AlertValues::default()
        };
    }
    let s = &status.stats;
    AlertValues {
        wal_size_bytes: Some(s.size_bytes),
        wal_reclaimable_bytes: Some(s.reclaimable_bytes),
        wal_reclaimable_ratio: Some(s.reclaimable_ratio()),
        wal_torn_tail_bytes: Some(s.torn_tail_bytes),
        wal_corrupt_lines: Some(s.corrupt_lines),
        wal_in_flight_transactions: Some(s.transactions.in_flight),
        seconds_since_last_success: since,
        compaction_stalled_seconds: alerts::stalled_seconds(
            since,
            s.reclaimable_bytes,
            min_reclaimable,
        ),
        consecutive_failures,
        disk_free_percent: s.free_percent,
        offsite_pending_seconds,
    }
}

/// Runs the actions of one edge.
fn act(wal: &str, watched: &Watched, t: &Transition, shutdown: &CancellationToken) {
    let rule = t.rule();
    if t.has_action(AlertAction::Log) {
        alerts::log_transition(wal, t);
    } else {
        debug!(event = "alert", wal, alert = %rule.name, state = t.edge().as_str(), "alert edge");
    }
    if !matches!(t, Transition::Fired { .. }) {
        return;
    }
    if t.has_action(AlertAction::Command) {
        let argv = rule.command.clone();
        let env = AlertEnv::new(t, wal, &watched.path);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let result = tokio::select! {
                r = alerts::run_command(&argv, &env) => r,
                // Dropping the run kills the command's process group, so nothing it started
                // outlives the daemon.
                _ = shutdown.cancelled() => {
                    debug!(event = "alert_command", wal = %env.wal_name, alert = %env.alert_name, "alert command stopped: shutting down");
                    return;
                }
            };
            match result {
                Ok(status) => {
                    debug!(event = "alert_command", wal = %env.wal_name, alert = %env.alert_name, %status, "alert command finished")
                }
                Err(e) => {
                    warn!(event = "alert_command", wal = %env.wal_name, alert = %env.alert_name, "alert command failed: {e}")
                }
            }
        });
    }
    if t.requests_compaction() && watched.alerts.try_send(rule.name.clone()).is_err() {
        warn!(event = "alert", wal, alert = %rule.name,
            "alert requested a compaction but the WAL's request queue is full; not queued");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::state::WalState;
    use crate::daemon::stats::WalStats;

    #[test]
    fn only_loopback_listeners_stay_local() {
        for local in [
            "127.0.0.1:9464",
            "127.1.2.3:1",
            "[::1]:9464",
            "[::ffff:127.0.0.1]:9464",
        ] {
            assert!(!beyond_loopback(local.parse().unwrap()), "{local}");
        }
        for wide in [
            "0.0.0.0:9464",
            "[::]:9464",
            "10.0.0.5:9464",
            "[::ffff:10.0.0.5]:1",
        ] {
            assert!(beyond_loopback(wide.parse().unwrap()), "{wide}");
        }
    }

    #[test]
    fn values_follow_the_status_and_the_clock() {
        let now: DateTime<Utc> = "2025-01-01T01:00:00Z".parse().unwrap();
        let mut st = WalStatus {
            stats: WalStats {
                size_bytes: 1000,
                reclaimable_bytes: 400,
                free_percent: Some(42.0),
                ..WalStats::default()
            },
            state: WalState {
                last_success: Some("2025-01-01T00:00:00Z".parse().unwrap()),
                consecutive_failures: 2,
                ..WalState::default()
            },
            ..WalStatus::default()
        };
        let v = alert_values(&st, now, 100);
        assert_eq!(v.wal_size_bytes, Some(1000));
        assert_eq!(v.wal_reclaimable_ratio, Some(0.4));
        assert_eq!(v.seconds_since_last_success, Some(3600.0));
        assert_eq!(v.compaction_stalled_seconds, Some(3600.0));
        assert_eq!(v.consecutive_failures, Some(2));
        assert_eq!(v.disk_free_percent, Some(42.0));
        assert_eq!(
            alert_values(&st, now, 500).compaction_stalled_seconds,
            Some(0.0)
        );
        st.missing = true;
        let v = alert_values(&st, now, 100);
        assert_eq!(v.wal_size_bytes, None);
        assert_eq!(v.seconds_since_last_success, Some(3600.0));
    }
}
