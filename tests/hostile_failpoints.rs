//! Hostile environments that need a pause inside a run (built with `--features failpoints`):
//! someone else replaces, truncates or appends to the WAL while a compaction is between its
//! verification and its swap. Every case is refused with the WAL's path and what changed,
//! exit 4; the file at the path is exactly what the other party left there; no temp file or
//! journal is left behind; backups from earlier runs are intact; the next run works.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// `n` transactions under `prefix`, each prepared twice then committed (half is reclaimable),
/// complete lines only, so it can be appended after any complete WAL.
fn retried(prefix: &str, n: u64) -> String {
    (0..n)
        .map(|i| {
            let tx = format!("{prefix}_{i:04}");
            prepare(&tx, i) + &prepare(&tx, i + 1) + &commit(&tx)
        })
        .collect()
}

/// A WAL that was compacted once (so an earlier backup exists, on its own inode) and has
/// since grown reclaimable again. Returns the WAL's path and the earlier backups' contents.
fn wal_with_history(dir: &Path) -> (PathBuf, Vec<(PathBuf, Vec<u8>)>) {
    let wal = write_wal(dir, "wal.log", &retried("old", 50));
    walcompactd().arg("compact").arg(&wal).assert().success();
    append(&wal, &retried("new", 50));
    let earlier = backups(dir);
    assert_eq!(earlier.len(), 1, "the first run left its backup");
    (wal, earlier)
}

/// Someone truncating the WAL in place to `keep` bytes.
fn truncate(wal: &Path, keep: usize) {
    let f = fs::OpenOptions::new().write(true).open(wal).unwrap();
    f.set_len(keep as u64).unwrap();
}

/// Every backup in `dir` with its bytes.
fn backups(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with("wal_backup_"))
        .map(|n| {
            let p = dir.join(&n);
            let bytes = fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

/// Starts `walcompactd compact [args] wal` paused at `failpoint`, waits until it is
/// past writing its temp file, runs `meddle`, and returns the finished run's output.
fn run_paused(wal: &Path, args: &[&str], failpoint: &str, meddle: impl FnOnce()) -> Output {
    run_paused_with(wal, args, &format!("{failpoint}=sleep(3000)"), meddle)
}

/// Fail points that make every lease `EINVAL`: offline mode then runs as on a filesystem
/// without leases (NFS), guarded by `/proc` and a last check.
const NO_LEASES: &str = "lease::unavailable=return";

/// [`run_paused`] with the whole `FAILPOINTS` value given.
fn run_paused_with(wal: &Path, args: &[&str], failpoints: &str, meddle: impl FnOnce()) -> Output {
    let child = Command::new(bin())
        .env_remove("RUST_LOG")
        .env("FAILPOINTS", failpoints)
        .arg("compact")
        .args(args)
        .arg(wal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let temp = PathBuf::from(format!("{}.compact.tmp", wal.display()));
    assert!(
        wait_until(DEADLINE, || temp.exists()),
        "compaction never wrote its temp file"
    );
    // The temp is complete well within this on a small WAL; the pause lasts 3 s.
    std::thread::sleep(Duration::from_millis(700));
    meddle();
    child.wait_with_output().unwrap()
}

/// The common assertions: refused with exit 4 naming the WAL and `what`, the file at the
/// path is `expected`, no temp or journal left, earlier backups intact.
fn assert_refused(
    out: &Output,
    wal: &Path,
    what: &str,
    expected: &[u8],
    earlier: &[(PathBuf, Vec<u8>)],
) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&wal.display().to_string()) && stderr.contains(what),
        "message should name {} and say {what:?}: {stderr}",
        wal.display()
    );
    assert!(stderr.contains("nothing replaced"), "{stderr}");
    assert_eq!(
        fs::read(wal).unwrap(),
        expected,
        "the WAL is as the other party left it"
    );
    let dir = wal.parent().unwrap();
    let left = names(dir);
    assert!(
        left.iter()
            .all(|n| !n.ends_with(".tmp") && !n.ends_with(".journal")),
        "leftovers: {left:?}"
    );
    for (path, bytes) in earlier {
        assert_eq!(
            &fs::read(path).unwrap(),
            bytes,
            "{} changed",
            path.display()
        );
    }
}

/// The refused run left no backup of its own: the backups in `dir` are exactly `earlier`.
fn assert_no_new_backup(dir: &Path, earlier: &[(PathBuf, Vec<u8>)]) {
    let now: Vec<PathBuf> = backups(dir).into_iter().map(|(p, _)| p).collect();
    let before: Vec<PathBuf> = earlier.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(now, before, "a run that did not swap left a backup");
}

/// After the refusal, a normal run compacts whatever is at the path now, keeping its state.
fn next_run_works(wal: &Path) {
    let before = digest(wal);
    walcompactd().arg("compact").arg(wal).assert().success();
    assert_eq!(digest(wal), before);
}

#[test]
fn offline_wal_replaced_by_another_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (wal, earlier) = wal_with_history(d.path());
    let original = fs::read(&wal).unwrap();
    let replacement = retried("other", 30) + &abort("x");
    let out = run_paused(&wal, &[], "swap::before_check::delay", || {
        let other = write_wal(d.path(), "incoming.log", &replacement);
        fs::rename(&other, &wal).unwrap();
    });
    assert_refused(
        &out,
        &wal,
        "replaced by another file",
        replacement.as_bytes(),
        &earlier,
    );
    // The backup this run made still holds the file it analyzed: the original inode is
    // gone from the path, so that backup is the only copy of it and is kept.
    let ours: Vec<_> = backups(d.path())
        .into_iter()
        .filter(|(p, _)| earlier.iter().all(|(q, _)| q != p))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].1, original);
    next_run_works(&wal);
}

/// The WAL replaced after the run's last check, just before the swap (the application's own
/// rewrite racing the compactor): the exchange brings the replacement back out, so it is put
/// back at the WAL's path, never clobbered; offline and online alike.
#[test]
fn a_wal_replaced_just_before_the_swap_is_put_back_not_clobbered() {
    for args in [&[][..], &["--mode", "online"][..]] {
        let d = tempfile::tempdir().unwrap();
        let (wal, earlier) = wal_with_history(d.path());
        let replacement = retried("other", 30) + &abort("x");
        let out = run_paused(&wal, args, "swap::before_exchange::delay", || {
            let other = write_wal(d.path(), "incoming.log", &replacement);
            fs::rename(&other, &wal).unwrap();
        });
        assert_refused(
            &out,
            &wal,
            "replaced by another file just before the swap; it was put back",
            replacement.as_bytes(),
            &earlier,
        );
        next_run_works(&wal);
    }
}

/// A line appended after the run's last check, just before the swap, would be in neither
/// file: the exchange brings the WAL out longer than compacted, so it is put back.
#[test]
fn a_line_appended_just_before_the_swap_puts_the_wal_back() {
    let d = tempfile::tempdir().unwrap();
    let (wal, earlier) = wal_with_history(d.path());
    let original = fs::read_to_string(&wal).unwrap();
    let line = prepare("late", 1);
    // Without leases: under one, the writer waits for the swap and its line is merged
    // (tests/lease.rs).
    let fps = format!("swap::before_exchange::delay=sleep(3000);{NO_LEASES}");
    let out = run_paused_with(&wal, &[], &fps, || append(&wal, &line));
    assert_refused(
        &out,
        &wal,
        "bytes appended just before the swap; the WAL was put back",
        (original + &line).as_bytes(),
        &earlier,
    );
    next_run_works(&wal);
}

/// A crash between an exchange that brought out someone else's file and the exchange back:
/// `recover` puts that file back at the WAL's path and removes nothing of it.
#[test]
fn recovery_puts_back_a_replacement_the_swap_brought_out() {
    use std::os::unix::process::ExitStatusExt;
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = wal_with_history(d.path());
    let replacement = retried("other", 30) + &abort("x");
    let child = Command::new(bin())
        .env_remove("RUST_LOG")
        .env(
            "FAILPOINTS",
            "swap::before_exchange::delay=sleep(3000);swap::exchange::crash=return",
        )
        .arg("compact")
        .arg(&wal)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let temp = PathBuf::from(format!("{}.compact.tmp", wal.display()));
    assert!(wait_until(DEADLINE, || temp.exists()), "no temp file");
    std::thread::sleep(Duration::from_millis(700));
    let other = write_wal(d.path(), "incoming.log", &replacement);
    fs::rename(&other, &wal).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    walcompactd()
        .arg("recover")
        .arg(&wal)
        .assert()
        .success()
        .stdout(predicates::str::contains("PutBackReplacedWal"));
    assert_eq!(fs::read_to_string(&wal).unwrap(), replacement);
    assert_no_leftovers(d.path());
    next_run_works(&wal);
}

/// Where the filesystem has no `RENAME_EXCHANGE`, the swap is a plain rename after the same
/// last check: the run still succeeds and the WAL replays to the original state.
#[test]
fn a_filesystem_without_rename_exchange_swaps_by_rename() {
    for fps in [
        "swap::exchange::unsupported=return".to_string(),
        format!("swap::exchange::unsupported=return;{NO_LEASES}"),
    ] {
        let d = tempfile::tempdir().unwrap();
        let (wal, _) = wal_with_history(d.path());
        let before = digest(&wal);
        walcompactd()
            .env("FAILPOINTS", &fps)
            .arg("compact")
            .arg(&wal)
            .assert()
            .success();
        assert_eq!(digest(&wal), before, "{fps}");
        assert_no_leftovers(d.path());
    }
}

#[test]
fn offline_wal_truncated_by_someone_else_is_refused() {
    for leases in [true, false] {
        let d = tempfile::tempdir().unwrap();
        let (wal, earlier) = wal_with_history(d.path());
        let original = fs::read(&wal).unwrap();
        let keep = original.len() / 2;
        let mut fps = "swap::before_check::delay=sleep(3000)".to_string();
        if !leases {
            fps = format!("{fps};{NO_LEASES}");
        }
        let out = run_paused_with(&wal, &[], &fps, || truncate(&wal, keep));
        // Under the lease, the truncater's open broke it (let go at once); without, the
        // last check sees the shorter file.
        let what = match leases {
            true => "a writer opened it during the run".to_string(),
            false => format!("truncated from {} to {keep} bytes", original.len()),
        };
        assert_refused(&out, &wal, &what, &original[..keep], &earlier);
        // Its backup was a hard link to the truncated inode: removing it loses nothing.
        assert_no_new_backup(d.path(), &earlier);
        next_run_works(&wal);
    }
}

#[test]
fn offline_wal_appended_by_a_writer_is_refused_and_keeps_the_lines() {
    let d = tempfile::tempdir().unwrap();
    let (wal, earlier) = wal_with_history(d.path());
    let original = fs::read(&wal).unwrap();
    let extra = retried("late", 3);
    let out = run_paused(&wal, &[], "swap::before_check::delay", || {
        // A writer that ignores the lock protocol (offline mode promises there is none).
        let mut f = fs::OpenOptions::new().append(true).open(&wal).unwrap();
        f.write_all(extra.as_bytes()).unwrap();
    });
    let mut expected = original.clone();
    expected.extend_from_slice(extra.as_bytes());
    // The writer's open broke the run's lease, which was let go at once.
    assert_refused(
        &out,
        &wal,
        "a writer opened it during the run",
        &expected,
        &earlier,
    );
    assert_no_new_backup(d.path(), &earlier);
    next_run_works(&wal);
}

/// Without leases (NFS), the last check before the swap sees the appended bytes.
#[test]
fn offline_without_leases_sees_appended_bytes_at_the_last_check() {
    let d = tempfile::tempdir().unwrap();
    let (wal, earlier) = wal_with_history(d.path());
    let original = fs::read(&wal).unwrap();
    let extra = retried("late", 3);
    let fps = format!("swap::before_check::delay=sleep(3000);{NO_LEASES}");
    let out = run_paused_with(&wal, &[], &fps, || append(&wal, &extra));
    let mut expected = original.clone();
    expected.extend_from_slice(extra.as_bytes());
    let what = format!("{} bytes appended", extra.len());
    assert_refused(&out, &wal, &what, &expected, &earlier);
    assert_no_new_backup(d.path(), &earlier);
    next_run_works(&wal);
}

#[test]
fn online_wal_truncated_by_someone_else_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (wal, earlier) = wal_with_history(d.path());
    let original = fs::read(&wal).unwrap();
    let keep = original.len() / 3;
    let out = run_paused(&wal, &["--online"], "online::catch_up::delay", || {
        truncate(&wal, keep)
    });
    let what = format!("truncated to {keep} bytes");
    assert_refused(&out, &wal, &what, &original[..keep], &earlier);
    assert_no_new_backup(d.path(), &earlier);
    next_run_works(&wal);
}

#[test]
fn online_wal_replaced_by_another_file_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let (wal, earlier) = wal_with_history(d.path());
    let replacement = retried("other", 30);
    let out = run_paused(&wal, &["--online"], "online::catch_up::delay", || {
        let other = write_wal(d.path(), "incoming.log", &replacement);
        fs::rename(&other, &wal).unwrap();
    });
    assert_refused(
        &out,
        &wal,
        "replaced by another file",
        replacement.as_bytes(),
        &earlier,
    );
    next_run_works(&wal);
}
