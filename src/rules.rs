//! The compaction rules, decided from line metadata alone: no I/O, no async.
//!
//! Per transaction, let F be its last COMMIT/ABORT line:
//! - other COMMIT/ABORT lines of it are dropped (redundant status updates);
//! - F is COMMIT: the last PREPARE before F is kept, earlier ones dropped;
//! - F is ABORT: every PREPARE before F is dropped (the ABORT marker stays);
//! - PREPAREs after F are kept (anomalies);
//! - no F (in flight): only the last PREPARE is kept.
//!
//! Blank lines are dropped, unrecognized lines kept. A corrupt complete line (not a JSON
//! object) follows [`CorruptLines`]: kept verbatim in place like an unrecognized line, or
//! set aside for the quarantine file; its neighbours follow the rules as if it were not
//! there. Survivors keep their bytes and order.
//! The [`Indexer`] is fed lines in file order and keeps a few words per transaction; it
//! knows the reclaimable bytes at every moment, so the daemon can feed it appended lines
//! incrementally. [`Indexer::plan`] turns it into the byte ranges the executor copies.

use hashbrown::HashMap;
use std::ops::Range;

use crate::wal::{Op, TxIdx};

mod corrupt;
pub mod retention;
pub use corrupt::{CorruptLines, SetAside};
pub use retention::{Expiry, NO_STAMP, Retention, Stamp};

/// One complete line on disk: its offset and its length including the `\n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub offset: u64,
    pub len: u32,
}

/// What the rules need to know about a complete line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    Blank,
    Unrecognized,
    Tx {
        op: Op,
        tx: TxIdx,
        /// Its `timestamp` in whole seconds, or [`NO_STAMP`] (see [`retention`]).
        stamp: Stamp,
    },
    /// Not a JSON object (a torn write followed by later appends, damaged bytes): `line` is
    /// its 1-based number, which the quarantine file records.
    Corrupt {
        line: u64,
    },
}

/// The final status a transaction replays to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    Committed,
    Aborted,
    InFlight,
}

/// Why compaction removes a line; `--dry-run` reports bytes per reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// A whitespace-only line.
    BlankLine,
    /// A COMMIT/ABORT that is not the transaction's last.
    RedundantFinal,
    /// A PREPARE of a committed transaction that is not the last before its COMMIT (a retry).
    SupersededPrepare,
    /// A PREPARE of an aborted transaction.
    AbortedPrepare,
    /// A PREPARE of an in-flight transaction that a later PREPARE replaced.
    SupersededInFlightPrepare,
    /// A corrupt line moved to the quarantine file (`corrupt_lines = "quarantine"`).
    QuarantinedCorruptLine,
    /// A line of an expired transaction that compaction alone would keep: it goes to the
    /// archive (retention).
    Expired,
}

impl DropReason {
    /// Snake-case name used in JSON output and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BlankLine => "blank_line",
            DropReason::RedundantFinal => "redundant_final",
            DropReason::SupersededPrepare => "superseded_prepare",
            DropReason::AbortedPrepare => "aborted_prepare",
            DropReason::SupersededInFlightPrepare => "superseded_in_flight_prepare",
            DropReason::QuarantinedCorruptLine => "quarantined_corrupt_line",
            DropReason::Expired => "expired",
        }
    }
}

/// Reclaimable bytes as a fraction of the WAL's size (0 for an empty WAL): `status`, the
/// triggers, the metrics and the alerts all read this one formula.
pub fn reclaimable_ratio(reclaimable_bytes: u64, size_bytes: u64) -> f64 {
    if size_bytes == 0 {
        0.0
    } else {
        reclaimable_bytes as f64 / size_bytes as f64
    }
}

/// Why a line that is not kept is dropped, given its kind and its transaction's status.
pub fn drop_reason(kind: LineKind, status: Option<TxStatus>) -> DropReason {
    match (kind, status) {
        (LineKind::Tx { op, .. }, _) if op.is_final() => DropReason::RedundantFinal,
        (LineKind::Tx { .. }, Some(TxStatus::Committed)) => DropReason::SupersededPrepare,
        (LineKind::Tx { .. }, Some(TxStatus::Aborted)) => DropReason::AbortedPrepare,
        (LineKind::Tx { .. }, _) => DropReason::SupersededInFlightPrepare,
        (LineKind::Corrupt { .. }, _) => DropReason::QuarantinedCorruptLine,
        _ => DropReason::BlankLine,
    }
}

/// Bits of a packed line's length. Lines of 8 MiB or more store [`LONG_LEN`] there and
/// their real length in `Indexer::long_lens` (such lines are rare).
const LEN_BITS: u32 = 23;
const LONG_LEN: u64 = (1 << LEN_BITS) - 1;
/// Set in a packed final line for ABORT (clear for COMMIT).
const ABORT_FLAG: u64 = 1 << LEN_BITS;
/// The offset takes the 40 bits above the length and the flag.
const OFFSET_SHIFT: u32 = LEN_BITS + 1;
/// A packed "no line": all ones, an offset no line may have.
const NONE: u64 = u64::MAX;
/// Lines must end below this offset (1 TiB) to be packed; the analysis refuses larger WALs.
pub const MAX_WAL_BYTES: u64 = (1 << (64 - OFFSET_SHIFT)) - 1;

/// A line packed into 8 bytes: offset, flag, length (or [`LONG_LEN`]). Packed lines sort
/// by offset. Memory is per transaction, and each one holds two of these.
fn pack(slot: Slot, flag: u64) -> u64 {
    debug_assert!(slot.offset + u64::from(slot.len) <= MAX_WAL_BYTES);
    let len = u64::from(slot.len).min(LONG_LEN);
    (slot.offset << OFFSET_SHIFT) | flag | len
}

fn packed_offset(p: u64) -> u64 {
    p >> OFFSET_SHIFT
}

/// Lengths of lines too long to pack, by offset.
type LongLens = HashMap<u64, u32>;

fn unpack(p: u64, long_lens: &LongLens) -> Slot {
    let offset = packed_offset(p);
    let len = match p & LONG_LEN {
        LONG_LEN => long_lens[&offset],
        short => short as u32,
    };
    Slot { offset, len }
}

/// A transaction's final line, if any, and its op.
fn final_of(fin: u64, long_lens: &LongLens) -> Option<(Slot, Op)> {
    (fin != NONE).then(|| {
        let op = if fin & ABORT_FLAG != 0 {
            Op::Abort
        } else {
            Op::Commit
        };
        (unpack(fin, long_lens), op)
    })
}

fn status_of(fin: u64) -> TxStatus {
    match fin {
        NONE => TxStatus::InFlight,
        f if f & ABORT_FLAG != 0 => TxStatus::Aborted,
        _ => TxStatus::Committed,
    }
}

/// PREPAREs seen after a transaction's current final line: rare, so kept aside.
#[derive(Clone, Debug, Default)]
struct AfterFinal {
    /// The last PREPARE before the final, which a COMMIT keeps.
    before_final: Option<Slot>,
    prepares: Vec<Slot>,
    bytes: u64,
}

/// Line counts by kind, for status and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub lines: u64,
    pub prepare: u64,
    pub commit: u64,
    pub abort: u64,
    pub blank: u64,
    pub unrecognized: u64,
    /// Corrupt complete lines, whatever the policy does with them.
    pub corrupt: u64,
}

/// Transaction counts by replayed status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TxCounts {
    pub committed: u64,
    pub aborted: u64,
    pub in_flight: u64,
    /// PREPAREs after their transaction's final line.
    pub anomalies: u64,
}

impl TxCounts {
    fn slot(&mut self, status: TxStatus) -> &mut u64 {
        match status {
            TxStatus::Committed => &mut self.committed,
            TxStatus::Aborted => &mut self.aborted,
            TxStatus::InFlight => &mut self.in_flight,
        }
    }
}

/// Accumulates the rules' state line by line; cheap to extend with appended lines.
#[derive(Clone, Default)]
pub struct Indexer {
    /// Two packed lines per transaction: its last final (`2 * tx`, [`ABORT_FLAG`] for
    /// ABORT) and its last PREPARE (`2 * tx + 1`), [`NONE`] when absent: 16 bytes each.
    lines: Vec<u64>,
    long_lens: LongLens,
    after_final: HashMap<TxIdx, AfterFinal>,
    /// Lines kept verbatim in place: unrecognized ones, and corrupt ones under
    /// [`CorruptLines::Keep`] or [`CorruptLines::Refuse`].
    verbatim: Vec<Slot>,
    /// Corrupt lines under [`CorruptLines::Quarantine`].
    set_aside: Vec<SetAside>,
    corrupt_lines: CorruptLines,
    counts: Counts,
    /// Bytes of complete lines observed.
    bytes: u64,
    /// Bytes of the lines that currently survive.
    kept_bytes: u64,
    /// Transactions by status, kept current line by line.
    tx_counts: TxCounts,
    /// Whether to keep `stamps` (retention may be asked of the plan).
    tracks_stamps: bool,
    /// Per transaction the stamps of its last final (`2 * tx`) and last PREPARE
    /// (`2 * tx + 1`), [`NO_STAMP`] when absent: 8 bytes each, only with retention.
    stamps: Vec<Stamp>,
}

impl Indexer {
    /// An index with room for `txs` transactions (their memory is reserved, not touched).
    pub fn with_capacity(txs: usize) -> Indexer {
        Indexer {
            lines: Vec::with_capacity(2 * txs),
            ..Indexer::default()
        }
    }

    /// Keeps each transaction's timestamps, so the plan can expire old transactions
    /// ([`Indexer::into_plan_retaining`], [`Indexer::expirable`]).
    pub fn with_stamps(mut self) -> Indexer {
        self.tracks_stamps = true;
        self
    }

    fn observe_stamp(&mut self, op: Op, tx: TxIdx, stamp: Stamp) {
        let i = 2 * tx as usize;
        while i >= self.stamps.len() {
            self.stamps.extend_from_slice(&[NO_STAMP, NO_STAMP]);
        }
        self.stamps[i + usize::from(!op.is_final())] = stamp;
    }

    /// The stamp `tx` expires by under `r` (its final's, or in flight its last PREPARE's),
    /// or `None` when it stays. A PREPARE after the final keeps the whole transaction.
    fn expires(&self, tx: TxIdx, r: &Retention) -> Option<Stamp> {
        let i = 2 * tx as usize;
        let (fin, prep) = (*self.stamps.get(i)?, *self.stamps.get(i + 1)?);
        if !self.after_final.is_empty() && self.after_final.contains_key(&tx) {
            return None;
        }
        match self.fin(tx) {
            NONE => (self.prepare_slot(tx).is_some() && r.expires_in_flight(prep)).then_some(prep),
            _ => r.expires_finished(fin).then_some(fin),
        }
    }

    /// The transactions `r` expires now. Online and lease runs must refuse a final line
    /// appended for one of them during the run: its deciding PREPARE leaves for the archive.
    pub fn expiring<'a>(&'a self, r: &'a Retention) -> impl Iterator<Item = TxIdx> + 'a {
        let on = r.is_enabled() && self.tracks_stamps;
        (0..self.transactions() as TxIdx).filter(move |&tx| on && self.expires(tx, r).is_some())
    }

    /// What expiring under `r` would remove now: for `status`, `--dry-run` and triggers.
    /// Walks every transaction. Without [`Indexer::with_stamps`], nothing.
    pub fn expirable(&self, r: &Retention) -> Expiry {
        let mut e = Expiry::default();
        if !r.is_enabled() || !self.tracks_stamps {
            return e;
        }
        for tx in 0..self.transactions() as TxIdx {
            if let Some(stamp) = self.expires(tx, r) {
                let (mut lines, mut bytes) = (0, 0);
                self.survivors_of(tx, |s| {
                    lines += 1;
                    bytes += u64::from(s.len);
                });
                e.add(stamp, lines, bytes);
            }
        }
        e
    }

    /// What the index does with corrupt lines from now on (the default is to keep them).
    pub fn with_corrupt_lines(mut self, mode: CorruptLines) -> Indexer {
        self.corrupt_lines = mode;
        self
    }

    /// Records one complete line, in file order. It must end below [`MAX_WAL_BYTES`].
    pub fn observe(&mut self, slot: Slot, kind: LineKind) {
        self.counts.lines += 1;
        self.bytes += u64::from(slot.len);
        match kind {
            LineKind::Blank => self.counts.blank += 1,
            LineKind::Unrecognized => {
                self.counts.unrecognized += 1;
                self.keep_verbatim(slot);
            }
            LineKind::Corrupt { line } => {
                self.counts.corrupt += 1;
                match self.corrupt_lines.sets_aside() {
                    true => self.set_aside.push(SetAside { line, slot }),
                    false => self.keep_verbatim(slot),
                }
            }
            LineKind::Tx { op, tx, stamp } => {
                self.observe_tx(slot, op, tx);
                if self.tracks_stamps {
                    self.observe_stamp(op, tx, stamp);
                }
            }
        }
    }

    fn keep_verbatim(&mut self, slot: Slot) {
        self.verbatim.push(slot);
        self.kept_bytes += u64::from(slot.len);
    }

    fn fin(&self, tx: TxIdx) -> u64 {
        self.lines[2 * tx as usize]
    }

    fn final_slot(&self, tx: TxIdx) -> Option<(Slot, Op)> {
        final_of(self.fin(tx), &self.long_lens)
    }

    fn prepare_slot(&self, tx: TxIdx) -> Option<Slot> {
        let p = self.lines[2 * tx as usize + 1];
        (p != NONE).then(|| unpack(p, &self.long_lens))
    }

    /// Packs `slot`, remembering its length aside if it is too long to pack.
    fn pack(&mut self, slot: Slot, flag: u64) -> u64 {
        if u64::from(slot.len) >= LONG_LEN {
            self.long_lens.insert(slot.offset, slot.len);
        }
        pack(slot, flag)
    }

    fn observe_tx(&mut self, slot: Slot, op: Op, tx: TxIdx) {
        match op {
            Op::Prepare => self.counts.prepare += 1,
            Op::Commit => self.counts.commit += 1,
            Op::Abort => self.counts.abort += 1,
        }
        let i = 2 * tx as usize;
        let status_before = self.lines.get(i).map(|&f| status_of(f));
        // Ids are dense in order of appearance: a new one is the next pair (pushes, not a
        // `resize`, which called `memset` for each new transaction).
        while i >= self.lines.len() {
            self.lines.extend_from_slice(&[NONE, NONE]);
        }
        self.observe_tx_bytes(slot, op, tx);
        // Keep the per-status counts current: the daemon reads them at every refresh.
        if let Some(s) = status_before {
            *self.tx_counts.slot(s) -= 1;
        }
        *self.tx_counts.slot(status_of(self.fin(tx))) += 1;
    }

    fn observe_tx_bytes(&mut self, slot: Slot, op: Op, tx: TxIdx) {
        // The survivors of `tx` change by a delta computable from its state alone (anomalies
        // are rare, so only then is `after_final` consulted).
        let prep_len = self.prepare_slot(tx).map_or(0, |s| u64::from(s.len));
        let old_final = self.final_slot(tx);
        if op.is_final() {
            let before = match old_final {
                None => prep_len,
                Some(_) if !self.after_final.is_empty() => self.kept_bytes_of(tx),
                Some((f, old_op)) => {
                    u64::from(f.len) + if old_op == Op::Commit { prep_len } else { 0 }
                }
            };
            self.set_final(tx, slot, op);
            let after = u64::from(slot.len) + if op == Op::Commit { prep_len } else { 0 };
            self.kept_bytes = self.kept_bytes - before + after;
        } else {
            // After a final, the new PREPARE is an anomaly and kept on top of the rest;
            // before any final, it replaces the previous PREPARE.
            let replaced = if old_final.is_some() { 0 } else { prep_len };
            self.set_prepare(tx, slot, old_final.is_some());
            self.kept_bytes = self.kept_bytes - replaced + u64::from(slot.len);
        }
    }

    fn set_final(&mut self, tx: TxIdx, slot: Slot, op: Op) {
        // PREPAREs that were after the old final are now before the new one.
        if !self.after_final.is_empty()
            && let Some(gone) = self.after_final.remove(&tx)
        {
            self.tx_counts.anomalies -= gone.prepares.len() as u64;
        }
        let flag = if op == Op::Abort { ABORT_FLAG } else { 0 };
        self.lines[2 * tx as usize] = self.pack(slot, flag);
    }

    fn set_prepare(&mut self, tx: TxIdx, slot: Slot, after_final: bool) {
        if after_final {
            let before_final = self.prepare_slot(tx);
            let after = self.after_final.entry(tx).or_insert_with(|| AfterFinal {
                before_final,
                ..AfterFinal::default()
            });
            after.prepares.push(slot);
            after.bytes += u64::from(slot.len);
            self.tx_counts.anomalies += 1;
        }
        self.lines[2 * tx as usize + 1] = self.pack(slot, 0);
    }

    /// The PREPARE a final COMMIT keeps: the last one before the final.
    fn kept_prepare(&self, tx: TxIdx) -> Option<Slot> {
        self.after_final
            .get(&tx)
            .map_or(self.prepare_slot(tx), |a| a.before_final)
    }

    /// Calls `keep` with every surviving line of one transaction.
    fn survivors_of(&self, tx: TxIdx, mut keep: impl FnMut(Slot)) {
        let Some((final_slot, op)) = self.final_slot(tx) else {
            self.prepare_slot(tx).into_iter().for_each(keep);
            return;
        };
        keep(final_slot);
        if op == Op::Commit {
            self.kept_prepare(tx).into_iter().for_each(&mut keep);
        }
        self.after_final
            .get(&tx)
            .into_iter()
            .flat_map(|a| a.prepares.iter().copied())
            .for_each(keep);
    }

    fn kept_bytes_of(&self, tx: TxIdx) -> u64 {
        let mut n = 0;
        self.survivors_of(tx, |s| n += u64::from(s.len));
        n
    }

    /// Line counts so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Bytes of complete lines observed.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes compaction would remove now.
    pub fn reclaimable_bytes(&self) -> u64 {
        self.bytes - self.kept_bytes
    }

    /// Replayed status of one transaction, if it was seen.
    pub fn status(&self, tx: TxIdx) -> Option<TxStatus> {
        self.lines.get(2 * tx as usize).map(|&f| status_of(f))
    }

    /// Number of transactions seen.
    pub fn transactions(&self) -> usize {
        self.lines.len() / 2
    }

    /// Transactions by status; walks every transaction once.
    pub fn tx_counts(&self) -> TxCounts {
        self.tx_counts
    }

    /// Transactions whose last PREPARE the plan drops (it precedes their final ABORT). A COMMIT
    /// appended later with no new PREPARE would be decided by that dropped line, so online
    /// compaction must not copy such a COMMIT verbatim after the compacted prefix.
    pub fn txs_with_dropped_last_prepare(&self) -> impl Iterator<Item = TxIdx> + '_ {
        (0..self.transactions() as TxIdx).filter(|&tx| {
            matches!(self.final_slot(tx), Some((_, Op::Abort)))
                && self.prepare_slot(tx).is_some()
                && !self.after_final.contains_key(&tx)
        })
    }

    /// The surviving lines, in file order. Works on a copy of the index: see
    /// [`Indexer::into_plan`] to spare that memory.
    pub fn plan(&self) -> Plan {
        self.clone().into_plan()
    }

    /// The surviving lines, in file order, built in the index's own memory: each
    /// transaction's two packed lines become its survivors or `NONE` (dropped), then one sort.
    pub fn into_plan(self) -> Plan {
        self.into_plan_retaining(&Retention::default())
    }

    /// [`Indexer::into_plan`] that also expires transactions under `r`: their surviving
    /// lines leave the plan's survivors for [`Plan::archived`], in file order.
    pub fn into_plan_retaining(mut self, r: &Retention) -> Plan {
        let txs = self.transactions() as TxIdx;
        let mut archived = Vec::new();
        let mut expiry = Expiry::default();
        let retaining = r.is_enabled() && self.tracks_stamps;
        for tx in 0..txs {
            let (fin, prep) = self.survivor_pair(tx);
            let (fin, prep) = match retaining.then(|| self.expires(tx, r)).flatten() {
                Some(stamp) => {
                    let gone: Vec<u64> = [fin, prep].into_iter().filter(|&p| p != NONE).collect();
                    let bytes = gone
                        .iter()
                        .map(|&p| u64::from(unpack(p, &self.long_lens).len))
                        .sum();
                    expiry.add(stamp, gone.len() as u64, bytes);
                    archived.extend(gone);
                    (NONE, NONE)
                }
                None => (fin, prep),
            };
            self.lines[2 * tx as usize] = fin;
            self.lines[2 * tx as usize + 1] = prep;
        }
        self.stamps = Vec::new();
        for s in &self.verbatim {
            if u64::from(s.len) >= LONG_LEN {
                self.long_lens.insert(s.offset, s.len);
            }
        }
        let mut survivors = std::mem::take(&mut self.lines);
        let extra = self
            .after_final
            .values()
            .map(|a| a.prepares.len())
            .sum::<usize>();
        survivors.reserve_exact(extra + self.verbatim.len());
        let anomalies = self.after_final.values().flat_map(|a| a.prepares.iter());
        survivors.extend(anomalies.chain(&self.verbatim).map(|&s| pack(s, 0)));
        survivors.sort_unstable();
        let dropped = survivors.partition_point(|&p| p != NONE);
        survivors.truncate(dropped);
        survivors.shrink_to_fit();
        archived.sort_unstable();
        let mut plan = Plan::new(survivors, self.long_lens, self.bytes, self.counts.lines);
        plan.set_aside = self.set_aside;
        plan.archived = archived;
        plan.expiry = expiry;
        plan
    }

    /// A transaction's final and kept PREPARE as packed survivors (flag cleared), or [`NONE`].
    /// Its anomalies are added by the caller.
    fn survivor_pair(&self, tx: TxIdx) -> (u64, u64) {
        let plain = |s: Slot| pack(s, 0);
        match self.final_slot(tx) {
            None => (NONE, self.prepare_slot(tx).map_or(NONE, plain)),
            Some((f, Op::Abort)) => (plain(f), NONE),
            Some((f, _)) => (plain(f), self.kept_prepare(tx).map_or(NONE, plain)),
        }
    }
}

/// What compaction keeps: whole lines of the scanned prefix, in file order. Everything from
/// `scanned_len` on (a torn tail, or lines appended during an online compaction) is copied
/// verbatim after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Surviving lines, packed (8 bytes each) and sorted by offset.
    survivors: Vec<u64>,
    long_lens: LongLens,
    survivor_bytes: u64,
    /// Set by [`Plan::release_lines`].
    released: bool,
    /// Corrupt lines leaving for the quarantine file, in file order (not survivors).
    pub set_aside: Vec<SetAside>,
    /// Lines of expired transactions leaving for the archive, packed and sorted by offset
    /// (not survivors; see [`Plan::archived`]).
    archived: Vec<u64>,
    /// What expired: transactions, archived lines and bytes, oldest and newest stamp.
    pub expiry: Expiry,
    /// Bytes of complete lines the plan covers (its input), i.e. `[0, scanned_len)`.
    pub scanned_len: u64,
    pub survivor_lines: u64,
    pub dropped_lines: u64,
}

/// The lines leaving for the archive, taken out of a [`Plan`] ([`Plan::take_archived`]).
#[derive(Debug, Default)]
pub struct ArchivedLines {
    packed: Vec<u64>,
    long_lens: LongLens,
}

impl ArchivedLines {
    /// The lines in file order (as [`Plan::archived`] gave them).
    pub fn iter(&self) -> impl Iterator<Item = Slot> + '_ {
        self.range(0..self.packed.len())
    }

    /// Lines `range` (indices in file order).
    pub fn range(&self, range: Range<usize>) -> impl Iterator<Item = Slot> + '_ {
        self.packed[range]
            .iter()
            .map(|&p| unpack(p, &self.long_lens))
    }
}

impl Plan {
    fn new(survivors: Vec<u64>, long_lens: LongLens, scanned_len: u64, lines: u64) -> Plan {
        let survivor_lines = survivors.len() as u64;
        let survivor_bytes = survivors
            .iter()
            .map(|&p| u64::from(unpack(p, &long_lens).len))
            .sum();
        Plan {
            survivors,
            long_lens,
            survivor_bytes,
            released: false,
            set_aside: Vec::new(),
            archived: Vec::new(),
            expiry: Expiry::default(),
            scanned_len,
            survivor_lines,
            dropped_lines: lines - survivor_lines,
        }
    }

    /// The surviving byte ranges: sorted, non-overlapping, adjacent lines coalesced.
    pub fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        let mut lines = self.lines().peekable();
        std::iter::from_fn(move || {
            let first = lines.next()?;
            let mut range = first.offset..first.offset + u64::from(first.len);
            while let Some(next) = lines.next_if(|s| s.offset == range.end) {
                range.end += u64::from(next.len);
            }
            Some(range)
        })
    }

    fn lines(&self) -> impl Iterator<Item = Slot> + '_ {
        assert!(!self.released, "the plan's lines were released");
        self.survivors.iter().map(|&p| unpack(p, &self.long_lens))
    }

    /// The lines leaving for the archive (expired transactions' survivors), in file order.
    pub fn archived(&self) -> impl Iterator<Item = Slot> + '_ {
        assert!(!self.released, "the plan's lines were released");
        self.archived.iter().map(|&p| unpack(p, &self.long_lens))
    }

    /// Takes the lines leaving for the archive out of the plan (it archives none after
    /// this): the archive is written on a thread of its own, beside the survivors.
    pub fn take_archived(&mut self) -> ArchivedLines {
        assert!(!self.released, "the plan's lines were released");
        let packed = std::mem::take(&mut self.archived);
        let long_lens = packed
            .iter()
            .filter(|&&p| p & LONG_LEN == LONG_LEN)
            .map(|&p| (packed_offset(p), self.long_lens[&packed_offset(p)]))
            .collect();
        ArchivedLines { packed, long_lens }
    }

    /// Frees the surviving lines once they are written: verification would otherwise hold
    /// them at the peak of a run's memory. The figures stay; [`Plan::ranges`] and
    /// [`Plan::keeps`] panic afterwards.
    pub fn release_lines(&mut self) {
        self.released = true;
        self.survivors = Vec::new();
        self.archived = Vec::new();
    }

    /// Bytes of the scanned prefix that survive.
    pub fn survivor_bytes(&self) -> u64 {
        self.survivor_bytes
    }

    /// Bytes of the scanned prefix that leave the WAL: reclaimed, quarantined or archived.
    pub fn reclaimable_bytes(&self) -> u64 {
        self.scanned_len - self.survivor_bytes()
    }

    /// True if the line starting at `offset` leaves for the archive.
    pub fn archives(&self, offset: u64) -> bool {
        assert!(!self.released, "the plan's lines were released");
        self.archived
            .binary_search_by_key(&offset, |&p| packed_offset(p))
            .is_ok()
    }

    /// True if the line starting at `offset` survives.
    pub fn keeps(&self, offset: u64) -> bool {
        assert!(!self.released, "the plan's lines were released");
        self.survivors
            .binary_search_by_key(&offset, |&p| packed_offset(p))
            .is_ok()
    }
}

#[cfg(test)]
mod tests;
