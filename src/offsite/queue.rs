//! The pending list: what still has to leave the host, and the copies recently confirmed.
//! One JSON file per WAL beside the daemon's state (`<state_dir>/<wal>.offsite.json`,
//! `0600`, written atomically), changed only under an `flock` on `<wal>.offsite.lock`, so
//! the daemon's uploader, its housekeeping and `walcompactd offsite push` never lose each
//! other's changes. An upload itself runs outside the lock (two pushers at once upload the
//! same bytes to the same key: wasteful, harmless).
//!
//! A separate file rather than new fields in `<wal>.json`: the supervisor owns that file and
//! writes full snapshots of it; sharing it with a second writer would need the two to merge.
//! State files written before offsite existed load unchanged.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::OffsiteError;

/// The queue holds transfer state of the daemon's files: the daemon's alone.
const QUEUE_FILE_MODE: u32 = 0o600;
/// Confirmed copies remembered for `offsite list` and `status` (older ones are still on the
/// server; `offsite list` reads the server itself).
const CONFIRMED_KEPT: usize = 200;
/// The first retry after a failure waits this long...
const BACKOFF_BASE: Duration = Duration::from_secs(30);
/// ...doubling per failure up to this: a server down for a day is tried hourly, not hammered.
const BACKOFF_MAX: Duration = Duration::from_secs(3_600);

/// What a queued file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Backup,
    Archive,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Backup => "backup",
            Kind::Archive => "archive",
        }
    }
}

/// A local file waiting for its copy to be confirmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub path: PathBuf,
    pub kind: Kind,
    /// Its size when queued (for `walcompactd_offsite_pending_bytes`).
    pub bytes: u64,
    pub queued_at: DateTime<Utc>,
    /// Failed attempts so far (0: never tried).
    #[serde(default)]
    pub attempts: u32,
    /// Not retried before this (after a failure).
    #[serde(default)]
    pub next_attempt: Option<DateTime<Utc>>,
    /// The last failure, redacted.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A copy confirmed on the server: same size, our digest in its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confirmed {
    pub path: PathBuf,
    pub kind: Kind,
    pub url: String,
    pub bytes: u64,
    pub sha256: String,
    pub at: DateTime<Utc>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Queue {
    pub pending: Vec<Pending>,
    pub confirmed: Vec<Confirmed>,
    pub last_success: Option<DateTime<Utc>>,
}

impl Queue {
    /// Queues `path` unless it is already pending (a repeated enqueue is a no-op).
    pub fn enqueue(&mut self, path: PathBuf, kind: Kind, bytes: u64, now: DateTime<Utc>) {
        if self.pending.iter().any(|p| p.path == path) {
            return;
        }
        self.pending.push(Pending {
            path,
            kind,
            bytes,
            queued_at: now,
            attempts: 0,
            next_attempt: None,
            last_error: None,
        });
    }

    /// Whether `path` still waits for a confirmed copy (and so must not be pruned).
    pub fn is_pending(&self, path: &Path) -> bool {
        self.pending.iter().any(|p| p.path == path)
    }

    /// Bytes still to upload.
    pub fn pending_bytes(&self) -> u64 {
        self.pending.iter().map(|p| p.bytes).sum()
    }

    /// When the oldest pending file was queued (for the "Offsite Copies Behind" alert).
    pub fn oldest_pending(&self) -> Option<DateTime<Utc>> {
        self.pending.iter().map(|p| p.queued_at).min()
    }

    /// The pending entries due at `now` (never tried, or their backoff has passed).
    pub fn due(&self, now: DateTime<Utc>) -> Vec<Pending> {
        self.pending
            .iter()
            .filter(|p| p.next_attempt.is_none_or(|t| t <= now))
            .cloned()
            .collect()
    }

    /// The earliest retry time among pending entries, if any waits.
    pub fn next_retry(&self) -> Option<DateTime<Utc>> {
        self.pending.iter().filter_map(|p| p.next_attempt).min()
    }

    /// Moves `path` from pending to confirmed.
    pub fn confirm(&mut self, c: Confirmed) {
        self.pending.retain(|p| p.path != c.path);
        self.last_success = Some(c.at);
        self.confirmed.retain(|old| old.url != c.url);
        self.confirmed.push(c);
        let excess = self.confirmed.len().saturating_sub(CONFIRMED_KEPT);
        self.confirmed.drain(..excess);
    }

    /// Records a failed attempt at `path`: the next is due after [`backoff`].
    pub fn failed(&mut self, path: &Path, error: String, now: DateTime<Utc>) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.path == path) {
            p.attempts = p.attempts.saturating_add(1);
            p.next_attempt = Some(now + backoff(p.attempts));
            p.last_error = Some(error);
        }
    }

    /// Drops `path` from pending (the file is gone and no copy can be made any more).
    pub fn forget(&mut self, path: &Path) {
        self.pending.retain(|p| p.path != path);
    }
}

/// The wait before the next attempt after `failures` failures in a row: 30 s, 1 min,
/// 2 min, ... capped at an hour. Pure.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_MAX)
}

/// The queue file of one WAL.
#[derive(Debug, Clone)]
pub struct QueueFile {
    path: PathBuf,
    lock: PathBuf,
}

impl QueueFile {
    /// `state_dir/<wal name>.offsite.json` (names are validated file-name safe).
    pub fn new(state_dir: &Path, wal_name: &str) -> QueueFile {
        QueueFile {
            path: state_dir.join(format!("{wal_name}.offsite.json")),
            lock: state_dir.join(format!("{wal_name}.offsite.lock")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the queue (empty if there is none yet). A corrupt file is an error, not an
    /// empty queue: forgetting pending uploads silently would let their files be pruned.
    pub fn load(&self) -> Result<Queue, OffsiteError> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.error(e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Queue::default()),
            Err(e) => Err(self.error(e.to_string())),
        }
    }

    /// Reads, changes and saves the queue under its lock; returns what `change` returned.
    /// Blocking (flock, write, fsyncs, rename).
    pub fn update<T>(&self, change: impl FnOnce(&mut Queue) -> T) -> Result<T, OffsiteError> {
        let _lock = self.lock()?;
        let mut queue = self.load()?;
        let out = change(&mut queue);
        let bytes = serde_json::to_vec_pretty(&queue).map_err(|e| self.error(e.to_string()))?;
        crate::fsutil::atomic_write_then(&self.path, &bytes, QUEUE_FILE_MODE, || {})
            .map_err(|e| self.error(format!("cannot save: {e}")))?;
        Ok(out)
    }

    /// The exclusive lock, held while the returned file is open.
    fn lock(&self) -> Result<nix::fcntl::Flock<File>, OffsiteError> {
        if let Some(dir) = self.lock.parent() {
            fs::create_dir_all(dir)
                .map_err(|e| self.error(format!("cannot create {}: {e}", dir.display())))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(QUEUE_FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.lock)
            .map_err(|e| self.error(format!("cannot open {}: {e}", self.lock.display())))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| self.error(format!("cannot lock {}: {e}", self.lock.display())))
    }

    fn error(&self, detail: String) -> OffsiteError {
        OffsiteError::Queue {
            path: self.path.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn backoff_doubles_from_thirty_seconds_to_an_hour() {
        let secs: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(0).as_secs(), 30);
        assert_eq!(backoff(u32::MAX).as_secs(), 3600);
    }

    #[test]
    fn failures_delay_an_entry_and_confirmation_removes_it() {
        let now = t("2026-01-01T00:00:00Z");
        let mut q = Queue::default();
        q.enqueue("/b/a.log".into(), Kind::Backup, 10, now);
        q.enqueue("/b/a.log".into(), Kind::Backup, 10, now);
        q.enqueue("/b/x.log".into(), Kind::Archive, 5, now);
        assert_eq!(q.pending.len(), 2, "a repeated enqueue is a no-op");
        assert_eq!(q.pending_bytes(), 15);
        q.failed(Path::new("/b/a.log"), "down".into(), now);
        assert_eq!(q.due(now).len(), 1);
        assert_eq!(q.next_retry(), Some(now + backoff(1)));
        assert_eq!(q.due(now + backoff(1)).len(), 2);
        q.confirm(Confirmed {
            path: "/b/a.log".into(),
            kind: Kind::Backup,
            url: "s3://b/a.log".into(),
            bytes: 10,
            sha256: "00".into(),
            at: now,
        });
        assert!(!q.is_pending(Path::new("/b/a.log")));
        assert!(q.is_pending(Path::new("/b/x.log")));
        assert_eq!(q.last_success, Some(now));
        assert_eq!(q.oldest_pending(), Some(now));
    }

    #[test]
    fn the_file_round_trips_and_a_missing_one_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let f = QueueFile::new(&d.path().join("state"), "w");
        assert_eq!(f.load().unwrap(), Queue::default());
        let now = t("2026-01-01T00:00:00Z");
        f.update(|q| q.enqueue("/x".into(), Kind::Archive, 3, now))
            .unwrap();
        assert!(f.load().unwrap().is_pending(Path::new("/x")));
        fs::write(f.path(), b"{oops").unwrap();
        assert!(f.load().is_err(), "a corrupt queue is not silently empty");
    }
}
