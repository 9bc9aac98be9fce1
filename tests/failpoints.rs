//! Fault injection through the real binary (built with `--features failpoints`): each
//! failure leaves the WAL replaying to its original state, no temp files, backups intact,
//! and the next compaction succeeds.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

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
    assert_no_leftovers(dir);
    walcompactd().arg("compact").arg(wal).assert().success();
    assert_eq!(digest(wal), original_digest);
}

#[test]
fn verification_failure_rolls_back_with_exit_1() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(100));
    let original = fs::read(&wal).unwrap();
    let before = digest(&wal);
    // An older backup (its own inode, as a copy would be): it must stay as it is.
    let older = d.path().join("wal_backup_20200101_000000.log");
    fs::write(&older, &original).unwrap();
    let out = compact_with(&wal, "verify::digest::mismatch=return");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("verification failed"));
    assert_eq!(fs::read(&wal).unwrap(), original, "WAL untouched");
    assert_eq!(
        backup_names(d.path()),
        ["wal_backup_20200101_000000.log"],
        "the run did not swap, so it left no backup; the older one stays"
    );
    assert_eq!(
        fs::read(&older).unwrap(),
        original,
        "older backup untouched"
    );
    assert_intact(d.path(), &wal, &before);
}

/// The unswapped run's backup is removed before its journal is cleared: killed in between,
/// the journal still names the backup and recovery removes it.
#[test]
fn a_crash_while_removing_an_unswapped_backup_is_finished_by_recovery() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(100));
    let before = digest(&wal);
    let out = compact_with(
        &wal,
        "verify::digest::mismatch=return;litter::remove::crash=return",
    );
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert_eq!(backup_names(d.path()).len(), 1, "killed before the unlink");
    assert!(d.path().join("wal.log.compact.journal").exists());
    walcompactd()
        .arg("recover")
        .arg(&wal)
        .assert()
        .success()
        .stdout(predicates::str::contains("DiscardedTemp"));
    assert!(backup_names(d.path()).is_empty(), "recovery removed it");
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

/// What an injected fault does to the compaction process.
#[derive(Clone, Copy, Debug)]
enum Effect {
    /// The process dies on the spot (SIGKILL from the crash point).
    Crash,
    /// The step fails; the command exits with this code.
    Fails(i32),
}

/// Every backup of `wal` in `dir` replays to `original`.
fn assert_backups_intact(dir: &Path, original: &str) {
    for name in names(dir).iter().filter(|n| n.starts_with("wal_backup_")) {
        assert_eq!(digest(&dir.join(name)), original, "backup {name} changed");
    }
}

/// Injects `point`, then checks the promise: the WAL at its path replays to the original
/// state, a restart (`recover`) leaves no temp files and `backups_left` backups (1 only
/// when the run swapped, or died before its journal could name its backup), every backup
/// is intact, and the next compaction succeeds.
fn fault_case(point: &str, effect: Effect, backups_left: usize) {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(300));
    let original = digest(&wal);
    let out = walcompactd()
        .env("FAILPOINTS", format!("{point}=return"))
        .arg("compact")
        .arg(&wal)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match effect {
        Effect::Crash => assert_eq!(
            out.status.signal(),
            Some(9),
            "{point}: expected death, got {:?} {stderr}",
            out.status
        ),
        Effect::Fails(code) => assert_eq!(out.status.code(), Some(code), "{point}: {stderr}"),
    }
    assert_eq!(
        digest(&wal),
        original,
        "{point}: the WAL at its path replays to the original state"
    );
    walcompactd().arg("recover").arg(&wal).assert().success();
    assert_no_leftovers(d.path());
    assert_eq!(
        backup_names(d.path()).len(),
        backups_left,
        "{point}: backups after recovery"
    );
    assert_backups_intact(d.path(), &original);
    walcompactd().arg("compact").arg(&wal).assert().success();
    assert_eq!(digest(&wal), original, "{point}: after the next compaction");
    assert_no_leftovers(d.path());
    assert_backups_intact(d.path(), &original);
}

#[test]
fn every_pipeline_step_survives_a_crash_or_an_error() {
    // The third column: backups left after recovery. A run that never swapped leaves none,
    // except when it died before its first journal entry (no journal names the backup).
    let cases = [
        ("backup::after_create::crash", Effect::Crash, 1),
        ("backup::after_create::error", Effect::Fails(4), 0),
        ("journal::write::crash", Effect::Crash, 1),
        ("journal::rename::crash", Effect::Crash, 1),
        ("journal::write::error", Effect::Fails(4), 0),
        ("precheck::no_space", Effect::Fails(4), 0),
        ("compact::write::short", Effect::Fails(4), 0),
        ("compact::write::enospc", Effect::Fails(4), 0),
        ("compact::write::crash", Effect::Crash, 0),
        ("compact::before_fsync::crash", Effect::Crash, 0),
        ("compact::before_fsync::error", Effect::Fails(4), 0),
        ("verify::read::crash", Effect::Crash, 0),
        ("verify::digest::mismatch", Effect::Fails(1), 0),
        ("swap::before_rename::crash", Effect::Crash, 0),
        ("swap::before_rename::error", Effect::Fails(4), 0),
        // The rename happened: the backup is the rollback path.
        ("swap::exchange::crash", Effect::Crash, 1),
        ("swap::after_rename::crash", Effect::Crash, 1),
        ("swap::after_rename::error", Effect::Fails(4), 1),
    ];
    for (point, effect, backups_left) in cases {
        fault_case(point, effect, backups_left);
    }
}

/// A backup copied to another filesystem takes its name only once complete and fsynced: a
/// crash mid-copy leaves no file that lists as a backup, and the WAL untouched.
#[test]
fn a_crash_mid_copy_leaves_no_truncated_backup() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() || same_filesystem(shm, d.path()) {
        eprintln!("SKIPPED: no second filesystem at /dev/shm");
        return;
    }
    let other = tempfile::tempdir_in(shm).unwrap();
    let wal = write_wal(d.path(), "wal.log", &redundant_wal(300));
    let original = digest(&wal);
    let backup_dir = other.path().to_str().unwrap();
    let out = walcompactd()
        .env("FAILPOINTS", "backup::copy::crash=return")
        .args(["compact", "--backup-dir", backup_dir])
        .arg(&wal)
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    assert_eq!(digest(&wal), original);
    let left = names(other.path());
    assert!(left.iter().all(|n| n.ends_with(".partial")), "{left:?}");
    // Nothing there is a backup: pruning everything finds nothing to remove.
    let pruned = walcompactd()
        .args([
            "prune-backups",
            "--keep-days",
            "0",
            "--keep-last",
            "0",
            "--json",
        ])
        .args(["--backup-dir", backup_dir])
        .arg(&wal)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&pruned.stdout).trim(),
        r#"{"removed":[],"kept":[]}"#
    );
    walcompactd()
        .args(["compact", "--backup-dir", backup_dir])
        .arg(&wal)
        .assert()
        .success();
    assert_eq!(digest(&wal), original);
    let backups: Vec<_> = names(other.path())
        .into_iter()
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(digest(&other.path().join(&backups[0])), original);
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(a).unwrap().dev() == fs::metadata(b).unwrap().dev()
}

#[test]
fn online_crash_under_the_writer_lock_loses_nothing() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let seed = wal_text(300);
    let wal = write_wal(d.path(), "wal.log", &seed);
    let original = digest(&wal);
    let out = walcompactd()
        .env("FAILPOINTS", "online::under_lock::crash=return")
        .args(["compact", "--online"])
        .arg(&wal)
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(9));
    // The kernel released the dead compactor's lock: a writer goes on.
    let mut w =
        walcompactd::writer::WalWriter::open(&wal, walcompactd::writer::Durability::None).unwrap();
    w.append(commit("late").as_bytes()).unwrap();
    walcompactd().arg("recover").arg(&wal).assert().success();
    assert_no_leftovers(d.path());
    assert_eq!(
        fs::read_to_string(&wal).unwrap(),
        seed.clone() + &commit("late")
    );
    walcompactd()
        .args(["compact", "--online"])
        .arg(&wal)
        .assert()
        .success();
    let expected =
        walcompactd::pipeline::compact::compact_bytes((seed + &commit("late")).as_bytes()).unwrap();
    assert_eq!(fs::read(&wal).unwrap(), expected);
    // Online backups are the original inode as of the swap: valid WALs, original + appended.
    for name in names(d.path())
        .iter()
        .filter(|n| n.starts_with("wal_backup_"))
    {
        walcompactd()
            .arg("verify")
            .arg(d.path().join(name))
            .assert()
            .success();
    }
    assert_ne!(
        original,
        digest(&wal),
        "the late COMMIT is part of the state now"
    );
}

/// `dir/wal.log` and four old backups of it, copies of its bytes. Returns the WAL and its
/// bytes.
fn wal_with_four_old_backups(dir: &Path) -> (PathBuf, Vec<u8>) {
    let wal = write_wal(dir, "wal.log", &redundant_wal(50));
    let original = fs::read(&wal).unwrap();
    for day in 1..=4 {
        fs::write(
            dir.join(format!("wal_backup_2020010{day}_000000.log")),
            &original,
        )
        .unwrap();
    }
    (wal, original)
}

/// `walcompactd prune-backups --keep-days 1 --keep-last 1 WAL` with `FAILPOINTS`.
fn prune_keeping_one(wal: &Path, failpoints: &str) -> std::process::Output {
    walcompactd()
        .env("FAILPOINTS", failpoints)
        .args(["prune-backups", "--keep-days", "1", "--keep-last", "1"])
        .arg(wal)
        .output()
        .unwrap()
}

/// A prune stopped after its first removal: three backups left, each intact. Returns them.
fn three_intact_backups_left(dir: &Path, original: &[u8]) -> Vec<String> {
    let left = backup_names(dir);
    assert_eq!(left.len(), 3, "one removed, then it stopped: {left:?}");
    for n in &left {
        assert_eq!(fs::read(dir.join(n)).unwrap(), original, "{n} intact");
    }
    left
}

/// The next prune finishes the job: one backup left, the WAL untouched.
fn next_prune_finishes(dir: &Path, wal: &Path, original: &[u8]) {
    let out = prune_keeping_one(wal, "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(backup_names(dir).len(), 1);
    assert_eq!(fs::read(wal).unwrap(), original);
}

#[test]
fn pruning_interrupted_by_a_crash_keeps_the_rest_intact() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let (wal, original) = wal_with_four_old_backups(d.path());
    let out = prune_keeping_one(&wal, "prune::remove::crash=1*off->return");
    assert_eq!(
        out.status.signal(),
        Some(9),
        "dies before the second removal"
    );
    three_intact_backups_left(d.path(), &original);
    next_prune_finishes(d.path(), &wal, &original);
}

/// A daemon policy for one WAL that compacts as soon as anything is reclaimable.
fn eager_policy(verify_hook: &str) -> String {
    test_policy(&format!(
        "[[wal]]\nname = \"w\"\npath = \"wal.log\"\npoll_interval_secs = 1\n\
         [wal.triggers]\nmax_size_mb = 0.001\nmin_reclaimable_bytes = 1\nmin_interval_secs = 1\n\
         [wal.hooks]\nverify = {verify_hook}\n"
    ))
}

/// `dir/wal.log` (complete lines) and `dir/policy.toml`, an [`eager_policy`] with
/// `verify_hook`. Returns the WAL, its text and its digest.
fn eager_daemon_wal(dir: &Path, verify_hook: &str) -> (PathBuf, String, String) {
    let seed = wal_text(300);
    let wal = write_wal(dir, "wal.log", &seed);
    let original = digest(&wal);
    fs::write(dir.join("policy.toml"), eager_policy(verify_hook)).unwrap();
    (wal, seed, original)
}

/// Waits for the daemon to die by SIGKILL at its crash point.
fn dies_at_the_crash_point(daemon: &mut Daemon) {
    let status = daemon
        .wait_exit()
        .expect("the daemon dies at the crash point");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{}",
        daemon.dump()
    );
}

/// `recover` finishes an interrupted rollback: the original bytes are back, nothing is left
/// over, every backup is intact.
fn recover_finishes_the_rollback(dir: &Path, wal: &Path, seed: &str, original: &str) {
    walcompactd()
        .arg("recover")
        .arg(wal)
        .assert()
        .success()
        .stdout(predicates::str::contains("FinishedRollback"));
    assert_eq!(
        fs::read_to_string(wal).unwrap(),
        seed,
        "rolled back to the original bytes"
    );
    assert_no_leftovers(dir);
    assert_backups_intact(dir, original);
}

/// Appends two PREPAREs of one transaction (the first reclaimable), waits for the daemon's
/// `nth` successful run and for the WAL to be exactly the compaction of `seed` plus them.
fn appended_lines_are_compacted(daemon: &Daemon, nth: usize, wal: &Path, seed: &str) {
    let more = prepare("more", 1) + &prepare("more", 2);
    append(wal, &more);
    daemon.wait_for_nth(nth, |v| v["event"] == "run" && v["outcome"] == "success");
    let expected =
        walcompactd::pipeline::compact::compact_bytes((seed.to_string() + &more).as_bytes())
            .unwrap();
    assert!(
        wait_until(DEADLINE, || fs::read(wal).unwrap() == expected),
        "{}",
        daemon.dump()
    );
}

/// The daemon dies in the middle of a rollback (the application's check rejected the new
/// WAL): `recover` puts the original bytes back, and a restarted daemon compacts normally.
#[test]
fn daemon_crash_during_rollback_is_finished_by_recovery() {
    let d = tempfile::tempdir().unwrap();
    let (wal, seed, original) = eager_daemon_wal(d.path(), r#"["false"]"#);
    let mut daemon = Daemon::start_with_env(
        d.path(),
        "policy.toml",
        &[("FAILPOINTS", "rollback::copy::crash=return")],
    );
    dies_at_the_crash_point(&mut daemon);
    assert_eq!(
        digest(&wal),
        original,
        "the path always holds a WAL with the original state"
    );
    recover_finishes_the_rollback(d.path(), &wal, &seed, &original);
    fs::write(d.path().join("policy.toml"), eager_policy(r#"["true"]"#)).unwrap();
    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "success");
    assert_eq!(digest(&wal), original);
    assert_no_leftovers(d.path());
}

/// The daemon dies while writing its state file after a successful compaction: the restarted
/// daemon starts, the WAL is intact, and nothing is compacted twice into a loss.
#[test]
fn daemon_crash_during_state_write_is_harmless() {
    let d = tempfile::tempdir().unwrap();
    let (wal, seed, original) = eager_daemon_wal(d.path(), "[]");
    let mut daemon = Daemon::start_with_env(
        d.path(),
        "policy.toml",
        &[("FAILPOINTS", "state::rename::crash=return")],
    );
    dies_at_the_crash_point(&mut daemon);
    assert_eq!(digest(&wal), original);
    let daemon = Daemon::start(d.path(), "policy.toml");
    appended_lines_are_compacted(&daemon, 1, &wal, &seed);
    assert_no_leftovers(d.path());
}

/// A daemon run that fails verification (so never swaps) leaves no backup behind.
#[test]
fn daemon_run_that_does_not_swap_leaves_no_backup() {
    let d = tempfile::tempdir().unwrap();
    let (wal, seed, _) = eager_daemon_wal(d.path(), "[]");
    let daemon = Daemon::start_with_env(
        d.path(),
        "policy.toml",
        &[("FAILPOINTS", "verify::digest::mismatch=return")],
    );
    daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "failed");
    assert_eq!(fs::read_to_string(&wal).unwrap(), seed, "WAL untouched");
    assert!(
        backup_names(d.path()).is_empty(),
        "{:?}\n{}",
        names(d.path()),
        daemon.dump()
    );
    assert_no_leftovers(d.path());
}

/// Verification counts every payload byte: a compacted file whose first PREPARE has one
/// digit changed (a `changes` value, as the Diotec360 application writes) never replaces
/// the WAL; the run exits 1 and leaves the WAL as it was.
#[test]
fn a_changed_payload_digit_in_the_compacted_file_is_never_swapped_in() {
    let d = tempfile::tempdir().unwrap();
    let mut content = String::new();
    for i in 0..50 {
        let tx = format!("tx{i}");
        let prepare = format!(
            "{{\"op\": \"PREPARE\", \"tx_id\": \"{tx}\", \"changes\": {{\"acct\": {{\"balance\": {i}}}}}, \"timestamp\": 1796029100.5}}\n"
        );
        content += &(prepare.clone() + &prepare + &commit(&tx));
    }
    let wal = write_wal(d.path(), "wal.log", &content);
    let out = compact_with(&wal, "compact::write::tamper_payload=return");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("replay digest differs"), "{stderr}");
    assert_eq!(fs::read_to_string(&wal).unwrap(), content, "WAL untouched");
    let before = digest(&wal);
    assert_intact(d.path(), &wal, &before);
}

/// Pruning fails on its second removal: the command exits 4 naming the backup it could not
/// remove, the backups it did not get to are intact, the WAL is untouched, and the next
/// `prune-backups` finishes the job.
#[test]
fn a_failed_prune_removal_is_reported_and_the_next_prune_finishes() {
    let d = tempfile::tempdir().unwrap();
    let (wal, original) = wal_with_four_old_backups(d.path());
    let out = prune_keeping_one(&wal, "prune::remove::error=1*off->return");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    let left = three_intact_backups_left(d.path(), &original);
    assert!(
        stderr.contains("remove") && left.iter().any(|n| stderr.contains(n.as_str())),
        "names the backup it could not remove: {stderr}"
    );
    assert_eq!(fs::read(&wal).unwrap(), original, "WAL untouched");
    next_prune_finishes(d.path(), &wal, &original);
}

/// Runs an eager daemon whose verify hook rejects every compaction, with the rollback
/// failing before its rename, until the run fails; asserts the run failed in the rollback
/// stage naming the rename and the WAL. Returns the WAL, its original bytes and digest.
fn daemon_with_a_failed_rollback(dir: &Path) -> (PathBuf, String, String) {
    let (wal, seed, original) = eager_daemon_wal(dir, r#"["false"]"#);
    let daemon = Daemon::start_with_env(
        dir,
        "policy.toml",
        &[("FAILPOINTS", "rollback::before_rename::error=return")],
    );
    let run = daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "failed");
    let message = run["message"].as_str().unwrap_or("");
    assert_eq!(run["stage"], "rollback", "{}", daemon.dump());
    assert!(
        message.contains("rename to") && message.contains("wal.log"),
        "{message}"
    );
    (wal, seed, original)
}

/// The daemon's rollback (the application's check rejected the new WAL) fails before its
/// rename: a clear error in the rollback stage, nothing lost (the WAL's path holds a WAL
/// with the original state, the backup the original bytes), `recover` leaves no temp file,
/// and the next compaction succeeds.
#[test]
fn daemon_rollback_that_fails_before_its_rename_loses_nothing() {
    let d = tempfile::tempdir().unwrap();
    let (wal, seed, original) = daemon_with_a_failed_rollback(d.path());
    assert_eq!(
        digest(&wal),
        original,
        "the path always holds a WAL with the original state"
    );
    let backups = backup_names(d.path());
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(
        fs::read_to_string(d.path().join(&backups[0])).unwrap(),
        seed,
        "the backup holds the original bytes"
    );
    walcompactd().arg("recover").arg(&wal).assert().success();
    assert_no_leftovers(d.path());
    assert_eq!(digest(&wal), original);
    append(&wal, &(prepare("more", 1) + &prepare("more", 2)));
    let before = digest(&wal);
    walcompactd().arg("compact").arg(&wal).assert().success();
    assert_eq!(digest(&wal), before);
    assert_no_leftovers(d.path());
}

/// The promise of the journal's `rolling_back` entry: a rollback that did not happen is
/// finished by recovery, so the WAL the application's check rejected does not stay (the
/// run's error path leaves that journal in place).
#[test]
fn daemon_rollback_that_fails_before_its_rename_is_finished_by_recovery() {
    let d = tempfile::tempdir().unwrap();
    let (wal, seed, original) = daemon_with_a_failed_rollback(d.path());
    assert!(d.path().join("wal.log.compact.journal").exists());
    recover_finishes_the_rollback(d.path(), &wal, &seed, &original);
}

/// The daemon cannot write its state file: it says so (naming the file) and goes on; the
/// compaction it made stands, the next one succeeds, and a restarted daemon starts.
#[test]
fn daemon_that_cannot_save_its_state_reports_it_and_goes_on() {
    let d = tempfile::tempdir().unwrap();
    let (wal, seed, original) = eager_daemon_wal(d.path(), "[]");
    let daemon = Daemon::start_with_env(
        d.path(),
        "policy.toml",
        &[("FAILPOINTS", "state::write::error=return")],
    );
    daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "success");
    let err = daemon.wait_for_log(|v| v["event"] == "state" && v["level"] == "ERROR");
    let message = err["message"].as_str().unwrap_or("");
    assert!(
        message.contains("cannot save state")
            && err["path"].as_str().unwrap_or("").contains("w.json"),
        "{err}"
    );
    assert_eq!(digest(&wal), original);
    appended_lines_are_compacted(&daemon, 2, &wal, &seed);
    assert!(
        !d.path().join("state/w.json").exists(),
        "no state file was written"
    );
    drop(daemon);
    let daemon = Daemon::start(d.path(), "policy.toml");
    append(&wal, &(prepare("again", 1) + &prepare("again", 2)));
    daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "success");
    assert!(
        wait_until(DEADLINE, || d.path().join("state/w.json").exists()),
        "the state is saved again: {}",
        daemon.dump()
    );
    assert_no_leftovers(d.path());
}
