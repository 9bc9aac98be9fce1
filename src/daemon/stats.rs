//! Incremental statistics of one WAL: a [`Tracker`] fed only the bytes appended since the
//! last look, plus the file identity that says when to start over. Cost per refresh is
//! proportional to appended bytes; a full rescan happens only when the rules below say so.

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::analyze::Tracker;
use crate::fsutil::{FileId, free_ratio, parent_dir};
use crate::rules::CorruptLines;

/// Read buffer for appended bytes; small, since appends between looks are small.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// The figures triggers and alerts look at.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WalStats {
    /// Bytes in the file, torn tail included.
    pub size_bytes: u64,
    pub reclaimable_bytes: u64,
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
}

impl StatsTracker {
    pub fn new(path: impl Into<PathBuf>, corrupt_lines: CorruptLines) -> StatsTracker {
        StatsTracker {
            path: path.into(),
            tracker: Tracker::new(corrupt_lines),
            id: None,
            corrupt_lines,
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
                self.tracker = Tracker::new(self.corrupt_lines);
                return Ok(Refresh::Missing);
            }
            Err(e) => return Err(e),
        };
        let now = FileId::of(&file.metadata()?);
        let rescan = rescan_reason(self.id.as_ref(), &now, self.tracker.offset(), force_rescan);
        if rescan.is_some() {
            self.tracker = Tracker::new(self.corrupt_lines);
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
        let index = self.tracker.index();
        WalStats {
            size_bytes: self.id.map_or(0, |id| id.len),
            reclaimable_bytes: index.reclaimable_bytes(),
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
}
