//! The daemon (`walcompactd run`): one supervisor per WAL fed by file-change hints, a
//! fallback poll and cron schedules; hot policy reload on file change or SIGHUP; graceful
//! shutdown on SIGTERM/SIGINT; systemd readiness, status and watchdog.
//!
//! Data flow: watcher/poll → supervisor (stats → `triggers::decide`) → job (hooks, pipeline)
//! → state file + logs. Cron jobs only enqueue requests to supervisors.

mod error;
pub mod hooks;
mod job;
pub mod logging;
pub mod notify;
pub mod observe;
pub mod offsite;
pub mod report;
pub mod schedule;
pub mod state;
pub mod state_io;
pub mod stats;
pub mod supervisor;
pub mod triggers;
pub mod watcher;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

pub use error::DaemonError;

use self::logging::LogHandle;
use self::notify::Systemd;
use self::observe::{Observer, Watched};
use self::schedule::{Schedules, WalSchedules};
use self::supervisor::{Handle, Shared, StatusBoard};
use self::watcher::Watcher;
use crate::policy::{self, Policy, PolicyError, PolicySource, Trust};

/// Editors write a file in several steps: reload this long after the last change event.
const RELOAD_DEBOUNCE: Duration = Duration::from_secs(1);
/// How often directories that could not be watched (not created yet) are retried: a WAL
/// whose directory appears after the daemon started is noticed this soon. Cheap: with every
/// directory watched, a retry is a set lookup; while one is missing, one failed syscall.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// What `run` starts from: the policy already loaded (logging was set up from it).
pub struct Options {
    /// `--policy`, if given: reloads read it again; else the default lookup is redone.
    pub policy_path: Option<PathBuf>,
    pub policy: Policy,
    pub source: PolicySource,
    /// How the policy passed the trust check (`Skipped` is warned about).
    pub trust: Trust,
    pub log: LogHandle,
}

/// The running daemon's moving parts.
struct Daemon {
    policy_path: Option<PathBuf>,
    policy: Policy,
    source: PolicySource,
    log: LogHandle,
    shutdown: CancellationToken,
    shared: Shared,
    supervisors: BTreeMap<String, Handle>,
    watcher: Watcher,
    schedules: Schedules,
    observer: Observer,
}

/// Runs until SIGTERM or SIGINT; returns after supervisors stopped (bounded wait).
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    let (reload_tx, mut reload_rx) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let systemd = Arc::new(Systemd::from_env());
    let mut d = Daemon {
        policy_path: opts.policy_path,
        source: opts.source,
        log: opts.log,
        shutdown: shutdown.clone(),
        shared: Shared {
            state_dir: opts.policy.daemon.state_dir.clone(),
            board: StatusBoard::default(),
            systemd: Arc::clone(&systemd),
            changed: Arc::new(tokio::sync::Notify::new()),
        },
        supervisors: BTreeMap::new(),
        watcher: Watcher::new(reload_tx)?,
        schedules: Schedules::default(),
        observer: Observer::start(&opts.policy.daemon, shutdown.clone()),
        policy: opts.policy.clone(),
    };
    info!(event = "policy", source = %d.source, wals = d.policy.wals.len(), "policy loaded from {}", d.source);
    warn_if_untrusted(opts.trust);
    log_notes(&d.policy, &d.source);
    info!(event = "startup", state_dir = %d.shared.state_dir.display(), "state directory");
    state_io::prepare_dir(&d.shared.state_dir).await;
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    d.watch_policy_file();
    d.apply(opts.policy).await;
    systemd.ready();
    info!(event = "ready", wals = d.supervisors.len(), "daemon ready");
    spawn_watchdog(Arc::clone(&systemd), shutdown.clone());
    let mut reload_at: Option<tokio::time::Instant> = None;
    let mut watch_retry = tokio::time::interval(WATCH_RETRY);
    let mut observe_tick = tokio::time::interval(observe::TICK);
    observe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let changed = Arc::clone(&d.shared.changed);
    loop {
        tokio::select! {
            _ = sigterm.recv() => { info!(event = "signal", signal = "SIGTERM", "shutting down"); break }
            _ = sigint.recv() => { info!(event = "signal", signal = "SIGINT", "shutting down"); break }
            _ = sighup.recv() => {
                info!(event = "signal", signal = "SIGHUP", "reloading the policy");
                d.reload().await;
            }
            Some(()) = reload_rx.recv() => {
                reload_at = Some(tokio::time::Instant::now() + RELOAD_DEBOUNCE);
            }
            _ = sleep_until_opt(reload_at) => {
                reload_at = None;
                info!(event = "reload", "policy file changed; reloading");
                d.reload().await;
            }
            _ = watch_retry.tick() => { d.watcher.retry(); }
            _ = changed.notified() => d.observer.observe(&d.shared.board),
            _ = observe_tick.tick() => d.observer.observe(&d.shared.board),
        }
    }
    systemd.stopping();
    d.stop().await;
    info!(event = "stopped", "daemon stopped");
    Ok(())
}

impl Daemon {
    /// Watches the policy file's directory (when the policy came from a file).
    fn watch_policy_file(&mut self) {
        if let PolicySource::File(p) = &self.source {
            self.watcher.set_policy(&absolute(p));
        }
    }

    /// Re-reads the policy (on the blocking pool: a slow disk must not stall the runtime);
    /// an invalid or untrusted one is logged with every error and ignored.
    async fn reload(&mut self) {
        self.shared.systemd.reloading();
        let path = self.policy_path.clone();
        let loaded = match tokio::task::spawn_blocking(move || {
            policy::load_trusted(path.as_deref())
        })
        .await
        {
            Ok(loaded) => loaded,
            Err(e) => {
                crate::metrics::record_policy_reload(false);
                error!(
                    event = "policy_error",
                    "policy loading panicked: {e}; keeping the running policy"
                );
                self.shared.systemd.ready();
                return;
            }
        };
        match loaded {
            Ok((new, source, trust)) => {
                crate::metrics::record_policy_reload(true);
                info!(event = "policy", source = %source, wals = new.wals.len(), "policy reloaded from {source}");
                warn_if_untrusted(trust);
                log_notes(&new, &source);
                self.source = source;
                self.watch_policy_file();
                if let Err(why) = self.log.apply(&new.daemon) {
                    warn!(event = "policy", "{why}");
                }
                if new.daemon.state_dir != self.shared.state_dir {
                    warn!(
                        event = "policy",
                        "daemon.state_dir changed: takes effect after a restart"
                    );
                }
                if new.daemon.metrics_listen != self.policy.daemon.metrics_listen
                    || new.daemon.metrics_textfile != self.policy.daemon.metrics_textfile
                {
                    warn!(
                        event = "policy",
                        "daemon.metrics_listen/metrics_textfile changed: the exporter is installed once; takes effect after a restart"
                    );
                }
                if new.daemon.metrics_listen != self.policy.daemon.metrics_listen
                    && let Some(addr) = new
                        .daemon
                        .metrics_listen
                        .filter(|a| observe::beyond_loopback(*a))
                {
                    warn!(event = "metrics", listen = %addr,
                        "{} (from the next restart: the listener is installed once)",
                        observe::exposure_note(addr));
                }
                self.apply(new).await;
            }
            Err(e) => {
                crate::metrics::record_policy_reload(false);
                log_policy_error(&e);
            }
        }
        self.shared.systemd.ready();
    }

    /// Starts, updates or stops supervisors to match `new`, then rebuilds routes and cron.
    async fn apply(&mut self, new: Policy) {
        let keep: Vec<&str> = new.wals.iter().map(|w| w.name.as_str()).collect();
        let gone: Vec<String> = self
            .supervisors
            .keys()
            .filter(|n| !keep.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(h) = self.supervisors.remove(&name) {
                info!(event = "supervisor", wal = %name, "WAL removed from the policy; stopping its supervisor");
                h.stop().await;
                self.shared
                    .board
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            }
        }
        for w in &new.wals {
            match self.supervisors.get(&w.name) {
                Some(h) if h.path == w.resolved_path => {
                    h.policy.send_if_modified(|p| {
                        let changed = p != w;
                        *p = w.clone();
                        changed
                    });
                }
                _ => {
                    if let Some(old) = self.supervisors.remove(&w.name) {
                        old.stop().await;
                    }
                    let h = supervisor::spawn(w.clone(), self.shared.clone(), &self.shutdown);
                    self.supervisors.insert(w.name.clone(), h);
                }
            }
        }
        let routes = self
            .supervisors
            .values()
            .map(|h| (h.path.clone(), Arc::clone(&h.hint)))
            .collect();
        self.watcher.set_wals(routes);
        let jobs = new
            .wals
            .iter()
            .filter_map(|w| {
                self.supervisors.get(&w.name).map(|h| WalSchedules {
                    wal: &w.name,
                    schedules: &w.triggers.schedule,
                    requests: h.requests.clone(),
                })
            })
            .collect();
        if let Err(e) = self.schedules.rebuild(jobs).await {
            error!(event = "schedule", "cannot start the cron schedules: {e}");
        }
        self.shared.systemd.set_wal_count(self.supervisors.len());
        let watched = new
            .wals
            .iter()
            .filter_map(|w| {
                self.supervisors.get(&w.name).map(|h| {
                    let watched = Watched {
                        path: w.resolved_path.clone(),
                        min_reclaimable_bytes: w.triggers.min_reclaimable_bytes,
                        alerts: h.alerts.clone(),
                    };
                    (w.name.clone(), watched)
                })
            })
            .collect();
        self.observer.set_policy(&new, watched);
        self.policy = new;
    }

    /// Stops accepting triggers, then stops every supervisor (each cancels its job).
    async fn stop(&mut self) {
        self.schedules.shutdown().await;
        self.shutdown.cancel();
        let handles = std::mem::take(&mut self.supervisors);
        let stops = handles.into_values().map(|h| tokio::spawn(h.stop()));
        for s in stops.collect::<Vec<_>>() {
            let _ = s.await;
        }
    }
}

/// The policy's notes; a policy with no WAL is one clear line saying what to do (a fresh
/// package install starts this way and waits for the operator's reload).
fn log_notes(policy: &Policy, source: &PolicySource) {
    if policy.wals.is_empty() {
        warn!(
            event = "idle",
            "no WALs in {source}; add a [[wal]] entry and reload"
        );
    }
    for note in policy.wal_notes() {
        info!(event = "policy", "note: {note}");
    }
}

/// The escape hatch was used: say so at every start and reload, since nothing else will.
fn warn_if_untrusted(trust: Trust) {
    if trust == Trust::Skipped {
        warn!(
            event = "policy_trust",
            "{}",
            policy::trust::INSECURE_WARNING
        );
    }
}

/// One event per policy error (with its key path), then a summary.
fn log_policy_error(e: &PolicyError) {
    match e {
        PolicyError::Invalid { origin, errors } | PolicyError::Untrusted { origin, errors } => {
            for k in errors {
                error!(event = "policy_error", origin = %origin, key = %k.key, "{origin}: {k}");
            }
            let what = if matches!(e, PolicyError::Invalid { .. }) {
                "invalid"
            } else {
                "not trusted"
            };
            error!(event = "policy_error", origin = %origin, errors = errors.len(),
                "policy is {what} ({} errors); keeping the running policy", errors.len());
        }
        other => error!(
            event = "policy_error",
            "{other}; keeping the running policy"
        ),
    }
}

fn spawn_watchdog(systemd: Arc<Systemd>, shutdown: CancellationToken) {
    let Some(every) = notify::watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => systemd.watchdog(),
            }
        }
    });
}

fn absolute(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    policy::normalize(&abs)
}

async fn sleep_until_opt(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
