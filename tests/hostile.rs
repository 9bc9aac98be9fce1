//! Hostile environments through the real binary: each is a clear message naming the file,
//! and nothing is lost. Cases covered elsewhere (not repeated here): read-only WAL directory
//! and unreadable WAL (`tests/cli.rs`), missing backup directory (`tests/cli.rs`), backup
//! directory on another filesystem (`tests/cli.rs`), full filesystem (`tests/safety.rs`),
//! I/O error mid-write (`tests/safety.rs`), an invalid policy edit while the daemon runs
//! (`tests/daemon.rs`). Cases that need a pause inside a run (the WAL replaced, truncated
//! or appended to mid-compaction) are in `tests/hostile_failpoints.rs`; clock jumps are in
//! `tests/clock_jumps.rs`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use serde_json::Value;

/// Triggers on anything reclaimable in a WAL over 0.1 MB.
const TRIGGERS: &str = "max_size_mb = 0.1\nmin_reclaimable_bytes = 1";

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// The policy file deleted under a running daemon: a clear error naming the file, the
/// running policy stays (a trigger still compacts), and re-creating the file reloads it.
#[test]
fn deleted_policy_file_keeps_the_running_policy_until_it_is_recreated() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &clean_wal("a", 10));
    write_policy(
        d.path(),
        &test_policy(&wal_table("w1", "wal.log", TRIGGERS, "")),
    );
    let daemon = Daemon::start(d.path(), "policy.toml");
    fs::remove_file(d.path().join("policy.toml")).unwrap();
    let err = daemon.wait_for_log(|v| {
        v["event"] == "policy_error" && message(v).contains("keeping the running policy")
    });
    let text = message(&err);
    assert!(
        text.contains("cannot read policy") && text.contains("policy.toml"),
        "{err}"
    );
    assert_eq!(
        daemon.count(|v| v["level"] == "ERROR" && v["event"] != "policy_error"),
        0
    );
    // The old policy still applies: a size trigger compacts.
    let before = digest(&wal);
    append(&wal, &wal_text(2000));
    let after_append = digest(&wal);
    daemon.wait_for_log(|v| is_run(v, "w1", "success"));
    assert_eq!(digest(&wal), after_append);
    assert_ne!(before, after_append);
    // Re-created (with a second WAL): reloaded and applied.
    write_wal(d.path(), "other.log", &clean_wal("b", 3));
    let policy =
        wal_table("w1", "wal.log", TRIGGERS, "") + &wal_table("w2", "other.log", TRIGGERS, "");
    write_policy(d.path(), &test_policy(&policy));
    daemon.wait_for_log(|v| v["event"] == "policy" && message(v).contains("reloaded"));
    daemon.wait_for_log(|v| v["event"] == "supervisor" && v["wal"] == "w2");
    assert!(
        daemon
            .logs()
            .iter()
            .all(|v| v["level"] != "ERROR" || v["event"] == "policy_error"),
        "{}",
        daemon.dump()
    );
}

fn chown_nobody(path: &Path) {
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    }
}

/// A backup directory that was fine for the last run and has since become unwritable:
/// the run stops at the backup stage naming the directory; the WAL and earlier backups
/// are untouched and nothing is left behind.
#[test]
fn backup_dir_that_became_unwritable_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let wdir = d.path().join("w");
    let bk = d.path().join("bk");
    fs::create_dir(&wdir).unwrap();
    fs::create_dir(&bk).unwrap();
    let wal = write_wal(&wdir, "wal.log", &wal_text(100));
    walcompactd()
        .arg("compact")
        .arg(&wal)
        .arg("--backup-dir")
        .arg(&bk)
        .assert()
        .success();
    let earlier: Vec<(String, Vec<u8>)> = names(&bk)
        .into_iter()
        .map(|n| {
            let bytes = fs::read(bk.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    assert_eq!(earlier.len(), 1);
    append(&wal, &wal_text(100));
    let content = fs::read(&wal).unwrap();
    for p in [&wdir, &bk] {
        chown_nobody(p);
    }
    for n in names(&wdir) {
        chown_nobody(&wdir.join(n));
    }
    fs::set_permissions(&bk, fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = walcompactd();
    as_nobody(&mut cmd);
    let out = cmd
        .arg("compact")
        .arg(&wal)
        .arg("--backup-dir")
        .arg(&bk)
        .output()
        .unwrap();
    fs::set_permissions(&bk, fs::Permissions::from_mode(0o755)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("backup stage")
            && stderr.contains(&bk.display().to_string())
            && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert_eq!(fs::read(&wal).unwrap(), content, "WAL untouched");
    let left = names(&wdir);
    assert!(
        left.iter()
            .all(|n| !n.ends_with(".tmp") && !n.ends_with(".journal")),
        "{left:?}"
    );
    let now: Vec<(String, Vec<u8>)> = names(&bk)
        .into_iter()
        .map(|n| {
            let bytes = fs::read(bk.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    assert_eq!(now, earlier, "earlier backups intact, nothing added");
    // Writable again: the next run works and keeps the state.
    let before = digest(&wal);
    walcompactd()
        .arg("compact")
        .arg(&wal)
        .arg("--backup-dir")
        .arg(&bk)
        .assert()
        .success();
    assert_eq!(digest(&wal), before);
}
