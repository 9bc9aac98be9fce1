//! One streaming pass over a WAL: scan lines, decode `op`/`tx_id`, intern ids, and
//! feed the rules' [`Indexer`] and the [`Replayer`](crate::replay::Replayer). [`analyze`]
//! reads any `BufRead` on one thread; [`analyze_file`] and [`analyze_source`] decode a file
//! or a [`Source`] on several threads with the same result. Callers at the edges open files.
//!
//! Each piece is written once: `pass.rs` decodes a line and feeds it to the index and the
//! replay (for both the sequential and the parallel pass), and one scan loop serves every
//! sequential pass ([`analyze`], [`Tracker::feed`], [`explain`]).

use std::io::{self, BufRead};

mod parallel;
mod pass;
pub use parallel::{
    DEFAULT_CHUNK_BYTES, Parallelism, Source, analyze_file, analyze_file_deferred, analyze_source,
    analyze_source_expecting,
};

use crate::replay::ReplayState;
use crate::rules::{CorruptLines, Indexer, LineKind, MAX_WAL_BYTES, Retention};
use crate::wal::{Ids, Item, LineScanner};
use pass::{Pass, decode_tail};

/// How many corrupt lines are described individually; the rest are only counted.
pub const MAX_REPORTED_CORRUPT_LINES: usize = 20;
/// Progress callbacks fire at most this often (in bytes), keeping the hot loop cheap.
const PROGRESS_EVERY_BYTES: u64 = 8 << 20;

/// A complete line that is not a JSON object: reported in every mode; what compaction does
/// with it is [`CorruptLines`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptLine {
    /// 1-based line number.
    pub line: u64,
    /// Byte offset of the line's start.
    pub offset: u64,
    pub reason: String,
}

/// Reading failed part-way (the analysis result would be partial, so there is none).
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error("read failed at byte {offset}: {source}")]
    Io { offset: u64, source: io::Error },
    #[error("more than {} distinct tx_ids, or more than 4 GiB of them", u32::MAX)]
    TooManyTransactions,
    #[error(
        "line at byte {offset} ends past {} bytes, the largest WAL supported",
        MAX_WAL_BYTES
    )]
    TooLarge { offset: u64 },
    #[error("line {line} (byte offset {offset}) is 4 GiB or longer, past what a WAL line may be")]
    LineTooLong { line: u64, offset: u64 },
}

/// What to compute during the pass; each costs memory per transaction.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    /// The rules' index (status figures and the compaction plan).
    pub index: bool,
    /// The replay state and digest.
    pub replay: bool,
    /// What the index and the replay do with corrupt lines.
    pub corrupt_lines: CorruptLines,
    /// Retention: the index keeps timestamps and the replay computes the state minus the
    /// transactions this expires ([`Retention::NONE`]: nothing expires).
    pub retention: Retention,
}

impl Want {
    /// This want, with retention `r` (see [`Want::retention`]).
    pub const fn retaining(mut self, r: Retention) -> Want {
        self.retention = r;
        self
    }

    /// The index and the replay state, corrupt lines per `corrupt_lines`: a compaction.
    pub const fn both(corrupt_lines: CorruptLines) -> Want {
        Want {
            index: true,
            replay: true,
            corrupt_lines,
            retention: Retention::NONE,
        }
    }

    /// The replay state alone, corrupt lines per `corrupt_lines`: a verification.
    pub const fn replay(corrupt_lines: CorruptLines) -> Want {
        Want {
            index: false,
            replay: true,
            corrupt_lines,
            retention: Retention::NONE,
        }
    }

    /// The index alone, corrupt lines per `corrupt_lines`: status and statistics.
    pub const fn index(corrupt_lines: CorruptLines) -> Want {
        Want {
            index: true,
            replay: false,
            corrupt_lines,
            retention: Retention::NONE,
        }
    }
}

/// Everything one pass learned.
pub struct Analysis {
    pub index: Indexer,
    pub replay: Option<ReplayState>,
    /// Offset just past the last complete line.
    pub scanned_len: u64,
    /// Complete lines, corrupt ones included.
    pub lines: u64,
    pub torn_tail_bytes: u64,
    pub corrupt: Vec<CorruptLine>,
    pub corrupt_lines: u64,
    /// The transaction ids seen, by index (drop it early: it costs memory per transaction).
    pub ids: Ids,
}

impl Analysis {
    /// Bytes read in all: complete lines plus the torn tail.
    pub fn total_len(&self) -> u64 {
        self.scanned_len + self.torn_tail_bytes
    }

    /// The first corrupt line, if any (`corrupt_lines = "refuse"` refuses the WAL then).
    pub fn first_corrupt(&self) -> Option<&CorruptLine> {
        self.corrupt.first()
    }
}

/// Runs the pass. `progress` is told the offset reached every few MiB.
pub fn analyze<R: BufRead>(
    reader: R,
    want: Want,
    progress: &mut dyn FnMut(u64),
) -> Result<Analysis, AnalyzeError> {
    let mut pass = Pass::new(want);
    let mut next_progress = PROGRESS_EVERY_BYTES;
    let end = scan(LineScanner::new(reader), |item| {
        let end = item.end();
        match item {
            Item::TornTail { bytes, .. } => pass.torn_tail(decode_tail(want, bytes)),
            Item::Line(line) => {
                pass.line(line.offset, line.bytes)?;
            }
        }
        if end >= next_progress {
            progress(end);
            next_progress = end + PROGRESS_EVERY_BYTES;
        }
        Ok(())
    })?;
    Ok(pass.finish(end))
}

/// The scan loop of every sequential pass ([`analyze`], [`Tracker::feed`], [`explain`]):
/// hands each line, then the torn tail, to `each` in order, and returns the offset reached.
/// A read error names the offset where the failed read started.
#[inline]
fn scan<R: BufRead>(
    mut scanner: LineScanner<R>,
    mut each: impl FnMut(Item<'_>) -> Result<(), AnalyzeError>,
) -> Result<u64, AnalyzeError> {
    loop {
        let offset = scanner.offset();
        match scanner
            .next_item()
            .map_err(|source| AnalyzeError::Io { offset, source })?
        {
            None => return Ok(scanner.offset()),
            Some(item) => each(item)?,
        }
    }
}

/// Keeps a WAL's rules index up to date by reading only what was appended: the daemon's
/// statistics cost is proportional to appended bytes. Memory is per transaction.
pub struct Tracker {
    pass: Pass,
    /// Offset just past the last complete line consumed.
    offset: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new(CorruptLines::default())
    }
}

impl Tracker {
    /// A tracker whose index treats corrupt lines per `corrupt_lines` (its reclaimable bytes
    /// count quarantined lines as leaving).
    pub fn new(corrupt_lines: CorruptLines) -> Tracker {
        Tracker {
            pass: Pass::new(Want::index(corrupt_lines)),
            offset: 0,
        }
    }

    /// This tracker, its index keeping each transaction's timestamps so that
    /// [`Indexer::expirable`] can tell what retention would expire (the daemon's figures under
    /// `[wal.retention]`). 8 more bytes per transaction; call it before the first feed.
    pub fn with_stamps(mut self) -> Tracker {
        self.pass.index = std::mem::take(&mut self.pass.index).with_stamps();
        self
    }

    /// Consumes complete lines from `reader`, which must be positioned at [`Tracker::offset`].
    /// A torn tail is measured but not consumed: it is read again once completed.
    /// Returns the bytes of complete lines consumed.
    pub fn feed<R: BufRead>(&mut self, reader: R) -> Result<u64, AnalyzeError> {
        let start = self.offset;
        self.pass.torn_tail_bytes = 0;
        let scanner = LineScanner::resume(reader, self.offset, self.pass.lines);
        scan(scanner, |item| {
            match item {
                Item::TornTail { bytes, .. } => self.pass.torn_tail_bytes = bytes.len() as u64,
                Item::Line(line) => {
                    self.pass.line(line.offset, line.bytes)?;
                    self.offset = line.offset + line.len_on_disk();
                }
            }
            Ok(())
        })?;
        Ok(self.offset - start)
    }

    /// Where the next read must start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The rules' index over every complete line consumed.
    pub fn index(&self) -> &Indexer {
        &self.pass.index
    }

    /// Complete lines consumed, corrupt ones included.
    pub fn lines(&self) -> u64 {
        self.pass.lines
    }

    /// Bytes after the last complete line, as of the last feed.
    pub fn torn_tail_bytes(&self) -> u64 {
        self.pass.torn_tail_bytes
    }

    /// Corrupt lines seen (the first few are described).
    pub fn corrupt(&self) -> (&[CorruptLine], u64) {
        (&self.pass.corrupt, self.pass.corrupt_lines)
    }
}

/// Lines and bytes a `--dry-run` would remove, per rule.
pub type DropBreakdown = std::collections::BTreeMap<crate::rules::DropReason, (u64, u64)>;

/// A second pass that attributes every line the plan drops to the rule that drops it.
/// It decodes and interns like the first pass (wanting neither index nor replay), so ids
/// get the same indices and each line the kind the index was told.
pub fn explain<R: BufRead>(
    reader: R,
    index: &Indexer,
    plan: &crate::rules::Plan,
) -> Result<DropBreakdown, AnalyzeError> {
    let mut pass = Pass::new(Want {
        index: false,
        replay: false,
        corrupt_lines: CorruptLines::default(),
        retention: Retention::NONE,
    });
    let mut out = DropBreakdown::new();
    scan(LineScanner::new(reader), |item| {
        let Item::Line(line) = item else {
            return Ok(());
        };
        let kind = pass.line(line.offset, line.bytes)?;
        if plan.keeps(line.offset) {
            return Ok(());
        }
        let status = match kind {
            LineKind::Tx { tx, .. } => index.status(tx),
            _ => None,
        };
        let reason = match plan.archives(line.offset) {
            true => crate::rules::DropReason::Expired,
            false => crate::rules::drop_reason(kind, status),
        };
        let e = out.entry(reason).or_default();
        e.0 += 1;
        e.1 += line.len_on_disk();
        Ok(())
    })?;
    Ok(out)
}
