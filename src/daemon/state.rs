//! The daemon's persisted memory of one WAL: the commit-count base that count triggers
//! measure from, and the last outcome that cooldown and backoff need. One JSON file per
//! WAL in `daemon.state_dir`, written atomically; a corrupt file is rebuilt, never fatal.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::fsutil::atomic_write_then;

/// State files hold counts and times of one WAL: the daemon's alone.
const STATE_FILE_MODE: u32 = 0o600;

/// How the last run ended, as recorded for cooldown, backoff and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LastOutcome {
    /// The WAL was compacted.
    Success,
    /// The pipeline found nothing to reclaim.
    NothingToDo,
    /// Not attempted: a hook refused, another process held the WAL, or the lock was busy.
    Skipped,
    /// The run failed (error, panic, timeout); counts toward backoff.
    Failed,
    /// Stopped at a safe point because the daemon was shutting down.
    Cancelled,
}

impl LastOutcome {
    /// Label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LastOutcome::Success => "success",
            LastOutcome::NothingToDo => "nothing_to_do",
            LastOutcome::Skipped => "skipped",
            LastOutcome::Failed => "failed",
            LastOutcome::Cancelled => "cancelled",
        }
    }
}

/// What the daemon remembers about one WAL across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WalState {
    /// COMMIT lines in the WAL right after the last successful compaction: count triggers
    /// measure `commits now − base`, since committed transactions never disappear.
    pub commit_base: u64,
    /// When the last attempt ended.
    #[serde(with = "rfc3339")]
    pub last_run: Option<DateTime<Utc>>,
    pub last_outcome: Option<LastOutcome>,
    /// Failed runs in a row; reset by a success.
    pub consecutive_failures: u32,
    #[serde(with = "rfc3339")]
    pub last_success: Option<DateTime<Utc>>,
}

/// Timestamps as RFC 3339 strings (chrono's serde feature is not enabled in this crate).
mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&t.to_rfc3339()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

impl WalState {
    /// Records an attempt's end. Only `Failed` counts toward backoff; `Success` resets it.
    pub fn record(&mut self, outcome: LastOutcome, now: DateTime<Utc>) {
        self.last_run = Some(now);
        self.last_outcome = Some(outcome);
        match outcome {
            LastOutcome::Success => {
                self.consecutive_failures = 0;
                self.last_success = Some(now);
            }
            LastOutcome::Failed => self.consecutive_failures += 1,
            LastOutcome::NothingToDo => self.consecutive_failures = 0,
            LastOutcome::Skipped | LastOutcome::Cancelled => {}
        }
    }
}

/// The state file of one WAL.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

/// What loading found, so the caller can log a rebuilt state once.
#[derive(Debug)]
pub enum Loaded {
    Found(WalState),
    /// No file yet: a fresh WAL.
    Fresh(WalState),
    /// The file was unreadable or corrupt; a fresh state replaces it.
    Rebuilt(WalState, String),
}

impl StateFile {
    /// `state_dir/<wal name>.json`; names are validated to be file-name safe.
    pub fn new(state_dir: &Path, wal_name: &str) -> StateFile {
        StateFile {
            path: state_dir.join(format!("{wal_name}.json")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the state; never fails (a bad file is reported and replaced by a fresh state).
    pub fn load(&self) -> Loaded {
        match fs::read(&self.path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(state) => Loaded::Found(state),
                Err(e) => Loaded::Rebuilt(WalState::default(), format!("corrupt: {e}")),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Loaded::Fresh(WalState::default()),
            Err(e) => Loaded::Rebuilt(WalState::default(), format!("unreadable: {e}")),
        }
    }

    /// Writes the state atomically, creating the directory if missing. Blocking (a write,
    /// two fsyncs, a rename): the daemon calls it through [`super::state_io::StateWriter`].
    pub fn save(&self, state: &WalState) -> io::Result<()> {
        // A slow or stalled disk, for the test that the daemon's runtime never waits on it.
        fail::fail_point!("state::write::delay");
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(state).map_err(io::Error::other)?;
        crate::io_fault!(error "state::write")?;
        atomic_write_then(&self.path, &bytes, STATE_FILE_MODE, || {
            crate::crash_point!("state::rename::crash")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn round_trip_and_creates_dir() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::new(&d.path().join("a/b"), "w1");
        assert!(matches!(f.load(), Loaded::Fresh(_)));
        let mut s = WalState {
            commit_base: 42,
            ..WalState::default()
        };
        s.record(LastOutcome::Success, t("2025-01-01T00:00:00Z"));
        f.save(&s).unwrap();
        match f.load() {
            Loaded::Found(back) => assert_eq!(back, s),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn corrupt_file_is_rebuilt_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        let f = StateFile::new(d.path(), "w1");
        fs::write(f.path(), b"{not json").unwrap();
        match f.load() {
            Loaded::Rebuilt(s, why) => {
                assert_eq!(s, WalState::default());
                assert!(why.contains("corrupt"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        f.save(&WalState::default()).unwrap();
        assert!(matches!(f.load(), Loaded::Found(_)));
    }

    #[test]
    fn record_counts_failures_and_resets_on_success() {
        let mut s = WalState::default();
        let now = t("2025-01-01T00:00:00Z");
        s.record(LastOutcome::Failed, now);
        s.record(LastOutcome::Failed, now);
        s.record(LastOutcome::Skipped, now);
        assert_eq!(s.consecutive_failures, 2);
        s.record(LastOutcome::Success, now);
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.last_success, Some(now));
    }
}
