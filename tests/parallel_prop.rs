//! The parallel pass equals the sequential one on generated WALs, with chunk sizes small
//! enough that lines straddle chunks (and whole chunks hold no line start).

use proptest::prelude::*;
use walcompactd::analyze::{Analysis, Parallelism, Want, analyze, analyze_source};
use walcompactd::wal::{RawEntry, decode, decode_raw};

/// One generated line: protocol lines, noise, blank and corrupt lines.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let tx = prop::sample::select(vec!["a", "b", "c", "t\\u0061", "\u{e9}"]);
    prop_oneof![
        4 => (tx.clone(), 0u8..5).prop_map(|(t, d)| format!("{{\"op\": \"PREPARE\", \"tx_id\": \"{t}\", \"data\": {{\"v\": {d}}}}}\n").into_bytes()),
        2 => (tx.clone(), any::<bool>()).prop_map(|(t, cr)| format!("{{\"op\":\"COMMIT\",\"tx_id\":\"{t}\"}}{}\n", if cr { "\r" } else { "" }).into_bytes()),
        2 => (tx.clone(), 0u8..5, prop::sample::select(vec!["", ".5", "e0"])).prop_map(|(t, s, frac)| format!("{{\"op\":\"COMMIT\",\"tx_id\":\"{t}\",\"timestamp\":{s}{frac}}}\n").into_bytes()),
        1 => (tx.clone(), 0u8..5).prop_map(|(t, s)| format!("{{\"op\": \"PREPARE\", \"tx_id\": \"{t}\", \"timestamp\": {s}.25}}\n").into_bytes()),
        1 => tx.clone().prop_map(|t| format!("{{\"op\": \"ABORT\", \"tx_id\": \"{t}\"}}\n").into_bytes()),
        1 => tx.prop_map(|t| format!("{{\"op\": \"PREPARE\", \"tx_id\": \"{t}\"}}\n").into_bytes()),
        1 => prop::sample::select(vec!["\n", " \t\n", "\r\n"]).prop_map(|s| s.as_bytes().to_vec()),
        1 => Just(b"{\"op\": \"CHECKPOINT\", \"n\": 1}\n".to_vec()),
        1 => Just(b"{\"tx_id\": 5, \"op\": \"COMMIT\"}\n".to_vec()),
        1 => prop::sample::select(vec!["[1]\n", "{\"op\":\n", "xyz\n", "{} {}\n"]).prop_map(|s| s.as_bytes().to_vec()),
        1 => Just(b"{\"op\":\"COMMIT\",\"tx_id\":\"\xff\"}\n".to_vec()),
    ]
}

fn wal() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(line(), 0..60),
        prop::option::of("[a-z{\":]{1,8}"),
    )
        .prop_map(|(lines, tail)| {
            let mut s = lines.concat();
            if let Some(t) = tail {
                s.extend_from_slice(t.as_bytes());
            }
            s
        })
}

fn summary(a: &Analysis, r: &walcompactd::rules::Retention) -> impl PartialEq + std::fmt::Debug {
    (
        a.replay.clone(),
        a.index.clone().into_plan_retaining(r),
        a.index.counts(),
        a.index.tx_counts(),
        a.index.reclaimable_bytes(),
        a.corrupt.clone(),
        (a.lines, a.scanned_len, a.torn_tail_bytes, a.corrupt_lines),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parallel_pass_equals_sequential(
        input in wal(),
        chunk_bytes in 7usize..64,
        threads in 1usize..4,
        index in any::<bool>(),
        replay in any::<bool>(),
        corrupt_lines in proptest::sample::select(walcompactd::rules::CorruptLines::ALL.to_vec()),
        cutoff in proptest::option::of(0u32..4),
    ) {
        // Retention too: the timestamps the parallel pass carries must be the same.
        let retention = walcompactd::rules::Retention { cutoff, in_flight_cutoff: cutoff };
        let want = Want { index, replay, corrupt_lines, retention };
        let seq = analyze(&input[..], want, &mut |_| {}).unwrap();
        let par = analyze_source(
            &input[..],
            input.len() as u64,
            want,
            Parallelism { chunk_bytes, threads },
            &mut |_| {},
        )
        .unwrap();
        prop_assert_eq!(summary(&seq, &retention), summary(&par, &retention));
        // The incrementally maintained figure agrees with the plan it summarizes.
        prop_assert_eq!(par.index.reclaimable_bytes(), par.index.plan().reclaimable_bytes());
    }
}

/// JSON-ish text: mostly valid objects with odd corners, plus arbitrary junk.
fn json_line() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        Just("1".to_string()),
        Just("-0.5e+3".to_string()),
        Just("01".to_string()),
        Just("1.".to_string()),
        Just("-".to_string()),
        Just("1e".to_string()),
        Just("1E-2".to_string()),
        Just("true".to_string()),
        Just("nul".to_string()),
        Just("null".to_string()),
        Just("1e999".to_string()),
        "\"[a-z\\\\u0-9\t\"]{0,6}\"".prop_map(|s| s),
        // Long enough to cross the 16-byte blocks and 8-byte words strings are scanned in.
        "\"[a-z\u{e9}\\\\\"\t\\x01]{0,40}\"".prop_map(|s| s),
        Just("\"\\u0041\"".to_string()),
        Just("\"PREPARE\"".to_string()),
        Just("\"COMMIT\"".to_string()),
        Just("\"t\u{e9}\"".to_string()),
    ];
    let value = scalar.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (
                    prop::sample::select(vec!["op", "tx_id", "data", "x", "o\\u0070"]),
                    inner.clone()
                ),
                0..4
            )
            .prop_map(|v| format!(
                "{{{}}}",
                v.iter()
                    .map(|(k, v)| format!("\"{k}\": {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            (
                inner.clone(),
                prop::sample::select(vec!["", ",", " ]", "}", ":"])
            )
                .prop_map(|(v, junk)| format!("[{v}{junk}]")),
        ]
    });
    prop_oneof![
        4 => prop::collection::vec((prop::sample::select(vec!["op", "tx_id", "data", "timestamp", "o\\u0070"]), value.clone()), 0..5)
            .prop_map(|v| format!(" {{{}}}\r", v.iter().map(|(k, v)| format!("\"{k}\" :{v}")).collect::<Vec<_>>().join(","))),
        1 => value,
        1 => "[ {}\\[\\]\",:0-9a-z.eE+\\-\\\\\t]{0,24}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn fast_decoding_equals_serde_decoding(line in json_line()) {
        let slow = decode(line.as_bytes()).map(RawEntry::from).map_err(|e| e.to_string());
        let fast = decode_raw(line.as_bytes()).map_err(|e| e.to_string());
        prop_assert_eq!(slow, fast, "{}", line);
    }
}
