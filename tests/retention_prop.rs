//! Property tests of retention over generated WALs with timestamps (integer, float, string,
//! absent), random cutoffs and in-flight cutoffs:
//! - the new WAL replays to the original's state minus the expired transactions, as the
//!   replay computes it on its own (what verification checks);
//! - the new WAL and the archive together are exactly what compaction alone keeps: no line
//!   lost, none in both, survivors and archive both in file order;
//! - the transactions that expire are exactly those a plain reference model picks: nothing
//!   newer than the cutoff, nothing in flight unless asked, nothing unrecognized or corrupt;
//! - expiring again with the same cutoffs changes nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use walcompactd::pipeline::compact::{compact_bytes_retaining, compact_bytes_with};
use walcompactd::rules::{CorruptLines, Retention};

fn stamp() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u32..8).prop_map(|s| format!(", \"timestamp\": {s}")),
        3 => (0u32..8).prop_map(|s| format!(", \"timestamp\": {s}.5")),
        1 => (0u32..8).prop_map(|s| format!(", \"timestamp\": \"{s}\"")),
        1 => Just(String::new()),
    ]
}

/// A protocol line of a few transactions with a timestamp, or noise (never expires).
fn line() -> impl Strategy<Value = String> {
    let tx = prop::sample::select(vec!["a", "b", "c", "d", "t\\u0061"]);
    prop_oneof![
        4 => (tx.clone(), 0u8..5, stamp()).prop_map(|(t, d, s)| format!("{{\"op\": \"PREPARE\", \"tx_id\": \"{t}\", \"data\": {d}{s}}}\n")),
        3 => (tx.clone(), stamp()).prop_map(|(t, s)| format!("{{\"op\": \"COMMIT\", \"tx_id\": \"{t}\"{s}}}\n")),
        1 => (tx, stamp()).prop_map(|(t, s)| format!("{{\"op\": \"ABORT\", \"tx_id\": \"{t}\"{s}}}\n")),
        1 => Just("\n".to_string()),
        1 => Just("{\"op\": \"CHECKPOINT\", \"timestamp\": 0}\n".to_string()),
        1 => Just("not json, \"timestamp\": 0\n".to_string()),
    ]
}

fn wal() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(line(), 0..40).prop_map(|l| l.concat().into_bytes())
}

fn retention() -> impl Strategy<Value = Retention> {
    (prop::option::of(0u32..10), prop::option::of(0u32..10)).prop_map(|(c, i)| Retention {
        cutoff: c,
        in_flight_cutoff: i,
    })
}

fn digest(bytes: &[u8], r: Retention) -> [u8; 32] {
    common::replay_digest(bytes, r)
}

/// The reference model: per tx id (decoded), which expire under `r`, from a plain walk.
fn expected_expired(input: &[u8], r: &Retention) -> BTreeSet<String> {
    #[derive(Default)]
    struct Tx {
        final_stamp: Option<Option<u32>>,
        last_prepare_stamp: Option<u32>,
        line_after_final: bool,
    }
    let mut txs: BTreeMap<String, Tx> = BTreeMap::new();
    for line in input.split(|&b| b == b'\n') {
        let Ok(serde_json::Value::Object(o)) = serde_json::from_slice::<serde_json::Value>(line)
        else {
            continue;
        };
        let (Some(op), Some(id)) = (
            o.get("op").and_then(|v| v.as_str()),
            o.get("tx_id").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        let stamp = o
            .get("timestamp")
            .and_then(|v| v.as_f64())
            .map(|f| f.floor() as u32);
        let t = txs.entry(id.to_string()).or_default();
        match op {
            "PREPARE" => {
                t.last_prepare_stamp = stamp;
                t.line_after_final = t.final_stamp.is_some();
            }
            "COMMIT" | "ABORT" => {
                t.final_stamp = Some(stamp);
                t.line_after_final = false;
            }
            _ => {}
        }
    }
    txs.into_iter()
        .filter(|(_, t)| match t.final_stamp {
            Some(fs) => {
                !t.line_after_final && matches!((fs, r.cutoff), (Some(s), Some(c)) if s < c)
            }
            None => {
                matches!((t.last_prepare_stamp, r.in_flight_cutoff), (Some(s), Some(c)) if s < c)
            }
        })
        .map(|(id, _)| id)
        .collect()
}

/// The decoded tx ids of the lines in `bytes`.
fn ids_in(bytes: &[u8]) -> BTreeSet<String> {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("tx_id").and_then(|t| t.as_str()).map(str::to_string))
        .collect()
}

/// Merges two subsequences of `input`'s lines back in `input`'s order (each line of `a` and
/// `b` taken at its next occurrence), or `None` if they are not such subsequences.
fn merge_in_order(input: &[u8], a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
    let (mut a, mut b) = (
        a.split_inclusive(|&c| c == b'\n').peekable(),
        b.split_inclusive(|&c| c == b'\n').peekable(),
    );
    let mut out = Vec::new();
    for line in input.split_inclusive(|&c| c == b'\n') {
        if a.peek() == Some(&line) {
            out.extend_from_slice(a.next()?);
        } else if b.peek() == Some(&line) {
            out.extend_from_slice(b.next()?);
        }
    }
    (a.next().is_none() && b.next().is_none()).then_some(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn the_new_wal_replays_to_the_original_minus_what_expired(input in wal(), r in retention()) {
        let (out, _, _) = compact_bytes_retaining(&input, &r).unwrap();
        prop_assert_eq!(digest(&out, Retention::NONE), digest(&input, r));
    }

    #[test]
    fn wal_and_archive_together_are_what_compaction_alone_keeps(input in wal(), r in retention()) {
        let (out, archive, expiry) = compact_bytes_retaining(&input, &r).unwrap();
        let plain = compact_bytes_with(&input, CorruptLines::Keep).unwrap().0;
        let merged = merge_in_order(&plain, &out, &archive);
        prop_assert_eq!(merged.as_deref(), Some(&plain[..]), "not a split of the compaction");
        prop_assert_eq!(expiry.lines as usize, archive.split_inclusive(|&c| c == b'\n').count());
        prop_assert_eq!(expiry.bytes as usize, archive.len());
        // So the WAL and the archive together replay to the original state.
        prop_assert_eq!(digest(&plain, Retention::NONE), digest(&input, Retention::NONE));
    }

    #[test]
    fn exactly_the_reference_models_transactions_expire(input in wal(), r in retention()) {
        let (out, archive, expiry) = compact_bytes_retaining(&input, &r).unwrap();
        let want = expected_expired(&input, &r);
        prop_assert_eq!(&ids_in(&archive), &want);
        prop_assert_eq!(expiry.transactions as usize, want.len());
        // An expired transaction has no line left in the WAL; noise is never archived.
        prop_assert!(ids_in(&out).is_disjoint(&want));
        for l in archive.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            let tx_line = [&b"PREPARE"[..], b"COMMIT", b"ABORT"]
                .iter()
                .any(|op| l.starts_with(&[&b"{\"op\": \""[..], op].concat()));
            prop_assert!(tx_line, "archived: {}", String::from_utf8_lossy(l));
        }
    }

    #[test]
    fn expiring_is_idempotent(input in wal(), r in retention()) {
        let (once, _, _) = compact_bytes_retaining(&input, &r).unwrap();
        let (twice, archive, expiry) = compact_bytes_retaining(&once, &r).unwrap();
        prop_assert_eq!(once, twice);
        prop_assert!(archive.is_empty());
        prop_assert_eq!(expiry.transactions, 0);
    }
}
