//! Property tests of the compaction rules over generated WALs:
//! replay(compact(x)) == replay(x), compaction is idempotent, survivors are a subsequence.

use proptest::prelude::*;
use walcompactd::analyze::{Want, analyze};
use walcompactd::pipeline::compact::compact_bytes;

/// One generated line: a protocol line of a small set of transactions, or noise.
fn line() -> impl Strategy<Value = String> {
    let tx = prop::sample::select(vec!["a", "b", "c", "t\\u0061"]);
    prop_oneof![
        4 => (tx.clone(), 0u8..5).prop_map(|(t, d)| format!("{{\"op\": \"PREPARE\", \"tx_id\": \"{t}\", \"data\": {{\"v\": {d}}}}}\n")),
        2 => (tx.clone(), any::<bool>()).prop_map(|(t, cr)| format!("{{\"op\":\"COMMIT\",\"tx_id\":\"{t}\"}}{}\n", if cr { "\r" } else { "" })),
        1 => tx.clone().prop_map(|t| format!("{{\"op\": \"ABORT\", \"tx_id\": \"{t}\"}}\n")),
        1 => tx.prop_map(|t| format!("{{\"op\": \"PREPARE\", \"tx_id\": \"{t}\"}}\n")),
        1 => Just("\n".to_string()),
        1 => Just("{\"op\": \"CHECKPOINT\", \"n\": 1}\n".to_string()),
        1 => Just("{\"tx_id\": 5, \"op\": \"COMMIT\"}\n".to_string()),
    ]
}

fn wal() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(line(), 0..40),
        prop::option::of("[a-z{\":]{1,8}"),
    )
        .prop_map(|(lines, tail)| {
            let mut s = lines.concat();
            if let Some(t) = tail {
                s.push_str(&t);
            }
            s.into_bytes()
        })
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    analyze(
        bytes,
        Want::replay(walcompactd::rules::CorruptLines::Keep),
        &mut |_| {},
    )
    .unwrap()
    .replay
    .unwrap()
    .digest
}

fn lines_of(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&b| b == b'\n').collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn compaction_preserves_the_replay_state(input in wal()) {
        let out = compact_bytes(&input).unwrap();
        prop_assert_eq!(digest(&out), digest(&input));
    }

    #[test]
    fn compaction_is_idempotent(input in wal()) {
        let once = compact_bytes(&input).unwrap();
        let twice = compact_bytes(&once).unwrap();
        prop_assert_eq!(once, twice);
    }

    #[test]
    fn survivors_are_a_subsequence_with_the_torn_tail_last(input in wal()) {
        let out = compact_bytes(&input).unwrap();
        let mut src = lines_of(&input).into_iter();
        for kept in lines_of(&out) {
            prop_assert!(src.any(|l| l == kept), "line {:?} not found in order", String::from_utf8_lossy(kept));
        }
        let tail = input.rsplit(|&b| b == b'\n').next().unwrap();
        prop_assert!(out.ends_with(tail));
    }

    #[test]
    fn incremental_tx_counts_match_the_replay_state(input in wal()) {
        let an = analyze(&input[..], Want::both(walcompactd::rules::CorruptLines::Keep), &mut |_| {}).unwrap();
        let (c, r) = (an.index.tx_counts(), an.replay.unwrap());
        prop_assert_eq!((c.committed, c.aborted, c.in_flight, c.anomalies), (r.committed, r.aborted, r.in_flight, r.anomalies));
    }

    #[test]
    fn reclaimable_bytes_are_exactly_what_compaction_removes(input in wal()) {
        let an = analyze(&input[..], Want::index(walcompactd::rules::CorruptLines::Keep), &mut |_| {}).unwrap();
        let out = compact_bytes(&input).unwrap();
        prop_assert_eq!(an.index.reclaimable_bytes() as usize, input.len() - out.len());
    }
}

/// The digest sees what compaction must keep: dropping a surviving line changes it.
#[test]
fn digest_detects_a_lost_commit() {
    let wal =
        b"{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":1}\n{\"op\":\"COMMIT\",\"tx_id\":\"a\"}\n";
    let without_commit = b"{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":1}\n";
    let other_data =
        b"{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":2}\n{\"op\":\"COMMIT\",\"tx_id\":\"a\"}\n";
    assert_ne!(digest(wal), digest(without_commit));
    assert_ne!(digest(wal), digest(other_data));
}

/// Commit order is part of the state: the old script's regrouping would change the digest.
#[test]
fn digest_detects_reordered_commits() {
    let ab = b"{\"op\":\"COMMIT\",\"tx_id\":\"a\"}\n{\"op\":\"COMMIT\",\"tx_id\":\"b\"}\n";
    let ba = b"{\"op\":\"COMMIT\",\"tx_id\":\"b\"}\n{\"op\":\"COMMIT\",\"tx_id\":\"a\"}\n";
    assert_ne!(digest(ab), digest(ba));
}
