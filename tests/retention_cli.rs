//! Retention through the real binary, read-only commands: `status --expire-after` and
//! `compact --dry-run --expire-after` report exactly which transactions would expire (integer
//! and float timestamps; a string timestamp never expires; an old in-flight PREPARE only with
//! `--expire-in-flight-after`), agree with each other, and change nothing on disk.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// 2020-09-13T12:26:40Z: far older than any horizon the tests use.
const T0: u64 = 1_600_000_000;
/// One day: the horizon of every test.
const DAY: &str = "86400";

/// The WAL, and the lines compaction alone would keep of the transactions that expire
/// finished (`old`) and of the old in-flight one (`in_flight`).
struct Fixture {
    text: String,
    old: Vec<String>,
    in_flight: String,
}

fn fixture_wal() -> Fixture {
    let now = chrono::Utc::now().timestamp().to_string();
    let t = |dt: f64| format!("{}", T0 as f64 + dt);
    // a: integer timestamps, committed; its final decides: T0 + 1.
    let (a_p, a_c) = (
        stamped("PREPARE", "a", &t(0.0)),
        stamped("COMMIT", "a", &t(1.0)),
    );
    // b: float timestamps, a retried PREPARE (the first is dropped by the rules), committed
    // at T0 + 100.75, floored to T0 + 100.
    let b_retry = stamped("PREPARE", "b", &t(50.25));
    let (b_p, b_c) = (
        stamped("PREPARE", "b", &t(60.5)),
        stamped("COMMIT", "b", &t(100.75)),
    );
    // c: aborted at T0 + 200.5: only its ABORT survives compaction, so only it is archived.
    let c_p = stamped("PREPARE", "c", &t(150.0));
    let c_a = stamped("ABORT", "c", &t(200.5));
    // s: old, but its timestamps are strings: never expires.
    let s = stamped("PREPARE", "s", "\"2020-09-13T12:26:40Z\"")
        + &stamped("COMMIT", "s", "\"2020-09-13T12:26:41Z\"");
    // d: in flight since T0 + 300.
    let d_p = stamped("PREPARE", "d", &t(300.0));
    // e: committed now: younger than the horizon.
    let e = stamped("PREPARE", "e", &now) + &stamped("COMMIT", "e", &now);
    let text = [&a_p, &b_retry, &a_c, &b_p, &c_p, &s, &b_c, &c_a, &d_p, &e]
        .map(String::as_str)
        .concat();
    Fixture {
        text,
        old: vec![a_p, a_c, b_p, b_c, c_a],
        in_flight: d_p,
    }
}

fn bytes(lines: &[&String]) -> u64 {
    lines.iter().map(|l| l.len() as u64).sum()
}

/// Runs the binary with `args` then `wal`, in the WAL's directory (a test policy's relative
/// state directory lands there); it must succeed with JSON on stdout.
fn json(args: &[&str], wal: &Path) -> Value {
    let out = walcompactd()
        .current_dir(wal.parent().unwrap())
        .args(args)
        .arg(wal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)
}

/// `e` (an `expirable`/`expired` object) says what the fixture's expiring transactions are.
fn assert_expiry(e: &Value, transactions: u64, lines: &[&String], newest: (u64, &str)) {
    assert_eq!(e["transactions"], transactions, "{e}");
    assert_eq!(e["lines"], lines.len(), "{e}");
    assert_eq!(e["bytes"], bytes(lines), "{e}");
    assert_eq!(e["oldest_secs"], T0 + 1, "a's COMMIT decides: {e}");
    assert_eq!(e["oldest"], "2020-09-13T12:26:41Z", "{e}");
    assert_eq!(e["newest_secs"], newest.0, "{e}");
    assert_eq!(e["newest"], newest.1, "{e}");
}

/// The cutoff is `now − horizon` for a `now` read while the command ran.
fn assert_cutoff(e: &Value, key: &str, horizon: u64, before: i64, after: i64) {
    let cutoff = e[format!("{key}_secs")].as_i64().unwrap();
    let range = before - horizon as i64..=after - horizon as i64;
    assert!(range.contains(&cutoff), "{key} {cutoff} not in {range:?}");
    assert!(e[key].as_str().unwrap().ends_with('Z'), "{e}");
}

fn rule<'a>(dry: &'a Value, name: &str) -> Option<&'a Value> {
    dry["removed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rule"] == name)
}

#[test]
fn status_and_dry_run_report_what_would_expire_and_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture_wal();
    let wal = write_wal(d.path(), "wal.log", &f.text);
    let before = dir_state(d.path());
    let old: Vec<&String> = f.old.iter().collect();
    let with_in_flight: Vec<&String> = old.iter().copied().chain([&f.in_flight]).collect();

    // Without retention: no expiry object, the figures of today.
    let plain = json(&["status", "--json"], &wal);
    assert!(plain.get("expirable").is_none(), "{plain}");
    let plain_dry = json(&["compact", "--dry-run", "--json"], &wal);
    assert!(plain_dry.get("expired").is_none() && rule(&plain_dry, "expired").is_none());

    let t0 = chrono::Utc::now().timestamp();
    let status = json(&["status", "--json", "--expire-after", DAY], &wal);
    let dry = json(
        &["compact", "--dry-run", "--json", "--expire-after", DAY],
        &wal,
    );
    let t1 = chrono::Utc::now().timestamp();
    for e in [&status["expirable"], &dry["expired"]] {
        assert_expiry(e, 3, &old, (T0 + 200, "2020-09-13T12:30:00Z"));
        assert_eq!(e["expire_after_secs"], 86_400);
        assert_cutoff(e, "cutoff", 86_400, t0, t1);
        assert!(e["in_flight_cutoff"].is_null() && e["expire_in_flight_after_secs"].is_null());
    }
    // The dry run's `expired` rule is exactly the archived lines; the rest is today's plan.
    let expired = rule(&dry, "expired").expect("an expired rule");
    assert_eq!(expired["lines"], old.len());
    assert_eq!(expired["bytes"], bytes(&old));
    let grown = |v: &Value, k: &str| v[k].as_u64().unwrap() - plain_dry[k].as_u64().unwrap();
    assert_eq!(grown(&dry, "reclaimable_bytes"), bytes(&old));
    assert_eq!(
        plain_dry["lines_after"].as_u64().unwrap() - dry["lines_after"].as_u64().unwrap(),
        5
    );
    // status counts expirable bytes as reclaimable, as the daemon's triggers do.
    assert_eq!(status["reclaimable_bytes"], dry["reclaimable_bytes"]);
    assert_eq!(
        status["reclaimable_bytes"].as_u64().unwrap(),
        plain["reclaimable_bytes"].as_u64().unwrap() + bytes(&old)
    );

    // With an in-flight horizon, the old in-flight PREPARE expires too (and decides newest).
    let args = ["--expire-after", DAY, "--expire-in-flight-after", "3600"];
    let status = json(&[&["status", "--json"][..], &args].concat(), &wal);
    let dry = json(
        &[&["compact", "--dry-run", "--json"][..], &args].concat(),
        &wal,
    );
    for e in [&status["expirable"], &dry["expired"]] {
        assert_expiry(e, 4, &with_in_flight, (T0 + 300, "2020-09-13T12:31:40Z"));
        assert_eq!(e["expire_in_flight_after_secs"], 3600);
        assert_cutoff(
            e,
            "in_flight_cutoff",
            3600,
            t0,
            chrono::Utc::now().timestamp(),
        );
    }
    assert_eq!(rule(&dry, "expired").unwrap()["lines"], 6);

    // The in-flight horizon alone: only d.
    let e = &json(
        &["status", "--json", "--expire-in-flight-after", "3600"],
        &wal,
    )["expirable"];
    assert_eq!(
        (e["transactions"].as_u64(), e["lines"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(e["bytes"], f.in_flight.len());
    assert_eq!(e["oldest_secs"], T0 + 300);
    assert!(e["cutoff"].is_null(), "{e}");

    // Human output names the same figures.
    let out = walcompactd()
        .args(["compact", "--dry-run", "--expire-after", DAY])
        .arg(&wal)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "would expire   3 transactions, 5 lines, {} bytes",
            bytes(&old)
        )),
        "{text}"
    );
    assert!(
        text.contains("oldest 2020-09-13T12:26:41Z (1600000001)"),
        "{text}"
    );

    assert_eq!(
        dir_state(d.path()),
        before,
        "read-only commands changed the directory"
    );
}

#[test]
fn nothing_old_enough_expires_nothing() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &fixture_wal().text);
    // A horizon longer than the WAL's history (T0 is decades ago, not centuries).
    let e = &json(&["status", "--json", "--expire-after", "3153600000"], &wal)["expirable"];
    assert_eq!(e["transactions"], 0, "{e}");
    assert_eq!(e["bytes"], 0);
    assert!(e["oldest"].is_null() && e["newest_secs"].is_null(), "{e}");
}

#[test]
fn the_policy_retention_applies_to_status_and_flags_override_it() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture_wal();
    let wal = write_wal(d.path(), "wal.log", &f.text);
    let policy = d.path().join("policy.toml");
    let table = wal_table(
        "w",
        &wal.display().to_string(),
        "",
        "[wal.retention]\nexpire_after_secs = 86400\nexpire_in_flight_after_secs = 3600\n",
    );
    std::fs::write(&policy, test_policy(&table)).unwrap();
    let p = policy.to_str().unwrap();
    let e = &json(&["status", "--json", "--policy", p], &wal)["expirable"];
    assert_eq!(e["transactions"], 4, "the policy's horizons: {e}");
    assert_eq!(e["expire_in_flight_after_secs"], 3600);
    let e = &json(
        &["status", "--json", "--policy", p, "--expire-after", DAY],
        &wal,
    )["expirable"];
    assert_eq!(e["transactions"], 3, "the command line's horizons win: {e}");

    // Without [wal.retention], status --policy shows no expiry at all.
    std::fs::write(
        &policy,
        test_policy(&wal_table("w", &wal.display().to_string(), "", "")),
    )
    .unwrap();
    let v = json(&["status", "--json", "--policy", p], &wal);
    assert!(v.get("expirable").is_none(), "{v}");
}

#[test]
fn bad_retention_flags_are_usage_errors() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &fixture_wal().text);
    let before = dir_state(d.path());
    for args in [
        &["status", "--expire-after", "0"][..],
        &["compact", "--expire-after", "-1"],
        &["compact", "--dry-run", "--expire-after", "1d"],
        // An archive directory says nothing about what expires.
        &["compact", "--archive-dir", "/tmp"],
    ] {
        let out = walcompactd().args(args).arg(&wal).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    assert_eq!(dir_state(d.path()), before);
}
