//! `corrupt_lines` under the daemon, through the real binary: each mode on a WAL with torn
//! writes in the middle (a full disk, then more appends), the run's log line, the metric and
//! the default alert. The CLI side is in `tests/cli.rs` and `tests/diotec360.rs`; crashes
//! at every quarantine step in `tests/corrupt_failpoints.rs`.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use predicates::prelude::PredicateBooleanExt;

/// Corrupt lines of the kind a torn write followed by later appends leaves.
const TORN: [&str; 2] = [
    "{\"op\": \"PREPARE\", \"tx_id\": \"t9\", \"chan",
    "{\"op\": \"COMMIT\", \"tx_",
];

/// A redundant WAL with the two torn lines in its middle, without a torn tail.
fn wal_with_torn_lines() -> String {
    let body = redundant_wal(300);
    let body = &body[..body.rfind('\n').unwrap() + 1];
    let cut = body[..body.len() / 2].rfind('\n').unwrap() + 1;
    format!("{}{}\n{}{}\n", &body[..cut], TORN[0], &body[cut..], TORN[1])
}

fn policy(dir: &Path, corrupt_lines: &str) {
    let textfile = dir.join("metrics.prom");
    let text = format!(
        "[daemon]\nstate_dir = \"state\"\nmetrics_listen = \"\"\nlog_level = \"info\"\nmetrics_textfile = \"{}\"\n\n\
         [[wal]]\nname = \"w1\"\npath = \"wal.log\"\npoll_interval_secs = 1\ncorrupt_lines = \"{corrupt_lines}\"\n\n\
         [wal.triggers]\nmin_interval_secs = 0\nmin_reclaimable_bytes = 1\nmin_reclaimable_ratio = 0.01\n\n\
         [[alert]]\nname = \"WAL Has Corrupt Lines\"\nmetric = \"wal_corrupt_lines\"\nabove = 0\nseverity = \"warning\"\nactions = [\"log\"]\n",
        textfile.display()
    );
    fs::write(dir.join("policy.toml"), text).unwrap();
}

/// Lines of a file, without their `\n`.
fn lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).unwrap();
    bytes
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .filter(|l| !l.is_empty())
        .collect()
}

fn textfile_value(dir: &Path, series: &str) -> Option<f64> {
    let text = fs::read_to_string(dir.join("metrics.prom")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn daemon_keeps_corrupt_lines_in_place_and_reports_them() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_with_torn_lines());
    let before = digest(&wal);
    policy(d.path(), "keep");
    let daemon = Daemon::start(d.path(), "policy.toml");
    let run = daemon.wait_for_log(|v| is_run(v, "w1", "success"));
    assert_eq!(run["corrupt_lines"], 2, "{run}");
    assert_eq!(run["corrupt_lines_policy"], "keep", "{run}");
    assert_eq!(run["quarantined_lines"], 0, "{run}");
    assert!(
        run["message"].as_str().unwrap().contains("2 corrupt lines"),
        "{run}"
    );
    let after = lines(&wal);
    for torn in TORN {
        assert!(after.contains(&torn.as_bytes().to_vec()), "{torn} kept");
    }
    assert_eq!(
        digest(&wal),
        before,
        "the same replay state, torn lines included"
    );
    daemon.wait_for_log(|v| {
        v["event"] == "alert" && v["alert"] == "WAL Has Corrupt Lines" && v["state"] == "firing"
    });
    assert!(
        wait_until(DEADLINE, || textfile_value(
            d.path(),
            "walcompactd_wal_corrupt_lines{wal=\"w1\"}"
        ) == Some(2.0)),
        "metric not exported:\n{}",
        fs::read_to_string(d.path().join("metrics.prom")).unwrap_or_default()
    );
}

#[test]
fn daemon_quarantines_corrupt_lines_and_the_alert_resolves() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_with_torn_lines());
    policy(d.path(), "quarantine");
    let daemon = Daemon::start(d.path(), "policy.toml");
    let run = daemon.wait_for_log(|v| is_run(v, "w1", "success"));
    assert_eq!(run["quarantined_lines"], 2, "{run}");
    let q = d.path().join("wal_quarantine.log");
    assert_eq!(run["quarantine"], q.display().to_string(), "{run}");
    let after = lines(&wal);
    for torn in TORN {
        assert!(!after.contains(&torn.as_bytes().to_vec()), "{torn} left");
    }
    let records = walcompactd::pipeline::quarantine::read_records(&q, 0).unwrap();
    let raw: Vec<&[u8]> = records.iter().map(|r| r.1.as_slice()).collect();
    assert_eq!(raw, [TORN[0].as_bytes(), TORN[1].as_bytes()]);
    daemon.wait_for_log(|v| {
        v["event"] == "alert" && v["alert"] == "WAL Has Corrupt Lines" && v["state"] == "resolved"
    });
    assert!(wait_until(DEADLINE, || textfile_value(
        d.path(),
        "walcompactd_wal_corrupt_lines{wal=\"w1\"}"
    ) == Some(0.0)));
}

#[test]
fn daemon_refuses_a_wal_with_corrupt_lines_in_refuse_mode() {
    let d = tempfile::tempdir().unwrap();
    let content = wal_with_torn_lines();
    let wal = write_wal(d.path(), "wal.log", &content);
    policy(d.path(), "refuse");
    let daemon = Daemon::start(d.path(), "policy.toml");
    let run = daemon.wait_for_log(|v| is_run(v, "w1", "failed"));
    let msg = run["message"].as_str().unwrap();
    assert!(
        msg.contains("is corrupt") && msg.contains("refuse"),
        "{run}"
    );
    assert_eq!(
        fs::read_to_string(&wal).unwrap(),
        content,
        "nothing changed"
    );
    assert!(
        !names(d.path()).iter().any(|n| n.starts_with("wal_backup_")),
        "{:?}",
        names(d.path())
    );
}

/// The embedded default policy carries the alert rule, and `check-policy` accepts the key.
#[test]
fn the_default_policy_alerts_on_corrupt_lines() {
    let out = walcompactd().arg("check-policy").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("name = \"WAL Has Corrupt Lines\""), "{text}");
    assert!(text.contains("metric = \"wal_corrupt_lines\""), "{text}");
    assert!(text.contains("corrupt_lines = \"keep\""), "{text}");
    let d = tempfile::tempdir().unwrap();
    let bad = test_policy("[[wal]]\nname = \"w\"\npath = \"w.log\"\ncorrupt_lines = \"drop\"\n");
    fs::write(d.path().join("p.toml"), bad).unwrap();
    walcompactd()
        .arg("check-policy")
        .arg(d.path().join("p.toml"))
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "wal[0].corrupt_lines: must be one of keep, quarantine, refuse; got \"drop\"",
        ));
}

/// Two WALs with the same file name backing up into one directory would share backup names
/// and a quarantine file: the policy is refused, naming the key.
#[test]
fn wals_sharing_backup_and_quarantine_names_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let text = test_policy(
        "[[wal]]\nname = \"a\"\npath = \"a/wal.log\"\nbackup_dir = \"/var/backups/wal\"\n\n\
         [[wal]]\nname = \"b\"\npath = \"b/wal.log\"\nbackup_dir = \"/var/backups/wal\"\n",
    );
    fs::write(d.path().join("p.toml"), text).unwrap();
    walcompactd()
        .arg("check-policy")
        .arg(d.path().join("p.toml"))
        .assert()
        .code(2)
        .stderr(
            predicates::str::contains("wal[1].backup_dir").and(predicates::str::contains(
                "would share backup names and a quarantine file",
            )),
        );
}
