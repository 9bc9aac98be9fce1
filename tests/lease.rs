//! Lease mode (`compact --mode lease`, policy `mode = "lease"`) beside writers that behave
//! exactly like the Diotec360 application (open per append, fsync, close, no lock;
//! `tests/fixtures/diotec360_wal.py run`). Every line each writer wrote must end up in the
//! WAL exactly once, in that writer's order, none torn or merged. Needs a filesystem with
//! leases where the temp dirs are (ext4, xfs, btrfs, tmpfs), as CI has.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command as StdCommand;

use common::app::{Writers, lease_policy, seeded_wal};
use common::*;

/// Waits until the writers have appended at least `n` more lines than `from`.
fn wait_for_lines(w: &Writers, n: usize) {
    let start = w.lines_written();
    assert!(
        wait_until(DEADLINE, || w.lines_written() >= start + n),
        "the writers stalled"
    );
}

#[test]
fn three_application_writers_lose_nothing_across_back_to_back_lease_runs() {
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 2000);
    let writers = Writers::start(3, wal.parent().unwrap(), d.path());
    wait_for_lines(&writers, 60);
    let runs = 8;
    let mut succeeded = 0;
    let mut late = 0;
    for _ in 0..runs {
        let out = walcompactd()
            .args(["compact", "--mode", "lease", "--json"])
            .arg(&wal)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {
                let r = stdout_json(&out);
                if r["outcome"] == "success" {
                    succeeded += 1;
                    late += r["lease"]["late_bytes"].as_u64().unwrap();
                }
            }
            // Writers kept the WAL open past the timeout: skipped, nothing changed.
            Some(5) => assert!(stderr.contains("kept the WAL open"), "{stderr}"),
            other => panic!("lease run failed ({other:?}): {stderr}"),
        }
        // New retries give the next run something to reclaim.
        wait_for_lines(&writers, 30);
    }
    writers.finish(&wal);
    assert!(
        succeeded * 2 > runs,
        "only {succeeded} of {runs} runs succeeded"
    );
    assert_no_leftovers(wal.parent().unwrap());
    println!("{succeeded}/{runs} lease runs succeeded; {late} late bytes merged");
}

#[test]
fn the_daemon_in_lease_mode_compacts_under_three_application_writers() {
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 2000);
    write_policy(d.path(), &test_policy(&lease_policy(&wal, "")));
    let writers = Writers::start(3, wal.parent().unwrap(), d.path());
    let daemon = Daemon::start(d.path(), "policy.toml");
    let run = daemon.wait_for_nth(3, |v| is_run(v, "app", "success"));
    // The log says how long writers were held back.
    assert!(run["writers_paused_ms"].as_f64().unwrap() > 0.0, "{run}");
    assert!(run["lease_held_ms"].as_f64().is_some(), "{run}");
    drop(daemon);
    writers.finish(&wal);
}

/// The application's check rejects a lease-mode swap while three writers append: the
/// rollback restores the backup under a lease, keeping what writers appended after the
/// swap and during the restore; no writer's line is lost.
#[test]
fn lease_mode_rollbacks_under_three_application_writers_keep_every_line() {
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 2000);
    let hooks = "[wal.hooks]\nverify = [\"sh\", \"-c\", \"sleep 0.2; exit 1\"]\n";
    write_policy(d.path(), &test_policy(&lease_policy(&wal, hooks)));
    let writers = Writers::start(3, wal.parent().unwrap(), d.path());
    let daemon = Daemon::start(d.path(), "policy.toml");
    let rolled_back = |v: &serde_json::Value| v["event"] == "run" && v["rolled_back"] == true;
    daemon.wait_for_log(rolled_back);
    // Writers go on at the restored WAL.
    wait_for_lines(&writers, 60);
    drop(daemon);
    writers.finish(&wal);
}

/// A writer that keeps the WAL open for writing: no lease can be had, so the run gives up
/// after `--lock-timeout-ms` with exit 5 and the reason; nothing changed, nothing left.
#[test]
fn a_writer_that_keeps_the_wal_open_makes_the_run_skip_with_its_reason() {
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 300);
    let before = fs::read(&wal).unwrap();
    let held = fs::OpenOptions::new().append(true).open(&wal).unwrap();
    let out = walcompactd()
        .args(["compact", "--mode", "lease", "--lock-timeout-ms", "300"])
        .arg(&wal)
        .output()
        .unwrap();
    drop(held);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains(&wal.display().to_string())
            && stderr.contains("kept the WAL open for more than 300 ms"),
        "{stderr}"
    );
    assert_eq!(fs::read(&wal).unwrap(), before);
    assert!(backups(wal.parent().unwrap(), &wal).is_empty());
    assert_no_leftovers(wal.parent().unwrap());
}

/// Not the file's owner and no `CAP_LEASE` (root with the capability dropped, on a WAL
/// owned by nobody): refused before any work, naming the fix.
#[test]
fn without_cap_lease_on_another_users_wal_the_run_is_refused() {
    if unsafe { libc::geteuid() } != 0 || which("setpriv").is_none() {
        eprintln!("skipped: needs root and setpriv to drop CAP_LEASE");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let wal = seeded_wal(d.path(), 300);
    std::os::unix::fs::chown(&wal, Some(65534), Some(65534)).unwrap();
    let before = fs::read(&wal).unwrap();
    let out = StdCommand::new("setpriv")
        .args(["--bounding-set=-lease", "--inh-caps=-lease", "--"])
        .arg(bin())
        .args(["compact", "--mode", "lease"])
        .arg(&wal)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("not allowed to take a lease (EACCES)") && stderr.contains("CAP_LEASE"),
        "{stderr}"
    );
    assert_eq!(fs::read(&wal).unwrap(), before);
    assert!(backups(wal.parent().unwrap(), &wal).is_empty());
    // With the capability, the same run works.
    walcompactd()
        .args(["compact", "--mode", "lease"])
        .arg(&wal)
        .assert()
        .success();
    assert_eq!(fs::metadata(&wal).unwrap().uid(), 65534, "owner kept");
}

/// A FIFO at the WAL's path: refused by name, never waited on.
#[test]
fn a_fifo_at_the_wal_path_is_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let wal = d.path().join("wal.log");
    nix::unistd::mkfifo(&wal, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for mode in ["lease", "offline"] {
        walcompactd()
            .args(["compact", "--mode", mode])
            .arg(&wal)
            .timeout(std::time::Duration::from_secs(60))
            .assert()
            .code(4)
            .stderr(predicates::str::contains("is not a regular file"));
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| Path::new(p).exists())
    })
}
