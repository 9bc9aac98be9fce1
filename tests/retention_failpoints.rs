//! A crash or an error at every step of a run with retention (built with `--features
//! failpoints`): after `walcompactd recover` there is either no archive and the original WAL,
//! or one archive and the new WAL — never a WAL missing lines no archive holds, never two
//! archives of the same lines — and the next run completes exactly.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use walcompactd::rules::Retention;

const DAY: i64 = 86_400;
const OLD: u64 = 40;

/// `OLD` transactions a month old (each prepared twice), 10 recent ones.
fn history(dir: &Path) -> PathBuf {
    let now = chrono::Utc::now().timestamp();
    let mut s = String::new();
    for i in 0..OLD {
        let ts = now - 30 * DAY + i as i64;
        for v in [1, 2] {
            s += &format!(
                "{{\"op\": \"PREPARE\", \"tx_id\": \"old{i}\", \"changes\": {{\"v\": {v}}}, \"timestamp\": {ts}.5}}\n"
            );
        }
        s += &format!("{{\"op\": \"COMMIT\", \"tx_id\": \"old{i}\", \"timestamp\": {ts}}}\n");
    }
    for i in 0..10 {
        s += &format!(
            "{{\"op\": \"PREPARE\", \"tx_id\": \"new{i}\", \"changes\": {{}}, \"timestamp\": {now}}}\n"
        );
        s += &format!("{{\"op\": \"COMMIT\", \"tx_id\": \"new{i}\", \"timestamp\": {now}}}\n");
    }
    write_wal(dir, "wal.log", &s)
}

fn digest(bytes: &[u8], r: Retention) -> [u8; 32] {
    replay_digest(bytes, r)
}

fn week() -> Retention {
    Retention::at(chrono::Utc::now().timestamp(), Some(7 * DAY as u64), None)
}

fn archives(dir: &Path) -> Vec<PathBuf> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with("wal_archive_"))
        .map(|n| dir.join(n))
        .collect()
}

fn archived_lines(path: &Path) -> u64 {
    walcompactd::pipeline::archive::read_back(path)
        .unwrap()
        .lines
}

fn compact(wal: &Path, failpoints: &str) -> std::process::Output {
    Command::new(bin())
        .env_remove("RUST_LOG")
        .env("FAILPOINTS", failpoints)
        .args(["compact", "--expire-after", &(7 * DAY).to_string()])
        .arg(wal)
        .output()
        .unwrap()
}

/// The invariant after recovery: no archive and the original, or one whole archive and the
/// original minus what expired.
fn assert_one_or_the_other(wal: &Path, original: &[u8], point: &str) {
    let dir = wal.parent().unwrap();
    let now = fs::read(wal).unwrap();
    match archives(dir).as_slice() {
        [] => assert_eq!(
            digest(&now, Retention::NONE),
            digest(original, Retention::NONE),
            "{point}: no archive, so the WAL must still be the original"
        ),
        [one] => {
            assert_eq!(archived_lines(one), 2 * OLD, "{point}: the whole archive");
            assert_eq!(
                digest(&now, Retention::NONE),
                digest(original, week()),
                "{point}: an archive, so the WAL is the original minus what it holds"
            );
        }
        more => panic!("{point}: two archives of the same lines: {more:?}"),
    }
    assert!(
        names(dir).iter().all(|n| !n.ends_with(".partial")
            && !n.contains(".tmp")
            && !n.ends_with(".journal")
            && !n.ends_with(".late")),
        "{point}: leftovers {:?}",
        names(dir)
    );
}

/// After a failed run and `recover`: the next run completes exactly, one archive in all
/// (the old history's lines), the WAL replaying as the original minus that history.
fn next_run_completes_exactly(dir: &Path, wal: &Path, original: &[u8], point: &str) {
    assert!(compact(wal, "").status.success(), "{point}: the next run");
    let all = archives(dir);
    assert_eq!(all.len(), 1, "{point}: {all:?}");
    assert_eq!(archived_lines(&all[0]), 2 * OLD, "{point}");
    assert_eq!(
        digest(&fs::read(wal).unwrap(), Retention::NONE),
        digest(original, week()),
        "{point}"
    );
}

#[test]
fn every_retention_step_survives_a_crash_or_an_error() {
    use std::os::unix::process::ExitStatusExt;
    for (point, crash) in [
        ("journal::rename::crash", true),
        ("archive::write::crash", true),
        ("archive::claim::crash", true),
        ("archive::claim::error", false),
        ("archive::fsync::crash", true),
        ("archive::fsync::error", false),
        ("archive::fsync_dir::error", false),
        ("archive::finish::crash", true),
        ("archive::read::error", false),
        ("compact::before_fsync::crash", true),
        ("swap::before_rename::crash", true),
        ("swap::exchange::crash", true),
        ("lease::before_merge::crash", true),
        ("swap::after_rename::crash", true),
        ("swap::after_rename::error", false),
    ] {
        let d = tempfile::tempdir().unwrap();
        let wal = history(d.path());
        let original = fs::read(&wal).unwrap();
        let out = compact(&wal, &format!("{point}=return"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        match crash {
            true => assert_eq!(out.status.signal(), Some(9), "{point}: {stderr}"),
            false => assert_ne!(out.status.code(), Some(0), "{point}: {stderr}"),
        }
        walcompactd().arg("recover").arg(&wal).assert().success();
        assert_one_or_the_other(&wal, &original, point);
        next_run_completes_exactly(d.path(), &wal, &original, point);
    }
}

/// The wall clock jumps back two months between runs, then forward again: the cutoff moves
/// with it, so nothing more expires while it is back (nothing newer ever does), the archive
/// of the first run stays, and each run's WAL replays as it must.
#[test]
fn a_clock_that_jumps_backwards_between_runs_expires_nothing_new() {
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path());
    let original = fs::read(&wal).unwrap();
    assert!(compact(&wal, "").status.success());
    let after_first = fs::read(&wal).unwrap();
    assert_eq!(archives(d.path()).len(), 1);
    let back = chrono::Utc::now().timestamp() - 60 * DAY;
    let out = compact(&wal, &format!("retention::now=return({back})"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&wal).unwrap(), after_first, "nothing more expired");
    assert_eq!(archives(d.path()).len(), 1, "no new archive");
    assert!(compact(&wal, "").status.success());
    assert_eq!(fs::read(&wal).unwrap(), after_first);
    assert_eq!(
        digest(&after_first, Retention::NONE),
        digest(&original, week())
    );
}

/// Lease mode with retention: a line appended during the run for a transaction the run
/// expires would have kept it (a line after its final) — the run gives up, its archive is
/// removed, the WAL keeps every line, and the next run decides afresh.
#[test]
fn a_line_appended_for_an_expiring_transaction_makes_the_run_give_up() {
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path());
    let original = fs::read(&wal).unwrap();
    let child = Command::new(bin())
        .env_remove("RUST_LOG")
        .env("FAILPOINTS", "online::catch_up::delay=sleep(1500)")
        .args([
            "compact",
            "--mode",
            "lease",
            "--expire-after",
            &(7 * DAY).to_string(),
        ])
        .arg(&wal)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let temp = PathBuf::from(format!("{}.compact.tmp", wal.display()));
    assert!(wait_until(DEADLINE, || temp.exists()), "no temp");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let late =
        "{\"op\": \"PREPARE\", \"tx_id\": \"old3\", \"changes\": {\"v\": 3}, \"timestamp\": 1}\n";
    append(&wal, late);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("which this run expires"), "{stderr}");
    assert_eq!(
        fs::read(&wal).unwrap(),
        [original, late.as_bytes().to_vec()].concat()
    );
    assert!(archives(d.path()).is_empty(), "its archive removed");
    // old3 now has a line after its final: it stays; the rest expire.
    assert!(compact(&wal, "").status.success());
    assert!(
        String::from_utf8(fs::read(&wal).unwrap())
            .unwrap()
            .contains("\"old3\"")
    );
}

/// The archive is written beside the compaction: held back here until the temp is written,
/// fsynced and verified, then the run crashes (both files half-way: a partial archive and a
/// complete temp) or fails its verification while the archive is still being written. Either
/// way the run never swaps: after recovery there is no archive and the original WAL, and the
/// next run completes.
#[test]
fn a_crash_or_an_error_beside_an_unfinished_archive() {
    use std::os::unix::process::ExitStatusExt;
    let hold_back = "archive::write::delay=sleep(1000)";
    for (point, crash) in [
        ("compact::archive_pending::crash", true),
        ("verify::digest::mismatch", false),
    ] {
        let d = tempfile::tempdir().unwrap();
        let wal = history(d.path());
        let original = fs::read(&wal).unwrap();
        let out = compact(&wal, &format!("{hold_back};{point}=return"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if crash {
            assert_eq!(out.status.signal(), Some(9), "{point}: {stderr}");
            let left = names(d.path());
            assert!(
                left.iter().any(|n| n.ends_with(".partial")),
                "{point}: the archive was unfinished at the crash: {left:?}"
            );
            assert!(
                left.iter().any(|n| n.ends_with(".compact.tmp")),
                "{point}: {left:?}"
            );
        } else {
            assert_ne!(out.status.code(), Some(0), "{point}: {stderr}");
        }
        walcompactd().arg("recover").arg(&wal).assert().success();
        assert_one_or_the_other(&wal, &original, point);
        assert!(
            archives(d.path()).is_empty(),
            "{point}: the run never swapped"
        );
        assert_eq!(fs::read(&wal).unwrap(), original, "{point}");
        next_run_completes_exactly(d.path(), &wal, &original, point);
    }
}
