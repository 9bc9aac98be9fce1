//! Fault injection for `corrupt_lines` through the real binary (`--features failpoints`):
//! a crash or an error at every quarantine step neither loses nor duplicates a corrupt line,
//! and online runs apply the policy to corrupt lines appended while they work.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use walcompactd::pipeline::quarantine::read_records;

/// Corrupt lines of the kind torn writes followed by later appends leave.
const CORRUPT: [&str; 3] = [
    "{\"op\": \"PREPARE\", \"tx_id\": \"t9\", \"ch",
    "[1, 2]",
    "\u{1}junk",
];

/// A redundant WAL with the corrupt lines spread through it, and a torn tail.
fn wal_with_corrupt_lines() -> String {
    let body = redundant_wal(300);
    let mut out = String::new();
    for (i, line) in body.split_inclusive('\n').enumerate() {
        out += line;
        if let Some(c) = [100, 400, 700].iter().position(|&at| at == i) {
            out += CORRUPT[c];
            out += "\n";
        }
    }
    out
}

fn compact(wal: &Path, failpoints: &str, mode: &str) -> Output {
    walcompactd()
        .env("FAILPOINTS", failpoints)
        .args(["compact", "--corrupt-lines", mode])
        .arg(wal)
        .output()
        .unwrap()
}

/// The corrupt lines still in the WAL plus those in the quarantine file, in that order.
fn corrupt_lines_anywhere(dir: &Path, wal: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(wal).unwrap();
    let mut found: Vec<Vec<u8>> = bytes
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(|l| l[..l.len() - 1].to_vec())
        .filter(|l| {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(l).is_err()
        })
        .collect();
    let q = dir.join("wal_quarantine.log");
    if q.exists() {
        found.extend(read_records(&q, 0).unwrap().into_iter().map(|r| r.1));
    }
    found
}

/// Injects `point` into a quarantine run, recovers, runs again: at every moment each
/// corrupt line is in the WAL or in the quarantine file, exactly once; in the end the WAL
/// is exactly what an undisturbed run makes, and the quarantine holds each line once.
fn fault_case(point: &str, crash: bool, code: i32) {
    use std::os::unix::process::ExitStatusExt;
    let content = wal_with_corrupt_lines();
    let want: Vec<Vec<u8>> = CORRUPT.iter().map(|c| c.as_bytes().to_vec()).collect();
    let clean = tempfile::tempdir().unwrap();
    let reference = write_wal(clean.path(), "wal.log", &content);
    assert!(compact(&reference, "", "quarantine").status.success());

    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &content);
    let out = compact(&wal, &format!("{point}=return"), "quarantine");
    let stderr = String::from_utf8_lossy(&out.stderr);
    match crash {
        true => assert_eq!(out.status.signal(), Some(9), "{point}: {stderr}"),
        false => assert_eq!(out.status.code(), Some(code), "{point}: {stderr}"),
    }
    walcompactd().arg("recover").arg(&wal).assert().success();
    assert_no_leftovers(d.path());
    let mut now = corrupt_lines_anywhere(d.path(), &wal);
    now.sort();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(
        now, sorted,
        "{point}: each corrupt line once, WAL or quarantine"
    );

    assert!(compact(&wal, "", "quarantine").status.success(), "{point}");
    assert_eq!(
        fs::read(&wal).unwrap(),
        fs::read(&reference).unwrap(),
        "{point}: the next run completes exactly"
    );
    let q = read_records(&d.path().join("wal_quarantine.log"), 0).unwrap();
    let raw: Vec<Vec<u8>> = q.into_iter().map(|r| r.1).collect();
    assert_eq!(raw, want, "{point}: quarantined once each, in order");
}

#[test]
fn every_quarantine_step_survives_a_crash_or_an_error() {
    for (point, crash, code) in [
        ("quarantine::write::crash", true, 0),
        ("quarantine::fsync::crash", true, 0),
        ("quarantine::write::error", false, 4),
        ("quarantine::check::mismatch", false, 1),
        ("journal::write::crash", true, 0),
        ("swap::before_rename::crash", true, 0),
        ("swap::before_rename::error", false, 4),
        ("swap::after_rename::crash", true, 0),
        ("swap::after_rename::error", false, 4),
    ] {
        fault_case(point, crash, code);
    }
}

/// A quarantine file from earlier runs keeps its records when a later run fails.
#[test]
fn a_failed_run_leaves_earlier_quarantine_records_alone() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_with_corrupt_lines());
    assert!(compact(&wal, "", "quarantine").status.success());
    let q = d.path().join("wal_quarantine.log");
    let first = fs::read(&q).unwrap();
    // Completes the torn tail into a corrupt line.
    append(&wal, "oops\n");
    append(&wal, &redundant_wal(20));
    let out = compact(&wal, "quarantine::check::mismatch=return", "quarantine");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs::read(&q).unwrap(), first, "earlier records untouched");
    assert!(compact(&wal, "", "quarantine").status.success());
    let records = read_records(&q, 0).unwrap();
    assert_eq!(records.len(), CORRUPT.len() + 1);
    assert_eq!(records.last().unwrap().1, b"{\"op\": \"COMMIT\", \"tx_oops");
}

/// Starts `compact --online` paused before its catch-up, appends `line` meanwhile (as a
/// protocol writer), and returns the run's output.
fn online_with_appended(wal: &Path, mode: &str, line: &str) -> Output {
    let child = Command::new(bin())
        .env("FAILPOINTS", "online::catch_up::delay=sleep(2000)")
        .args(["compact", "--online", "--corrupt-lines", mode])
        .arg(wal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let temp = walcompactd::fsutil::sibling(wal, ".compact.tmp");
    assert!(
        wait_until(Duration::from_secs(60), || temp.exists()),
        "compaction never wrote its temp file"
    );
    let mut w =
        walcompactd::writer::WalWriter::open(wal, walcompactd::writer::Durability::None).unwrap();
    w.append(line.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn online_keeps_a_corrupt_line_appended_during_the_run() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(300));
    let out = online_with_appended(&wal, "keep", "{\"op\": \"COMMIT\", \"tx_\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = fs::read_to_string(&wal).unwrap();
    assert!(text.ends_with("{\"op\": \"COMMIT\", \"tx_\n"), "kept, last");
}

#[test]
fn online_refuse_mode_gives_up_on_a_corrupt_appended_line() {
    let d = tempfile::tempdir().unwrap();
    let content = wal_text(300);
    let wal = write_wal(d.path(), "wal.log", &content);
    let out = online_with_appended(&wal, "refuse", "not json\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("appended during online compaction"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&wal).unwrap(),
        content + "not json\n",
        "nothing replaced"
    );
    assert_no_leftovers(d.path());
}

/// Quarantine mode copies an appended corrupt line in place (the delta under the writers'
/// lock is copied verbatim); the next run quarantines it.
#[test]
fn online_quarantine_mode_quarantines_an_appended_corrupt_line_next_run() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(300));
    let out = online_with_appended(&wal, "quarantine", "not json\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::read_to_string(&wal).unwrap().ends_with("not json\n"));
    walcompactd()
        .args(["compact", "--online", "--corrupt-lines", "quarantine"])
        .arg(&wal)
        .assert()
        .success();
    assert!(!fs::read_to_string(&wal).unwrap().contains("not json"));
    let q = read_records(&d.path().join("wal_quarantine.log"), 0).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].1, b"not json");
}

/// A symlink planted at the quarantine file's name is never written through: the run fails
/// before the swap, the WAL keeps its corrupt lines, and the symlink's target is untouched.
#[test]
fn a_symlink_at_the_quarantine_name_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let content = wal_with_corrupt_lines();
    let wal = write_wal(d.path(), "wal.log", &content);
    let victim = d.path().join("victim");
    fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, d.path().join("wal_quarantine.log")).unwrap();
    let out = compact(&wal, "", "quarantine");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("wal_quarantine.log"), "{stderr}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(
        fs::read_to_string(&wal).unwrap(),
        content,
        "nothing replaced"
    );
    assert_no_leftovers(d.path());
}

/// The daemon's rollback (its verify hook rejected the new WAL) fails before its rename in
/// quarantine mode: the journal stays, so `recover` puts the original back and only then
/// takes back the quarantine records; each corrupt line ends up exactly once, in the WAL.
#[test]
fn a_failed_rollback_in_quarantine_mode_loses_no_corrupt_line() {
    let d = tempfile::tempdir().unwrap();
    let content = wal_with_corrupt_lines();
    let content = content[..content.rfind('\n').unwrap() + 1].to_string();
    let wal = write_wal(d.path(), "wal.log", &content);
    let policy = test_policy(
        "[[wal]]\nname = \"w\"\npath = \"wal.log\"\npoll_interval_secs = 1\ncorrupt_lines = \"quarantine\"\n\
         [wal.triggers]\nmax_size_mb = 0.001\nmin_reclaimable_bytes = 1\nmin_interval_secs = 3600\n\
         [wal.hooks]\nverify = [\"false\"]\n",
    );
    fs::write(d.path().join("policy.toml"), policy).unwrap();
    let daemon = Daemon::start_with_env(
        d.path(),
        "policy.toml",
        &[("FAILPOINTS", "rollback::before_rename::error=return")],
    );
    let run = daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "failed");
    assert_eq!(run["stage"], "rollback", "{}", daemon.dump());
    drop(daemon);
    assert!(
        d.path().join("wal.log.compact.journal").exists(),
        "kept for recovery"
    );
    walcompactd()
        .arg("recover")
        .arg(&wal)
        .assert()
        .success()
        .stdout(predicates::str::contains("FinishedRollback"));
    assert_eq!(
        fs::read_to_string(&wal).unwrap(),
        content,
        "the original is back"
    );
    let mut found = corrupt_lines_anywhere(d.path(), &wal);
    found.sort();
    let mut want: Vec<Vec<u8>> = CORRUPT.iter().map(|c| c.as_bytes().to_vec()).collect();
    want.sort();
    assert_eq!(found, want, "each corrupt line once, in the WAL");
    assert_no_leftovers(d.path());
}
