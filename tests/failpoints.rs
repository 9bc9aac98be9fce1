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
