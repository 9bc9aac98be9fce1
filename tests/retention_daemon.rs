//! The daemon with `[wal.retention]`: a WAL that is only old history (nothing redundant, so
//! compaction alone would reclaim nothing) still triggers, because expirable bytes count as
//! reclaimable; the run archives the old transactions, logs what expired, and the WAL plus
//! its archive verify against the backup.

mod common;

use std::fs;

use common::*;

const DAY: i64 = 86_400;

#[test]
fn old_history_alone_triggers_a_run_that_archives_it() {
    let d = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now().timestamp();
    let mut s = String::new();
    for i in 0..500 {
        let ts = now - 40 * DAY + i;
        s += &stamped("PREPARE", &format!("old{i}"), &format!("{ts}.5"));
        s += &stamped("COMMIT", &format!("old{i}"), &ts.to_string());
    }
    for i in 0..20 {
        s += &stamped("PREPARE", &format!("new{i}"), &now.to_string());
        s += &stamped("COMMIT", &format!("new{i}"), &now.to_string());
    }
    let wal = write_wal(d.path(), "wal.log", &s);
    let plain = compact_json(&wal, &["--dry-run"]);
    assert_eq!(plain["reclaimable_bytes"], 0, "nothing redundant: {plain}");
    let table = wal_table(
        "w1",
        "wal.log",
        "max_size_mb = 0.001\nmin_reclaimable_bytes = 1000",
        "[wal.retention]\nexpire_after_secs = 604800\narchive_keep_days = 30",
    );
    write_policy(d.path(), &test_policy(&table));
    let daemon = Daemon::start(d.path(), "policy.toml");
    let run = daemon.wait_for_log(|v| is_run(v, "w1", "success"));
    drop(daemon);
    assert_eq!(run["expired_transactions"], 500, "{run}");
    let archive = run["archive"].as_str().expect("the archive is logged");
    assert!(fs::metadata(archive).is_ok());
    let now_text = fs::read_to_string(&wal).unwrap();
    assert!(!now_text.contains("\"old") && now_text.matches("\"new").count() == 40);
    walcompactd()
        .args([
            "verify",
            "--against",
            run["backup"].as_str().unwrap(),
            "--archive",
            archive,
        ])
        .arg(&wal)
        .assert()
        .success();
}
