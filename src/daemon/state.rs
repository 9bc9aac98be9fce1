//! The daemon's persisted memory of one WAL: the commit-count base that count triggers
//! measure from, and the last outcome that cooldown and backoff need. One JSON file per
//! WAL in `daemon.state_dir`, written atomically; a corrupt file is rebuilt, never fatal.
//!
//! The daemon runs as root and these files steer it (a forged `commit_base` or outcome
//! changes when a WAL is compacted), so the directory is created `0700` and an existing one
//! other users can write is reported at startup ([`prepare_state_dir`]).

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
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

/// The mode the daemon creates its state directory (and any missing parent) with: only the
/// daemon's user may list, add, replace or remove state files.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Why the state directory could not be prepared at startup.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create the state directory {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot inspect the state directory {}: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state directory {} exists but is not a directory", path.display())]
    NotADirectory { path: PathBuf },
}

/// What [`prepare_state_dir`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateDir {
    /// It was missing and was created here, with [`STATE_DIR_MODE`].
    Created,
    /// It was already there. `mode` holds its permission bits, `owner` its uid, `exposure`
    /// why users other than the daemon's can change what is in it (empty: none can).
    Existing {
        mode: u32,
        owner: u32,
        exposure: Vec<String>,
    },
}

/// Creates `dir` with [`STATE_DIR_MODE`] (missing parents too), or inspects the existing
/// one. An existing directory is left as it is, whatever its mode: it may be shared on
/// purpose, and changing an operator's directory behind their back is not the daemon's call
/// (the caller warns instead). `Created` is only reported when this call made `dir` itself,
/// so a directory someone else made in the meantime is inspected like any existing one.
pub fn prepare_state_dir(dir: &Path) -> Result<StateDir, StateDirError> {
    let create = |p: &Path| DirBuilder::new().mode(STATE_DIR_MODE).create(p);
    let made = match create(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                create_private_dirs(parent).map_err(|source| StateDirError::Create {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            create(dir)
        }
        other => other,
    };
    match made {
        Ok(()) => return Ok(StateDir::Created),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(StateDirError::Create {
                path: dir.to_path_buf(),
                source,
            });
        }
    }
    let meta = fs::metadata(dir).map_err(|source| StateDirError::Inspect {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(StateDirError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    Ok(StateDir::Existing {
        mode,
        owner: meta.uid(),
        exposure: exposure(mode, meta.uid(), euid),
    })
}

/// Why users other than the daemon's (running as `euid`) can add, replace or remove files
/// in a directory with permission bits `mode` owned by `owner`; empty when none can. Root
/// owning it is fine: root can write anywhere anyway. A sticky bit does not make a
/// world-writable directory safe: others can still plant a state file (or a symlink at its
/// name) before the daemon writes one.
pub fn exposure(mode: u32, owner: u32, euid: u32) -> Vec<String> {
    let mut why = Vec::new();
    if mode & 0o002 != 0 {
        why.push("writable by every user".to_string());
    }
    if mode & 0o020 != 0 {
        why.push("writable by its group".to_string());
    }
    if owner != euid && owner != 0 {
        why.push(format!("owned by another user (uid {owner})"));
    }
    why
}

/// `create_dir_all` with [`STATE_DIR_MODE`] for every directory it creates (the umask can
/// only narrow it); existing ones are left alone.
fn create_private_dirs(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(dir)
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

    /// Writes the state atomically, creating the directory (private, [`STATE_DIR_MODE`]) if
    /// it went missing since startup. Blocking (a write, two fsyncs, a rename): the daemon
    /// calls it through [`super::state_io::StateWriter`].
    pub fn save(&self, state: &WalState) -> io::Result<()> {
        // A slow or stalled disk, for the test that the daemon's runtime never waits on it.
        fail::fail_point!("state::write::delay");
        if let Some(dir) = self.path.parent() {
            create_private_dirs(dir)?;
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
        assert_eq!(mode_of(&d.path().join("a/b")), STATE_DIR_MODE);
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

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn state_dir_is_created_private_with_its_parents() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b/state");
        assert_eq!(prepare_state_dir(&dir).unwrap(), StateDir::Created);
        assert_eq!(mode_of(&dir), STATE_DIR_MODE);
        assert_eq!(mode_of(&d.path().join("a")), STATE_DIR_MODE);
        // A second start finds it, private and ours.
        match prepare_state_dir(&dir).unwrap() {
            StateDir::Existing { mode, exposure, .. } => {
                assert_eq!(mode, STATE_DIR_MODE);
                assert!(exposure.is_empty(), "{exposure:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_existing_writable_state_dir_is_reported_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        match prepare_state_dir(&dir).unwrap() {
            StateDir::Existing { mode, exposure, .. } => {
                assert_eq!(mode, 0o1777);
                assert!(
                    exposure.contains(&"writable by every user".to_string()),
                    "{exposure:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(mode_of(&dir), 0o1777, "not chmod-ed");
        // Saving into it does not change it either.
        StateFile::new(&dir, "w")
            .save(&WalState::default())
            .unwrap();
        assert_eq!(mode_of(&dir), 0o1777);
    }

    #[test]
    fn a_file_at_the_state_dir_path_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        fs::write(&dir, b"").unwrap();
        let e = prepare_state_dir(&dir).unwrap_err();
        assert!(matches!(e, StateDirError::NotADirectory { .. }), "{e:?}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
    }

    #[test]
    fn exposure_names_group_other_and_foreign_owner() {
        assert!(exposure(0o700, 1000, 1000).is_empty());
        assert!(exposure(0o755, 0, 1000).is_empty(), "root-owned is fine");
        assert_eq!(exposure(0o770, 1000, 1000), ["writable by its group"]);
        assert_eq!(
            exposure(0o777, 1000, 1000),
            ["writable by every user", "writable by its group"]
        );
        assert_eq!(
            exposure(0o700, 1001, 0),
            ["owned by another user (uid 1001)"]
        );
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
