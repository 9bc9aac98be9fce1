use super::*;
use crate::analyze::{Want, analyze};

fn id(h: &mut Sha256, id: &str) {
    h.update((id.len() as u64).to_le_bytes());
    h.update(id);
}

/// Sorting the by-id lists on a thread of their own changes nothing.
#[test]
fn finishing_on_two_threads_equals_one() {
    let mut wal = String::new();
    for i in 0..300u32 {
        // Ids out of order, so the by-id sorts have work; every third aborted, every
        // seventh in flight, one PREPARE after its COMMIT (tx919, i = 1).
        let id = format!("tx{}", (i * 7919) % 1000);
        wal += &format!("{{\"op\":\"PREPARE\",\"tx_id\":\"{id}\",\"data\":{i}}}\n");
        match (i % 3, i % 7) {
            (_, 0) => {}
            (0, _) => wal += &format!("{{\"op\":\"ABORT\",\"tx_id\":\"{id}\"}}\n"),
            _ => wal += &format!("{{\"op\":\"COMMIT\",\"tx_id\":\"{id}\"}}\n"),
        }
    }
    wal += "{\"op\":\"PREPARE\",\"tx_id\":\"tx919\",\"data\":0}\n";
    let pass = || {
        let mut ids = crate::wal::Interner::default();
        let mut r = Replayer::default();
        for (n, line) in wal.lines().enumerate() {
            let Ok(crate::wal::RawEntry::Tx { op, tx_id, stamp }) =
                crate::wal::decode_raw(line.as_bytes())
            else {
                unreachable!("only transactions")
            };
            let h = if op.is_final() {
                NO_PREPARE
            } else {
                payload_hash(line.as_bytes())
            };
            r.observe_tx(op, ids.intern(&tx_id).unwrap(), n as u64 * 100, h, stamp);
        }
        (r, ids.into_ids())
    };
    let ((one, ids), (two, _)) = (pass(), pass());
    let (one, two) = (one.finish_with(&ids, false), two.finish_with(&ids, true));
    assert_eq!(one, two);
    assert!(one.committed > 0 && one.aborted > 0 && one.in_flight > 0 && one.anomalies > 0);
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
        "{\"op\": \"COMM{\"op\":\"x\"}\n",
        "{\"op\":\"PREPARE\",\"tx_id\":\"c\",\"data\":3}\n",
        "{\"op\":\"ABORT\",\"tx_id\":\"c\"}\n",
        "{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":{\"v\":9}}\n",
        "{\"op\":\"PREPARE\",\"tx_id\":\"d\"}\n",
        "{\"op\":\"PREP",
    );
    let want = Want::replay(CorruptLines::Keep);
    let got = analyze(wal.as_bytes(), want, &mut |_| {})
        .unwrap()
        .replay
        .unwrap();
    let line = |n: usize| wal.lines().nth(n).unwrap().as_bytes();
    let payload = |n: usize| payload_hash(line(n)).to_le_bytes();
    let mut h = Sha256::new();
    h.update(REPLAY_DIGEST_DOMAIN);
    // Committed, in the order of their final lines: a, then b.
    h.update(b"C");
    h.update(2u64.to_le_bytes());
    id(&mut h, "a");
    h.update(payload(1));
    id(&mut h, "b");
    h.update(payload(0));
    h.update(b"A");
    h.update(1u64.to_le_bytes());
    id(&mut h, "c");
    h.update(b"I");
    h.update(1u64.to_le_bytes());
    id(&mut h, "d");
    h.update(payload(9));
    h.update(b"X");
    h.update(1u64.to_le_bytes());
    id(&mut h, "a");
    h.update(payload(8));
    // Lines kept verbatim, in order: the unrecognized CHECKPOINT, the corrupt line.
    let mut verbatim = Sha256::new();
    for (tag, n) in [(b'u', 3), (b'c', 5)] {
        verbatim.update([tag]);
        verbatim.update((line(n).len() as u64).to_le_bytes());
        verbatim.update(line(n));
    }
    h.update(b"U");
    h.update(2u64.to_le_bytes());
    h.update(verbatim.finalize());
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
        (got.unrecognized, got.corrupt, got.torn_tail_bytes),
        (1, 1, tail.len() as u64)
    );
    assert_eq!(got.set_aside.lines, 0);
}
