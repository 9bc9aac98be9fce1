//! The per-line work of every pass, written once: [`decode_line`] (what a line is, needing no
//! shared state, so decoding threads can run it) and [`Pass::observe`] with its `observe_*`
//! methods (the one place a decoded line reaches the interner, the rules' [`Indexer`] and the
//! [`Replayer`], in file order). The sequential pass calls both for each line; the parallel
//! pass calls [`decode_line`] on decoding threads and the `observe_*` method of each line's
//! kind on the consuming thread.

use std::borrow::Cow;

use hashbrown::DefaultHashBuilder;

use super::{Analysis, AnalyzeError, CorruptLine, MAX_REPORTED_CORRUPT_LINES, Want};
use crate::replay::{NO_PREPARE, PayloadHash, Replayer, payload_hash, torn_tail_hash};
use crate::rules::Stamp;
use crate::rules::{Indexer, LineKind, MAX_WAL_BYTES, Slot};
use crate::wal::{DecodeError, Interner, Op, RawEntry, decode_raw, hash_id};

/// What one complete line is, as [`decode_line`] found it.
pub(super) enum Decoded<'a> {
    Blank,
    Unrecognized,
    Tx {
        /// The decoded JSON string's bytes.
        tx_id: Cow<'a, [u8]>,
        /// The rest of what the consumer needs of the line.
        line: TxLine,
    },
    /// Not a JSON object; `reason` only when asked to describe it (the first few).
    Corrupt {
        reason: Option<String>,
    },
}

/// A decoded transaction line as the consuming thread needs it (its id apart).
#[derive(Clone, Copy)]
pub(super) struct TxLine {
    pub op: Op,
    /// [`hash_id`] of the tx_id with the interner's hasher, computed off the consumer.
    pub id_hash: u64,
    /// [`payload_hash`] of a PREPARE line when asked for, else [`NO_PREPARE`].
    pub payload: PayloadHash,
    /// The line's `timestamp` in whole seconds (retention), or `NO_STAMP`.
    pub stamp: Stamp,
}

/// What [`decode_line`] computes beyond the line's kind: each costs time per line.
#[derive(Clone, Copy)]
pub(super) struct DecodeOpts {
    /// Hash PREPARE lines (the replay keeps their hash).
    pub payload: bool,
    /// Describe a corrupt line (only the first few are reported).
    pub describe: bool,
}

/// Decodes one complete line (without its `\n`): the per-line work that needs no shared
/// state. `ids` is the interner's hasher. A line of 4 GiB or more is not decoded (reported
/// as blank): [`Pass::observe`] refuses it from its length alone. Always inlined, so the
/// enum it returns is never built in memory only to be matched again by the caller.
#[inline(always)]
pub(super) fn decode_line<'a>(
    bytes: &'a [u8],
    ids: &DefaultHashBuilder,
    opts: DecodeOpts,
) -> Decoded<'a> {
    if u32::try_from(bytes.len() + 1).is_err() {
        return Decoded::Blank;
    }
    // The fast decoder validates as strictly as serde_json (property-tested equal).
    match decode_raw(bytes) {
        Ok(RawEntry::Blank) => Decoded::Blank,
        Ok(RawEntry::Unrecognized) => Decoded::Unrecognized,
        Ok(RawEntry::Tx { op, tx_id, stamp }) => Decoded::Tx {
            line: TxLine {
                op,
                stamp,
                id_hash: hash_id(ids, &tx_id),
                payload: match opts.payload && !op.is_final() {
                    true => payload_hash(bytes),
                    false => NO_PREPARE,
                },
            },
            tx_id,
        },
        Err(e) => Decoded::Corrupt {
            reason: opts.describe.then(|| describe(&e)),
        },
    }
}

/// The torn tail as the replay keeps it: its length and (with replay) its hash.
pub(super) fn decode_tail(want: Want, tail: &[u8]) -> (u64, [u8; 32]) {
    let hash = match want.replay {
        true => torn_tail_hash(tail),
        false => [0; 32],
    };
    (tail.len() as u64, hash)
}

/// The index a pass builds: with timestamps when retention is asked for.
fn index_for(want: Want, txs: usize) -> Indexer {
    let index = Indexer::with_capacity(if want.index { txs } else { 0 })
        .with_corrupt_lines(want.corrupt_lines);
    match want.retention.is_enabled() {
        true => index.with_stamps(),
        false => index,
    }
}

/// State of one pass: the interner, the index, the replay and the line figures.
pub(super) struct Pass {
    pub want: Want,
    pub ids: Interner,
    /// The interner's hasher, handed to [`decode_line`].
    pub hasher: DefaultHashBuilder,
    pub index: Indexer,
    pub replay: Replayer,
    pub lines: u64,
    pub torn_tail_bytes: u64,
    pub corrupt: Vec<CorruptLine>,
    pub corrupt_lines: u64,
}

impl Pass {
    pub fn new(want: Want) -> Pass {
        Pass::with_capacity(want, 0)
    }

    /// A pass expecting `txs` transactions (0 when unknown).
    pub fn with_capacity(want: Want, txs: usize) -> Pass {
        let ids = Interner::with_capacity(txs);
        Pass {
            want,
            hasher: ids.hasher(),
            ids,
            index: index_for(want, txs),
            replay: Replayer::with_capacity(if want.replay { txs } else { 0 })
                .with_corrupt_lines(want.corrupt_lines)
                .with_retention(want.retention),
            lines: 0,
            torn_tail_bytes: 0,
            corrupt: Vec::new(),
            corrupt_lines: 0,
        }
    }

    /// What [`decode_line`] must compute for this pass, when decoding on its own thread.
    pub fn decode_opts(&self) -> DecodeOpts {
        DecodeOpts {
            payload: self.want.replay,
            describe: self.corrupt.len() < MAX_REPORTED_CORRUPT_LINES,
        }
    }

    /// Decodes and observes one complete line read by a sequential scan.
    #[inline]
    pub fn line(&mut self, offset: u64, bytes: &[u8]) -> Result<LineKind, AnalyzeError> {
        let decoded = decode_line(bytes, &self.hasher, self.decode_opts());
        self.observe(offset, bytes, decoded)
    }

    /// Feeds one decoded line, the next in file order, to the interner, the index and the
    /// replay (as wanted), through the `observe_*` method of its kind; returns what the index
    /// was told, which [`super::explain`] needs. `line` is the line without its `\n`.
    #[inline(always)]
    pub fn observe(
        &mut self,
        offset: u64,
        line: &[u8],
        decoded: Decoded<'_>,
    ) -> Result<LineKind, AnalyzeError> {
        let len = line.len();
        match decoded {
            Decoded::Blank => self.observe_blank(offset, len),
            Decoded::Unrecognized => self.observe_unrecognized(offset, len, line),
            Decoded::Tx { tx_id, line } => self.observe_tx(offset, len, &tx_id, line),
            Decoded::Corrupt { reason } => self.observe_corrupt(offset, len, line, reason),
        }
    }

    // The `observe_*` methods are what `observe` dispatches to; the parallel pass, which
    // keeps each line's kind in its batch, calls them directly. Each takes the line's offset
    // and its length without the `\n`, and is always inlined: it runs once per line, and
    // a call, or an enum the parallel pass built only for `observe` to match it again, cost
    // the consuming thread ~35 instructions a line (callgrind).

    #[inline(always)]
    pub fn observe_blank(&mut self, offset: u64, len: usize) -> Result<LineKind, AnalyzeError> {
        let slot = self.begin(offset, len)?;
        Ok(self.index(slot, LineKind::Blank))
    }

    /// `line`: the line's bytes, read only with replay (the parallel pass may pass none
    /// otherwise).
    #[inline(always)]
    pub fn observe_unrecognized(
        &mut self,
        offset: u64,
        len: usize,
        line: &[u8],
    ) -> Result<LineKind, AnalyzeError> {
        let slot = self.begin(offset, len)?;
        if self.want.replay {
            self.replay.observe_unrecognized(line);
        }
        Ok(self.index(slot, LineKind::Unrecognized))
    }

    /// `line` as [`decode_line`] decoded it.
    #[inline(always)]
    pub fn observe_tx(
        &mut self,
        offset: u64,
        len: usize,
        tx_id: &[u8],
        line: TxLine,
    ) -> Result<LineKind, AnalyzeError> {
        let TxLine {
            op,
            id_hash,
            payload,
            stamp,
        } = line;
        let slot = self.begin(offset, len)?;
        let tx = self
            .ids
            .intern_hashed(tx_id, id_hash)
            .ok_or(AnalyzeError::TooManyTransactions)?;
        if self.want.replay {
            self.replay.observe_tx(op, tx, offset, payload, stamp);
        }
        Ok(self.index(slot, LineKind::Tx { op, tx, stamp }))
    }

    /// `line` as for [`Pass::observe_unrecognized`]; `reason` when described.
    #[inline(always)]
    pub fn observe_corrupt(
        &mut self,
        offset: u64,
        len: usize,
        line: &[u8],
        reason: Option<String>,
    ) -> Result<LineKind, AnalyzeError> {
        let slot = self.begin(offset, len)?;
        let number = self.lines;
        self.corrupt(number, offset, reason.unwrap_or_default());
        if self.want.replay {
            self.replay.observe_corrupt(line);
        }
        Ok(self.index(slot, LineKind::Corrupt { line: number }))
    }

    /// Counts the line and checks that it can be recorded: its slot on disk.
    #[inline(always)]
    fn begin(&mut self, offset: u64, len: usize) -> Result<Slot, AnalyzeError> {
        self.lines += 1;
        let len = line_len(self.lines, offset, len)?;
        if self.want.index {
            check_size(offset, len)?;
        }
        Ok(Slot { offset, len })
    }

    /// Tells the index (if wanted) what the line is.
    #[inline(always)]
    fn index(&mut self, slot: Slot, kind: LineKind) -> LineKind {
        if self.want.index {
            self.index.observe(slot, kind);
        }
        kind
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

    /// The torn tail, as [`decode_tail`] gave it.
    pub fn torn_tail(&mut self, (len, hash): (u64, [u8; 32])) {
        self.torn_tail_bytes = len;
        if self.want.replay {
            self.replay.observe_torn_tail_hashed(len, hash);
        }
    }

    pub fn finish(self, end: u64) -> Analysis {
        let (mut analysis, replayer) = self.finish_deferred(end);
        analysis.replay = replayer.map(|r| r.finish(&analysis.ids));
        analysis
    }

    /// The analysis without its replay state, and the replayer (if wanted) to finish it.
    pub fn finish_deferred(self, end: u64) -> (Analysis, Option<Replayer>) {
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
