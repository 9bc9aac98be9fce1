//! The replay state a WAL stands for, and its digest: what `verify` compares.
//!
//! This is written independently of [`crate::rules`] on purpose: verification recomputes
//! the state from the bytes of each file, so a planning bug shows up as a digest mismatch.
//!
//! Replay state: per transaction its final status (its last COMMIT/ABORT) and, for a
//! committed one, the `data` of the last PREPARE before that final; committed transactions
//! in the order of their final lines; aborted ids; in-flight transactions with the `data`
//! of their last PREPARE; PREPAREs after their transaction's final, in order; unrecognized
//! lines in order; the torn tail.
//!
//! Digest: SHA-256 of a canonical encoding (see [`REPLAY_DIGEST_DOMAIN`] and `encode_*`):
//! ids as length-prefixed UTF-8, `data` as SHA-256 of its raw JSON text truncated to 16
//! bytes, aborted and in-flight transactions sorted by id, everything else in file order.

use hashbrown::HashMap;
use std::fmt;

use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};

use crate::wal::{Interner, Op, TxIdx};

/// Prefix of the encoding, so a format change can never compare equal to an old digest.
pub const REPLAY_DIGEST_DOMAIN: &[u8] = b"walcompactd-replay-v1\0";

/// Truncated SHA-256 of a PREPARE's `data`: 128 bits keep equality collision-free in practice
/// while keeping per-transaction memory small.
pub type DataHash = [u8; 16];
/// A committed transaction with no PREPARE before its COMMIT; also what callers pass to
/// [`Replayer::observe_tx`] for a COMMIT/ABORT, whose hash is not used.
pub const NO_PREPARE: DataHash = [0; 16];
/// Marks "no final line yet" in `TxReplay::final_seq`.
const NO_FINAL: u64 = u64::MAX;
/// Sequence numbers stay below 2^63, so the top bit can record ABORT.
const ABORT_BIT: u64 = 1 << 63;

/// The hash replay keeps of a PREPARE's `data` (its raw JSON text, or its absence).
/// Computed by the caller, so decoding threads can do it in parallel.
pub fn data_hash(data: Option<&RawValue>) -> DataHash {
    data_hash_raw(data.map(RawValue::get))
}

/// [`data_hash`] of `data`'s raw JSON text.
pub fn data_hash_raw(data: Option<&str>) -> DataHash {
    let mut h = Sha256::new();
    match data {
        Some(raw) => {
            h.update([1]);
            h.update(raw.as_bytes());
        }
        None => h.update([0]),
    }
    let mut out = [0; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

/// The hash replay keeps of the torn tail's bytes.
pub fn torn_tail_hash(tail: &[u8]) -> [u8; 32] {
    Sha256::digest(tail).into()
}

/// Per-transaction replay state: 24 bytes.
#[derive(Clone, Copy)]
struct TxReplay {
    /// Sequence number of the last final line (ABORT_BIT for ABORT), or NO_FINAL.
    final_seq: u64,
    /// `data` of the last PREPARE before the final.
    decided: DataHash,
}

/// A finished replay: the digest plus the figures status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayState {
    pub digest: [u8; 32],
    pub committed: u64,
    pub aborted: u64,
    pub in_flight: u64,
    pub anomalies: u64,
    pub unrecognized: u64,
    pub torn_tail_bytes: u64,
}

impl ReplayState {
    /// The digest as lowercase hex, as printed and logged.
    pub fn digest_hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for ReplayState {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "sha256:{} ({} committed, {} aborted, {} in flight, {} anomalies, {} unrecognized, torn tail {} bytes)",
            self.digest_hex(),
            self.committed,
            self.aborted,
            self.in_flight,
            self.anomalies,
            self.unrecognized,
            self.torn_tail_bytes
        )
    }
}

/// Feeds on a WAL's lines in order and produces its [`ReplayState`].
#[derive(Default)]
pub struct Replayer {
    txs: Vec<TxReplay>,
    /// `data` of the last PREPARE since each transaction's last final (or since its start).
    pending: HashMap<TxIdx, DataHash>,
    /// PREPAREs seen after a final: (tx, seq, data); filtered at the end.
    after_final: Vec<(TxIdx, u64, DataHash)>,
    unrecognized: Sha256,
    unrecognized_count: u64,
    torn_tail: Option<(u64, [u8; 32])>,
    seq: u64,
}

impl Replayer {
    /// A recognized line of transaction `tx`; `data` is [`data_hash`] of a PREPARE's `data`
    /// (ignored for COMMIT/ABORT).
    pub fn observe_tx(&mut self, op: Op, tx: TxIdx, data: DataHash) {
        let seq = self.next_seq();
        let i = tx as usize;
        if i >= self.txs.len() {
            self.txs.resize(
                i + 1,
                TxReplay {
                    final_seq: NO_FINAL,
                    decided: NO_PREPARE,
                },
            );
        }
        let state = &mut self.txs[i];
        if op.is_final() {
            if let Some(h) = self.pending.remove(&tx) {
                state.decided = h;
            }
            state.final_seq = seq | if op == Op::Abort { ABORT_BIT } else { 0 };
        } else {
            let h = data;
            if state.final_seq != NO_FINAL {
                self.after_final.push((tx, seq, h));
            }
            self.pending.insert(tx, h);
        }
    }

    /// An unrecognized line (its bytes without the `\n`).
    pub fn observe_unrecognized(&mut self, line: &[u8]) {
        self.next_seq();
        self.unrecognized_count += 1;
        self.unrecognized.update((line.len() as u64).to_le_bytes());
        self.unrecognized.update(line);
    }

    /// The torn tail's bytes.
    pub fn observe_torn_tail(&mut self, tail: &[u8]) {
        self.observe_torn_tail_hashed(tail.len() as u64, torn_tail_hash(tail));
    }

    /// The torn tail, as its length and [`torn_tail_hash`].
    pub fn observe_torn_tail_hashed(&mut self, len: u64, hash: [u8; 32]) {
        self.torn_tail = Some((len, hash));
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Computes the canonical encoding's digest; ids are resolved through `ids`.
    pub fn finish(self, ids: &Interner) -> ReplayState {
        let mut h = Sha256::new();
        h.update(REPLAY_DIGEST_DOMAIN);
        let committed = self.encode_committed(ids, &mut h);
        let aborted = self.encode_aborted(ids, &mut h);
        let in_flight = self.encode_in_flight(ids, &mut h);
        let anomalies = self.encode_after_final(ids, &mut h);
        h.update(b"U");
        h.update(self.unrecognized_count.to_le_bytes());
        h.update(self.unrecognized.finalize());
        h.update(b"T");
        let (tail_len, tail_hash) = self.torn_tail.unwrap_or((0, [0; 32]));
        h.update([u8::from(self.torn_tail.is_some())]);
        h.update(tail_len.to_le_bytes());
        h.update(tail_hash);
        ReplayState {
            digest: h.finalize().into(),
            committed,
            aborted,
            in_flight,
            anomalies,
            unrecognized: self.unrecognized_count,
            torn_tail_bytes: tail_len,
        }
    }

    fn committed(&self, t: &TxReplay) -> bool {
        t.final_seq != NO_FINAL && t.final_seq & ABORT_BIT == 0
    }

    fn encode_committed(&self, ids: &Interner, h: &mut Sha256) -> u64 {
        let mut order: Vec<TxIdx> = (0..self.txs.len() as TxIdx)
            .filter(|&i| self.committed(&self.txs[i as usize]))
            .collect();
        order.sort_unstable_by_key(|&i| self.txs[i as usize].final_seq);
        encode_section(h, b"C", &order, |h, i| {
            encode_id(h, ids.get_bytes(i));
            h.update(self.txs[i as usize].decided);
        })
    }

    fn encode_aborted(&self, ids: &Interner, h: &mut Sha256) -> u64 {
        let mut order: Vec<TxIdx> = (0..self.txs.len() as TxIdx)
            .filter(|&i| {
                self.txs[i as usize].final_seq & ABORT_BIT != 0
                    && self.txs[i as usize].final_seq != NO_FINAL
            })
            .collect();
        order.sort_unstable_by(|&a, &b| ids.get_bytes(a).cmp(ids.get_bytes(b)));
        encode_section(h, b"A", &order, |h, i| encode_id(h, ids.get_bytes(i)))
    }

    fn encode_in_flight(&self, ids: &Interner, h: &mut Sha256) -> u64 {
        let mut order: Vec<TxIdx> = (0..self.txs.len() as TxIdx)
            .filter(|&i| self.txs[i as usize].final_seq == NO_FINAL)
            .collect();
        order.sort_unstable_by(|&a, &b| ids.get_bytes(a).cmp(ids.get_bytes(b)));
        encode_section(h, b"I", &order, |h, i| {
            encode_id(h, ids.get_bytes(i));
            // An in-flight transaction has had at least one PREPARE, and no final since.
            h.update(self.pending.get(&i).copied().unwrap_or(NO_PREPARE));
        })
    }

    fn encode_after_final(&self, ids: &Interner, h: &mut Sha256) -> u64 {
        // A PREPARE is after the final only if no later final of its transaction exists.
        let live: Vec<usize> = (0..self.after_final.len())
            .filter(|&k| {
                let (tx, seq, _) = self.after_final[k];
                seq > self.txs[tx as usize].final_seq & !ABORT_BIT
            })
            .collect();
        encode_section(h, b"X", &live, |h, k| {
            let (tx, _, data) = self.after_final[k];
            encode_id(h, ids.get_bytes(tx));
            h.update(data);
        })
    }
}

fn encode_section<T: Copy>(
    h: &mut Sha256,
    tag: &[u8],
    items: &[T],
    mut each: impl FnMut(&mut Sha256, T),
) -> u64 {
    h.update(tag);
    h.update((items.len() as u64).to_le_bytes());
    for &item in items {
        each(h, item);
    }
    items.len() as u64
}

/// `id` is a whole UTF-8 id's bytes ([`Interner::get_bytes`]); byte order is `str` order.
fn encode_id(h: &mut Sha256, id: &[u8]) {
    h.update((id.len() as u64).to_le_bytes());
    h.update(id);
}
