//! One streaming pass over a WAL: scan lines, decode `op`/`tx_id`, intern ids, and
//! feed the rules' [`Indexer`] and the [`Replayer`]. Parses from any `BufRead` on one thread;
//! [`analyze_file`] and [`analyze_slice`] decode a file or a slice on several threads with
//! the same result. Callers at the edges open files.

use std::io::{self, BufRead};

mod parallel;
pub use parallel::{
    DEFAULT_CHUNK_BYTES, Parallelism, Source, analyze_file, analyze_file_deferred, analyze_slice,
    analyze_source, analyze_source_expecting,
};

use crate::replay::{NO_PREPARE, ReplayState, Replayer, payload_hash};
use crate::rules::{CorruptLines, Indexer, LineKind, MAX_WAL_BYTES, Slot};
use crate::wal::{
    DecodeError, Entry, Ids, Interner, Item, LineScanner, RawEntry, decode, decode_raw,
};

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
}

impl Want {
    /// The index and the replay state, corrupt lines per `corrupt_lines`: a compaction.
    pub const fn both(corrupt_lines: CorruptLines) -> Want {
        Want {
            index: true,
            replay: true,
            corrupt_lines,
        }
    }

    /// The replay state alone, corrupt lines per `corrupt_lines`: a verification.
    pub const fn replay(corrupt_lines: CorruptLines) -> Want {
        Want {
            index: false,
            replay: true,
            corrupt_lines,
        }
    }

    /// The index alone, corrupt lines per `corrupt_lines`: status and statistics.
    pub const fn index(corrupt_lines: CorruptLines) -> Want {
        Want {
            index: true,
            replay: false,
            corrupt_lines,
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
    let mut scanner = LineScanner::new(reader);
    let mut next_progress = PROGRESS_EVERY_BYTES;
    loop {
        let offset = scanner.offset();
        let item = scanner
            .next_item()
            .map_err(|source| AnalyzeError::Io { offset, source })?;
        match item {
            None => break,
            Some(Item::TornTail { bytes, .. }) => pass.torn_tail(bytes),
            Some(Item::Line(line)) => pass.line(line.number, line.offset, line.bytes)?,
        }
        if scanner.offset() >= next_progress {
            progress(scanner.offset());
            next_progress = scanner.offset() + PROGRESS_EVERY_BYTES;
        }
    }
    Ok(pass.finish(scanner.offset()))
}

/// State of one pass; split out so `analyze` stays a readable loop.
struct Pass {
    want: Want,
    ids: Interner,
    index: Indexer,
    replay: Replayer,
    lines: u64,
    torn_tail_bytes: u64,
    corrupt: Vec<CorruptLine>,
    corrupt_lines: u64,
}

impl Pass {
    fn new(want: Want) -> Pass {
        Pass::with_capacity(want, 0)
    }

    /// A pass expecting `txs` transactions (0 when unknown).
    fn with_capacity(want: Want, txs: usize) -> Pass {
        Pass {
            want,
            ids: Interner::with_capacity(txs),
            index: Indexer::with_capacity(if want.index { txs } else { 0 })
                .with_corrupt_lines(want.corrupt_lines),
            replay: Replayer::with_capacity(if want.replay { txs } else { 0 })
                .with_corrupt_lines(want.corrupt_lines),
            lines: 0,
            torn_tail_bytes: 0,
            corrupt: Vec::new(),
            corrupt_lines: 0,
        }
    }

    fn line(&mut self, number: u64, offset: u64, bytes: &[u8]) -> Result<(), AnalyzeError> {
        self.lines += 1;
        let len = line_len(number, offset, bytes.len())?;
        check_size(offset, len)?;
        // The fast decoder validates as strictly as serde_json (property-tested equal).
        let kind = match decode_raw(bytes) {
            Ok(entry) => self.entry(entry, offset, bytes)?,
            Err(e) => {
                self.corrupt(number, offset, describe(&e));
                if self.want.replay {
                    self.replay.observe_corrupt(bytes);
                }
                LineKind::Corrupt { line: number }
            }
        };
        if self.want.index {
            self.index.observe(Slot { offset, len }, kind);
        }
        Ok(())
    }

    fn entry(
        &mut self,
        entry: RawEntry<'_>,
        offset: u64,
        bytes: &[u8],
    ) -> Result<LineKind, AnalyzeError> {
        Ok(match entry {
            RawEntry::Blank => LineKind::Blank,
            RawEntry::Unrecognized => {
                if self.want.replay {
                    self.replay.observe_unrecognized(bytes);
                }
                LineKind::Unrecognized
            }
            RawEntry::Tx { op, tx_id } => {
                let tx = self
                    .ids
                    .intern(&tx_id)
                    .ok_or(AnalyzeError::TooManyTransactions)?;
                if self.want.replay {
                    let h = if op.is_final() {
                        NO_PREPARE
                    } else {
                        payload_hash(bytes)
                    };
                    self.replay.observe_tx(op, tx, offset, h);
                }
                LineKind::Tx { op, tx }
            }
        })
    }

    fn corrupt(&mut self, line: u64, offset: u64, reason: String) {
        self.corrupt_lines += 1;
        if self.corrupt.len() < MAX_REPORTED_CORRUPT_LINES {
            self.corrupt.push(CorruptLine {
                line,
                offset,
                reason,
            });
        }
    }

    fn torn_tail(&mut self, bytes: &[u8]) {
        self.torn_tail_bytes = bytes.len() as u64;
        if self.want.replay {
            self.replay.observe_torn_tail(bytes);
        }
    }

    fn finish(self, end: u64) -> Analysis {
        let (mut analysis, replayer) = self.finish_deferred(end);
        analysis.replay = replayer.map(|r| r.finish(&analysis.ids));
        analysis
    }

    /// The analysis without its replay state, and the replayer (if wanted) to finish it.
    fn finish_deferred(self, end: u64) -> (Analysis, Option<Replayer>) {
        // The lookup table is not needed any more: free it before replay sorts.
        let ids = self.ids.into_ids();
        let replayer = self.want.replay.then_some(self.replay);
        let analysis = Analysis {
            index: self.index,
            replay: None,
            scanned_len: end - self.torn_tail_bytes,
            lines: self.lines,
            torn_tail_bytes: self.torn_tail_bytes,
            corrupt: self.corrupt,
            corrupt_lines: self.corrupt_lines,
            ids,
        };
        (analysis, replayer)
    }
}

/// A line's length on disk (with its `\n`); a line of 4 GiB or more is refused outright,
/// since no policy can keep or quarantine what the index cannot record.
fn line_len(line: u64, offset: u64, bytes: usize) -> Result<u32, AnalyzeError> {
    u32::try_from(bytes + 1).map_err(|_| AnalyzeError::LineTooLong { line, offset })
}

/// Refuses a line the index cannot pack (a WAL past [`MAX_WAL_BYTES`]).
fn check_size(offset: u64, len: u32) -> Result<(), AnalyzeError> {
    match offset.checked_add(u64::from(len)) {
        Some(end) if end <= MAX_WAL_BYTES => Ok(()),
        _ => Err(AnalyzeError::TooLarge { offset }),
    }
}

/// serde_json appends " at line 1 column N", which misleads inside a multi-line file:
/// report the column within the line instead.
fn describe(e: &DecodeError) -> String {
    match e {
        DecodeError::Json(j) => {
            let msg = j.to_string();
            let msg = msg.rfind(" at line ").map_or(msg.as_str(), |i| &msg[..i]);
            format!("invalid JSON at column {}: {msg}", j.column())
        }
        other => other.to_string(),
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

    /// Consumes complete lines from `reader`, which must be positioned at [`Tracker::offset`].
    /// A torn tail is measured but not consumed: it is read again once completed.
    /// Returns the bytes of complete lines consumed.
    pub fn feed<R: BufRead>(&mut self, reader: R) -> Result<u64, AnalyzeError> {
        let start = self.offset;
        self.pass.torn_tail_bytes = 0;
        let mut scanner = LineScanner::resume(reader, self.offset, self.pass.lines);
        loop {
            let offset = scanner.offset();
            match scanner
                .next_item()
                .map_err(|source| AnalyzeError::Io { offset, source })?
            {
                None => break,
                Some(Item::TornTail { bytes, .. }) => {
                    self.pass.torn_tail_bytes = bytes.len() as u64
                }
                Some(Item::Line(line)) => {
                    self.pass.line(line.number, line.offset, line.bytes)?;
                    self.offset = scanner.offset();
                }
            }
        }
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
/// Ids are interned in the same order as the first pass, so indices match the index.
pub fn explain<R: BufRead>(
    reader: R,
    index: &Indexer,
    plan: &crate::rules::Plan,
) -> Result<DropBreakdown, AnalyzeError> {
    let mut ids = Interner::default();
    let mut scanner = LineScanner::new(reader);
    let mut out = DropBreakdown::new();
    loop {
        let offset = scanner.offset();
        let item = scanner
            .next_item()
            .map_err(|source| AnalyzeError::Io { offset, source })?;
        let Some(Item::Line(line)) = item else { break };
        let kind = match decode(line.bytes) {
            Ok(Entry::Blank) => LineKind::Blank,
            Ok(Entry::Tx(t)) => LineKind::Tx {
                op: t.op,
                tx: ids
                    .intern(t.tx_id.as_bytes())
                    .ok_or(AnalyzeError::TooManyTransactions)?,
            },
            Ok(Entry::Unrecognized) => continue,
            Err(_) => LineKind::Corrupt { line: line.number },
        };
        if plan.keeps(line.offset) {
            continue;
        }
        let status = match kind {
            LineKind::Tx { tx, .. } => index.status(tx),
            _ => None,
        };
        let e = out
            .entry(crate::rules::drop_reason(kind, status))
            .or_default();
        e.0 += 1;
        e.1 += line.len_on_disk();
    }
    Ok(out)
}
