//! Issue-3 safety guarantees through the real binary: I/O errors mid-write, the free-space
//! precheck on a real full filesystem, and recovery of each interrupted journal phase.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;
use walcompactd::pipeline::journal::{self, Journal, Phase};

/// A write error in the middle of the temp file (EFBIG from a real RLIMIT_FSIZE): the temp
/// is removed, the journal cleared, the WAL untouched, and the next run succeeds.
#[test]
fn io_error_mid_write_leaves_the_wal_untouched() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(3000));
    let original = fs::read(&wal).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("compact").arg(&wal);
    // The new WAL is ~150 KiB; lock and journal files are far below this limit.
    let limit: libc::rlim_t = 64 * 1024;
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("compact stage: write") && stderr.contains("wal.log.compact.tmp"),
        "{stderr}"
    );
    assert_eq!(fs::read(&wal).unwrap(), original);
    let left = names(d.path());
    assert!(
        left.iter()
            .all(|n| !n.contains(".tmp") && !n.ends_with(".journal")),
        "{left:?}"
    );
    walcompactd().arg("compact").arg(&wal).assert().success();
}

#[test]
fn a_full_filesystem_is_refused_before_writing() {
    let Some(fs_) = TinyFs::mount("1m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    };
    let wal = write_wal(fs_.path(), "wal.log", &redundant_wal(2000));
    // Fill the filesystem but for 16 KiB: room for the lock file, not for the new WAL.
    let filler = fs_.path().join("filler");
    let free = walcompactd::fsutil::available_bytes(fs_.path()).unwrap();
    fs::write(&filler, vec![b'x'; (free - 16 * 1024) as usize]).unwrap();
    let original = fs::read(&wal).unwrap();
    walcompactd()
        .arg("compact")
        .arg(&wal)
        .assert()
        .code(4)
        .stderr(predicates::str::contains("not enough free space"));
    assert_eq!(fs::read(&wal).unwrap(), original);
    let left = names(fs_.path());
    assert!(
        left.iter()
            .all(|n| !n.contains(".tmp") && !n.ends_with(".journal")),
        "{left:?}"
    );
    fs::remove_file(&filler).unwrap();
    walcompactd().arg("compact").arg(&wal).assert().success();
}

fn journal(wal: &Path, phase: Phase, temp_exists: bool, backup: Option<&Path>) {
    let temp = walcompactd::fsutil::sibling(wal, journal::TEMP_SUFFIX);
    if temp_exists {
        fs::write(&temp, "partial").unwrap();
    }
    let j = Journal {
        phase,
        mode: Some(walcompactd::pipeline::Mode::Offline),
        temp,
        backup: backup.map(Path::to_path_buf),
        original_digest: Some(digest(backup.unwrap_or(wal))),
        pid: 1,
        len_at_swap: None,
        quarantine: None,
        temp_ino: None,
        wal_ino: None,
        archive: None,
    };
    journal::write(wal, &j).unwrap();
}

fn recover(wal: &Path) -> String {
    let out = walcompactd()
        .args(["recover", "--json"])
        .arg(wal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["recovered"].as_str().unwrap().to_string()
}

#[test]
fn recovery_finishes_or_undoes_each_phase() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(50));
    let original = fs::read(&wal).unwrap();

    journal(&wal, Phase::Writing, true, None);
    assert_eq!(recover(&wal), "DiscardedTemp");
    assert_eq!(fs::read(&wal).unwrap(), original);

    journal(&wal, Phase::Swapping, true, None);
    assert_eq!(
        recover(&wal),
        "DiscardedTemp",
        "temp still there: the rename never happened"
    );

    journal(&wal, Phase::Swapping, false, None);
    assert_eq!(recover(&wal), "CompletedSwap");

    fs::write(walcompactd::fsutil::sibling(&wal, ".compact.tmp"), "stale").unwrap();
    assert!(recover(&wal).starts_with("RemovedLeftovers"));
    assert_eq!(recover(&wal), "Nothing");
    assert_eq!(names(d.path()), ["wal.log", "wal.log.compact.lock"]);

    // Rolling back: the WAL is the compacted one; recovery restores the backup's bytes.
    let backup = d.path().join("wal_backup_20260101_000000.log");
    fs::write(&backup, &original).unwrap();
    walcompactd().arg("compact").arg(&wal).assert().success();
    // The compacted WAL replays to the same state as the backup, but the application's
    // check rejected it: recovery must put the backup's bytes back, not trust the digest.
    assert_eq!(digest(&wal), digest(&backup));
    assert_ne!(fs::read(&wal).unwrap(), original);
    journal(&wal, Phase::RollingBack, false, Some(&backup));
    assert_eq!(recover(&wal), "FinishedRollback");
    assert_eq!(fs::read(&wal).unwrap(), original);
    // A rollback that had completed is left alone.
    journal(&wal, Phase::RollingBack, false, Some(&backup));
    assert_eq!(recover(&wal), "FinishedRollback");
    assert_eq!(fs::read(&wal).unwrap(), original);
}

/// Recovery of a run that never swapped removes that run's backup (a hard link, or a copy
/// the WAL still begins with); after a swap, or when the backup holds bytes the WAL lost,
/// the backup stays.
#[test]
fn recovery_removes_the_backup_of_a_run_that_never_swapped() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(50));
    let original = fs::read(&wal).unwrap();
    let linked = d.path().join("wal_backup_20260101_000000.log");
    let older = d.path().join("wal_backup_20250101_000000.log");
    fs::write(&older, &original).unwrap();
    let backups = || {
        names(d.path())
            .into_iter()
            .filter(|n| n.starts_with("wal_backup_"))
            .collect::<Vec<_>>()
    };

    for (phase, temp_exists) in [(Phase::Writing, true), (Phase::Swapping, true)] {
        fs::hard_link(&wal, &linked).unwrap();
        journal(&wal, phase, temp_exists, Some(&linked));
        assert_eq!(recover(&wal), "DiscardedTemp");
        assert_eq!(backups(), ["wal_backup_20250101_000000.log"], "{phase:?}");
    }
    // A copy the WAL still begins with (writers appended since) is litter too.
    let copy = d.path().join("wal_backup_20260101_000001.log");
    fs::write(&copy, &original[..original.len() / 2]).unwrap();
    journal(&wal, Phase::Writing, true, Some(&copy));
    assert_eq!(recover(&wal), "DiscardedTemp");
    assert_eq!(backups(), ["wal_backup_20250101_000000.log"]);
    // A copy holding bytes the WAL no longer has is kept.
    fs::write(&copy, b"{\"op\": \"ABORT\", \"tx_id\": \"gone\"}\n").unwrap();
    journal(&wal, Phase::Writing, true, Some(&copy));
    assert_eq!(recover(&wal), "DiscardedTemp");
    assert!(copy.exists(), "the only copy of those bytes stays");
    fs::remove_file(&copy).unwrap();
    // The swap happened: the backup is the rollback path.
    fs::hard_link(&wal, &linked).unwrap();
    journal(&wal, Phase::Swapping, false, Some(&linked));
    assert_eq!(recover(&wal), "CompletedSwap");
    assert_eq!(fs::read(&linked).unwrap(), original);
    assert_eq!(
        fs::read(&older).unwrap(),
        original,
        "older backup untouched"
    );
}

#[test]
fn compaction_recovers_a_leftover_journal_first() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(50));
    journal(&wal, Phase::Writing, true, None);
    let out = walcompactd()
        .args(["compact", "--json"])
        .arg(&wal)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["recovered"], "DiscardedTemp");
    assert_eq!(v["outcome"], "success");
}

/// A cancelled run (daemon shutdown) stops at a safe point and leaves the WAL as it was.
#[test]
fn a_cancelled_run_changes_nothing() {
    use std::sync::atomic::AtomicBool;
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(50));
    let original = fs::read(&wal).unwrap();
    let cancel = AtomicBool::new(true);
    let mut req = walcompactd::pipeline::Request::new(&wal, "test");
    req.cancel = Some(&cancel);
    match walcompactd::pipeline::run(&req) {
        Err(walcompactd::pipeline::PipelineError::Cancelled { stage, .. }) => {
            assert_eq!(stage.as_str(), "backup")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(&wal).unwrap(), original);
    assert_eq!(names(d.path()), ["wal.log", "wal.log.compact.lock"]);
}

/// Recovery restores through the guard of the mode the journal records: an interrupted
/// online rollback keeps the lines writers appended after the swap; a journal from before
/// the mode was recorded is online exactly when it has `len_at_swap`.
#[test]
fn recovery_of_an_online_rollback_keeps_lines_appended_after_the_swap() {
    use walcompactd::pipeline::Mode;
    for mode in [Some(Mode::Online), None] {
        let d = tempfile::tempdir().unwrap();
        let original = redundant_wal(30);
        let backup = write_wal(d.path(), "wal_backup_20260101_000000.log", &original);
        let compacted = clean_wal("c", 3);
        let appended = prepare("late", 1) + &commit("late");
        let wal = write_wal(d.path(), "wal.log", &(compacted.clone() + &appended));
        let j = Journal {
            phase: Phase::RollingBack,
            mode,
            temp: walcompactd::fsutil::sibling(&wal, journal::TEMP_SUFFIX),
            backup: Some(backup.clone()),
            original_digest: None,
            pid: 1,
            len_at_swap: Some(compacted.len() as u64),
            quarantine: None,
            temp_ino: None,
            wal_ino: None,
            archive: None,
        };
        journal::write(&wal, &j).unwrap();
        assert_eq!(recover(&wal), "FinishedRollback");
        assert_eq!(
            fs::read_to_string(&wal).unwrap(),
            original.clone() + &appended,
            "{mode:?}: the backup's bytes, then what writers appended"
        );
    }
}
