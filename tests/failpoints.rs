//! Fault injection through the real binary (built with `--features failpoints`): each
//! failure leaves the WAL replaying to its original state, no temp files, backups intact,
//! and the next compaction succeeds.

mod common;

use std::fs;
use std::path::Path;

use common::*;

fn compact_with(wal: &Path, failpoints: &str) -> std::process::Output {
    walcompactd()
        .env("FAILPOINTS", failpoints)
        .arg("compact")
        .arg(wal)
        .output()
        .unwrap()
}

fn assert_intact(dir: &Path, wal: &Path, original_digest: &str) {
    assert_eq!(digest(wal), original_digest);
    let left = names(dir);
    assert!(
        left.iter()
            .all(|n| !n.contains(".tmp") && !n.ends_with(".journal")),
        "{left:?}"
    );
    walcompactd().arg("compact").arg(wal).assert().success();
    assert_eq!(digest(wal), original_digest);
}

#[test]
fn verification_failure_rolls_back_with_exit_1() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(100));
    let original = fs::read(&wal).unwrap();
    let before = digest(&wal);
    let out = compact_with(&wal, "verify::mismatch=return");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("verification failed"));
    assert_eq!(fs::read(&wal).unwrap(), original, "WAL untouched");
    assert_intact(d.path(), &wal, &before);
}

#[test]
fn enospc_mid_write_removes_the_temp() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(100));
    let before = digest(&wal);
    let out = compact_with(&wal, "compact::write::enospc=return");
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No space left on device"));
    assert_intact(d.path(), &wal, &before);
}

/// A COMMIT appended during an online compaction for a transaction whose PREPARE the plan
/// dropped (it was ABORTed) must not be copied behind the compacted prefix: the run refuses,
/// changes nothing, and the next run compacts it exactly.
#[test]
fn online_refuses_a_commit_whose_prepare_was_compacted_away() {
    let d = tempfile::tempdir().unwrap();
    let content = prepare("t", 7) + &abort("t") + &redundant_wal(200);
    let content = content[..content.rfind('\n').unwrap() + 1].to_string();
    let wal = write_wal(d.path(), "wal.log", &content);
    let child = std::process::Command::new(bin())
        .env("FAILPOINTS", "online::catch_up::delay=sleep(3000)")
        .args(["compact", "--online"])
        .arg(&wal)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let temp = d.path().join("wal.log.compact.tmp");
    assert!(
        wait_until(std::time::Duration::from_secs(60), || temp.exists()),
        "compaction never wrote its temp file"
    );
    let mut w =
        walcompactd::writer::WalWriter::open(&wal, walcompactd::writer::Durability::None).unwrap();
    w.append(commit("t").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("ABORTed earlier") && stderr.contains("retry later"),
        "{stderr}"
    );
    let full = content + &commit("t");
    assert_eq!(fs::read_to_string(&wal).unwrap(), full, "nothing replaced");
    let before = digest(&wal);
    walcompactd()
        .args(["compact", "--online"])
        .arg(&wal)
        .assert()
        .success();
    assert_eq!(
        digest(&wal),
        before,
        "the next run keeps t committed with its data"
    );
}
