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

pub mod late;
pub mod lease;
pub mod offline;
pub mod online;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::compact::TempFile;
use super::{PipelineError, Run, Stage};
pub use late::LeaseStats;
pub use lease::Lease;
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
    /// Writers open the WAL per append and take no lock (the Diotec360 application): a
    /// kernel read lease keeps them out for the last delta and the swap.
    Lease,
}

/// A mode with its settings: what a run holds for its whole length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    Offline,
    Online(Online),
    Lease(Lease),
}

/// What a run holds from its start to its swap: offline, the read lease that keeps writers
/// out for the whole run (see [`offline::Watch`]); other modes hold nothing.
pub(in crate::pipeline) enum Hold {
    Nothing,
    Offline(offline::Watch),
}

impl Hold {
    /// Whether the run must give up: a writer opened the WAL (offline), and the lease was
    /// let go at once so that it could go on.
    pub(in crate::pipeline) fn given_up(&self, wal: &Path) -> Result<(), PipelineError> {
        match self {
            Hold::Offline(w) if w.given_up() => Err(offline::writer_opened(wal)),
            _ => Ok(()),
        }
    }
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
    /// Lease and offline modes with a lease: how long writers waited.
    pub lease: Option<LeaseStats>,
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
            Mode::Lease => Guard::Lease(Lease { lock_timeout }),
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
            Guard::Lease(_) => Mode::Lease,
        }
    }

    /// Whether lines appended during the run end up in the new WAL (the analysis then
    /// collects what the tail check needs).
    pub fn admits_appends(&self) -> bool {
        matches!(self, Guard::Online(_) | Guard::Lease(_))
    }

    /// May a run start now? Offline: nobody else holds the WAL open (a trial lease, and
    /// `/proc` to name who); online and lease: yes (a lease run checks what it needs first).
    pub fn admit(&self, wal: &Path) -> Admission {
        match self {
            Guard::Offline => offline::admit(wal),
            Guard::Online(_) | Guard::Lease(_) => Admission::Admitted { note: None },
        }
    }

    /// What the run holds from its start (before the WAL is read): offline, the read lease;
    /// lease mode checks here that it can take one when it matters, before any work.
    pub(super) fn hold(&self, wal: &Path) -> Result<Hold, PipelineError> {
        match self {
            Guard::Offline => {
                super::open_wal(wal)?;
                offline::hold(wal)
            }
            Guard::Online(_) => Ok(Hold::Nothing),
            Guard::Lease(_) => {
                // A missing or non-regular WAL is said as such, not as a lease problem.
                super::open_wal(wal)?;
                lease::preflight(wal)
                    .map(|()| Hold::Nothing)
                    .map_err(|e| PipelineError::lease(wal, e))
            }
        }
    }

    /// Brings the temp file level with the WAL and swaps it in while writers are kept out;
    /// the journal says `swapping` before the swap.
    pub(super) fn swap(
        &self,
        run: &mut Run,
        temp: &mut TempFile,
    ) -> Result<Swapped, PipelineError> {
        match self {
            Guard::Offline => offline::swap(run, temp),
            Guard::Online(o) => online::swap(run, &temp.path, o),
            Guard::Lease(l) => lease::swap(run, temp, l),
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
            Guard::Lease(l) => lease::restore(backup, wal, stage, l, len_at_swap),
        }
    }
}
