//! How a run keeps writers out of the WAL: the one seam between the pipeline and the
//! writers, one module per mode. A run asks its [`Guard`] three things:
//!
//! - **admit me** ([`Guard::admit`]): may a run start now? The daemon asks before each run.
//! - **swap** ([`Guard::swap`]): bring the verified temp file level with the WAL and rename
//!   it over the WAL while writers are kept out.
//! - **restore** ([`Guard::restore`]): put a backup back at the WAL's path (a rollback, its
//!   recovery, `walcompactd restore`) while writers are kept out.
//!
//! The mode is chosen once (policy `mode`, or `compact --mode`), recorded in the journal, and
//! recovery rebuilds the same guard from it ([`Guard::for_rollback`]). A new way of keeping
//! writers out is one new module here plus a [`Mode`] variant.

pub mod offline;
pub mod online;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{PipelineError, Run, Stage};
pub use online::{Online, OnlineStats};

/// How writers are kept out, as the policy, the CLI and the journal name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// No writer runs during the run: it refuses a WAL that changed under it.
    #[default]
    Offline,
    /// Writers follow `docs/PROTOCOL.md`; their lock is taken for the last delta and the swap.
    Online,
}

/// A mode with its settings: what a run holds for its whole length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Offline,
    Online(Online),
}

/// The answer to "admit me".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; `note` is worth a log line (e.g. processes that could not be inspected).
    Admitted { note: Option<String> },
    /// Not now, and why.
    Refused(String),
}

/// What a swap did: the new WAL's length at the rename (a rollback keeps what writers
/// appended after it) and, online, the catch-up and writer-lock figures.
#[derive(Debug, Clone, Default)]
pub struct Swapped {
    pub len_at_swap: u64,
    pub online: Option<OnlineStats>,
}

/// A rollback must not give up on the writer lock as quickly as a compaction: it is putting
/// the original WAL back.
pub const ROLLBACK_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

impl Guard {
    /// The guard of `mode`; `lock_timeout` is how long online mode waits for the writers.
    pub fn new(mode: Mode, lock_timeout: Duration) -> Guard {
        match mode {
            Mode::Offline => Guard::Offline,
            Mode::Online => Guard::Online(Online { lock_timeout }),
        }
    }

    /// The guard that rolls back a run of `mode` (in the run, or in its recovery): it waits
    /// for the writers as long as [`ROLLBACK_LOCK_TIMEOUT`], since it puts the original back.
    pub fn for_rollback(mode: Mode) -> Guard {
        Guard::new(mode, ROLLBACK_LOCK_TIMEOUT)
    }

    /// The mode, as the journal records it.
    pub fn mode(&self) -> Mode {
        match self {
            Guard::Offline => Mode::Offline,
            Guard::Online(_) => Mode::Online,
        }
    }

    /// Whether lines appended during the run end up in the new WAL (the analysis then
    /// collects what the tail check needs).
    pub fn admits_appends(&self) -> bool {
        matches!(self, Guard::Online(_))
    }

    /// May a run start now? Offline: nobody else holds the WAL open (`/proc`); online: yes.
    pub fn admit(&self, wal: &Path) -> Admission {
        match self {
            Guard::Offline => offline::admit(wal),
            Guard::Online(_) => Admission::Admitted { note: None },
        }
    }

    /// Brings the temp file at `temp` level with the WAL and renames it over the WAL while
    /// writers are kept out; the journal says `swapping` before the rename.
    pub(super) fn swap(&self, run: &mut Run, temp: &Path) -> Result<Swapped, PipelineError> {
        match self {
            Guard::Offline => offline::swap(run, temp),
            Guard::Online(o) => online::swap(run, temp, o),
        }
    }

    /// Puts `backup` back at `wal` while writers are kept out. Online, the bytes writers
    /// appended after `len_at_swap` are kept; a rollback must say where that was.
    pub fn restore(
        &self,
        backup: &Path,
        wal: &Path,
        stage: Stage,
        len_at_swap: Option<u64>,
    ) -> Result<(), PipelineError> {
        match self {
            Guard::Offline => super::rollback::restore_copy(backup, wal, stage),
            Guard::Online(o) => online::restore(backup, wal, stage, o, len_at_swap),
        }
    }
}
