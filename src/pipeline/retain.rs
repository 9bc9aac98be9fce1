//! What a run is asked to expire (policy `[wal.retention]`, `compact --expire-after`), and
//! the one clock reading it is decided from. The decision itself is the rules'
//! ([`crate::rules::retention`]); the archive its lines go to is [`super::archive`].

use std::path::PathBuf;

use chrono::{DateTime, Utc};

use crate::rules::Retention;

/// Opt-in retention for one run. `None` horizons expire nothing of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionRequest {
    /// Finished transactions whose final line is older than this many seconds expire.
    pub expire_after_secs: Option<u64>,
    /// In-flight transactions whose last PREPARE is older than this expire (0 = never).
    pub expire_in_flight_after_secs: Option<u64>,
    /// Where archives go; `None` = the backup directory.
    pub archive_dir: Option<PathBuf>,
}

impl RetentionRequest {
    /// The cutoffs at `now`, read once per run: every decision of the run uses them.
    pub fn at(&self, now: DateTime<Utc>) -> Retention {
        Retention::at(
            now.timestamp(),
            self.expire_after_secs,
            self.expire_in_flight_after_secs,
        )
    }
}
