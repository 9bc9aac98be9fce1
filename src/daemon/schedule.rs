//! Cron schedules (UTC) via tokio-cron-scheduler. A job ONLY enqueues a request to its
//! WAL's supervisor: the crate lets runs overlap and does not await running jobs at
//! shutdown, so the pipeline must never run inside a job. Rebuilt from scratch on reload.

use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};

use super::DaemonError;
use super::triggers::Request;
use crate::policy::Schedule;

/// The running scheduler; `None` when no WAL has a schedule (no background ticking then).
#[derive(Default)]
pub struct Schedules {
    sched: Option<JobScheduler>,
}

/// One WAL's schedules and the supervisor queue they feed.
pub struct WalSchedules<'a> {
    pub wal: &'a str,
    pub schedules: &'a [Schedule],
    pub requests: mpsc::Sender<Request>,
}

impl Schedules {
    /// Stops the old jobs and starts the new ones.
    pub async fn rebuild(&mut self, wals: Vec<WalSchedules<'_>>) -> Result<(), DaemonError> {
        self.shutdown().await;
        if wals.iter().all(|w| w.schedules.is_empty()) {
            return Ok(());
        }
        let sched = JobScheduler::new().await?;
        for w in wals {
            for s in w.schedules {
                sched.add(job(w.wal, s, w.requests.clone())?).await?;
            }
        }
        sched.start().await?;
        self.sched = Some(sched);
        Ok(())
    }

    /// Stops every job; running ones only enqueue, so nothing is left half-done.
    pub async fn shutdown(&mut self) {
        if let Some(mut sched) = self.sched.take()
            && let Err(e) = sched.shutdown().await
        {
            tracing::warn!(event = "schedule", "cron scheduler shutdown: {e}");
        }
    }
}

fn job(wal: &str, s: &Schedule, tx: mpsc::Sender<Request>) -> Result<Job, DaemonError> {
    let wal = wal.to_string();
    let expr = s.as_str().to_string();
    Ok(Job::new_async(s.as_str(), move |_, _| {
        let tx = tx.clone();
        let (wal, expr) = (wal.clone(), expr.clone());
        Box::pin(async move {
            tracing::debug!(event = "schedule", wal = %wal, schedule = %expr, "schedule fired");
            if tx.try_send(Request::Scheduled).is_err() {
                // The queue is full (a run is in progress with requests pending) or closed.
                tracing::info!(event = "schedule", wal = %wal, schedule = %expr,
                    "schedule fired while requests are pending; not queued again");
            }
        })
    })?)
}
