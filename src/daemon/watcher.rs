//! Change hints from the filesystem (notify 8). We watch each WAL's PARENT directory, since
//! compaction replaces the WAL by rename and an inode watch would go deaf. A WAL configured
//! through a symlink is watched in both directories: the symlink's, and the real file's
//! (where the application appends and compaction renames); the link is re-resolved on every
//! retry tick, so a link created or repointed later is followed. Events are only hints:
//! supervisors re-read from their stored offset, and a fallback poll covers filesystems
//! without events.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::event::EventKind;
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::{Notify, mpsc};

use super::DaemonError;
use crate::fsutil::parent_dir;

/// After waking for a WAL event, the notify thread pauses this long before reading more:
/// meanwhile the kernel merges identical queued inotify events (a writer's per-line
/// MODIFYs), so a writer doing 20k writes/s costs ~4 wake-ups/s instead of 20k.
/// Supervisors coalesce hints for longer anyway, so no latency is added that matters.
const EVENT_THROTTLE: Duration = Duration::from_millis(250);
/// Events handled this soon after a pause ended were queued during it (the batch read
/// from the inotify descriptor when the pause ended): they need no pause of their own.
const BATCH_GAP: Duration = Duration::from_millis(1);

/// A supervisor's wake-up: coalesces any number of events into one pending wake.
#[derive(Default)]
pub struct Hint {
    notify: Notify,
    rescan: AtomicBool,
}

impl Hint {
    /// Wakes the supervisor; `rescan` asks for a full re-read (events were lost).
    pub fn poke(&self, rescan: bool) {
        if rescan {
            self.rescan.store(true, Ordering::SeqCst);
        }
        self.notify.notify_one();
    }

    /// Waits for the next poke.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Takes (and clears) the rescan request.
    pub fn take_rescan(&self) -> bool {
        self.rescan.swap(false, Ordering::SeqCst)
    }
}

/// Which hint a changed path pokes.
#[derive(Default)]
struct Routes {
    /// Every path whose events poke a WAL's hint: the configured paths and the real files
    /// behind those that are symlinks.
    wals: HashMap<PathBuf, Arc<Hint>>,
    /// The WALs as configured.
    configured: Vec<(PathBuf, Arc<Hint>)>,
    policy: Option<PathBuf>,
}

impl Routes {
    /// Recomputes `wals` from `configured`; true when the set of paths changed.
    fn resolve(&mut self) -> bool {
        let mut wals = HashMap::new();
        for (path, hint) in &self.configured {
            let real = crate::pipeline::links::real_path_or_given(path);
            if real != *path {
                wals.insert(real, Arc::clone(hint));
            }
            wals.insert(path.clone(), Arc::clone(hint));
        }
        let changed =
            wals.len() != self.wals.len() || wals.keys().any(|k| !self.wals.contains_key(k));
        self.wals = wals;
        changed
    }
}

/// Owns the notify watcher and the path → hint routes.
pub struct Watcher {
    inner: RecommendedWatcher,
    routes: Arc<Mutex<Routes>>,
    watched: HashSet<PathBuf>,
}

impl Watcher {
    /// `policy_changed` receives a message whenever the policy file may have changed.
    pub fn new(policy_changed: mpsc::UnboundedSender<()>) -> Result<Watcher, DaemonError> {
        let routes = Arc::new(Mutex::new(Routes::default()));
        let r = Arc::clone(&routes);
        let mut pause_ended = Instant::now();
        let inner = notify::recommended_watcher(move |res: notify::Result<Event>| {
            let poked = route(
                &r.lock().unwrap_or_else(|e| e.into_inner()),
                res,
                &policy_changed,
            );
            // Anchored at the end of the last pause, not at the last event: a writer's
            // events can arrive closer together than any gap, and must still be paused.
            if poked && pause_ended.elapsed() > BATCH_GAP {
                std::thread::sleep(EVENT_THROTTLE);
                pause_ended = Instant::now();
            }
        })?;
        Ok(Watcher {
            inner,
            routes,
            watched: HashSet::new(),
        })
    }

    /// Replaces the WAL routes and watches every needed directory (unneeded ones are
    /// released). A directory that cannot be watched yet is retried by [`Watcher::ensure`].
    pub fn set_wals(&mut self, wals: Vec<(PathBuf, Arc<Hint>)>) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.configured = wals;
        routes.resolve();
        let mut dirs: HashSet<PathBuf> = routes.wals.keys().map(|p| parent_dir(p)).collect();
        dirs.extend(routes.policy.as_deref().map(parent_dir));
        drop(routes);
        for gone in self.watched.difference(&dirs).cloned().collect::<Vec<_>>() {
            let _ = self.inner.unwatch(&gone);
            self.watched.remove(&gone);
        }
        for dir in dirs {
            self.ensure(&dir);
        }
    }

    /// Retries directories that could not be watched (created since); true when all are.
    /// The WALs of a directory watched only now are poked: their file may have appeared
    /// before the watch did, with no event left to announce it.
    pub fn retry(&mut self) -> bool {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        // One lstat per WAL: follows a symlink created or repointed since the last look.
        if routes.resolve() {
            // The supervisor re-reads through the new link at once.
            routes.configured.iter().for_each(|(_, h)| h.poke(true));
        }
        let mut dirs: HashSet<PathBuf> = routes.wals.keys().map(|p| parent_dir(p)).collect();
        dirs.extend(routes.policy.as_deref().map(parent_dir));
        dirs.retain(|d| !self.watched.contains(d));
        let hints: Vec<(PathBuf, Arc<Hint>)> = routes
            .wals
            .iter()
            .map(|(wal, hint)| (parent_dir(wal), Arc::clone(hint)))
            .filter(|(dir, _)| dirs.contains(dir))
            .collect();
        drop(routes);
        // Not `all()`: every directory must be tried, not just up to the first failure.
        let pending = dirs.len();
        let now_watched: HashSet<PathBuf> = dirs.into_iter().filter(|d| self.ensure(d)).collect();
        for (dir, hint) in &hints {
            if now_watched.contains(dir) {
                hint.poke(false);
            }
        }
        now_watched.len() == pending
    }

    /// Routes changes of the policy file to the reload channel.
    pub fn set_policy(&mut self, path: &Path) {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).policy = Some(path.to_path_buf());
        self.ensure(&parent_dir(path));
    }

    /// Watches `dir` if it is not watched yet; true when it is watched. Cheap when it is.
    pub fn ensure(&mut self, dir: &Path) -> bool {
        if self.watched.contains(dir) {
            return true;
        }
        match self.inner.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                tracing::debug!(event = "watch", dir = %dir.display(), "watching directory");
                self.watched.insert(dir.to_path_buf());
                true
            }
            Err(_) => false,
        }
    }
}

/// Turns one notify event into pokes; true when a WAL was poked. Access events (opens,
/// reads, closes — including our own reads) are ignored, or every refresh would trigger
/// the next one.
fn route(
    routes: &Routes,
    res: notify::Result<Event>,
    policy_changed: &mpsc::UnboundedSender<()>,
) -> bool {
    let event = match res {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(event = "watch", "file watch error, rescanning: {e}");
            routes.wals.values().for_each(|h| h.poke(true));
            return false;
        }
    };
    if event.need_rescan() {
        // The kernel's queue overflowed (a writer opening the WAL per append makes three
        // events a line that do not merge): any change may have been missed, the policy
        // file's too, if there is one. The embedded policy has no file to re-read.
        tracing::debug!(event = "watch", "file events were lost; rescanning");
        routes.wals.values().for_each(|h| h.poke(true));
        if routes.policy.is_some() {
            let _ = policy_changed.send(());
        }
        return false;
    }
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    let mut poked = false;
    for path in &event.paths {
        if let Some(h) = routes.wals.get(path) {
            h.poke(false);
            poked = true;
        }
        if routes.policy.as_deref() == Some(path.as_path()) {
            let _ = policy_changed.send(());
        }
    }
    poked
}
