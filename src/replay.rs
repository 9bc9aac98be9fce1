//! The replay state a WAL stands for, and its digest: what `verify` compares.
//!
//! This is written independently of the rules' decisions on purpose: verification recomputes
//! the state from the bytes of each file, so a planning bug shows up as a digest mismatch.
//! It shares one fact with the rules' [`Indexer`] to save memory: each transaction's last
//! final line (its offset orders committed transactions, its op is the final status).
//!
//! Replay state: per transaction its final status (its last COMMIT/ABORT) and, for a
//! committed one, the `data` of the last PREPARE before that final; committed transactions
//! in the order of their final lines; aborted ids; in-flight transactions with the `data`
//! of their last PREPARE; PREPAREs after their transaction's final, in order; unrecognized
//! lines in order; the torn tail.
//!
//! Digest: SHA-256 of a canonical encoding (see [`REPLAY_DIGEST_DOMAIN`] and `encode_*`):
//! ids as length-prefixed UTF-8, `data` as the 64-bit XXH3 of its raw JSON text (see
//! [`data_hash_raw`]), aborted and in-flight transactions sorted by id, everything else in
//! file order.

use hashbrown::HashMap;
use std::fmt;

use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::rules::{Indexer, TxStatus};
use crate::wal::{Ids, Op, TxIdx};

/// Prefix of the encoding, so a format change can never compare equal to an old digest.
pub const REPLAY_DIGEST_DOMAIN: &[u8] = b"walcompactd-replay-v2\0";

/// 64-bit XXH3 of a PREPARE's `data`. Verification guards against bugs and damaged bytes,
/// not against an adversary choosing payloads: a changed `data` goes unnoticed with
/// probability 2^-64. It is kept for every transaction (8 bytes) and computed for every
/// PREPARE, where SHA-256 cost a tenth of a compaction's CPU; the digest stays SHA-256.
pub type DataHash = u64;
/// A committed transaction with no PREPARE before its COMMIT; also what callers pass to
/// [`Replayer::observe_tx`] for a COMMIT/ABORT, whose hash is not used.
pub const NO_PREPARE: DataHash = 0;

/// The hash replay keeps of a PREPARE's `data` (its raw JSON text, or its absence).
/// Computed by the caller, so decoding threads can do it in parallel.
pub fn data_hash(data: Option<&RawValue>) -> DataHash {
    data_hash_raw(data.map(|d| d.get().as_bytes()))
}

/// [`data_hash`] of `data`'s raw JSON text; seeds keep an absent `data` apart from any text.
pub fn data_hash_raw(data: Option<&[u8]>) -> DataHash {
    match data {
        Some(raw) => xxh3_64_with_seed(raw, DATA_PRESENT_SEED),
        None => xxh3_64_with_seed(&[], DATA_ABSENT_SEED),
    }
}

/// XXH3 seeds of [`data_hash_raw`]: a present `data` and an absent one never share a hash.
const DATA_PRESENT_SEED: u64 = 1;
const DATA_ABSENT_SEED: u64 = 0;

/// The hash replay keeps of the torn tail's bytes.
pub fn torn_tail_hash(tail: &[u8]) -> [u8; 32] {
    Sha256::digest(tail).into()
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

/// Feeds on a WAL's lines in order and produces its [`ReplayState`], together with the
/// [`Indexer`] fed the same lines (see the module header).
#[derive(Default)]
pub struct Replayer {
    /// Hash of each transaction's last PREPARE `data` ([`NO_PREPARE`] before its first):
    /// 8 bytes per transaction.
    last_data: Vec<DataHash>,
    /// For a transaction with PREPAREs after its current final: the `data` that final was
    /// decided by (the last PREPARE before it). Rare.
    decided_before: HashMap<TxIdx, DataHash>,
    /// PREPAREs seen after a final: (tx, offset, data); filtered at the end.
    after_final: Vec<(TxIdx, u64, DataHash)>,
    unrecognized: Sha256,
    unrecognized_count: u64,
    torn_tail: Option<(u64, [u8; 32])>,
}

impl Replayer {
    /// A replayer with room for `txs` transactions (reserved, not touched).
    pub fn with_capacity(txs: usize) -> Replayer {
        Replayer {
            last_data: Vec::with_capacity(txs),
            ..Replayer::default()
        }
    }

    /// A recognized line of transaction `tx` at `offset`; `data` is [`data_hash`] of a
    /// PREPARE's `data` (ignored for COMMIT/ABORT). `had_final`: the transaction had a final
    /// line before this one (the index knows, before it observes this line).
    pub fn observe_tx(&mut self, op: Op, tx: TxIdx, offset: u64, data: DataHash, had_final: bool) {
        let i = tx as usize;
        if i >= self.last_data.len() {
            self.last_data.resize(i + 1, NO_PREPARE);
        }
        if op.is_final() {
            // This final is decided by the last PREPARE so far, which `last_data` holds.
            if !self.decided_before.is_empty() {
                self.decided_before.remove(&tx);
            }
            return;
        }
        if had_final {
            let decided = self.last_data[i];
            self.decided_before.entry(tx).or_insert(decided);
            self.after_final.push((tx, offset, data));
        }
        self.last_data[i] = data;
    }

    /// An unrecognized line (its bytes without the `\n`).
    pub fn observe_unrecognized(&mut self, line: &[u8]) {
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

    /// Computes the canonical encoding's digest; ids are resolved through `ids`, final
    /// lines through `index` (fed the same lines).
    pub fn finish(self, ids: &Ids, index: &Indexer) -> ReplayState {
        let mut h = Encoder::default();
        h.update(REPLAY_DIGEST_DOMAIN);
        let committed = self.encode_committed(ids, index, &mut h);
        let aborted = encode_by_id(ids, index, &mut h, b"A", Some(Op::Abort), |_, _| {});
        let in_flight = encode_by_id(ids, index, &mut h, b"I", None, |h, tx| {
            h.update(self.last_data[tx as usize].to_le_bytes())
        });
        let anomalies = self.encode_after_final(ids, index, &mut h);
        h.update(b"U");
        h.update(self.unrecognized_count.to_le_bytes());
        h.update(self.unrecognized.finalize());
        h.update(b"T");
        let (tail_len, tail_hash) = self.torn_tail.unwrap_or((0, [0; 32]));
        h.update([u8::from(self.torn_tail.is_some())]);
        h.update(tail_len.to_le_bytes());
        h.update(tail_hash);
        ReplayState {
            digest: h.finalize(),
            committed,
            aborted,
            in_flight,
            anomalies,
            unrecognized: self.unrecognized_count,
            torn_tail_bytes: tail_len,
        }
    }

    /// The `data` a final COMMIT of `tx` was decided by.
    fn decided(&self, tx: TxIdx) -> DataHash {
        match self.decided_before.get(&tx) {
            Some(&d) => d,
            None => self.last_data[tx as usize],
        }
    }

    fn encode_committed(&self, ids: &Ids, index: &Indexer, h: &mut Encoder) -> u64 {
        let mut order: Vec<TxIdx> = txs_with_final(index, Some(Op::Commit)).collect();
        order.sort_unstable_by_key(|&tx| index.final_order(tx));
        encode_section(h, b"C", &order, |h, tx| {
            encode_id(h, ids.get_bytes(tx));
            h.update(self.decided(tx).to_le_bytes());
        })
    }

    fn encode_after_final(&self, ids: &Ids, index: &Indexer, h: &mut Encoder) -> u64 {
        // A PREPARE is after the final only if no later final of its transaction exists.
        let live: Vec<usize> = (0..self.after_final.len())
            .filter(|&k| {
                let (tx, offset, _) = self.after_final[k];
                index.last_final(tx).is_some_and(|(f, _)| offset > f)
            })
            .collect();
        encode_section(h, b"X", &live, |h, k| {
            let (tx, _, data) = self.after_final[k];
            encode_id(h, ids.get_bytes(tx));
            h.update(data.to_le_bytes());
        })
    }
}

/// Transactions whose last final has op `op` (`None`: in flight, no final).
fn txs_with_final(index: &Indexer, op: Option<Op>) -> impl Iterator<Item = TxIdx> + '_ {
    let status = match op {
        Some(Op::Commit) => TxStatus::Committed,
        Some(_) => TxStatus::Aborted,
        None => TxStatus::InFlight,
    };
    (0..index.transactions() as TxIdx).filter(move |&tx| index.status(tx) == Some(status))
}

/// Bytes buffered before they are hashed: the encoding is many small pieces, and a call
/// into SHA-256 per piece cost more than the hashing.
const ENCODE_BUFFER_BYTES: usize = 64 << 10;

/// SHA-256 fed through a buffer (see [`ENCODE_BUFFER_BYTES`]); the digest is that of the
/// bytes in order, as if hashed one by one.
#[derive(Default)]
struct Encoder {
    sha: Sha256,
    buf: Vec<u8>,
}

impl Encoder {
    fn update(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        if self.buf.len() + bytes.len() > ENCODE_BUFFER_BYTES {
            self.flush();
        }
        if bytes.len() >= ENCODE_BUFFER_BYTES {
            self.sha.update(bytes);
        } else {
            self.buf.extend_from_slice(bytes);
        }
    }

    fn flush(&mut self) {
        self.sha.update(&self.buf);
        self.buf.clear();
    }

    fn finalize(mut self) -> [u8; 32] {
        self.flush();
        self.sha.finalize().into()
    }
}

/// Encodes the transactions whose final is `op`, sorted by id, each followed by `each`.
fn encode_by_id(
    ids: &Ids,
    index: &Indexer,
    h: &mut Encoder,
    tag: &[u8],
    op: Option<Op>,
    mut each: impl FnMut(&mut Encoder, TxIdx),
) -> u64 {
    let mut order: Vec<TxIdx> = txs_with_final(index, op).collect();
    order.sort_unstable_by(|&a, &b| ids.get_bytes(a).cmp(ids.get_bytes(b)));
    encode_section(h, tag, &order, |h, tx| {
        encode_id(h, ids.get_bytes(tx));
        each(h, tx);
    })
}

fn encode_section<T: Copy>(
    h: &mut Encoder,
    tag: &[u8],
    items: &[T],
    mut each: impl FnMut(&mut Encoder, T),
) -> u64 {
    h.update(tag);
    h.update((items.len() as u64).to_le_bytes());
    for &item in items {
        each(h, item);
    }
    items.len() as u64
}

/// `id` is a whole UTF-8 id's bytes ([`Interner::get_bytes`]); byte order is `str` order.
fn encode_id(h: &mut Encoder, id: &[u8]) {
    h.update((id.len() as u64).to_le_bytes());
    h.update(id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::{Want, analyze};

    fn id(h: &mut Sha256, id: &str) {
        h.update((id.len() as u64).to_le_bytes());
        h.update(id);
    }

    /// The digest is the documented encoding (README, "Replay state and digest"), computed
    /// here by hand: a change of the encoding must be a deliberate one (and a new domain).
    #[test]
    fn digest_is_the_documented_encoding() {
        let wal = concat!(
            "{\"op\":\"PREPARE\",\"tx_id\":\"b\",\"data\":{\"v\":1}}\n",
            "{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":{\"v\":2}}\n",
            "{\"op\":\"COMMIT\",\"tx_id\":\"a\"}\n",
            "{\"op\":\"CHECKPOINT\"}\n",
            "{\"op\":\"COMMIT\",\"tx_id\":\"b\"}\n",
            "{\"op\":\"PREPARE\",\"tx_id\":\"c\",\"data\":3}\n",
            "{\"op\":\"ABORT\",\"tx_id\":\"c\"}\n",
            "{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":{\"v\":9}}\n",
            "{\"op\":\"PREPARE\",\"tx_id\":\"d\"}\n",
            "{\"op\":\"PREP",
        );
        let want = Want {
            index: false,
            replay: true,
        };
        let got = analyze(wal.as_bytes(), want, &mut |_| {})
            .unwrap()
            .replay
            .unwrap();
        let data = |text: &str| data_hash_raw(Some(text.as_bytes())).to_le_bytes();
        let mut h = Sha256::new();
        h.update(REPLAY_DIGEST_DOMAIN);
        // Committed, in the order of their final lines: a, then b.
        h.update(b"C");
        h.update(2u64.to_le_bytes());
        id(&mut h, "a");
        h.update(data("{\"v\":2}"));
        id(&mut h, "b");
        h.update(data("{\"v\":1}"));
        h.update(b"A");
        h.update(1u64.to_le_bytes());
        id(&mut h, "c");
        h.update(b"I");
        h.update(1u64.to_le_bytes());
        id(&mut h, "d");
        h.update(data_hash_raw(None).to_le_bytes());
        h.update(b"X");
        h.update(1u64.to_le_bytes());
        id(&mut h, "a");
        h.update(data("{\"v\":9}"));
        let checkpoint = b"{\"op\":\"CHECKPOINT\"}";
        let mut unrecognized = Sha256::new();
        unrecognized.update((checkpoint.len() as u64).to_le_bytes());
        unrecognized.update(checkpoint);
        h.update(b"U");
        h.update(1u64.to_le_bytes());
        h.update(unrecognized.finalize());
        let tail = b"{\"op\":\"PREP";
        h.update(b"T");
        h.update([1]);
        h.update((tail.len() as u64).to_le_bytes());
        h.update(Sha256::digest(tail));
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(got.digest, want);
        let counts = (got.committed, got.aborted, got.in_flight, got.anomalies);
        assert_eq!(counts, (2, 1, 1, 1));
        assert_eq!(
            (got.unrecognized, got.torn_tail_bytes),
            (1, tail.len() as u64)
        );
    }
}
