//! The fuzz targets' properties as a short proptest run for CI (the long-running,
//! coverage-guided version is `fuzz/`, see `fuzz/README.md`). The checks themselves are
//! shared with the fuzz targets, so the two can never drift apart.
//!
//! Inputs are biased toward what breaks parsers: JSON-ish WAL lines cut at random points,
//! escapes, `\r`, invalid UTF-8, huge numbers and deep arrays for the scanner; real policy
//! keys, sections and wrong-typed values for the policy parser.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use proptest::prelude::*;

/// One fragment of a hostile WAL.
fn wal_fragment() -> impl Strategy<Value = Vec<u8>> {
    let tx = prop::sample::select(vec![
        "a", "b", "t\\u0061", "ta", "", "\\\"", "\\\\", "x\\ud800", "\u{e9}",
    ]);
    let op = prop::sample::select(vec![
        "PREPARE",
        "COMMIT",
        "ABORT",
        "prepare",
        "CHECKPOINT",
        "",
    ]);
    let lit = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        "\"",
        "\\",
        ",",
        ":",
        "\r",
        "\n",
        "\r\n",
        " ",
        "\t",
        "\0",
        "null",
        "true",
        "1e999",
        "-0",
        "18446744073709551616",
        "123456789012345678901234567890",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        "\"op\"",
        "\"tx_id\"",
        "\"data\"",
        "{}",
        "[]",
        "\"\\u0000\"",
        "\u{feff}",
    ]);
    prop_oneof![
        4 => (op.clone(), tx.clone(), 0u32..3).prop_map(|(o, t, d)| {
            format!("{{\"op\": \"{o}\", \"tx_id\": \"{t}\", \"data\": {{\"v\": {d}}}}}\n").into_bytes()
        }),
        2 => (op.clone(), tx.clone()).prop_map(|(o, t)| format!("{{\"tx_id\":\"{t}\",\"op\":\"{o}\"}}\n").into_bytes()),
        1 => (op, any::<i64>()).prop_map(|(o, n)| format!("{{\"op\":\"{o}\",\"tx_id\":{n}}}\n").into_bytes()),
        1 => (tx, prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(t, junk)| {
            // A duplicate key, then raw (possibly invalid UTF-8) bytes inside a string.
            let mut v = format!("{{\"op\":\"COMMIT\",\"op\":\"PREPARE\",\"tx_id\":\"{t}").into_bytes();
            v.extend(junk);
            v.extend_from_slice(b"\"}\n");
            v
        }),
        3 => lit.prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ]
}

/// A WAL: fragments concatenated, sometimes cut at an arbitrary byte (a torn write).
fn hostile_wal() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(wal_fragment(), 0..24),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(|(parts, cut, do_cut)| {
            let mut v = parts.concat();
            if do_cut && !v.is_empty() {
                v.truncate(cut.index(v.len() + 1));
            }
            v
        })
}

/// Valid-looking WALs (every line is a protocol line or blank), so the compaction half of
/// the scanner check runs often, not only the refusal half.
fn clean_wal() -> impl Strategy<Value = Vec<u8>> {
    let line = (
        prop::sample::select(vec!["PREPARE", "COMMIT", "ABORT", "CHECKPOINT"]),
        prop::sample::select(vec!["a", "b", "c", "t\\u0061", "ta"]),
        prop::option::of(0u8..3),
        any::<bool>(),
    )
        .prop_map(|(op, tx, data, cr)| {
            let data = data.map_or(String::new(), |d| format!(", \"data\": [{d}]"));
            let cr = if cr { "\r" } else { "" };
            format!("{{\"op\": \"{op}\", \"tx_id\": \"{tx}\"{data}}}{cr}\n")
        });
    (
        prop::collection::vec(prop_oneof![8 => line, 1 => Just("\n".to_string())], 0..30),
        "[{}\"a-z:\\\\]{0,6}",
    )
        .prop_map(|(lines, tail)| (lines.concat() + &tail).into_bytes())
}

/// One fragment of a hostile policy file.
fn policy_fragment() -> impl Strategy<Value = String> {
    let section = prop::sample::select(vec![
        "[daemon]\n",
        "[[wal]]\n",
        "[wal.triggers]\n",
        "[wal.backups]\n",
        "[wal.hooks]\n",
        "[[alert]]\n",
        "[wal]\n",
        "[[daemon]]\n",
        "[alert.x]\n",
        "[bogus]\n",
    ]);
    let key = prop::sample::select(vec![
        "log_format",
        "log_level",
        "state_dir",
        "metrics_listen",
        "metrics_textfile",
        "name",
        "path",
        "mode",
        "backup_dir",
        "lock_timeout_ms",
        "job_timeout_secs",
        "poll_interval_secs",
        "max_size_mb",
        "max_commits_since_compaction",
        "min_reclaimable_ratio",
        "min_free_disk_percent",
        "schedule",
        "min_reclaimable_bytes",
        "min_interval_secs",
        "keep_days",
        "keep_last",
        "compress",
        "pre_compact",
        "post_compact",
        "verify",
        "metric",
        "above",
        "below",
        "for_secs",
        "severity",
        "actions",
        "command",
        "wal",
        "unknown_key",
    ]);
    let value = prop::sample::select(vec![
        "\"w\"",
        "\"w2\"",
        "\"w.log\"",
        "\"/abs/w.log\"",
        "\"../x/./y.log\"",
        "\"\"",
        "\"json\"",
        "\"pretty\"",
        "\"online\"",
        "\"offline\"",
        "\"127.0.0.1:9464\"",
        "\"[::1]:0\"",
        "\"not an addr\"",
        "0",
        "1",
        "-1",
        "9223372036854775807",
        "-9223372036854775808",
        "0.5",
        "1.5",
        "1e308",
        "-0.0",
        "nan",
        "inf",
        "true",
        "[]",
        "[\"sh\", \"-c\", \"x\"]",
        "[\"\"]",
        "[1, 2]",
        "[\"0 0 2 * * Sun\"]",
        "[\"*/1 * * * * *\", \"0 0 0 1 1 * 2001\"]",
        "[\"nope\"]",
        "\"wal_size_mb\"",
        "\"disk_free_percent\"",
        "\"critical\"",
        "[\"log\", \"compact\"]",
        "[\"command\"]",
        "{ a = 1 }",
        "\"\\u00e9\\t\"",
        "'lit'",
        "\"\"\"multi\nline\"\"\"",
    ]);
    prop_oneof![
        2 => section.prop_map(String::from),
        6 => (key, value).prop_map(|(k, v)| format!("{k} = {v}\n")),
        1 => "[a-z_\\[\\]=\"#. \n]{0,12}",
    ]
}

/// A policy that names a WAL first, so validation (not only syntax) is exercised.
fn hostile_policy() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        prop::collection::vec(policy_fragment(), 0..16),
    )
        .prop_map(|(head, parts)| {
            let head = if head {
                "[[wal]]\nname = \"w\"\npath = \"w.log\"\n"
            } else {
                ""
            };
            format!("{head}{}", parts.concat())
        })
}

/// Mostly-valid policies with random values in every section, so the render → re-parse
/// round trip (only reached by a valid policy) runs on most cases.
fn valid_policy() -> impl Strategy<Value = String> {
    let daemon = (
        prop::sample::select(vec!["json", "pretty"]),
        prop::sample::select(vec!["info", "debug", "walcompactd=debug,warn"]),
        prop::sample::select(vec!["", "state", "/var/lib/x", "a/../b/./c"]),
        prop::sample::select(vec!["", "127.0.0.1:9464", "[::1]:0", "0.0.0.0:1"]),
        prop::sample::select(vec!["", "m.prom", "/tmp/m.prom"]),
    )
        .prop_map(|(f, l, s, m, t)| {
            format!(
                "[daemon]\nlog_format = \"{f}\"\nlog_level = \"{l}\"\nstate_dir = \"{s}\"\nmetrics_listen = \"{m}\"\nmetrics_textfile = \"{t}\"\n"
            )
        });
    let number = prop_oneof![
        Just(0.0),
        0.0f64..1.0,
        0.0f64..100.0,
        Just(1e-9),
        Just(123.456789),
        Just(1e15)
    ];
    let triggers = (
        number.clone(),
        0i64..1_000_000,
        0.0f64..=1.0,
        0.0f64..=100.0,
        prop::sample::select(vec![
            "[]",
            "[\"0 0 2 * * Sun\"]",
            "[\"*/1 * * * * *\", \"0 */15 * * * *\"]",
            "[\"0 0 0 1 Jan * 2099\"]",
        ]),
        prop::option::of(0i64..1 << 40),
        prop::option::of(0i64..1 << 40),
    )
        .prop_map(|(mb, commits, ratio, disk, sched, bytes, interval)| {
            let mut t = format!(
                "[wal.triggers]\nmax_size_mb = {mb:?}\nmax_commits_since_compaction = {commits}\n\
                 min_reclaimable_ratio = {ratio:?}\nmin_free_disk_percent = {disk:?}\nschedule = {sched}\n"
            );
            if let Some(b) = bytes {
                t += &format!("min_reclaimable_bytes = {b}\n");
            }
            if let Some(i) = interval {
                t += &format!("min_interval_secs = {i}\n");
            }
            t
        });
    let wal = (
        prop::sample::select(vec!["offline", "online"]),
        prop::sample::select(vec!["", "bk", "/srv/backups"]),
        0i64..100_000,
        1i64..100_000,
        1u32..5000,
        triggers,
        (0i64..400, 1i64..50, any::<bool>()),
        prop::sample::select(vec!["[]", "[\"true\"]", "[\"sh\", \"-c\", \"echo \\\"$WAL_PATH\\\"\"]"]),
    )
        .prop_map(|(mode, bk, lock, job, poll, trig, (days, last, zstd), hook)| {
            format!(
                "mode = \"{mode}\"\nbackup_dir = \"{bk}\"\nlock_timeout_ms = {lock}\njob_timeout_secs = {job}\n\
                 poll_interval_secs = {poll}\n{trig}[wal.backups]\nkeep_days = {days}\nkeep_last = {last}\n\
                 compress = {zstd}\n[wal.hooks]\npre_compact = {hook}\nverify = {hook}\n"
            )
        });
    let alert = (
        prop::sample::select(vec![
            "wal_size_mb",
            "wal_reclaimable_ratio",
            "disk_free_percent",
            "consecutive_failures",
            "compaction_stalled_seconds",
        ]),
        any::<bool>(),
        prop_oneof![Just(0.0), 0.0f64..1.0, Just(0.5)],
        0i64..100_000,
        prop::sample::select(vec!["warning", "critical"]),
        prop::sample::select(vec!["[\"log\"]", "[\"log\", \"compact\"]", "[]"]),
    )
        .prop_map(|(metric, above, v, secs, sev, actions)| {
            let dir = if above { "above" } else { "below" };
            format!(
                "metric = \"{metric}\"\n{dir} = {v:?}\nfor_secs = {secs}\nseverity = \"{sev}\"\nactions = {actions}\n"
            )
        });
    (
        prop::option::of(daemon),
        prop::collection::vec(wal, 0..3),
        prop::collection::vec(alert, 0..3),
    )
        .prop_map(|(daemon, wals, alerts)| {
            let mut text = daemon.unwrap_or_default();
            for (i, w) in wals.iter().enumerate() {
                text += &format!("[[wal]]\nname = \"w{i}\"\npath = \"w{i}.log\"\n{w}");
            }
            for (i, a) in alerts.iter().enumerate() {
                text += &format!("[[alert]]\nname = \"a{i}\"\n{a}");
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn scanner_survives_hostile_bytes(input in hostile_wal()) {
        checks::scanner(&input);
    }

    #[test]
    fn scanner_compacts_clean_wals_exactly(input in clean_wal()) {
        checks::scanner(&input);
    }

    #[test]
    fn policy_parser_survives_hostile_text(text in hostile_policy()) {
        checks::policy(text.as_bytes());
    }

    #[test]
    fn valid_policies_render_and_parse_back_equal(text in valid_policy()) {
        checks::policy(text.as_bytes());
    }
}

/// The checked-in fuzz seeds stay valid inputs for the checks.
#[test]
fn fuzz_seed_corpus_passes() {
    for (target, check) in [
        ("scanner", checks::scanner as fn(&[u8])),
        ("policy", checks::policy),
    ] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            check(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
        assert!(n > 0, "no seeds in {}", dir.display());
    }
}
