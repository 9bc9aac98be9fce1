//! One task per WAL: keeps its statistics current from change hints and the fallback poll,
//! asks [`triggers::decide`] whether to compact, and runs at most one job at a time
//! (single-flight: the loop awaits the job before looking at anything else).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::job::{self, JobResult};
use super::notify::Systemd;
use super::state::{LastOutcome, Loaded, StateFile, WalState};
use super::state_io::{self, StateWriter};
use super::stats::{Refresh, Rescan, StatsTracker, WalStats};
use super::triggers::{self, Decision, Reason, Request};
use super::watcher::Hint;
use crate::metrics::{self, WalFigures};
use crate::pipeline::backup;
use crate::policy::WalPolicy;
use crate::rules::CorruptLines;

/// Change events arrive in bursts (one per write): wait this long after the first so one
/// refresh covers the burst. Bounds refreshes to a few per second under heavy appends.
const HINT_COALESCE: Duration = Duration::from_millis(250);
/// Requests (schedules, alerts) queued while a job runs; more are dropped, since one
/// pending request already guarantees a re-evaluation.
pub const REQUEST_QUEUE: usize = 8;
/// Backups are listed after each run and at least this often (pruning and compression run
/// in the background after a run, so the count settles a little later).
const BACKUP_LIST_EVERY: Duration = Duration::from_secs(60);

/// What a supervisor publishes for alerts and metrics.
#[derive(Debug, Clone, Default)]
pub struct WalStatus {
    pub stats: WalStats,
    pub state: WalState,
    /// Triggers hold but too little is reclaimable: "blocked: too little reclaimable".
    pub blocked: bool,
    pub missing: bool,
    /// A compaction job is running.
    pub running: bool,
    /// Backups kept (count, bytes), once listed.
    pub backups: Option<(u64, u64)>,
    /// With `[wal.offsite]`, once its uploader has looked at the queue.
    pub offsite: Option<super::offsite::OffsiteStatus>,
}

impl WalStatus {
    /// The figures `metrics::publish_wal` exports, as `walcompactd status` counts them.
    pub fn figures(&self) -> WalFigures {
        let s = &self.stats;
        WalFigures::new(
            s.size_bytes,
            s.entries.into(),
            s.transactions,
            s.reclaimable_bytes,
            s.torn_tail_bytes,
            s.corrupt_lines,
        )
    }
}

/// Shared, read-mostly view of every WAL's status.
pub type StatusBoard = Arc<Mutex<std::collections::BTreeMap<String, WalStatus>>>;

/// What the daemon keeps to steer a running supervisor.
pub struct Handle {
    pub path: PathBuf,
    pub requests: mpsc::Sender<Request>,
    /// Compaction requests from alerts with the `compact` action, by alert name.
    pub alerts: mpsc::Sender<String>,
    pub policy: watch::Sender<WalPolicy>,
    pub hint: Arc<Hint>,
    cancel: CancellationToken,
    join: JoinHandle<()>,
}

impl Handle {
    /// Stops the supervisor (a running job is cancelled at its next safe point) and waits.
    pub async fn stop(self) {
        self.cancel.cancel();
        if tokio::time::timeout(job::SHUTDOWN_GRACE * 2, self.join)
            .await
            .is_err()
        {
            warn!(event = "shutdown", wal_path = %self.path.display(), "supervisor did not stop in time");
        }
    }
}

/// Everything supervisors share.
#[derive(Clone)]
pub struct Shared {
    pub state_dir: PathBuf,
    pub board: StatusBoard,
    pub systemd: Arc<Systemd>,
    /// Notified after every board update, so alerts and the textfile follow at once.
    pub changed: Arc<Notify>,
}

/// Starts the supervisor of one WAL under `parent` (the daemon's shutdown token).
pub fn spawn(policy: WalPolicy, shared: Shared, parent: &CancellationToken) -> Handle {
    let (requests, rx) = mpsc::channel(REQUEST_QUEUE);
    let (alerts, alert_rx) = mpsc::channel(REQUEST_QUEUE);
    let (policy_tx, policy_rx) = watch::channel(policy.clone());
    let hint = Arc::new(Hint::default());
    let cancel = parent.child_token();
    let state_file = StateFile::new(&shared.state_dir, &policy.name);
    let offsite = super::offsite::Link {
        state_dir: shared.state_dir.clone(),
        kick: Arc::new(Notify::new()),
    };
    super::offsite::spawn(
        policy_tx.subscribe(),
        offsite.clone(),
        Arc::clone(&shared.board),
        Arc::clone(&shared.changed),
        cancel.clone(),
    );
    let sv = Supervisor {
        stats: StatsTracker::for_policy(&policy),
        state_writer: StateWriter::spawn(state_file.clone(), policy.name.clone()),
        state_file,
        state: WalState::default(),
        policy,
        shared,
        hint: Arc::clone(&hint),
        cancel: cancel.clone(),
        blocked: false,
        missing: false,
        running: false,
        backups: None,
        backups_listed: None,
        pending_alert: None,
        offsite,
    };
    let path = sv.policy.resolved_path.clone();
    let join = tokio::spawn(sv.run(rx, alert_rx, policy_rx));
    Handle {
        path,
        requests,
        alerts,
        policy: policy_tx,
        hint,
        cancel,
        join,
    }
}

struct Supervisor {
    policy: WalPolicy,
    shared: Shared,
    stats: StatsTracker,
    state_file: StateFile,
    /// Writes `state_file` off the runtime, in order; closed (drained) when the loop ends.
    state_writer: StateWriter,
    state: WalState,
    hint: Arc<Hint>,
    cancel: CancellationToken,
    /// In a "blocked" episode: logged once on entry.
    blocked: bool,
    /// In a "missing" episode: logged once on entry.
    missing: bool,
    running: bool,
    backups: Option<(u64, u64)>,
    backups_listed: Option<Instant>,
    /// An alert asked for a compaction (its name): kept while cooldown or backoff hold it
    /// back, dropped once a job ran or there is nothing worth compacting.
    pending_alert: Option<String>,
    /// Where a successful run queues its files for the WAL's uploader.
    offsite: super::offsite::Link,
}

impl Supervisor {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut alert_rx: mpsc::Receiver<String>,
        mut policy_rx: watch::Receiver<WalPolicy>,
    ) {
        self.load_state().await;
        self.recover_at_start().await;
        let name = self.policy.name.clone();
        info!(event = "supervisor", wal = %name, path = %self.policy.resolved_path.display(), mode = %self.policy.mode, "watching WAL");
        let mut request = None;
        let mut rescan = false;
        loop {
            let wake = self.step(request.take(), rescan).await;
            if self.cancel.is_cancelled() {
                break;
            }
            let until = wake.map(|w| {
                let d = (w - Utc::now()).to_std().unwrap_or_default();
                tokio::time::Instant::now() + d
            });
            rescan = false;
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                r = requests.recv() => match r {
                    Some(r) => request = Some(r),
                    None => break,
                },
                Some(alert) = alert_rx.recv() => {
                    info!(event = "alert", wal = %name, alert = %alert, "alert requested a compaction");
                    self.pending_alert = Some(alert);
                }
                _ = self.hint.wait() => {
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = tokio::time::sleep(HINT_COALESCE) => {}
                    }
                    rescan = self.hint.take_rescan();
                }
                _ = tokio::time::sleep(self.policy.poll_interval) => {}
                _ = sleep_until_opt(until) => {}
                changed = policy_rx.changed() => {
                    if changed.is_err() { break; }
                    self.policy = policy_rx.borrow_and_update().clone();
                    // Reclaimable bytes depend on corrupt_lines and retention.
                    self.stats.reconfigure(&self.policy);
                    info!(event = "supervisor", wal = %name, "new policy applied");
                }
            }
        }
        // Pending state writes finish before the supervisor counts as stopped: a supervisor
        // started for the same WAL (reload) or the next daemon reads what this one recorded.
        self.state_writer.close().await;
        info!(event = "supervisor", wal = %name, "stopped");
    }

    /// Reads the state file on the blocking pool (the supervisor decides nothing before).
    /// Finishes or undoes a run interrupted by a crash as soon as the supervisor starts, not
    /// when a trigger next holds: until then a WAL its verify hook rejected could stay, and
    /// quarantine records or a backup could stay doubled.
    async fn recover_at_start(&self) {
        let wal = self.policy.resolved_path.clone();
        let real = crate::pipeline::links::real_path_or_given(&wal);
        if !crate::pipeline::journal::journal_path(&real).exists() {
            return;
        }
        let name = self.policy.name.as_str();
        match tokio::task::spawn_blocking(move || crate::commands::recover(&wal)).await {
            Ok(Ok(r)) => {
                info!(
                    event = "recover",
                    wal = name,
                    recovered = r.as_str(),
                    "an interrupted compaction was finished or undone: {r}"
                )
            }
            Ok(Err(e)) => {
                warn!(
                    event = "recover",
                    wal = name,
                    "an interrupted compaction could not be recovered yet ({e}); the next run tries again"
                )
            }
            Err(e) => error!(event = "recover", wal = name, "recovery panicked: {e}"),
        }
    }

    async fn load_state(&mut self) {
        let loaded = state_io::load(&self.state_file).await;
        let wal = self.policy.name.as_str();
        self.state = match loaded {
            Loaded::Found(s) | Loaded::Fresh(s) => s,
            Loaded::Rebuilt(s, why) => {
                warn!(event = "state", wal, path = %self.state_file.path().display(),
                    "state file {why}; starting from a fresh state");
                s
            }
        };
    }

    /// Queues the state for writing (see [`StateWriter`]); never waits for the disk.
    fn save_state(&self) {
        self.state_writer.save(self.state.clone());
    }

    /// Refreshes statistics, decides, maybe runs a job. Returns when to look again for a
    /// cooldown or backoff that is holding a trigger back.
    async fn step(
        &mut self,
        request: Option<Request>,
        rescan: bool,
    ) -> Option<chrono::DateTime<Utc>> {
        let stats = self.refresh(rescan).await?;
        self.list_backups_if_stale().await;
        let request = request.or(self.pending_alert.as_ref().map(|_| Request::Alert));
        let decision = triggers::decide(
            &stats,
            &self.policy.triggers,
            &self.state,
            request,
            Utc::now(),
        );
        let wal = self.policy.name.as_str();
        let blocked = matches!(decision, Decision::Blocked { .. });
        if blocked
            && !self.blocked
            && let Decision::Blocked {
                reasons,
                reclaimable,
                min,
            } = &decision
        {
            info!(event = "blocked", wal, trigger = %triggers::describe(reasons),
                    reclaimable_bytes = reclaimable, min_reclaimable_bytes = min,
                    "{wal}: blocked: too little reclaimable ({reclaimable} bytes, minimum {min}); not compacting");
        }
        self.blocked = blocked;
        self.publish(stats);
        match decision {
            Decision::Idle | Decision::Blocked { .. } => {
                self.pending_alert = None;
                None
            }
            Decision::Cooldown { reasons, until } | Decision::Backoff { reasons, until } => {
                let trigger = self.describe(&reasons);
                debug!(event = "decide", wal, trigger = %trigger, until = %until, "trigger held back");
                Some(until)
            }
            Decision::Compact(reasons) => {
                let trigger = self.describe(&reasons);
                // A job runs now: whatever an alert asked for is served by it.
                self.pending_alert = None;
                self.compact(&trigger).await;
                Some(Utc::now())
            }
        }
    }

    /// The `trigger` log field; an alert's request is named `alert:<name>`.
    fn describe(&self, reasons: &[Reason]) -> String {
        let parts: Vec<String> = reasons
            .iter()
            .map(|r| match (r, &self.pending_alert) {
                (Reason::Requested(Request::Alert), Some(name)) => format!("alert:{name}"),
                _ => r.to_string(),
            })
            .collect();
        parts.join(", ")
    }

    /// Lists the WAL's backups (count, bytes) in a blocking thread and publishes them.
    async fn list_backups(&mut self) {
        // Backups are named after and (by default) beside the real file behind a symlink.
        let wal = crate::pipeline::links::real_path_or_given(&self.policy.resolved_path);
        let dir = backup::backup_dir(&wal, self.policy.backup_dir.as_deref());
        let listed = tokio::task::spawn_blocking(move || backup::list(&wal, &dir)).await;
        self.backups_listed = Some(Instant::now());
        self.backups = match listed {
            Ok(Ok(list)) => Some((list.len() as u64, list.iter().map(|b| b.bytes).sum())),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Some((0, 0)),
            Ok(Err(e)) => {
                debug!(event = "backups", wal = %self.policy.name, "cannot list backups: {e}");
                None
            }
            Err(_) => None,
        };
        if let Some((count, bytes)) = self.backups {
            metrics::publish_backups(&self.policy.name, count, bytes);
        }
    }

    async fn list_backups_if_stale(&mut self) {
        if self
            .backups_listed
            .is_none_or(|t| t.elapsed() >= BACKUP_LIST_EVERY)
        {
            self.list_backups().await;
        }
    }

    /// Brings the statistics up to date in a blocking thread (a rescan reads the whole WAL).
    async fn refresh(&mut self, rescan: bool) -> Option<WalStats> {
        let mut tracker =
            std::mem::replace(&mut self.stats, StatsTracker::new("", CorruptLines::Keep));
        // Always measured (one statvfs): triggers, alerts and metrics all read it.
        let want_free = true;
        let joined = tokio::task::spawn_blocking(move || {
            let r = tracker.refresh(rescan);
            let s = tracker.stats(want_free);
            (tracker, r, s)
        })
        .await;
        let wal = self.policy.name.as_str();
        let (tracker, result, stats) = match joined {
            Ok(t) => t,
            Err(e) => {
                error!(event = "stats", wal, "statistics refresh panicked: {e}");
                self.stats = StatsTracker::for_policy(&self.policy);
                return None;
            }
        };
        self.stats = tracker;
        match result {
            Ok(Refresh::Missing) => {
                if !self.missing {
                    warn!(event = "missing", wal, path = %self.policy.resolved_path.display(), "WAL does not exist (yet); waiting for it");
                }
                self.missing = true;
                self.publish(WalStats::default());
                None
            }
            Ok(Refresh::Updated { rescan, .. }) => {
                if self.missing {
                    info!(event = "missing", wal, "WAL appeared");
                    self.missing = false;
                }
                if let Some(why) = rescan {
                    self.after_rescan(why, &stats);
                }
                Some(stats)
            }
            Err(e) => {
                warn!(event = "stats", wal, "cannot read the WAL: {e}");
                None
            }
        }
    }

    /// An externally replaced or truncated WAL may hold fewer commits than the base.
    fn after_rescan(&mut self, why: Rescan, stats: &WalStats) {
        debug!(event = "rescan", wal = %self.policy.name, reason = ?why, "rescanned WAL from byte 0");
        if stats.commit_lines < self.state.commit_base {
            self.state.commit_base = stats.commit_lines;
            self.save_state();
        }
    }

    /// Puts the WAL's status on the board, exports its gauges, and wakes the observer.
    fn publish(&self, stats: WalStats) {
        let mut status = WalStatus {
            stats,
            state: self.state.clone(),
            blocked: self.blocked,
            missing: self.missing,
            running: self.running,
            backups: self.backups,
            offsite: None,
        };
        publish_metrics(&self.policy.name, &status);
        {
            let mut board = self.shared.board.lock().unwrap_or_else(|e| e.into_inner());
            // The uploader owns the offsite part: keep what it published.
            status.offsite = board.get(&self.policy.name).and_then(|s| s.offsite.clone());
            board.insert(self.policy.name.clone(), status);
        }
        self.shared.changed.notify_one();
    }

    /// Marks a job running (or not) on the board and in the metrics.
    fn set_running(&mut self, running: bool) {
        self.running = running;
        metrics::set_in_progress(&self.policy.name, running);
        let mut board = self.shared.board.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = board.get_mut(&self.policy.name) {
            s.running = running;
        }
        drop(board);
        self.shared.changed.notify_one();
    }

    /// Runs one job, records its outcome, and re-bases the commit count after a success.
    async fn compact(&mut self, trigger: &str) {
        self.set_running(true);
        let started = Instant::now();
        let result = job::run(&self.policy, trigger, &self.cancel, &self.offsite).await;
        let duration = started.elapsed();
        self.set_running(false);
        let outcome = result.outcome();
        let now = Utc::now();
        self.state.record(outcome, now);
        if let Some(o) = result.run_outcome() {
            metrics::record_run(&self.policy.name, o, duration, result.reclaimed_bytes());
        }
        if let Some(e) = result.expired() {
            metrics::record_expired(&self.policy.name, e.transactions, e.bytes);
        }
        let stats = match result {
            JobResult::Success(_) => self.refresh(true).await,
            _ => None,
        };
        if let Some(stats) = &stats {
            self.state.commit_base = stats.commit_lines;
        }
        if outcome != LastOutcome::Cancelled {
            self.save_state();
        }
        self.list_backups().await;
        if let Some(stats) = stats {
            self.publish(stats);
        } else {
            self.republish_state();
        }
        self.shared
            .systemd
            .record_run(&self.policy.name, outcome.as_str(), now);
    }
}

impl Supervisor {
    /// After a run that did not change the figures: the board's state part only.
    fn republish_state(&self) {
        publish_state_metrics(&self.policy.name, &self.state);
        let mut board = self.shared.board.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = board.get_mut(&self.policy.name) {
            s.state = self.state.clone();
            s.backups = self.backups;
        }
        drop(board);
        self.shared.changed.notify_one();
    }
}

/// Exports every gauge of one WAL's status (no-ops without an installed recorder).
fn publish_metrics(name: &str, status: &WalStatus) {
    metrics::publish_wal(name, &status.figures());
    if let Some(p) = status.stats.free_percent {
        metrics::publish_disk_free(name, p / 100.0);
    }
    if let Some((count, bytes)) = status.backups {
        metrics::publish_backups(name, count, bytes);
    }
    metrics::set_in_progress(name, status.running);
    publish_state_metrics(name, &status.state);
}

fn publish_state_metrics(name: &str, state: &WalState) {
    metrics::set_consecutive_failures(name, u64::from(state.consecutive_failures));
    let last = state
        .last_success
        .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
    metrics::set_last_success(name, last);
}

async fn sleep_until_opt(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
