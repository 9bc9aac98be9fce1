//! The replay state a WAL stands for, and its digest: what `verify` compares.
//!
//! This is written independently of the rules' decisions on purpose: verification recomputes
//! the state from the bytes of each file, so a planning bug shows up as a digest mismatch.
//! It shares nothing with the rules' index: a verification pass builds no index at all, and
//! the status counts of both are property-tested equal.
//!
//! Replay state: per transaction its final status (its last COMMIT/ABORT) and, for a
//! committed one, the payload of the last PREPARE before that final; committed transactions
//! in the order of their final lines; aborted ids; in-flight transactions with the payload
//! of their last PREPARE; PREPAREs after their transaction's final, in order; lines kept
//! verbatim (unrecognized ones, and corrupt ones unless they are set aside for quarantine)
//! in order; the torn tail.
//!
//! A PREPARE's payload is the whole line's bytes: `changes` (what the Diotec360 application
//! writes), `data`, `timestamp` and any other member all count, byte for byte.
//!
//! Digest: SHA-256 of a canonical encoding (see [`REPLAY_DIGEST_DOMAIN`] and `encode_*`):
//! ids as length-prefixed UTF-8, payloads as the 64-bit XXH3 of the PREPARE line (see
//! [`payload_hash`]), aborted and in-flight transactions sorted by id, everything else in
//! file order. Corrupt lines set aside for quarantine are not in it: they get a digest of
//! their own ([`SetAsideLines`]), which the quarantine file must match.

use hashbrown::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::rules::{CorruptLines, NO_STAMP, Retention, Stamp, TxStatus};
use crate::wal::{Ids, Op, TxIdx};

/// Prefix of the encoding, so a format change can never compare equal to an old digest.
/// v3: payloads are whole PREPARE lines (v2 hashed only `data`, blind to `changes`), and
/// lines kept verbatim are tagged unrecognized or corrupt.
pub const REPLAY_DIGEST_DOMAIN: &[u8] = b"walcompactd-replay-v3\0";

/// 64-bit XXH3 of a PREPARE line. Verification guards against bugs and damaged bytes, not
/// against an adversary choosing payloads: a changed payload goes unnoticed with
/// probability 2^-64. It is kept for every transaction (8 bytes) and computed for every
/// PREPARE, where SHA-256 cost a tenth of a compaction's CPU; the digest stays SHA-256.
pub type PayloadHash = u64;
/// A committed transaction with no PREPARE before its COMMIT; also what callers pass to
/// [`Replayer::observe_tx`] for a COMMIT/ABORT, whose hash is not used.
pub const NO_PREPARE: PayloadHash = 0;

/// The hash replay keeps of a PREPARE: its line's bytes without the `\n` (a `\r` before it
/// belongs to the line). Every member counts — `changes`, `data`, `timestamp`, members this
/// version does not know — and so do `op` and `tx_id`, whose bytes compaction never
/// changes either. Computed by the caller, so decoding threads can do it in parallel.
pub fn payload_hash(line: &[u8]) -> PayloadHash {
    xxh3_64_with_seed(line, PAYLOAD_SEED)
}

/// XXH3 seed of [`payload_hash`]: 1, so no PREPARE hashes like the unseeded empty input.
const PAYLOAD_SEED: u64 = 1;
/// Tags of lines kept verbatim in the encoding: an unrecognized object, a corrupt line.
const VERBATIM_UNRECOGNIZED: u8 = b'u';
const VERBATIM_CORRUPT: u8 = b'c';

/// The hash replay keeps of the torn tail's bytes.
pub fn torn_tail_hash(tail: &[u8]) -> [u8; 32] {
    Sha256::digest(tail).into()
}

/// A finished replay: the digest plus the figures status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayState {
    pub digest: [u8; 32],
    /// Transactions retention removed from the state (0 without retention).
    pub expired: u64,
    pub committed: u64,
    pub aborted: u64,
    pub in_flight: u64,
    pub anomalies: u64,
    pub unrecognized: u64,
    /// Corrupt lines kept in place (part of the digest).
    pub corrupt: u64,
    /// Corrupt lines set aside for quarantine (not part of the digest).
    pub set_aside: SetAsideLines,
    pub torn_tail_bytes: u64,
}

/// The corrupt lines a replay set aside, in order: what the quarantine file must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAsideLines {
    pub lines: u64,
    /// SHA-256 of each line's length (u64, little-endian) and bytes, in order.
    pub digest: [u8; 32],
}

/// Accumulates [`SetAsideLines`]; the quarantine's read-back check feeds one too.
#[derive(Clone, Default)]
pub struct SetAsideHasher {
    lines: u64,
    sha: Sha256,
}

impl SetAsideHasher {
    /// One line's bytes, without its `\n`.
    pub fn add(&mut self, line: &[u8]) {
        self.lines += 1;
        self.sha.update((line.len() as u64).to_le_bytes());
        self.sha.update(line);
    }

    pub fn finish(self) -> SetAsideLines {
        SetAsideLines {
            lines: self.lines,
            digest: self.sha.finalize().into(),
        }
    }
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
            "sha256:{} ({} committed, {} aborted, {} in flight, {} anomalies, {} unrecognized, {} corrupt kept, torn tail {} bytes)",
            self.digest_hex(),
            self.committed,
            self.aborted,
            self.in_flight,
            self.anomalies,
            self.unrecognized,
            self.corrupt,
            self.torn_tail_bytes
        )?;
        match self.set_aside.lines {
            0 => Ok(()),
            n => write!(f, ", {n} corrupt set aside"),
        }
    }
}

/// Feeds on a WAL's lines in order and produces its [`ReplayState`]. It keeps what it needs
/// itself (about 9 bytes per transaction and 4 per final line), so it needs no index: a
/// verification pass runs without one.
#[derive(Default)]
pub struct Replayer {
    /// Hash of each transaction's last PREPARE line ([`NO_PREPARE`] before its first):
    /// 8 bytes per transaction.
    last_data: Vec<PayloadHash>,
    /// One bit per transaction: it has a final line.
    decided: Bits,
    /// One bit per transaction: its last final line is a COMMIT.
    committed: Bits,
    /// The transaction of every COMMIT/ABORT line, in file order (4 bytes a final line): its
    /// last occurrences give committed transactions in order of their finals without a sort.
    finals: Vec<TxIdx>,
    /// For a transaction with PREPAREs after its current final: the payload that final was
    /// decided by (the last PREPARE before it). Rare.
    decided_before: HashMap<TxIdx, PayloadHash>,
    /// PREPAREs seen after a final: (tx, offset, payload); filtered at the end.
    after_final: Vec<(TxIdx, u64, PayloadHash)>,
    /// For a transaction with an entry in `after_final`: the offset of the last final seen
    /// after its first such entry (0 before one). Entries before it are not anomalies.
    final_after_anomaly: HashMap<TxIdx, u64>,
    /// Lines kept verbatim, in order, each tagged ([`VERBATIM_UNRECOGNIZED`] ...).
    verbatim: Sha256,
    unrecognized_count: u64,
    corrupt_count: u64,
    /// Set: corrupt lines go to `set_aside` instead of `verbatim`.
    sets_aside_corrupt: bool,
    set_aside: SetAsideHasher,
    torn_tail: Option<(u64, [u8; 32])>,
    /// Retention: the state is the original's minus the transactions this expires, decided
    /// here from the replay's own records (not the rules'), so verification is independent.
    retention: Retention,
    /// The transactions `retention` expires, decided when finishing.
    expired: Bits,
    /// With retention: per transaction the stamps of its last final (`2 * tx`) and last
    /// PREPARE (`2 * tx + 1`).
    stamps: Vec<Stamp>,
}

/// A replay state being finished on a thread of its own: compaction needs the original's
/// digest only to compare it with the compacted file's, so it finishes while the plan is
/// built and written. [`PendingReplay::get`] waits for it.
pub struct PendingReplay {
    running: Mutex<Option<JoinHandle<ReplayState>>>,
    state: OnceLock<ReplayState>,
}

impl PendingReplay {
    /// Starts finishing `replayer` (fed the lines whose ids are `ids`).
    pub fn spawn(replayer: Replayer, ids: Ids) -> PendingReplay {
        let running = std::thread::spawn(move || replayer.finish(&ids));
        PendingReplay {
            running: Mutex::new(Some(running)),
            state: OnceLock::new(),
        }
    }

    /// The replay state, waiting for it on the first call. A panic while finishing is
    /// re-raised here.
    pub fn get(&self) -> &ReplayState {
        self.state.get_or_init(|| {
            let running = self.running.lock().map(|mut r| r.take());
            let running = running.ok().flatten().expect("only the first call joins");
            running
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// A growable bit set, indexed by transaction or by position in the final-line log.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: usize, on: bool) {
        while i / 64 >= self.0.len() {
            self.0.push(0);
        }
        let bit = 1 << (i % 64);
        match on {
            true => self.0[i / 64] |= bit,
            false => self.0[i / 64] &= !bit,
        }
    }
}

impl Replayer {
    /// A replayer with room for `txs` transactions (reserved, not touched).
    pub fn with_capacity(txs: usize) -> Replayer {
        Replayer {
            last_data: Vec::with_capacity(txs),
            ..Replayer::default()
        }
    }

    /// What the replay does with corrupt lines: with [`CorruptLines::Quarantine`] they are
    /// not part of the state (the compacted WAL will not have them) but of
    /// [`ReplayState::set_aside`]; otherwise they are kept in place.
    pub fn with_corrupt_lines(mut self, mode: CorruptLines) -> Replayer {
        self.sets_aside_corrupt = mode.sets_aside();
        self
    }

    /// The state to compute is the WAL's minus the transactions `r` expires.
    pub fn with_retention(mut self, r: Retention) -> Replayer {
        self.retention = r;
        self
    }

    /// A recognized line of transaction `tx` at `offset`; `data` is [`payload_hash`] of a
    /// PREPARE line (ignored for COMMIT/ABORT); `stamp` its whole-second `timestamp`.
    pub fn observe_tx(&mut self, op: Op, tx: TxIdx, offset: u64, data: PayloadHash, stamp: Stamp) {
        let i = tx as usize;
        if self.retention.is_enabled() {
            while 2 * i >= self.stamps.len() {
                self.stamps.extend_from_slice(&[NO_STAMP, NO_STAMP]);
            }
            self.stamps[2 * i + usize::from(!op.is_final())] = stamp;
        }
        // Ids are dense in order of appearance: a new one is the next index (a push, not a
        // `resize`, which called `memset` for each new transaction).
        while i >= self.last_data.len() {
            self.last_data.push(NO_PREPARE);
        }
        if op.is_final() {
            self.observe_final(op, tx, offset);
            return;
        }
        if self.decided.get(tx as usize) {
            let decided = self.last_data[i];
            self.decided_before.entry(tx).or_insert(decided);
            self.after_final.push((tx, offset, data));
            self.final_after_anomaly.entry(tx).or_insert(0);
        }
        self.last_data[i] = data;
    }

    fn observe_final(&mut self, op: Op, tx: TxIdx, offset: u64) {
        self.finals.push(tx);
        self.decided.set(tx as usize, true);
        self.committed.set(tx as usize, op == Op::Commit);
        // This final is decided by the last PREPARE so far, which `last_data` holds.
        if !self.decided_before.is_empty() {
            self.decided_before.remove(&tx);
        }
        if let Some(f) = self.final_after_anomaly.get_mut(&tx) {
            *f = offset;
        }
    }

    /// An unrecognized line (its bytes without the `\n`).
    pub fn observe_unrecognized(&mut self, line: &[u8]) {
        self.unrecognized_count += 1;
        self.observe_verbatim(VERBATIM_UNRECOGNIZED, line);
    }

    /// A corrupt complete line (its bytes without the `\n`): kept in place or set aside.
    pub fn observe_corrupt(&mut self, line: &[u8]) {
        if self.sets_aside_corrupt {
            self.set_aside.add(line);
            return;
        }
        self.corrupt_count += 1;
        self.observe_verbatim(VERBATIM_CORRUPT, line);
    }

    fn observe_verbatim(&mut self, tag: u8, line: &[u8]) {
        self.verbatim.update([tag]);
        self.verbatim.update((line.len() as u64).to_le_bytes());
        self.verbatim.update(line);
    }

    /// The torn tail, as its length and [`torn_tail_hash`].
    pub fn observe_torn_tail_hashed(&mut self, len: u64, hash: [u8; 32]) {
        self.torn_tail = Some((len, hash));
    }

    /// Computes the canonical encoding's digest; ids are resolved through `ids`.
    pub fn finish(self, ids: &Ids) -> ReplayState {
        let parallel = self.last_data.len() >= PARALLEL_FINISH_TXS;
        self.finish_with(ids, parallel)
    }

    /// [`Replayer::finish`], sorting the by-id lists on a thread of their own or not.
    fn finish_with(mut self, ids: &Ids, parallel: bool) -> ReplayState {
        let (expired, expired_count) = self.expired();
        self.expired = expired;
        let mut h = Encoder::default();
        h.update(REPLAY_DIGEST_DOMAIN);
        let finals = std::mem::take(&mut self.finals);
        let this = &self;
        // The by-id lists need no encoder: sorted on another thread (for enough of them to
        // pay for one) while the committed section is hashed.
        let (committed, (aborted, in_flight)) = if !parallel {
            let c = this.encode_committed(finals, ids, &mut h);
            (c, this.by_id_lists(ids))
        } else {
            std::thread::scope(|scope| {
                let lists = scope.spawn(|| this.by_id_lists(ids));
                let c = this.encode_committed(finals, ids, &mut h);
                (
                    c,
                    lists
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p)),
                )
            })
        };
        let aborted = encode_section(&mut h, b"A", &aborted, |h, tx| {
            encode_id(h, ids.get_bytes(tx))
        });
        let in_flight = encode_section(&mut h, b"I", &in_flight, |h, tx| {
            encode_id(h, ids.get_bytes(tx));
            h.update(self.last_data[tx as usize].to_le_bytes())
        });
        let anomalies = self.encode_after_final(ids, &mut h);
        h.update(b"U");
        h.update((self.unrecognized_count + self.corrupt_count).to_le_bytes());
        h.update(self.verbatim.finalize());
        h.update(b"T");
        let (tail_len, tail_hash) = self.torn_tail.unwrap_or((0, [0; 32]));
        h.update([u8::from(self.torn_tail.is_some())]);
        h.update(tail_len.to_le_bytes());
        h.update(tail_hash);
        ReplayState {
            digest: h.finalize(),
            expired: expired_count,
            committed,
            aborted,
            in_flight,
            anomalies,
            unrecognized: self.unrecognized_count,
            corrupt: self.corrupt_count,
            set_aside: self.set_aside.finish(),
            torn_tail_bytes: tail_len,
        }
    }

    /// The transactions retention removes from the state, and how many: finished ones whose
    /// last final is older than the cutoff with no PREPARE after it, and (if asked) in-flight
    /// ones whose last PREPARE is older than the in-flight cutoff.
    fn expired(&self) -> (Bits, u64) {
        let (mut bits, mut count) = (Bits::default(), 0);
        if !self.retention.is_enabled() {
            return (bits, count);
        }
        // Transactions with a PREPARE after their last final: they stay whole.
        let mut anomalous = Bits::default();
        for &(tx, offset, _) in &self.after_final {
            if self
                .final_after_anomaly
                .get(&tx)
                .is_some_and(|&f| offset > f)
            {
                anomalous.set(tx as usize, true);
            }
        }
        for tx in 0..self.last_data.len() {
            let (fin, prep) = (self.stamps[2 * tx], self.stamps[2 * tx + 1]);
            let gone = match self.decided.get(tx) {
                true => !anomalous.get(tx) && self.retention.expires_finished(fin),
                false => self.retention.expires_in_flight(prep),
            };
            if gone {
                bits.set(tx, true);
                count += 1;
            }
        }
        (bits, count)
    }

    /// The payload a final COMMIT of `tx` was decided by.
    fn decided(&self, tx: TxIdx) -> PayloadHash {
        match self.decided_before.get(&tx) {
            Some(&d) => d,
            None => self.last_data[tx as usize],
        }
    }

    /// The replayed status of `tx`.
    fn status(&self, tx: TxIdx) -> TxStatus {
        match (
            self.decided.get(tx as usize),
            self.committed.get(tx as usize),
        ) {
            (false, _) => TxStatus::InFlight,
            (true, true) => TxStatus::Committed,
            (true, false) => TxStatus::Aborted,
        }
    }

    /// Committed transactions in the order of their last finals, which are the last
    /// occurrences in `finals`: found walking it backwards (marked in a bit per final
    /// line, not a list of transactions), then encoded walking forwards. Frees `finals`.
    fn encode_committed(&self, finals: Vec<TxIdx>, ids: &Ids, h: &mut Encoder) -> u64 {
        let (mut seen, mut last, mut count) = (Bits::default(), Bits::default(), 0u64);
        for (at, &tx) in finals.iter().enumerate().rev() {
            if !seen.get(tx as usize) {
                seen.set(tx as usize, true);
                if self.committed.get(tx as usize) && !self.expired.get(tx as usize) {
                    last.set(at, true);
                    count += 1;
                }
            }
        }
        drop(seen);
        h.update(b"C");
        h.update(count.to_le_bytes());
        for (at, &tx) in finals.iter().enumerate() {
            if last.get(at) {
                encode_id(h, ids.get_bytes(tx));
                h.update(self.decided(tx).to_le_bytes());
            }
        }
        count
    }

    fn encode_after_final(&self, ids: &Ids, h: &mut Encoder) -> u64 {
        // A PREPARE is after the final only if no later final of its transaction exists.
        let live: Vec<usize> = (0..self.after_final.len())
            .filter(|&k| {
                let (tx, offset, _) = self.after_final[k];
                self.final_after_anomaly
                    .get(&tx)
                    .is_some_and(|&f| offset > f)
            })
            .collect();
        encode_section(h, b"X", &live, |h, k| {
            let (tx, _, data) = self.after_final[k];
            encode_id(h, ids.get_bytes(tx));
            h.update(data.to_le_bytes());
        })
    }

    /// Aborted and in-flight transactions, each sorted by id.
    fn by_id_lists(&self, ids: &Ids) -> (Vec<TxIdx>, Vec<TxIdx>) {
        let (mut aborted, mut in_flight) = (Vec::new(), Vec::new());
        for tx in 0..self.last_data.len() as TxIdx {
            if self.expired.get(tx as usize) {
                continue;
            }
            match self.status(tx) {
                TxStatus::Aborted => aborted.push((id_prefix(ids.get_bytes(tx)), tx)),
                TxStatus::InFlight => in_flight.push((id_prefix(ids.get_bytes(tx)), tx)),
                TxStatus::Committed => {}
            }
        }
        (sort_by_id(aborted, ids), sort_by_id(in_flight, ids))
    }
}

/// Transactions below this many finish on one thread: a thread costs more than it saves.
const PARALLEL_FINISH_TXS: usize = 1 << 16;

/// Sorts by id. Sorting on a prefix held beside each index touches the ids only on a tie,
/// where comparing ids directly cost a cache miss per comparison.
fn sort_by_id(mut order: Vec<(u128, TxIdx)>, ids: &Ids) -> Vec<TxIdx> {
    order.sort_unstable_by(|a, b| {
        (a.0.cmp(&b.0)).then_with(|| ids.get_bytes(a.1).cmp(ids.get_bytes(b.1)))
    });
    order.into_iter().map(|(_, tx)| tx).collect()
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

/// The first 16 bytes of `id`, zero-padded, as a big-endian number: ordering by it agrees
/// with the byte order of ids wherever two prefixes differ (typical ids never tie).
fn id_prefix(id: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    let n = id.len().min(16);
    b[..n].copy_from_slice(&id[..n]);
    u128::from_be_bytes(b)
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
mod tests;
