//! Property tests of the compaction rules over generated WALs:
//! replay(compact(x)) == replay(x), compaction is idempotent, survivors are a subsequence.

use proptest::prelude::*;
use walcompactd::analyze::{Want, analyze};
use walcompactd::pipeline::compact::{compact_bytes, compact_bytes_with};
use walcompactd::rules::CorruptLines;

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

/// A corrupt complete line: not a JSON object, no `\n` (some not even UTF-8).
fn corrupt_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"[1, 2]".to_vec()),
        Just(b"not json".to_vec()),
        Just(b"{\"op\": \"COMM".to_vec()),
        Just(b"42".to_vec()),
        Just(b"{\"op\": \"PREPARE\", \"tx_id\": \"\xff\"}".to_vec()),
        "[a-z{\":]{1,8}".prop_map(|s| format!("{{{s}").into_bytes()),
    ]
}

/// A generated WAL and the same WAL with corrupt lines inserted between its lines: the
/// clean one, the corrupt one, and the corrupt lines in order.
fn wal_with_corrupt_lines() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, Vec<Vec<u8>>)> {
    (
        wal(),
        prop::collection::vec((any::<prop::sample::Index>(), corrupt_line()), 0..6),
    )
        .prop_map(|(clean, inserts)| {
            let lines = lines_of(&clean);
            let complete = lines.iter().filter(|l| l.ends_with(b"\n")).count();
            let mut at: Vec<(usize, Vec<u8>)> = inserts
                .into_iter()
                .map(|(i, c)| (i.index(complete + 1), c))
                .collect();
            at.sort_by_key(|(i, _)| *i);
            let (mut out, mut corrupt) = (Vec::new(), Vec::new());
            let mut inserts = at.into_iter().peekable();
            for (n, line) in lines.iter().enumerate() {
                while let Some((_, c)) = inserts.next_if(|(i, _)| *i == n) {
                    out.extend_from_slice(&c);
                    out.push(b'\n');
                    corrupt.push(c);
                }
                out.extend_from_slice(line);
            }
            // Past the last complete line, but before a torn tail.
            let tail_start = out.len()
                - lines
                    .last()
                    .filter(|l| !l.ends_with(b"\n"))
                    .map_or(0, |l| l.len());
            let tail = out.split_off(tail_start);
            for (_, c) in inserts {
                out.extend_from_slice(&c);
                out.push(b'\n');
                corrupt.push(c);
            }
            out.extend_from_slice(&tail);
            (clean, out, corrupt)
        })
}

/// The survivors of `clean` (by the rules' plan) with each corrupt line of `dirty` at its
/// place: what `keep` must produce.
fn expected_keep(clean: &[u8], dirty: &[u8]) -> Vec<u8> {
    let an = analyze(clean, Want::index(CorruptLines::Keep), &mut |_| {}).unwrap();
    let plan = an.index.plan();
    // Each line of `dirty` that is not an inserted corrupt one is the `clean` line at
    // `offset` there.
    let (mut out, mut offset) = (Vec::new(), 0u64);
    for line in lines_of(dirty) {
        let complete = line.ends_with(b"\n");
        if complete && walcompactd::wal::decode(&line[..line.len() - 1]).is_err() {
            out.extend_from_slice(line);
            continue;
        }
        if !complete || plan.keeps(offset) {
            out.extend_from_slice(line);
        }
        offset += line.len() as u64;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// `keep`: exactly the rules' output on the WAL without the corrupt lines, with each
    /// corrupt line at its original place; the replay state (corrupt lines included) holds.
    #[test]
    fn keep_is_the_rules_output_with_corrupt_lines_in_place(
        (clean, dirty, _) in wal_with_corrupt_lines()
    ) {
        let (out, set_aside) = compact_bytes_with(&dirty, CorruptLines::Keep).unwrap();
        prop_assert!(set_aside.is_empty());
        prop_assert_eq!(&out, &expected_keep(&clean, &dirty));
        prop_assert_eq!(digest(&out), digest(&dirty));
        let (twice, _) = compact_bytes_with(&out, CorruptLines::Keep).unwrap();
        prop_assert_eq!(twice, out);
    }

    /// `quarantine`: exactly the rules' output on the WAL without the corrupt lines, which
    /// all go to the quarantine in order; the replay state without them holds.
    #[test]
    fn quarantine_is_the_rules_output_and_sets_every_corrupt_line_aside(
        (clean, dirty, corrupt) in wal_with_corrupt_lines()
    ) {
        let (out, set_aside) = compact_bytes_with(&dirty, CorruptLines::Quarantine).unwrap();
        prop_assert_eq!(&out, &compact_bytes(&clean).unwrap());
        prop_assert_eq!(&set_aside, &corrupt);
        let quarantined = |b: &[u8]| {
            analyze(b, Want::replay(CorruptLines::Quarantine), &mut |_| {}).unwrap().replay.unwrap()
        };
        let (before, after) = (quarantined(&dirty), quarantined(&out));
        prop_assert_eq!(before.digest, after.digest);
        prop_assert_eq!(before.set_aside.lines, corrupt.len() as u64);
    }
}

/// Every member of a deciding PREPARE is part of the state: `changes` (what the Diotec360
/// application writes), `data`, `timestamp`, and members this version does not know.
#[test]
fn digest_detects_a_changed_digit_in_any_member_of_a_committed_prepare() {
    let wal =
        |p: &str| format!("{p}\n{{\"op\": \"COMMIT\", \"tx_id\": \"a\", \"timestamp\": 2.5}}\n");
    let base = r#"{"op": "PREPARE", "tx_id": "a", "changes": {"acct0": {"balance": 200}}, "data": 7, "timestamp": 1.5, "extra": [1]}"#;
    let original = digest(wal(base).as_bytes());
    for (from, to) in [("200", "999"), ("7", "8"), ("1.5", "1.6"), ("[1]", "[2]")] {
        let changed = base.replacen(from, to, 1);
        assert_ne!(changed, base);
        assert_ne!(digest(wal(&changed).as_bytes()), original, "{from} -> {to}");
    }
}
