//! State-file I/O off the daemon's runtime. The runtime is single-threaded: a state write
//! (create_dir_all, a write, two fsyncs, a rename) done inline on a slow disk would stall every
//! supervisor, signal handling and the systemd watchdog ping. Here loads and writes run on
//! tokio's blocking pool; each WAL has one writer task, so its writes happen one at a time, in
//! order, and a stalled write of one WAL delays nobody else.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::state::{self, Loaded, StateDir, StateFile, WalState};

/// Creates the state directory private at startup, or warns (naming it and its mode) when an
/// existing one lets other users add, replace or remove state files, which decide when WALs
/// are compacted. An existing directory's mode is never changed. Not fatal: the daemon still
/// compacts, and each failed state write is logged.
pub async fn prepare_dir(dir: &Path) {
    let owned = dir.to_path_buf();
    let found = tokio::task::spawn_blocking(move || state::prepare_state_dir(&owned)).await;
    let path = dir.display();
    match found {
        Ok(Ok(StateDir::Created)) => {
            info!(event = "state", state_dir = %path, mode = %format!("{:04o}", state::STATE_DIR_MODE),
                "created the state directory");
        }
        Ok(Ok(StateDir::Existing {
            mode,
            owner,
            exposure,
        })) if !exposure.is_empty() => {
            let mode = format!("{mode:04o}");
            warn!(event = "state", state_dir = %path, mode = %mode, owner,
                "the state directory {path} (mode {mode}, owner uid {owner}) is {}: other users can \
                 replace the state files that decide when WALs are compacted; make it 0700 and owned \
                 by the daemon's user (left unchanged)",
                exposure.join(", "));
        }
        Ok(Ok(StateDir::Existing { .. })) => {}
        Ok(Err(e)) => error!(event = "state", state_dir = %path,
            "{e}; state files cannot be saved until this is fixed"),
        Err(e) => error!(event = "state", state_dir = %path, "state directory check panicked: {e}"),
    }
}

/// A state write still running after this long is logged once (a slow or stalled disk):
/// long enough that a healthy fsync never trips it, short enough to show up while it lasts.
pub const STATE_WRITE_SLOW: Duration = Duration::from_secs(2);

/// Reads a state file on the blocking pool. A panic there is reported like an unreadable file.
pub async fn load(file: &StateFile) -> Loaded {
    let file = file.clone();
    tokio::task::spawn_blocking(move || file.load())
        .await
        .unwrap_or_else(|e| Loaded::Rebuilt(WalState::default(), format!("unreadable: {e}")))
}

/// Writes one WAL's state file in the background, keeping the order of saves: a write
/// completes before the next one starts. When saves arrive faster than the disk takes them,
/// only the newest waiting state is written (each is a full snapshot, so nothing is lost).
pub struct StateWriter {
    /// `None` once closed.
    tx: Option<mpsc::UnboundedSender<WalState>>,
    task: Option<JoinHandle<()>>,
}

impl StateWriter {
    /// Starts the writer task of `file` (on the current runtime); `wal` names it in logs.
    pub fn spawn(file: StateFile, wal: String) -> StateWriter {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(write_loop(file, wal, rx));
        StateWriter {
            tx: Some(tx),
            task: Some(task),
        }
    }

    /// Queues `state` for writing and returns at once; errors are logged by the writer.
    pub fn save(&self, state: WalState) {
        if let Some(tx) = &self.tx {
            // The task only ends after `close`, so the receiver is alive here.
            let _ = tx.send(state);
        }
    }

    /// Accepts no more saves and waits until every queued state is on disk (or failed):
    /// a supervisor calls it before it stops, so shutdown never drops a pending write.
    pub async fn close(&mut self) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn write_loop(file: StateFile, wal: String, mut rx: mpsc::UnboundedReceiver<WalState>) {
    while let Some(mut state) = rx.recv().await {
        while let Ok(newer) = rx.try_recv() {
            state = newer;
        }
        write_one(&file, &wal, state).await;
    }
}

/// One write on the blocking pool, awaited (so the next cannot overtake it); logged if slow.
async fn write_one(file: &StateFile, wal: &str, state: WalState) {
    let started = Instant::now();
    let mut write = tokio::task::spawn_blocking({
        let file = file.clone();
        move || file.save(&state)
    });
    let path = file.path().display();
    let joined = tokio::select! {
        r = &mut write => r,
        _ = tokio::time::sleep(STATE_WRITE_SLOW) => {
            warn!(event = "state", wal, path = %path,
                "state write still running after {} s (slow disk?); other WALs carry on",
                STATE_WRITE_SLOW.as_secs());
            let r = write.await;
            info!(event = "state", wal, path = %path, duration_ms = started.elapsed().as_millis() as u64,
                "slow state write finished");
            r
        }
    };
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(event = "state", wal, path = %path, "cannot save state: {e}"),
        Err(e) => error!(event = "state", wal, path = %path, "state write panicked: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::state::LastOutcome;

    #[tokio::test]
    async fn saves_land_in_order_and_close_waits_for_them() {
        let d = tempfile::tempdir().unwrap();
        let file = StateFile::new(&d.path().join("state"), "w");
        assert!(matches!(load(&file).await, Loaded::Fresh(_)));
        let mut w = StateWriter::spawn(file.clone(), "w".into());
        for base in 1..=50 {
            w.save(WalState {
                commit_base: base,
                ..WalState::default()
            });
        }
        let mut last = WalState {
            commit_base: 51,
            ..WalState::default()
        };
        last.record(LastOutcome::Success, chrono::Utc::now());
        w.save(last.clone());
        w.close().await;
        match load(&file).await {
            Loaded::Found(s) => assert_eq!(s, last, "the newest save is what stays"),
            other => panic!("{other:?}"),
        }
        w.save(WalState::default()); // after close: ignored, no panic
    }
}
