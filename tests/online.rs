//! Online-mode guarantees beside the stress test: a clean refusal when writers hold the lock
//! too long, and a rollback after the swap that keeps every line appended since.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use walcompactd::pipeline::{self, Guard, Online, PipelineError, Request};
use walcompactd::writer::{Durability, WalWriter};

#[test]
fn lock_timeout_aborts_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(100));
    let clean = fs::read(&wal).unwrap();
    let lock = hold_writer_lock(&wal);
    walcompactd()
        .args(["compact", "--online", "--lock-timeout-ms", "300"])
        .arg(&wal)
        .assert()
        .code(5)
        .stderr(predicates::str::contains(
            "writers held the lock for more than 300 ms",
        ));
    assert_eq!(fs::read(&wal).unwrap(), clean, "WAL untouched");
    let left = names(d.path());
    assert!(
        left.iter()
            .all(|n| !n.contains(".tmp") && !n.ends_with(".journal")),
        "{left:?}"
    );
    lock.unlock().unwrap();
    walcompactd()
        .args(["compact", "--online"])
        .arg(&wal)
        .assert()
        .success();
}

#[test]
fn rollback_after_an_online_swap_keeps_lines_appended_since() {
    let d = tempfile::tempdir().unwrap();
    let seed = wal_text(100);
    let wal = write_wal(d.path(), "wal.log", &seed);
    let appended = prepare("late", 1) + &commit("late");
    // The application's check runs after the swap: a writer appends, then the check fails.
    let check = |path: &std::path::Path, _backup: &std::path::Path| -> Result<(), String> {
        let mut w = WalWriter::open(path, Durability::None).map_err(|e| e.to_string())?;
        for line in appended.lines() {
            w.append(line.as_bytes()).map_err(|e| e.to_string())?;
        }
        Err("application check says no".into())
    };
    let mut req = Request::new(&wal, "test");
    req.guard = Guard::Online(Online {
        lock_timeout: Duration::from_secs(5),
    });
    req.check = Some(&check);
    match pipeline::run(&req) {
        Err(PipelineError::CheckFailed { detail, .. }) => {
            assert_eq!(detail, "application check says no")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fs::read_to_string(&wal).unwrap(),
        seed + &appended,
        "original bytes back, appended lines kept"
    );
    let left = names(d.path());
    assert!(
        left.iter()
            .all(|n| !n.contains(".tmp") && !n.ends_with(".journal")),
        "{left:?}"
    );
}

/// `--mode online` is `--online`; a lock timeout means nothing offline and is refused.
#[test]
fn mode_online_is_the_online_flag_and_offline_takes_no_lock_timeout() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(100));
    let lock = hold_writer_lock(&wal);
    walcompactd()
        .args(["compact", "--mode", "online", "--lock-timeout-ms", "300"])
        .arg(&wal)
        .assert()
        .code(5);
    walcompactd()
        .args(["compact", "--mode", "offline", "--lock-timeout-ms", "300"])
        .arg(&wal)
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "--mode online and --mode lease only",
        ));
    walcompactd()
        .args(["compact", "--mode", "sideways"])
        .arg(&wal)
        .assert()
        .code(2)
        .stderr(predicates::str::contains("offline, online"));
    drop(lock);
    walcompactd()
        .args(["compact", "--mode", "online"])
        .arg(&wal)
        .assert()
        .success();
}

/// `restore --mode online` keeps protocol writers out through the same guard: it waits for
/// their lock and gives up cleanly (exit 5, nothing replaced) when they hold it too long.
#[test]
fn restore_in_online_mode_waits_for_the_writers_lock() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(50));
    let backup = d.path().join("old.log");
    fs::write(&backup, clean_wal("old", 5)).unwrap();
    let before = fs::read(&wal).unwrap();
    let lock = hold_writer_lock(&wal);
    walcompactd()
        .args(["restore", "--mode", "online", "--lock-timeout-ms", "300"])
        .arg(&wal)
        .arg(&backup)
        .assert()
        .code(5);
    assert_eq!(fs::read(&wal).unwrap(), before, "nothing replaced");
    drop(lock);
    walcompactd()
        .args(["restore", "--mode", "online"])
        .arg(&wal)
        .arg(&backup)
        .assert()
        .success();
    assert_eq!(fs::read(&wal).unwrap(), fs::read(&backup).unwrap());
}
