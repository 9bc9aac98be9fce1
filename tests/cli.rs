//! End-to-end tests of every CLI command through the real binary, including bad input.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;
use predicates::prelude::*;

#[test]
fn status_reports_the_real_figures() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &(redundant_wal(10) + "\n"));
    // A "\n" after the torn tail completes it into a line that is not JSON: corrupt.
    let out = walcompactd()
        .args(["status", "--json"])
        .arg(&wal)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "a corrupt line makes status exit 3"
    );
    let v = stdout_json(&out);
    assert_eq!(v["corrupt_lines"], 1);
    assert_eq!(v["corrupt"][0]["line"], 25);

    let wal = write_wal(d.path(), "ok.log", &redundant_wal(10));
    let out = walcompactd()
        .args(["status", "--json"])
        .arg(&wal)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["size_bytes"], fs::metadata(&wal).unwrap().len());
    assert_eq!(v["lines"], 24);
    assert_eq!(v["entries"]["PREPARE"], 14);
    assert_eq!(v["entries"]["COMMIT"], 8);
    assert_eq!(v["entries"]["ABORT"], 2);
    assert_eq!(v["transactions"]["committed"], 6);
    assert_eq!(v["transactions"]["aborted"], 2);
    assert_eq!(v["transactions"]["in_flight"], 2);
    assert_eq!(v["torn_tail_bytes"], "{\"op\": \"COMMIT\", \"tx_".len());
    // Reclaimable is what compaction removes: prove it by compacting.
    let before = fs::metadata(&wal).unwrap().len();
    walcompactd().arg("compact").arg(&wal).assert().success();
    let after = fs::metadata(&wal).unwrap().len();
    assert_eq!(v["reclaimable_bytes"], before - after);
}

#[test]
fn compact_keeps_the_replay_state_and_makes_a_linked_backup() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(200));
    fs::set_permissions(&wal, fs::Permissions::from_mode(0o640)).unwrap();
    let original = fs::read(&wal).unwrap();
    let ino = fs::metadata(&wal).unwrap().ino();
    let before = digest(&wal);
    let v = compact_json(&wal, &[]);
    assert_eq!(v["outcome"], "success");
    assert_eq!(v["digest"], before.as_str());
    let backup = std::path::PathBuf::from(v["backup"].as_str().unwrap());
    assert!(
        backup
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("wal_backup_")
    );
    assert_eq!(v["backup_linked"], true);
    assert_eq!(
        fs::metadata(&backup).unwrap().ino(),
        ino,
        "backup is the original inode"
    );
    assert_eq!(
        fs::read(&backup).unwrap(),
        original,
        "backup is byte-identical"
    );
    assert_eq!(digest(&wal), before);
    assert!(fs::metadata(&wal).unwrap().len() < original.len() as u64);
    assert_eq!(
        fs::metadata(&wal).unwrap().mode() & 0o777,
        0o640,
        "mode preserved"
    );
    walcompactd()
        .args(["verify", "--against"])
        .arg(&backup)
        .arg(&wal)
        .assert()
        .success();
    // No temp or journal is left behind.
    let left = names(d.path());
    assert!(
        left.iter()
            .all(|n| !n.ends_with(".tmp") && !n.ends_with(".journal")),
        "{left:?}"
    );
}

#[test]
fn backup_dir_on_another_filesystem_is_a_copy() {
    let d = tempfile::tempdir().unwrap();
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() || fs::metadata(shm).unwrap().dev() == fs::metadata(d.path()).unwrap().dev() {
        eprintln!("SKIPPED: no second filesystem at /dev/shm");
        return;
    }
    let other = tempfile::tempdir_in(shm).unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(50));
    let original = fs::read(&wal).unwrap();
    let out = walcompactd()
        .args(["compact", "--json", "--backup-dir"])
        .arg(other.path())
        .arg(&wal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["backup_linked"], false);
    assert_eq!(fs::read(v["backup"].as_str().unwrap()).unwrap(), original);
}

#[test]
fn nothing_reclaimable_touches_nothing() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &(prepare("a", 1) + &commit("a")));
    let mtime = fs::metadata(&wal).unwrap().mtime_nsec();
    walcompactd()
        .arg("compact")
        .arg(&wal)
        .assert()
        .success()
        .stdout(predicate::str::contains("nothing to reclaim"));
    assert_eq!(
        names(d.path()),
        ["wal.log"],
        "no lock, backup or temp created"
    );
    assert_eq!(fs::metadata(&wal).unwrap().mtime_nsec(), mtime);
}

#[test]
fn dry_run_reports_each_rule_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let content = "\n".to_string() + &redundant_wal(20);
    let wal = write_wal(d.path(), "wal.log", &content);
    let out = walcompactd()
        .args(["compact", "--dry-run", "--json"])
        .arg(&wal)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = stdout_json(&out);
    let rules: Vec<&str> = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        [
            "blank_line",
            "redundant_final",
            "superseded_prepare",
            "aborted_prepare",
            "superseded_in_flight_prepare"
        ]
    );
    let sum: u64 = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(v["reclaimable_bytes"], sum);
    assert_eq!(fs::read_to_string(&wal).unwrap(), content);
    assert_eq!(names(d.path()), ["wal.log"]);
}

#[test]
fn corrupt_input_is_refused_with_line_and_offset_in_refuse_mode() {
    let d = tempfile::tempdir().unwrap();
    let good = prepare("a", 1) + &prepare("a", 2);
    for (bad, what) in [
        ("[1, 2]", "array"),
        ("not json", "invalid JSON"),
        ("42", "number"),
    ] {
        let content = format!("{good}{bad}\n{}", commit("a"));
        let wal = write_wal(d.path(), "wal.log", &content);
        walcompactd()
            .arg("compact")
            .arg(&wal)
            .args(["--corrupt-lines", "refuse"])
            .assert()
            .code(3)
            .stderr(
                predicate::str::contains(format!("line 3 (byte offset {})", good.len()))
                    .and(predicate::str::contains(what)),
            );
        assert_eq!(fs::read_to_string(&wal).unwrap(), content, "file untouched");
        assert_eq!(names(d.path()), ["wal.log"], "nothing created");
    }
    let mut bytes = good.clone().into_bytes();
    bytes.extend_from_slice(b"{\"op\": \"COMMIT\", \"tx_id\": \"\xff\"}\n");
    fs::write(d.path().join("wal.log"), &bytes).unwrap();
    walcompactd()
        .arg("compact")
        .arg(d.path().join("wal.log"))
        .args(["--corrupt-lines", "refuse"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("invalid UTF-8"));
    walcompactd()
        .arg("verify")
        .arg(d.path().join("wal.log"))
        .assert()
        .code(3)
        .stdout(predicate::str::contains("line 3"));
}

/// The default `corrupt_lines = "keep"`: every corrupt line stays verbatim where it was, its
/// neighbours follow the rules as if it were not there, and status and the report count it.
#[test]
fn corrupt_lines_are_kept_in_place_by_default() {
    let d = tempfile::tempdir().unwrap();
    let bad = ["[1, 2]", "not json", "{\"op\": \"COMM"];
    let content = format!(
        "{}{}\n{}{}\n{}{}\n",
        prepare("a", 1),
        bad[0],
        prepare("a", 2),
        bad[1],
        commit("a") + &commit("a"),
        bad[2]
    );
    let wal = write_wal(d.path(), "wal.log", &content);
    let report = compact_json(&wal, &[]);
    assert_eq!(report["corrupt_lines"], 3);
    assert_eq!(report["quarantined_lines"], 0);
    let want = format!(
        "{}\n{}{}\n{}{}\n",
        bad[0],
        prepare("a", 2),
        bad[1],
        commit("a"),
        bad[2]
    );
    assert_eq!(fs::read_to_string(&wal).unwrap(), want);
    let backup = report["backup"].as_str().unwrap();
    walcompactd()
        .args(["verify", "--against", backup])
        .arg(&wal)
        .assert()
        .code(0);
    let status = walcompactd()
        .args(["status", "--json"])
        .arg(&wal)
        .output()
        .unwrap();
    let v = stdout_json(&status);
    assert_eq!(v["corrupt_lines"], 3);
    assert_eq!(v["corrupt"][1]["line"], 3);
    assert_eq!(v["reclaimable_bytes"], 0, "a second run has nothing to do");
}

#[test]
fn missing_directory_and_unreadable_wal_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    walcompactd()
        .arg("compact")
        .arg(d.path().join("nope.log"))
        .assert()
        .code(4)
        .stderr(predicate::str::contains("nope.log: WAL not found"));
    walcompactd()
        .arg("status")
        .arg(d.path())
        .assert()
        .code(4)
        .stderr(predicate::str::contains("is a directory"));
    assert!(names(d.path()).is_empty(), "nothing created");
    walcompactd()
        .arg("compact")
        .arg(d.path().join("x.log"))
        .arg("--backup-dir")
        .arg(d.path().join("no-such-dir"))
        .assert()
        .code(4);
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(5));
    walcompactd()
        .arg("compact")
        .arg(&wal)
        .arg("--backup-dir")
        .arg(d.path().join("no-such-dir"))
        .assert()
        .code(4)
        .stderr(predicate::str::contains("backup directory does not exist"));
    assert_eq!(names(d.path()), ["wal.log"]);
}

#[test]
fn unreadable_wal_and_read_only_directory_change_nothing() {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(20));
    let content = fs::read(&wal).unwrap();
    let mut cmd = walcompactd();
    if !as_nobody(&mut cmd) && fs::File::open(&wal).is_ok() {
        // Not root: make it unreadable for ourselves instead.
        fs::set_permissions(&wal, fs::Permissions::from_mode(0o000)).unwrap();
    } else {
        fs::set_permissions(&wal, fs::Permissions::from_mode(0o600)).unwrap();
    }
    cmd.arg("compact")
        .arg(&wal)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("Permission denied"));
    // Readable WAL, but the directory is not writable for the user: nothing is created.
    fs::set_permissions(&wal, fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = walcompactd();
    if !as_nobody(&mut cmd) {
        fs::set_permissions(d.path(), fs::Permissions::from_mode(0o555)).unwrap();
    }
    cmd.arg("compact")
        .arg(&wal)
        .assert()
        .code(4)
        .stderr(predicate::str::contains("Permission denied"));
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(fs::read(&wal).unwrap(), content);
    assert_eq!(names(d.path()), ["wal.log"]);
}

#[test]
fn a_second_compaction_says_who_holds_the_lock() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(20));
    let _held = walcompactd::pipeline::lock::acquire(&wal, "test holder").unwrap();
    walcompactd()
        .arg("compact")
        .arg(&wal)
        .assert()
        .code(5)
        .stderr(
            predicate::str::contains("another compaction holds the lock")
                .and(predicate::str::contains("test holder")),
        );
}

#[test]
fn backup_restore_and_prune() {
    let d = tempfile::tempdir().unwrap();
    let bdir = d.path().join("backups");
    fs::create_dir(&bdir).unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(30));
    let original = fs::read(&wal).unwrap();
    let out = walcompactd()
        .args(["backup", "--json", "--backup-dir"])
        .arg(&bdir)
        .arg(&wal)
        .output()
        .unwrap();
    assert!(out.status.success());
    let first = stdout_json(&out)["backup"].as_str().unwrap().to_string();
    assert_eq!(fs::read(&first).unwrap(), original);
    // A second backup in the same second gets a suffix instead of overwriting.
    let second = stdout_json(
        &walcompactd()
            .args(["backup", "--json", "--backup-dir"])
            .arg(&bdir)
            .arg(&wal)
            .output()
            .unwrap(),
    )["backup"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(first, second);

    walcompactd()
        .arg("compact")
        .arg(&wal)
        .arg("--backup-dir")
        .arg(&bdir)
        .assert()
        .success();
    let compacted = fs::read(&wal).unwrap();
    assert_ne!(compacted, original);
    let out = walcompactd()
        .args(["restore", "--json", "--backup-dir"])
        .arg(&bdir)
        .arg(&wal)
        .arg(&first)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(&wal).unwrap(), original, "restored byte for byte");
    let prev = stdout_json(&out)["previous_backup"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        fs::read(&prev).unwrap(),
        compacted,
        "the replaced WAL was backed up first"
    );
    assert_eq!(
        fs::read(&first).unwrap(),
        original,
        "the backup itself is unchanged"
    );
    assert_ne!(
        fs::metadata(&first).unwrap().ino(),
        fs::metadata(&wal).unwrap().ino(),
        "restore copies, never links"
    );

    // Backups named as old as 2020 are pruned down to keep_last.
    for n in 0..3 {
        fs::write(
            bdir.join(format!("wal_backup_2020010{}_000000.log", n + 1)),
            "x",
        )
        .unwrap();
    }
    let out = walcompactd()
        .args([
            "prune-backups",
            "--json",
            "--keep-days",
            "7",
            "--keep-last",
            "4",
            "--backup-dir",
        ])
        .arg(&bdir)
        .arg(&wal)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["removed"].as_array().unwrap().len(), 3);
    assert_eq!(v["kept"].as_array().unwrap().len(), 4);
}

#[test]
fn verify_against_a_different_wal_fails() {
    let d = tempfile::tempdir().unwrap();
    let a = write_wal(d.path(), "a.log", &(prepare("t", 1) + &commit("t")));
    let b = write_wal(d.path(), "b.log", &(prepare("t", 2) + &commit("t")));
    walcompactd()
        .arg("verify")
        .arg(&a)
        .arg("--against")
        .arg(&b)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("DIFFERENT"));
    walcompactd()
        .arg("verify")
        .arg(&a)
        .arg("--against")
        .arg(&a)
        .assert()
        .success();
}

#[test]
fn usage_errors_exit_2() {
    walcompactd().arg("compact").assert().code(2);
    walcompactd().arg("frobnicate").assert().code(2);
}

/// Every member of a deciding PREPARE counts: a copy of the compacted WAL with one digit
/// changed in `changes`, `data`, `timestamp` or a member this version does not know replays
/// to another state than the backup (`verify --against` exits 1); the copy as compacted
/// replays to the same (exit 0).
#[test]
fn verify_against_sees_a_changed_digit_in_any_member_of_a_deciding_prepare() {
    let d = tempfile::tempdir().unwrap();
    let prepare = r#"{"op": "PREPARE", "tx_id": "a", "changes": {"acct0": {"balance": 200}}, "data": {"amount": 7}, "timestamp": 1796029100.5, "extra": [3]}"#;
    let content = format!("{prepare}\n{prepare}\n{}", commit("a"));
    let wal = write_wal(d.path(), "wal.log", &content);
    let report = compact_json(&wal, &[]);
    let backup = report["backup"].as_str().unwrap();
    let compacted = fs::read_to_string(&wal).unwrap();
    let verify = |text: &str| {
        let copy = write_wal(d.path(), "copy.log", text);
        walcompactd()
            .args(["verify", "--against", backup])
            .arg(&copy)
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(verify(&compacted), Some(0));
    for (from, to) in [
        ("200", "999"),
        ("7}", "8}"),
        ("100.5", "100.6"),
        ("[3]", "[4]"),
    ] {
        let changed = compacted.replacen(from, to, 1);
        assert_ne!(changed, compacted, "{from}");
        assert_eq!(verify(&changed), Some(1), "{from} -> {to}");
    }
}
