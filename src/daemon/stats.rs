//! Incremental statistics of one WAL: a [`Tracker`] fed only the bytes appended since the
//! last look, plus the file identity that says when to start over. Cost per refresh is
//! proportional to appended bytes; a full rescan happens only when the rules below say so.
//!
//! With `[wal.retention]`, what would expire counts as reclaimable, so a WAL that is only old
//! history still reaches its ratio and byte triggers. Expiry moves with the clock, not with
//! appends, so it is recomputed at each look: a walk over every transaction, paid only by a
//! WAL whose policy has retention.

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use crate::analyze::Tracker;
use crate::fsutil::{FileId, free_ratio, parent_dir};
use crate::pipeline::retain::RetentionRequest;
use crate::policy::WalPolicy;
use crate::rules::CorruptLines;

/// Read buffer for appended bytes; small, since appends between looks are small.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// The figures triggers and alerts look at.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WalStats {
    /// Bytes in the file, torn tail included.
    pub size_bytes: u64,
    /// Bytes a compaction would remove now: what the rules drop plus, with retention, what
    /// would expire (`expirable_bytes`).
    pub reclaimable_bytes: u64,
    /// Of `reclaimable_bytes`, the lines of transactions retention would expire now (0
    /// without `[wal.retention]`).
    pub expirable_bytes: u64,
    /// COMMIT lines in the file now.
    pub commit_lines: u64,
    pub torn_tail_bytes: u64,
    pub corrupt_lines: u64,
    /// Free space on the WAL's filesystem in percent, when asked for (see [`StatsTracker::stats`]).
    pub free_percent: Option<f64>,
    /// Entries per op, as `status` counts them (for metrics and alerts).
    pub entries: crate::rules::Counts,
    /// Transactions by replayed state, as `status` counts them (for metrics and alerts).
    pub transactions: crate::rules::TxCounts,
}

impl WalStats {
    /// Reclaimable bytes / size, 0 for an empty file.
    pub fn reclaimable_ratio(&self) -> f64 {
        crate::rules::reclaimable_ratio(self.reclaimable_bytes, self.size_bytes)
    }
}

/// Why a refresh threw the tracker away and read from byte 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescan {
    /// First look, or the file reappeared.
    First,
    /// A different inode is at the path (compaction renames a new file over it).
    Replaced,
    /// The file is shorter than what was consumed.
    Truncated,
    /// The event source lost events (notify `Rescan` flag / queue overflow).
    Requested,
}

/// The rescan rule, pure so it is testable: `None` means "read from the stored offset".
pub fn rescan_reason(
    prev: Option<&FileId>,
    now: &FileId,
    offset: u64,
    requested: bool,
) -> Option<Rescan> {
    match prev {
        None => Some(Rescan::First),
        Some(p) if !p.same_inode(now) => Some(Rescan::Replaced),
        Some(_) if now.len < offset => Some(Rescan::Truncated),
        Some(_) if requested => Some(Rescan::Requested),
        Some(_) => None,
    }
}

/// What one refresh found.
#[derive(Debug)]
pub enum Refresh {
    /// The WAL does not exist (yet).
    Missing,
    /// Figures are current; `rescan` says whether the whole file was read.
    Updated {
        rescan: Option<Rescan>,
        bytes_read: u64,
    },
}

/// A WAL's tracker and the identity of the file it describes.
pub struct StatsTracker {
    path: PathBuf,
    tracker: Tracker,
    id: Option<FileId>,
    /// The WAL's `corrupt_lines`: quarantined lines count as reclaimable.
    corrupt_lines: CorruptLines,
    /// The WAL's retention: what would expire counts as reclaimable.
    retention: Option<RetentionRequest>,
    /// Whether the tracker's index keeps timestamps (needed to tell what expires).
    stamped: bool,
}

impl StatsTracker {
    /// A tracker without retention.
    pub fn new(path: impl Into<PathBuf>, corrupt_lines: CorruptLines) -> StatsTracker {
        StatsTracker {
            path: path.into(),
            tracker: Tracker::new(corrupt_lines),
            id: None,
            corrupt_lines,
            retention: None,
            stamped: false,
        }
    }

    /// The tracker of a WAL of the policy: its path, `corrupt_lines` and retention.
    pub fn for_policy(policy: &WalPolicy) -> StatsTracker {
        StatsTracker::new(&policy.resolved_path, policy.corrupt_lines)
            .with_retention(policy.retention_request())
    }

    /// This tracker counting what `retention` would expire as reclaimable (its index then
    /// keeps timestamps). Before the first refresh.
    pub fn with_retention(mut self, retention: Option<RetentionRequest>) -> StatsTracker {
        self.stamped = retention.is_some();
        self.retention = retention;
        self.tracker = self.fresh_tracker();
        self
    }

    /// Follows a reloaded policy. A new `corrupt_lines`, or retention newly asked of an index
    /// without timestamps, changes what was counted: the tracker starts over (the next
    /// refresh reads from byte 0, as a first look). New horizons alone apply at once.
    pub fn reconfigure(&mut self, policy: &WalPolicy) {
        let retention = policy.retention_request();
        if policy.corrupt_lines != self.corrupt_lines || (retention.is_some() && !self.stamped) {
            *self = StatsTracker::for_policy(policy);
        } else {
            self.retention = retention;
        }
    }

    /// An empty tracker for this WAL's settings.
    fn fresh_tracker(&self) -> Tracker {
        match self.stamped {
            true => Tracker::new(self.corrupt_lines).with_stamps(),
            false => Tracker::new(self.corrupt_lines),
        }
    }

    /// The corrupt-lines policy its figures follow.
    pub fn corrupt_lines(&self) -> CorruptLines {
        self.corrupt_lines
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last refresh (or everything, per [`rescan_reason`]).
    /// Identity comes from the open descriptor, so a rename racing the open cannot mix files.
    pub fn refresh(&mut self, force_rescan: bool) -> io::Result<Refresh> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.id = None;
                self.tracker = self.fresh_tracker();
                return Ok(Refresh::Missing);
            }
            Err(e) => return Err(e),
        };
        let now = FileId::of(&file.metadata()?);
        let rescan = rescan_reason(self.id.as_ref(), &now, self.tracker.offset(), force_rescan);
        if rescan.is_some() {
            self.tracker = self.fresh_tracker();
        }
        self.id = Some(now);
        if now.len == self.tracker.offset() + self.tracker.torn_tail_bytes() && rescan.is_none() {
            return Ok(Refresh::Updated {
                rescan,
                bytes_read: 0,
            });
        }
        let mut file = file;
        file.seek(SeekFrom::Start(self.tracker.offset()))?;
        let reader = BufReader::with_capacity(READ_BUFFER_BYTES, file);
        let bytes_read = self.tracker.feed(reader).map_err(io::Error::other)?;
        Ok(Refresh::Updated { rescan, bytes_read })
    }

    /// Current figures; `want_free` measures the filesystem (a statvfs) only when needed.
    pub fn stats(&self, want_free: bool) -> WalStats {
        self.stats_at(want_free, Utc::now())
    }

    /// [`StatsTracker::stats`] with retention's cutoffs taken at `now`.
    pub fn stats_at(&self, want_free: bool, now: DateTime<Utc>) -> WalStats {
        let index = self.tracker.index();
        // Walks every transaction: only with retention configured.
        let expirable_bytes = self
            .retention
            .as_ref()
            .map_or(0, |req| index.expirable(&req.at(now)).bytes);
        WalStats {
            size_bytes: self.id.map_or(0, |id| id.len),
            reclaimable_bytes: index.reclaimable_bytes() + expirable_bytes,
            expirable_bytes,
            commit_lines: index.counts().commit,
            torn_tail_bytes: self.tracker.torn_tail_bytes(),
            corrupt_lines: self.tracker.corrupt().1,
            entries: index.counts(),
            transactions: index.tx_counts(),
            free_percent: want_free
                .then(|| free_ratio(&parent_dir(&self.path)).ok())
                .flatten()
                .map(|r| r * 100.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn id(ino: u64, len: u64) -> FileId {
        FileId {
            dev: 1,
            ino,
            len,
            mtime_ns: 0,
        }
    }

    #[test]
    fn rescan_rules() {
        assert_eq!(
            rescan_reason(None, &id(1, 10), 0, false),
            Some(Rescan::First)
        );
        assert_eq!(
            rescan_reason(Some(&id(1, 10)), &id(2, 10), 10, false),
            Some(Rescan::Replaced)
        );
        assert_eq!(
            rescan_reason(Some(&id(1, 10)), &id(1, 5), 10, false),
            Some(Rescan::Truncated)
        );
        assert_eq!(
            rescan_reason(Some(&id(1, 10)), &id(1, 20), 10, true),
            Some(Rescan::Requested)
        );
        assert_eq!(rescan_reason(Some(&id(1, 10)), &id(1, 20), 10, false), None);
    }

    const P: &str = "{\"op\": \"PREPARE\", \"tx_id\": \"a\", \"data\": 1}\n";
    const C: &str = "{\"op\": \"COMMIT\", \"tx_id\": \"a\"}\n";
    const PB: &str = "{\"op\": \"PREPARE\", \"tx_id\": \"b\", \"data\": 2}\n";
    const AB: &str = "{\"op\": \"ABORT\", \"tx_id\": \"b\"}\n";

    #[test]
    fn reads_only_appended_bytes_and_rescans_on_replace() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("wal.log");
        let mut t = StatsTracker::new(&p, CorruptLines::Keep);
        assert!(matches!(t.refresh(false).unwrap(), Refresh::Missing));
        std::fs::write(&p, format!("{P}{C}")).unwrap();
        let r = t.refresh(false).unwrap();
        assert!(matches!(
            r,
            Refresh::Updated {
                rescan: Some(Rescan::First),
                ..
            }
        ));
        assert_eq!(t.stats(false).commit_lines, 1);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        write!(f, "{PB}{AB}{{\"op\": \"COM").unwrap();
        match t.refresh(false).unwrap() {
            Refresh::Updated { rescan, bytes_read } => {
                assert_eq!(rescan, None);
                assert_eq!(bytes_read, (PB.len() + AB.len()) as u64);
            }
            other => panic!("{other:?}"),
        }
        let s = t.stats(false);
        assert_eq!(s.commit_lines, 1);
        assert_eq!(s.torn_tail_bytes, 11);
        assert_eq!(
            s.reclaimable_bytes,
            PB.len() as u64,
            "an aborted PREPARE is dropped"
        );
        // Nothing appended: nothing read.
        assert!(matches!(
            t.refresh(false).unwrap(),
            Refresh::Updated { bytes_read: 0, .. }
        ));
        // Replaced by rename: a new inode → rescan from 0.
        let tmp = d.path().join("new");
        std::fs::write(&tmp, format!("{P}{C}")).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert!(matches!(
            t.refresh(false).unwrap(),
            Refresh::Updated {
                rescan: Some(Rescan::Replaced),
                ..
            }
        ));
        assert_eq!(t.stats(false).commit_lines, 1);
    }

    /// An old committed transaction (nothing for the rules to drop) and a recent one.
    const OLD: &str = "{\"op\": \"PREPARE\", \"tx_id\": \"a\", \"timestamp\": 1600000000}\n\
                       {\"op\": \"COMMIT\", \"tx_id\": \"a\", \"timestamp\": 1600000001.5}\n";
    const RECENT: &str = "{\"op\": \"PREPARE\", \"tx_id\": \"b\", \"timestamp\": 1700000000}\n\
                          {\"op\": \"COMMIT\", \"tx_id\": \"b\", \"timestamp\": 1700000000}\n";

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn policy(dir: &Path, retention: &str) -> WalPolicy {
        let text = format!("[[wal]]\nname = \"w\"\npath = \"wal.log\"\n{retention}");
        let env = crate::policy::ParseEnv::bare(dir, at(1_700_000_000));
        let mut p = crate::policy::parse(&text, "test", &env).unwrap();
        p.wals.remove(0)
    }

    #[test]
    fn expirable_bytes_count_as_reclaimable_only_with_retention() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("wal.log"), format!("{OLD}{RECENT}")).unwrap();
        let plain = policy(d.path(), "");
        let day = policy(d.path(), "[wal.retention]\nexpire_after_secs = 86400\n");
        let now = at(1_700_000_000);

        let mut t = StatsTracker::for_policy(&plain);
        t.refresh(false).unwrap();
        let s = t.stats_at(false, now);
        assert_eq!((s.reclaimable_bytes, s.expirable_bytes), (0, 0));

        let mut t = StatsTracker::for_policy(&day);
        t.refresh(false).unwrap();
        let s = t.stats_at(false, now);
        let old = OLD.len() as u64;
        assert_eq!((s.reclaimable_bytes, s.expirable_bytes), (old, old));
        assert_eq!(
            s.reclaimable_ratio(),
            old as f64 / (OLD.len() + RECENT.len()) as f64
        );
        // The clock decides, at whole seconds: a's COMMIT (1600000001.5) expires once the
        // cutoff passes 1600000001.
        let edge = 1_600_000_001 + 86_400;
        assert_eq!(t.stats_at(false, at(edge)).expirable_bytes, 0);
        assert_eq!(t.stats_at(false, at(edge + 1)).expirable_bytes, old);
    }

    #[test]
    fn a_reload_that_asks_for_retention_counts_again_from_the_start() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("wal.log"), format!("{OLD}{RECENT}")).unwrap();
        let now = at(1_700_000_000);
        let mut t = StatsTracker::for_policy(&policy(d.path(), ""));
        t.refresh(false).unwrap();
        assert_eq!(t.stats_at(false, now).expirable_bytes, 0);
        t.reconfigure(&policy(
            d.path(),
            "[wal.retention]\nexpire_after_secs = 86400\n",
        ));
        // The old index kept no timestamps: the next look reads the WAL again.
        assert!(matches!(
            t.refresh(false).unwrap(),
            Refresh::Updated {
                rescan: Some(Rescan::First),
                ..
            }
        ));
        assert_eq!(t.stats_at(false, now).expirable_bytes, OLD.len() as u64);
        // New horizons alone apply without reading anything again.
        t.reconfigure(&policy(
            d.path(),
            "[wal.retention]\nexpire_after_secs = 200000000\n",
        ));
        assert!(matches!(
            t.refresh(false).unwrap(),
            Refresh::Updated {
                rescan: None,
                bytes_read: 0
            }
        ));
        assert_eq!(t.stats_at(false, now).expirable_bytes, 0);
        // Retention off again: nothing expirable.
        t.reconfigure(&policy(d.path(), ""));
        assert_eq!(
            t.stats_at(false, at(i64::from(u32::MAX) - 1))
                .expirable_bytes,
            0
        );
    }
}
