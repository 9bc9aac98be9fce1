//! The daemon's side of off-host copies: one uploader task per WAL with `[wal.offsite]`,
//! woken after each successful run (whose housekeeping queued the new backup and archive)
//! and when a retry is due. It runs beside the supervisor, never in its loop: an upload,
//! however slow, never delays a compaction, and a server that is down costs a log line, a
//! metric and a retry.
//!
//! At start the uploader tries every pending file at once (a restart usually follows a
//! fix), then follows the queue's backoff. Shutdown drops an upload in flight: the file
//! stays pending and the next start uploads it again, whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::supervisor::StatusBoard;
use crate::offsite::push::{self, Uploader};
use crate::policy::WalPolicy;

/// Even with nothing due, look again this often (a queue changed by `offsite push`, a clock
/// that jumped).
const IDLE_RECHECK: Duration = Duration::from_secs(600);
/// At start the supervisor may not have put the WAL on the board yet: publish again soon.
const BOARD_RETRY: Duration = Duration::from_secs(5);

/// What the job's housekeeping needs: where the queue is, and how to wake the uploader.
#[derive(Clone)]
pub struct Link {
    pub state_dir: PathBuf,
    pub kick: Arc<Notify>,
}

impl Link {
    /// Files still waiting for a copy (never pruned); `None` (logged) if the queue cannot be
    /// read. Blocking.
    pub fn pending(&self, policy: &WalPolicy) -> Option<Vec<PathBuf>> {
        match push::pending_paths(policy, &self.state_dir) {
            Ok(p) => Some(p),
            Err(e) => {
                error!(event = "offsite", wal = %policy.name,
                    "{}: {e}; not pruning local backups or archives until it is readable", policy.name);
                None
            }
        }
    }

    /// Queues a successful run's backup and archive and wakes the uploader. Blocking.
    pub fn enqueue(&self, policy: &WalPolicy, backup: &Path, archive: Option<&Path>) {
        if policy.offsite.is_none() {
            return;
        }
        match push::enqueue_run(policy, &self.state_dir, Some(backup), archive) {
            Ok(()) => self.kick.notify_one(),
            Err(e) => error!(event = "offsite", wal = %policy.name,
                "{}: cannot queue the new files for their off-host copies: {e}", policy.name),
        }
    }
}

/// The offsite part of a WAL's status, for `status`, metrics and the alert.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OffsiteStatus {
    pub pending: usize,
    pub pending_bytes: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
}

/// Starts the uploader of one WAL; it follows the WAL's policy through `policy` and stops
/// with `cancel`.
pub fn spawn(
    policy: watch::Receiver<WalPolicy>,
    link: Link,
    board: StatusBoard,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    tokio::spawn(run(policy, link, board, changed, cancel));
}

async fn run(
    mut policy_rx: watch::Receiver<WalPolicy>,
    link: Link,
    board: StatusBoard,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut first = true;
    let mut reported: Option<String> = None;
    loop {
        let policy = policy_rx.borrow_and_update().clone();
        let mut wait = None;
        if policy.offsite.is_some() {
            match Uploader::new(&policy, &link.state_dir) {
                Ok(up) => {
                    reported = None;
                    let pass = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = push::pass(&up, first) => r,
                    };
                    first = false;
                    match pass {
                        Ok(r) => {
                            wait = r.next_retry.map(until);
                        }
                        Err(e) => {
                            warn!(event = "offsite", wal = %policy.name, "{}: {e}", policy.name)
                        }
                    }
                    if !publish(&policy, &link, &board, &changed).await {
                        wait = Some(wait.map_or(BOARD_RETRY, |w| w.min(BOARD_RETRY)));
                    }
                }
                // Logged once per distinct error, not at every wake.
                Err(e) => {
                    let text = e.to_string();
                    if reported.as_deref() != Some(text.as_str()) {
                        error!(event = "offsite", wal = %policy.name, "{}: {text}", policy.name);
                        reported = Some(text);
                    }
                }
            }
        }
        let sleep = wait.unwrap_or(IDLE_RECHECK).min(IDLE_RECHECK);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = link.kick.notified() => {}
            r = policy_rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// How long until `t` (zero if past).
fn until(t: DateTime<Utc>) -> Duration {
    (t - Utc::now()).to_std().unwrap_or_default()
}

/// Puts the queue's figures on the status board (for the alert) and wakes the observer;
/// false when the WAL is not on the board yet (or the queue could not be read).
async fn publish(policy: &WalPolicy, link: &Link, board: &StatusBoard, changed: &Notify) -> bool {
    let file = crate::offsite::queue::QueueFile::new(&link.state_dir, &policy.name);
    let Ok(Ok(q)) = tokio::task::spawn_blocking(move || file.load()).await else {
        return false;
    };
    let status = OffsiteStatus {
        pending: q.pending.len(),
        pending_bytes: q.pending_bytes(),
        oldest_pending: q.oldest_pending(),
        last_success: q.last_success,
    };
    let mut b = board.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s) = b.get_mut(&policy.name) else {
        return false;
    };
    s.offsite = Some(status);
    drop(b);
    changed.notify_one();
    true
}
