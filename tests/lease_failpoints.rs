//! Lease mode's hard cases, forced with fail points (built with `--features failpoints`):
//! a writer blocked on the lease across the swap, a writer that looked the path up before
//! the swap and opens after the release, a crash after the swap before the late lines are
//! merged, the WAL replaced just before the swap, no `RENAME_EXCHANGE`, no leases at all;
//! and the kernel-enforced offline guard giving up when a writer opens the WAL mid-run.
//! Writers are the application's (`tests/fixtures/diotec360_wal.py`).

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::app::{FIXTURE, commit, lease_policy, seeded_wal};
use common::*;

/// `walcompactd compact --json --mode MODE WAL` with `FAILPOINTS`, running.
fn spawn_compact(wal: &Path, mode: &str, failpoints: &str) -> Child {
    Command::new(bin())
        .env_remove("RUST_LOG")
        .env("FAILPOINTS", failpoints)
        .args(["compact", "--json", "--mode", mode])
        .arg(wal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn late_record(wal: &Path) -> PathBuf {
    PathBuf::from(format!("{}.compact.late", wal.display()))
}

/// Waits until the run holds its read lease (paused at `lease::held::delay`): the late
/// record is written just before the lease, which is granted at once with no writer about.
fn wait_for_lease(wal: &Path) {
    assert!(
        wait_until(DEADLINE, || late_record(wal).exists()),
        "the run never reached its lease"
    );
    std::thread::sleep(Duration::from_millis(300));
}

/// The lines of `wal` naming `tx_id`.
fn lines_of(wal: &Path, tx_id: &str) -> Vec<String> {
    let marker = format!("\"tx_id\": \"{tx_id}\"");
    fs::read_to_string(wal)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&marker))
        .map(str::to_string)
        .collect()
}

/// The application's reader sees `tx_id` committed with its changes.
fn app_sees_committed(wal: &Path, tx_id: &str) {
    let view: serde_json::Value = serde_json::from_str(&python_fixture(
        FIXTURE,
        &["view".as_ref(), wal.as_os_str()],
    ))
    .unwrap();
    let tx = &view["transactions"][tx_id];
    assert_eq!(tx["committed"], true, "the reader's view of {tx_id}: {tx}");
    assert_eq!(tx["changes"]["k"], 1, "the reader's view of {tx_id}: {tx}");
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// No temp, journal or late record beside the WAL.
fn assert_clean(wal: &Path) {
    assert_no_leftovers(wal.parent().unwrap());
    assert!(!late_record(wal).exists(), "late record left");
}

#[test]
fn a_writer_blocked_on_the_lease_across_the_swap_lands_once_in_the_new_wal() {
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 400);
    let run = spawn_compact(&wal, "lease", "lease::held::delay=sleep(1500)");
    wait_for_lease(&wal);
    // Opens the WAL for its PREPARE while the lease is held: blocked in the kernel.
    let writer = commit(wal.parent().unwrap(), &d.path().join("st"), "blocked-1")
        .spawn()
        .unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(writer.wait_with_output().unwrap().status.success());
    let r = stdout_json(&out);
    assert!(
        r["lease"]["late_bytes"].as_u64().unwrap() > 0,
        "the blocked writer appended to the old inode, merged late: {r}"
    );
    let lines = lines_of(&wal, "blocked-1");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("PREPARE") && lines[1].contains("COMMIT"));
    app_sees_committed(&wal, "blocked-1");
    assert_clean(&wal);
}

/// Looks the WAL's path up (an `O_PATH` descriptor), waits until the swap replaced it, then
/// opens what it looked up (the old inode) for appending: the writer between its path
/// lookup and its open, which no lease signal reaches.
const LATE_OPENER: &str = r#"
import os, sys, time
wal, line = sys.argv[1], sys.argv[2]
fd = os.open(wal, os.O_PATH)
ino = os.stat(f"/proc/self/fd/{fd}").st_ino
print("looked up", flush=True)
while os.stat(wal).st_ino == ino:
    time.sleep(0.001)
with open(f"/proc/self/fd/{fd}", "a") as f:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())
"#;

#[test]
fn a_writer_that_looked_the_path_up_before_the_swap_is_merged() {
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 400);
    let run = spawn_compact(
        &wal,
        "lease",
        "lease::held::delay=sleep(1000);lease::merge::delay=sleep(1500)",
    );
    wait_for_lease(&wal);
    let line =
        "{\"op\": \"PREPARE\", \"tx_id\": \"looked-up\", \"changes\": {}, \"timestamp\": 1.0}\n";
    let opener = Command::new("python3")
        .args(["-c", LATE_OPENER])
        .arg(&wal)
        .arg(line)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let opened = opener.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&opened.stdout).trim(), "looked up");
    let r = stdout_json(&out);
    assert_eq!(
        r["lease"]["late_bytes"].as_u64().unwrap(),
        line.len() as u64,
        "{r}"
    );
    assert_eq!(
        lines_of(&wal, "looked-up"),
        vec![line.trim_end().to_string()]
    );
    assert!(fs::read_to_string(&wal).unwrap().ends_with(line));
    assert_clean(&wal);
}

#[test]
fn a_crash_after_the_swap_before_the_merge_is_merged_by_recovery() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 400);
    let run = spawn_compact(
        &wal,
        "lease",
        "lease::held::delay=sleep(1500);lease::before_merge::crash=return",
    );
    wait_for_lease(&wal);
    let writer = commit(wal.parent().unwrap(), &d.path().join("st"), "crashed-1")
        .spawn()
        .unwrap();
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.signal(), Some(9), "{}", stderr(&out));
    // The writer's PREPARE went to the old inode (it was blocked on it), fsynced there: only
    // the old inode, kept at the temp's name, holds it until recovery merges it.
    assert!(writer.wait_with_output().unwrap().status.success());
    assert!(late_record(&wal).exists());
    assert!(
        lines_of(&wal, "crashed-1")
            .iter()
            .all(|l| !l.contains("PREPARE"))
    );
    walcompactd()
        .arg("recover")
        .arg(&wal)
        .assert()
        .success()
        .stdout(predicates::str::contains("CompletedSwap"));
    let lines = lines_of(&wal, "crashed-1");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines.iter().filter(|l| l.contains("PREPARE")).count(), 1);
    app_sees_committed(&wal, "crashed-1");
    assert_clean(&wal);
    walcompactd().arg("verify").arg(&wal).assert().success();
}

#[test]
fn a_wal_replaced_just_before_the_leased_swap_is_put_back() {
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 400);
    let run = spawn_compact(&wal, "lease", "swap::before_exchange::delay=sleep(2000)");
    wait_for_lease(&wal);
    let replacement = d.path().join("incoming.log");
    fs::write(&replacement, clean_wal("other", 20)).unwrap();
    let expected = fs::read(&replacement).unwrap();
    fs::rename(&replacement, &wal).unwrap();
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("replaced by another file just before the swap; it was put back"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&wal).unwrap(), expected, "never clobbered");
    assert_clean(&wal);
}

/// Leases but no `RENAME_EXCHANGE`, and no leases at all: lease mode refuses, naming why,
/// and changes nothing (no backup, no temp).
#[test]
fn lease_mode_refuses_without_rename_exchange_or_leases() {
    for (failpoint, says) in [
        ("swap::exchange::unsupported=return", "no RENAME_EXCHANGE"),
        (
            "lease::unavailable=return",
            "leases are not available here (EINVAL",
        ),
    ] {
        let d = tempfile::tempdir().unwrap();
        let wal = seeded_wal(d.path(), 400);
        let before = fs::read(&wal).unwrap();
        let out = spawn_compact(&wal, "lease", failpoint)
            .wait_with_output()
            .unwrap();
        assert_eq!(out.status.code(), Some(4), "{failpoint}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(says) && stderr(&out).contains(&wal.display().to_string()),
            "{failpoint}: {}",
            stderr(&out)
        );
        assert_eq!(fs::read(&wal).unwrap(), before, "{failpoint}");
        assert!(
            backups(wal.parent().unwrap(), &wal).is_empty(),
            "{failpoint}"
        );
        assert_clean(&wal);
    }
}

/// Offline mode holds the lease for the whole run: the application opening the WAL
/// mid-run breaks it, is let through at once (it finishes while the run is still paused),
/// and the run gives up leaving the WAL as the writer made it.
#[test]
fn offline_gives_up_at_once_when_the_application_opens_the_wal() {
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 400);
    let original = fs::read(&wal).unwrap();
    let ino = fs::metadata(&wal).unwrap().ino();
    let mut run = spawn_compact(&wal, "offline", "swap::before_check::delay=sleep(4000)");
    let temp = PathBuf::from(format!("{}.compact.tmp", wal.display()));
    assert!(wait_until(DEADLINE, || temp.exists()), "no temp file");
    std::thread::sleep(Duration::from_millis(500));
    let writer = commit(wal.parent().unwrap(), &d.path().join("st"), "mid-1")
        .output()
        .unwrap();
    assert!(writer.status.success());
    assert!(
        run.try_wait().unwrap().is_none(),
        "the writer went on while the run was still paused"
    );
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a writer opened it during the run"),
        "{}",
        stderr(&out)
    );
    let now = fs::read(&wal).unwrap();
    assert!(now.starts_with(&original), "nothing else changed");
    assert_eq!(lines_of(&wal, "mid-1").len(), 2);
    assert_eq!(fs::metadata(&wal).unwrap().ino(), ino, "not swapped");
    assert!(
        backups(wal.parent().unwrap(), &wal).is_empty(),
        "its backup removed"
    );
    assert_clean(&wal);
}

/// A writer blocked across the swap appends late to the old inode (the linked backup); the
/// application's check then rejects the swap: the rollback restores the backup and keeps
/// what followed in the new WAL, so the late line is there exactly once.
#[test]
fn a_rollback_after_late_lines_keeps_each_line_once() {
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 400);
    let hooks = "[wal.hooks]\nverify = [\"false\"]\n";
    write_policy(d.path(), &test_policy(&lease_policy(&wal, hooks)));
    let daemon = Daemon::start_with_env(
        d.path(),
        "policy.toml",
        &[("FAILPOINTS", "lease::held::delay=sleep(1500)")],
    );
    wait_for_lease(&wal);
    let writer = commit(wal.parent().unwrap(), &d.path().join("st"), "late-1")
        .spawn()
        .unwrap();
    daemon.wait_for_log(|v| v["event"] == "run" && v["rolled_back"] == true);
    assert!(writer.wait_with_output().unwrap().status.success());
    drop(daemon);
    let lines = lines_of(&wal, "late-1");
    assert_eq!(lines.len(), 2, "{lines:?}");
    app_sees_committed(&wal, "late-1");
}
