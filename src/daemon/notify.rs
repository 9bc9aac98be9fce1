//! systemd integration through `sd_notify`: READY, RELOADING, STATUS and the watchdog.
//! Every call is a no-op when `NOTIFY_SOCKET` is unset (not started by systemd).

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sd_notify::NotifyState;

/// The last run anywhere, for the one-line STATUS.
#[derive(Debug, Clone)]
struct LastRun {
    wal: String,
    outcome: &'static str,
    at: DateTime<Utc>,
}

/// Talks to systemd and keeps what the STATUS line summarizes.
pub struct Systemd {
    enabled: bool,
    summary: Mutex<(usize, Option<LastRun>)>,
}

impl Systemd {
    /// Enabled only when systemd gave us a socket.
    pub fn from_env() -> Systemd {
        Systemd {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            summary: Mutex::new((0, None)),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if self.enabled
            && let Err(e) = sd_notify::notify(false, states)
        {
            tracing::debug!(event = "systemd", "sd_notify failed: {e}");
        }
    }

    /// READY=1 with the current STATUS.
    pub fn ready(&self) {
        let status = self.status_line();
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// RELOADING=1 (with MONOTONIC_USEC, which `Type=notify-reload` requires).
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Sets how many WALs are watched and refreshes STATUS.
    pub fn set_wal_count(&self, n: usize) {
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).0 = n;
        self.refresh_status();
    }

    /// Records a run's end and refreshes STATUS.
    pub fn record_run(&self, wal: &str, outcome: &'static str, at: DateTime<Utc>) {
        self.summary.lock().unwrap_or_else(|e| e.into_inner()).1 = Some(LastRun {
            wal: wal.to_string(),
            outcome,
            at,
        });
        self.refresh_status();
    }

    fn refresh_status(&self) {
        let status = self.status_line();
        self.send(&[NotifyState::Status(&status)]);
    }

    /// "watching 2 WALs; last: diotec360 success 12:00:01"
    pub fn status_line(&self) -> String {
        let s = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        let plural = if s.0 == 1 { "" } else { "s" };
        match &s.1 {
            None => format!("watching {} WAL{plural}; no run yet", s.0),
            Some(l) => format!(
                "watching {} WAL{plural}; last: {} {} {}",
                s.0,
                l.wal,
                l.outcome,
                l.at.format("%H:%M:%S")
            ),
        }
    }
}

/// Half the watchdog interval when systemd enabled the watchdog for us, else `None`.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0u64;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}
