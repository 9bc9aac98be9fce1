//! The compaction rules, decided from line metadata alone: no I/O, no async.
//!
//! Per transaction, let F be its last COMMIT/ABORT line:
//! - other COMMIT/ABORT lines of it are dropped (redundant status updates);
//! - F is COMMIT: the last PREPARE before F is kept, earlier ones dropped;
//! - F is ABORT: every PREPARE before F is dropped (the ABORT marker stays);
//! - PREPAREs after F are kept (anomalies);
//! - no F (in flight): only the last PREPARE is kept.
//!
//! Blank lines are dropped, unrecognized lines kept. Survivors keep their bytes and order.
//! The [`Indexer`] is fed lines in file order and keeps a few words per transaction; it
//! knows the reclaimable bytes at every moment, so the daemon can feed it appended lines
//! incrementally. [`Indexer::plan`] turns it into the byte ranges the executor copies.

use hashbrown::HashMap;
use std::ops::Range;

use crate::wal::{Op, TxIdx};

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
    Tx { op: Op, tx: TxIdx },
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
        _ => DropReason::BlankLine,
    }
}

/// Marks "no line" in a packed slot; offsets never reach it.
const NO_OFFSET: u64 = u64::MAX;
/// Offsets stay below 2^63, so the final's top bit can record COMMIT vs ABORT.
const ABORT_BIT: u64 = 1 << 63;

/// Per-transaction state, packed to 24 bytes: memory is per transaction, so it counts.
#[derive(Clone, Copy)]
struct TxState {
    /// Offset of the last COMMIT/ABORT (ABORT_BIT set for ABORT), or NO_OFFSET.
    final_off: u64,
    /// Offset of the last PREPARE seen, or NO_OFFSET.
    prep_off: u64,
    final_len: u32,
    prep_len: u32,
}

impl Default for TxState {
    fn default() -> Self {
        TxState {
            final_off: NO_OFFSET,
            prep_off: NO_OFFSET,
            final_len: 0,
            prep_len: 0,
        }
    }
}

impl TxState {
    fn final_slot(&self) -> Option<(Slot, Op)> {
        (self.final_off != NO_OFFSET).then(|| {
            let op = if self.final_off & ABORT_BIT != 0 {
                Op::Abort
            } else {
                Op::Commit
            };
            let slot = Slot {
                offset: self.final_off & !ABORT_BIT,
                len: self.final_len,
            };
            (slot, op)
        })
    }

    fn prepare_slot(&self) -> Option<Slot> {
        (self.prep_off != NO_OFFSET).then_some(Slot {
            offset: self.prep_off,
            len: self.prep_len,
        })
    }

    fn status(&self) -> TxStatus {
        match self.final_slot() {
            Some((_, Op::Abort)) => TxStatus::Aborted,
            Some(_) => TxStatus::Committed,
            None => TxStatus::InFlight,
        }
    }
}

/// PREPAREs seen after a transaction's current final line: rare, so kept aside.
#[derive(Debug, Default)]
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
#[derive(Default)]
pub struct Indexer {
    txs: Vec<TxState>,
    after_final: HashMap<TxIdx, AfterFinal>,
    unrecognized: Vec<Slot>,
    counts: Counts,
    /// Bytes of complete lines observed.
    bytes: u64,
    /// Bytes of the lines that currently survive.
    kept_bytes: u64,
    /// Transactions by status, kept current line by line.
    tx_counts: TxCounts,
}

impl Indexer {
    /// Records one complete line, in file order.
    pub fn observe(&mut self, slot: Slot, kind: LineKind) {
        self.counts.lines += 1;
        self.bytes += u64::from(slot.len);
        match kind {
            LineKind::Blank => self.counts.blank += 1,
            LineKind::Unrecognized => {
                self.counts.unrecognized += 1;
                self.unrecognized.push(slot);
                self.kept_bytes += u64::from(slot.len);
            }
            LineKind::Tx { op, tx } => self.observe_tx(slot, op, tx),
        }
    }

    fn observe_tx(&mut self, slot: Slot, op: Op, tx: TxIdx) {
        match op {
            Op::Prepare => self.counts.prepare += 1,
            Op::Commit => self.counts.commit += 1,
            Op::Abort => self.counts.abort += 1,
        }
        let i = tx as usize;
        let status_before = self.txs.get(i).map(TxState::status);
        if i >= self.txs.len() {
            self.txs.resize(i + 1, TxState::default());
        }
        self.observe_tx_bytes(slot, op, tx);
        // Keep the per-status counts current: the daemon reads them at every refresh.
        if let Some(s) = status_before {
            *self.tx_counts.slot(s) -= 1;
        }
        *self.tx_counts.slot(self.txs[i].status()) += 1;
    }

    fn observe_tx_bytes(&mut self, slot: Slot, op: Op, tx: TxIdx) {
        let i = tx as usize;
        // The survivors of `tx` change by a delta computable from its state alone (anomalies
        // are rare, so only then is `after_final` consulted).
        let state = self.txs[i];
        let prep_len = state.prepare_slot().map_or(0, |s| u64::from(s.len));
        if op.is_final() {
            let before = match state.final_slot() {
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
            let replaced = if state.final_slot().is_some() {
                0
            } else {
                prep_len
            };
            self.set_prepare(tx, slot);
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
        let bit = if op == Op::Abort { ABORT_BIT } else { 0 };
        let state = &mut self.txs[tx as usize];
        state.final_off = slot.offset | bit;
        state.final_len = slot.len;
    }

    fn set_prepare(&mut self, tx: TxIdx, slot: Slot) {
        let state = &mut self.txs[tx as usize];
        if state.final_slot().is_some() {
            let before_final = state.prepare_slot();
            let after = self.after_final.entry(tx).or_insert_with(|| AfterFinal {
                before_final,
                ..AfterFinal::default()
            });
            after.prepares.push(slot);
            after.bytes += u64::from(slot.len);
            self.tx_counts.anomalies += 1;
        }
        state.prep_off = slot.offset;
        state.prep_len = slot.len;
    }

    /// Calls `keep` with every surviving line of one transaction.
    fn survivors_of(&self, tx: TxIdx, mut keep: impl FnMut(Slot)) {
        let state = &self.txs[tx as usize];
        let Some((final_slot, op)) = state.final_slot() else {
            state.prepare_slot().into_iter().for_each(keep);
            return;
        };
        keep(final_slot);
        let after = self.after_final.get(&tx);
        if op == Op::Commit {
            let before_final = after.map_or(state.prepare_slot(), |a| a.before_final);
            before_final.into_iter().for_each(&mut keep);
        }
        after
            .into_iter()
            .flat_map(|a| a.prepares.iter().copied())
            .for_each(keep);
    }

    fn kept_bytes_of(&self, tx: TxIdx) -> u64 {
        let state = &self.txs[tx as usize];
        match (state.final_slot(), self.after_final.get(&tx)) {
            // Anomalies are counted by their running total instead of walked.
            (Some((f, op)), Some(after)) => {
                let prep = if op == Op::Commit {
                    after.before_final.map_or(0, |s| s.len)
                } else {
                    0
                };
                u64::from(f.len) + u64::from(prep) + after.bytes
            }
            _ => {
                let mut n = 0;
                self.survivors_of(tx, |s| n += u64::from(s.len));
                n
            }
        }
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
        self.txs.get(tx as usize).map(TxState::status)
    }

    /// Transactions by status; walks every transaction once.
    pub fn tx_counts(&self) -> TxCounts {
        self.tx_counts
    }

    /// Transactions whose last PREPARE the plan drops (it precedes their final ABORT). A COMMIT
    /// appended later with no new PREPARE would be decided by that dropped line, so online
    /// compaction must not copy such a COMMIT verbatim after the compacted prefix.
    pub fn txs_with_dropped_last_prepare(&self) -> impl Iterator<Item = TxIdx> + '_ {
        (0..self.txs.len() as TxIdx).filter(|&tx| {
            let s = &self.txs[tx as usize];
            matches!(s.final_slot(), Some((_, Op::Abort)))
                && s.prepare_slot().is_some()
                && !self.after_final.contains_key(&tx)
        })
    }

    /// The surviving byte ranges, sorted and coalesced.
    pub fn plan(&self) -> Plan {
        // Counted first: growing the vector would briefly hold it twice, at the peak of a run.
        let mut survivors = self.unrecognized.len();
        for tx in 0..self.txs.len() as TxIdx {
            self.survivors_of(tx, |_| survivors += 1);
        }
        let mut slots = Vec::with_capacity(survivors);
        for tx in 0..self.txs.len() as TxIdx {
            self.survivors_of(tx, |s| slots.push(s));
        }
        slots.extend_from_slice(&self.unrecognized);
        slots.sort_unstable_by_key(|s| s.offset);
        Plan::from_sorted(&slots, self.bytes, self.counts.lines)
    }
}

/// What compaction keeps: byte ranges of the scanned prefix, in file order. Everything from
/// `scanned_len` on (a torn tail, or lines appended during an online compaction) is copied
/// verbatim after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Sorted, non-overlapping, non-adjacent ranges of whole surviving lines.
    pub ranges: Vec<Range<u64>>,
    /// Bytes of complete lines the plan covers (its input), i.e. `[0, scanned_len)`.
    pub scanned_len: u64,
    pub survivor_lines: u64,
    pub dropped_lines: u64,
}

impl Plan {
    fn from_sorted(slots: &[Slot], scanned_len: u64, lines: u64) -> Plan {
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for s in slots {
            let end = s.offset + u64::from(s.len);
            match ranges.last_mut() {
                Some(last) if last.end == s.offset => last.end = end,
                _ => ranges.push(s.offset..end),
            }
        }
        let survivor_lines = slots.len() as u64;
        Plan {
            ranges,
            scanned_len,
            survivor_lines,
            dropped_lines: lines - survivor_lines,
        }
    }

    /// Bytes of the scanned prefix that survive.
    pub fn survivor_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// Bytes of the scanned prefix that compaction removes.
    pub fn reclaimable_bytes(&self) -> u64 {
        self.scanned_len - self.survivor_bytes()
    }

    /// True if the line starting at `offset` survives.
    pub fn keeps(&self, offset: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= offset);
        self.ranges.get(i).is_some_and(|r| r.start <= offset)
    }
}

#[cfg(test)]
mod tests;
