//! Retention through the pipeline (in-process): old finished transactions leave the WAL for
//! an archive written, fsynced and read back before the swap; the new WAL replays to the
//! original minus them; the WAL and the archive together hold every line compaction keeps.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use walcompactd::pipeline::retain::RetentionRequest;
use walcompactd::pipeline::{Request, archive, run};

const DAY: u64 = 86_400;

/// `old` transactions a month old (integer and float timestamps), `new` ones from the last
/// minute, one abandoned PREPARE a month old and one line with a string timestamp.
fn history(dir: &Path, old: u64, new: u64) -> PathBuf {
    let now = chrono::Utc::now().timestamp() as u64;
    let mut s = String::new();
    for i in 0..old {
        let ts = if i % 2 == 0 {
            format!("{}", now - 30 * DAY + i)
        } else {
            format!("{}.25", now - 30 * DAY + i)
        };
        s += &format!(
            "{{\"op\": \"PREPARE\", \"tx_id\": \"old{i}\", \"changes\": {{\"k\": {i}}}, \"timestamp\": {ts}}}\n"
        );
        // Payloads that do not compress away (the full-disk test needs a sizeable archive).
        let h = format!("{:016x}{:016x}", noise(2 * i), noise(2 * i + 1));
        s += &format!(
            "{{\"op\": \"PREPARE\", \"tx_id\": \"old{i}\", \"changes\": {{\"k\": {i}, \"h\": \"{h}\"}}, \"timestamp\": {ts}}}\n"
        );
        s += &format!("{{\"op\": \"COMMIT\", \"tx_id\": \"old{i}\", \"timestamp\": {ts}}}\n");
    }
    s += &format!(
        "{{\"op\": \"COMMIT\", \"tx_id\": \"stringly\", \"timestamp\": \"{}\"}}\n",
        now - 30 * DAY
    );
    s += &format!(
        "{{\"op\": \"PREPARE\", \"tx_id\": \"abandoned\", \"changes\": {{}}, \"timestamp\": {}}}\n",
        now - 30 * DAY
    );
    for i in 0..new {
        s += &format!(
            "{{\"op\": \"PREPARE\", \"tx_id\": \"new{i}\", \"changes\": {{\"k\": {i}}}, \"timestamp\": {}.5}}\n",
            now - 60 + i % 60
        );
        s += &format!(
            "{{\"op\": \"COMMIT\", \"tx_id\": \"new{i}\", \"timestamp\": {}.5}}\n",
            now - 60 + i % 60
        );
    }
    common::write_wal(dir, "wal.log", &s)
}

/// A deterministic pseudo-random number (splitmix64).
fn noise(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn request(wal: &Path, in_flight: Option<u64>) -> Request<'static> {
    let mut req = Request::new(wal, "test");
    req.retention = Some(RetentionRequest {
        expire_after_secs: Some(7 * DAY),
        expire_in_flight_after_secs: in_flight,
        archive_dir: None,
    });
    req
}

fn archived_lines(path: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    archive::read_lines::<walcompactd::pipeline::PipelineError>(path, |l| {
        lines.push(String::from_utf8(l.to_vec()).unwrap());
        Ok(())
    })
    .unwrap();
    lines
}

#[test]
fn a_month_of_history_leaves_for_an_archive_and_the_recent_stays() {
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path(), 300, 100);
    let original = fs::read_to_string(&wal).unwrap();
    let r = run(&request(&wal, None)).unwrap();
    let expired = r.expired.expect("something expired");
    assert_eq!(expired.transactions, 300);
    assert_eq!(
        expired.lines, 600,
        "the deciding PREPARE and the COMMIT of each"
    );
    let archive = r.archive.expect("an archive");
    let lines = archived_lines(&archive);
    assert_eq!(lines.len(), 600);
    // Original bytes, original order: each archived line is a line of the original, in order.
    let mut it = original.lines();
    for l in &lines {
        assert!(it.any(|o| format!("{o}\n") == *l), "{l:?} not in order");
    }
    let now = fs::read_to_string(&wal).unwrap();
    assert!(!now.contains("\"old"), "no old transaction left");
    assert!(
        now.contains("stringly") && now.contains("abandoned"),
        "a string timestamp and an in-flight PREPARE stay"
    );
    assert_eq!(
        now.matches("\"new").count(),
        200,
        "the recent transactions stay whole"
    );
    // The backup plus nothing else replays to the original; the WAL verifies.
    common::walcompactd()
        .arg("verify")
        .arg(&wal)
        .assert()
        .success();
    // Nothing more to expire: a second run changes nothing and writes no archive.
    let again = run(&request(&wal, None)).unwrap();
    assert!(
        again.expired.is_none() && again.archive.is_none(),
        "{again:?}"
    );
}

#[test]
fn an_abandoned_prepare_expires_only_when_asked() {
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path(), 10, 10);
    let r = run(&request(&wal, Some(7 * DAY))).unwrap();
    assert_eq!(r.expired.unwrap().transactions, 11);
    assert!(!fs::read_to_string(&wal).unwrap().contains("abandoned"));
    assert!(
        archived_lines(&r.archive.unwrap())
            .iter()
            .any(|l| l.contains("abandoned"))
    );
}

/// The archive's filesystem is full (through the binary): the run fails with the reason,
/// the WAL is as it was, and neither an archive, its partial, a temp nor a backup is left.
#[test]
fn a_full_disk_while_the_archive_is_written_changes_nothing() {
    let Some(tiny) = common::TinyFs::mount("64k") else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let wal = history(d.path(), 3000, 10);
    let before = fs::read(&wal).unwrap();
    let week = (7 * DAY).to_string();
    let out = common::walcompactd()
        .args(["compact", "--expire-after", &week, "--archive-dir"])
        .arg(tiny.path())
        .arg(&wal)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("No space left") && stderr.contains(&tiny.path().display().to_string()),
        "{stderr}"
    );
    assert_eq!(fs::read(&wal).unwrap(), before);
    assert_eq!(
        fs::read_dir(tiny.path()).unwrap().count(),
        0,
        "no archive or partial left"
    );
    assert_eq!(common::names(d.path()), ["wal.log", "wal.log.compact.lock"]);
    // With room, the same run completes.
    assert!(run(&request(&wal, None)).unwrap().archive.is_some());
}
