//! End-to-end tests of `walcompactd run` and `walcompactd check-policy` through the real
//! binary, in temp dirs. Never asserts on speed: everything polls with generous deadlines.

mod common;

use std::fs;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

fn sleep(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

#[test]
fn threshold_trips_and_the_wal_is_really_compacted() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(2000));
    let before = digest(&wal);
    let size_before = fs::metadata(&wal).unwrap().len();
    let t = "max_size_mb = 0.1\nmin_reclaimable_bytes = 1000";
    write_policy(d.path(), &test_policy(&wal_table("w1", "wal.log", t, "")));
    let daemon = Daemon::start(d.path(), "policy.toml");
    let run = daemon.wait_for_log(|v| is_run(v, "w1", "success"));
    assert_eq!(run["bytes_before"], size_before);
    assert!(run["reclaimed_bytes"].as_u64().unwrap() > 0);
    assert!(run["trigger"].as_str().unwrap().contains("size"), "{run}");
    assert!(run["duration_ms"].is_number() && run["backup"].is_string());
    assert!(run["message"].as_str().unwrap().contains("success"));
    for stage in ["analyze", "backup", "compact", "verify", "swap"] {
        assert!(
            daemon.count(|v| v["event"] == "stage" && v["stage"] == stage && v["wal"] == "w1") >= 1,
            "no {stage} stage event"
        );
    }
    assert_eq!(
        fs::metadata(&wal).unwrap().len(),
        run["bytes_after"].as_u64().unwrap()
    );
    assert_eq!(
        digest(&wal),
        before,
        "compaction must not change the replay state"
    );
    let state: Value =
        serde_json::from_slice(&fs::read(d.path().join("state/w1.json")).unwrap()).unwrap();
    assert_eq!(state["last_outcome"], "success");
    assert_eq!(state["consecutive_failures"], 0);
}

#[test]
fn higher_threshold_on_edit_prevents_compaction_then_lower_applies_at_once() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(500));
    let policy = |max: u64| {
        test_policy(&wal_table(
            "w1",
            "wal.log",
            &format!("max_commits_since_compaction = {max}\nmin_reclaimable_bytes = 1"),
            "",
        ))
    };
    write_policy(d.path(), &policy(1000));
    let daemon = Daemon::start(d.path(), "policy.toml");
    write_policy(d.path(), &policy(1_000_000));
    daemon.wait_for_log(|v| {
        v["event"] == "policy" && v["message"].as_str().unwrap().contains("reloaded")
    });
    append(&wal, &wal_text(2000)); // ~1600 more commits: would trip the old 1000
    sleep(4);
    assert_eq!(
        daemon.count(|v| v["event"] == "run"),
        0,
        "{}",
        daemon.dump()
    );
    write_policy(d.path(), &policy(100));
    daemon.wait_for_log(|v| is_run(v, "w1", "success"));
}

#[test]
fn invalid_edit_is_logged_with_key_paths_and_the_old_policy_stays() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &clean_wal("a", 10));
    let good = wal_table(
        "w1",
        "wal.log",
        "max_size_mb = 0.1\nmin_reclaimable_bytes = 1",
        "",
    );
    write_policy(d.path(), &test_policy(&good));
    let daemon = Daemon::start(d.path(), "policy.toml");
    let bad = wal_table(
        "w1",
        "wal.log",
        "max_size_mb = -3\nmin_reclaimable_bytes = 1\nbogus_key = 1",
        "",
    );
    write_policy(d.path(), &test_policy(&bad));
    daemon.wait_for_log(|v| {
        v["event"] == "policy_error" && v["key"] == "wal[0].triggers.max_size_mb"
    });
    daemon
        .wait_for_log(|v| v["event"] == "policy_error" && v["key"] == "wal[0].triggers.bogus_key");
    daemon.wait_for_log(|v| {
        v["event"] == "policy_error"
            && v["message"]
                .as_str()
                .unwrap()
                .contains("keeping the running policy")
    });
    // The old threshold still applies.
    append(&wal, &wal_text(2000));
    daemon.wait_for_log(|v| is_run(v, "w1", "success"));
}

#[test]
fn sighup_reloads_the_policy() {
    let d = tempfile::tempdir().unwrap();
    write_wal(d.path(), "wal.log", &wal_text(2000));
    write_policy(d.path(), &test_policy(&wal_table("w1", "wal.log", "", "")));
    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log(|v| v["event"] == "signal" && v["signal"] == "SIGHUP");
    daemon.wait_for_log(|v| {
        v["event"] == "policy" && v["message"].as_str().unwrap().contains("reloaded")
    });
    assert_eq!(
        daemon.count(|v| v["event"] == "run"),
        0,
        "no trigger is enabled"
    );
}

#[test]
fn an_every_second_schedule_fires() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(300));
    let before = digest(&wal);
    let t = "schedule = [\"* * * * * *\"]\nmin_reclaimable_bytes = 1";
    write_policy(d.path(), &test_policy(&wal_table("w1", "wal.log", t, "")));
    let daemon = Daemon::start(d.path(), "policy.toml");
    let run = daemon.wait_for_log(|v| is_run(v, "w1", "success"));
    assert!(
        run["trigger"].as_str().unwrap().contains("scheduled"),
        "{run}"
    );
    assert_eq!(digest(&wal), before);
}

#[test]
fn nothing_reclaimable_logs_blocked_once_and_never_loops() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &clean_wal("a", 2000));
    let t = "max_size_mb = 0.01\nmin_reclaimable_bytes = 1";
    write_policy(d.path(), &test_policy(&wal_table("w1", "wal.log", t, "")));
    let daemon = Daemon::start(d.path(), "policy.toml");
    let blocked = daemon.wait_for_log(|v| v["event"] == "blocked");
    assert_eq!(blocked["reclaimable_bytes"], 0);
    assert!(
        blocked["message"]
            .as_str()
            .unwrap()
            .contains("blocked: too little reclaimable")
    );
    for i in 0..3 {
        append(&wal, &clean_wal(&format!("b{i}"), 50));
        sleep(1);
    }
    sleep(2); // more than one poll interval
    assert_eq!(
        daemon.count(|v| v["event"] == "blocked"),
        1,
        "{}",
        daemon.dump()
    );
    assert_eq!(
        daemon.count(|v| v["event"] == "run"),
        0,
        "{}",
        daemon.dump()
    );
}

#[test]
fn offline_mode_skips_while_another_process_holds_the_wal() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(2000));
    let before = fs::read(&wal).unwrap();
    // A writer that keeps the WAL open for writing: the offline lease cannot be had.
    let writable = fs::OpenOptions::new().append(true).open(&wal).unwrap();
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .stdout(writable)
        .spawn()
        .unwrap();
    let t = "max_size_mb = 0.1\nmin_reclaimable_bytes = 1";
    write_policy(d.path(), &test_policy(&wal_table("w1", "wal.log", t, "")));
    let daemon = Daemon::start(d.path(), "policy.toml");
    let skip = daemon.wait_for_log(|v| is_run(v, "w1", "skipped"));
    let _ = holder.kill();
    let _ = holder.wait();
    let msg = skip["message"].as_str().unwrap();
    assert!(
        msg.contains("has the WAL open") && msg.contains(&holder.id().to_string()),
        "{msg}"
    );
    assert_eq!(fs::read(&wal).unwrap(), before, "nothing touched");
    // Once the holder is gone, the next attempt (after the skip retry delay) compacts.
    daemon.wait_for_log(|v| is_run(v, "w1", "success"));
}

#[test]
fn hooks_run_with_their_environment() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(2000));
    let hooks = "[wal.hooks]\npre_compact = [\"sh\", \"-c\", \"env > pre.env\"]\n\
                 post_compact = [\"sh\", \"-c\", \"env > post.env\"]\n\
                 verify = [\"sh\", \"-c\", \"env > verify.env\"]";
    let t = "max_size_mb = 0.1\nmin_reclaimable_bytes = 1";
    write_policy(
        d.path(),
        &test_policy(&wal_table("w1", "wal.log", t, hooks)),
    );
    let daemon = Daemon::start(d.path(), "policy.toml");
    let run = daemon.wait_for_log(|v| is_run(v, "w1", "success"));
    let backup = run["backup"].as_str().unwrap().to_string();
    assert!(!backup.is_empty());
    assert!(wait_until(DEADLINE, || d.path().join("post.env").exists()));
    let read = |f: &str| fs::read_to_string(d.path().join(f)).unwrap();
    let wal_path = format!("WAL_PATH={}\n", wal.display());
    for f in ["pre.env", "post.env", "verify.env"] {
        let env = read(f);
        assert!(env.contains(&wal_path), "{f}: {env}");
        assert!(env.contains("WAL_NAME=w1\n"), "{f}: {env}");
    }
    assert!(read("pre.env").contains("BACKUP_PATH=\n"));
    assert!(read("verify.env").contains(&format!("BACKUP_PATH={backup}\n")));
    assert!(wait_until(DEADLINE, || read("post.env")
        .contains(&format!("BACKUP_PATH={backup}\n"))));
}

#[test]
fn sigterm_during_a_slow_job_exits_zero_and_leaves_the_wal_intact() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(2000));
    let before = fs::read(&wal).unwrap();
    let hooks = "[wal.hooks]\npre_compact = [\"sh\", \"-c\", \"touch started; sleep 3\"]";
    let t = "max_size_mb = 0.1\nmin_reclaimable_bytes = 1";
    write_policy(
        d.path(),
        &test_policy(&wal_table("w1", "wal.log", t, hooks)),
    );
    let mut daemon = Daemon::start(d.path(), "policy.toml");
    assert!(wait_until(DEADLINE, || d.path().join("started").exists()));
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit().expect("daemon exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", daemon.dump());
    assert!(
        daemon.count(|v| is_run(v, "w1", "cancelled")) == 1,
        "{}",
        daemon.dump()
    );
    assert_eq!(
        fs::read(&wal).unwrap(),
        before,
        "cancelled before touching the WAL"
    );
    let left: Vec<String> = names(d.path())
        .into_iter()
        .filter(|n| n.contains(".tmp") || n.contains("journal") || n.contains("compact"))
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "leftovers: {left:?}");
}

#[test]
fn two_wals_at_once_including_one_that_appears_later() {
    let d = tempfile::tempdir().unwrap();
    let a = write_wal(d.path(), "a.log", &wal_text(2000));
    let t = "max_size_mb = 0.1\nmin_reclaimable_bytes = 1";
    let wals = wal_table("wa", "a.log", t, "") + &wal_table("wb", "sub/b.log", t, "");
    write_policy(d.path(), &test_policy(&wals));
    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.wait_for_log(|v| v["event"] == "missing" && v["wal"] == "wb");
    daemon.wait_for_log(|v| is_run(v, "wa", "success"));
    fs::create_dir(d.path().join("sub")).unwrap();
    let b = write_wal(&d.path().join("sub"), "b.log", &wal_text(2000));
    let before = digest(&b);
    daemon.wait_for_log(|v| is_run(v, "wb", "success"));
    assert_eq!(digest(&b), before);
    assert!(fs::metadata(&a).unwrap().len() < wal_text(2000).len() as u64);
    assert_eq!(
        daemon.count(|v| v["event"] == "missing" && v["wal"] == "wb"),
        2,
        "once missing, once appeared"
    );
}

/// A WAL whose directory appears after the daemon started is found through the watch, not
/// the fallback poll (an hour here): the directory is watched as soon as it exists and the
/// WAL already in it is looked at right away, written before the watch or not.
#[test]
fn a_wal_directory_created_later_is_watched_without_waiting_for_the_poll() {
    let d = tempfile::tempdir().unwrap();
    let t = "max_size_mb = 0.1\nmin_reclaimable_bytes = 1";
    let table = wal_table("late", "later/wal.log", t, "")
        .replace("poll_interval_secs = 1", "poll_interval_secs = 3600");
    write_policy(d.path(), &test_policy(&table));
    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.wait_for_log(|v| v["event"] == "missing" && v["wal"] == "late");
    // Written elsewhere and renamed in, so the directory gets no write events of its own.
    let staged = write_wal(d.path(), "staged.log", &wal_text(2000));
    let before = digest(&staged);
    fs::create_dir(d.path().join("later")).unwrap();
    fs::rename(&staged, d.path().join("later/wal.log")).unwrap();
    daemon.wait_for_log(|v| is_run(v, "late", "success"));
    assert_eq!(digest(&d.path().join("later/wal.log")), before);
}

#[test]
fn check_policy_prints_the_effective_policy_or_every_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("p.toml");
    fs::write(
        &p,
        test_policy(&wal_table("w1", "wal.log", "max_size_mb = 1", "")),
    )
    .unwrap();
    let out = walcompactd().arg("check-policy").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("[[wal]]") && text.contains("max_size_mb = 1"),
        "{text}"
    );
    assert!(text.contains("keep_last = 3"), "defaults filled in: {text}");

    fs::write(
        &p,
        test_policy(&wal_table(
            "w1",
            "wal.log",
            "max_size_mb = -1\nmin_reclaimable_bytes = \"x\"",
            "",
        )),
    )
    .unwrap();
    let out = walcompactd().arg("check-policy").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("wal[0].triggers.max_size_mb"), "{err}");
    assert!(
        err.contains("wal[0].triggers.min_reclaimable_bytes"),
        "{err}"
    );

    let out = walcompactd()
        .arg("check-policy")
        .arg(d.path().join("none.toml"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn run_refuses_an_invalid_policy_with_exit_2() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("p.toml"), "[daemon]\nlog_format = \"xml\"\n").unwrap();
    let out = walcompactd()
        .args(["run", "--policy", "p.toml"])
        .current_dir(d.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("daemon.log_format"));
}

#[test]
fn reload_starts_added_and_stops_removed_wals() {
    let d = tempfile::tempdir().unwrap();
    write_wal(d.path(), "a.log", &clean_wal("a", 10));
    write_wal(d.path(), "b.log", &wal_text(2000));
    write_policy(d.path(), &test_policy(&wal_table("wa", "a.log", "", "")));
    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.wait_for_log(|v| v["event"] == "supervisor" && v["wal"] == "wa");
    let t = "max_size_mb = 0.1\nmin_reclaimable_bytes = 1";
    write_policy(d.path(), &test_policy(&wal_table("wb", "b.log", t, "")));
    daemon.wait_for_log(|v| {
        v["event"] == "supervisor" && v["wal"] == "wa" && v["message"] == "stopped"
    });
    daemon.wait_for_log(|v| is_run(v, "wb", "success"));
}

#[test]
fn online_mode_compacts_while_another_process_holds_the_wal() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(2000));
    let before = digest(&wal);
    // A writer that keeps the WAL open for writing: the offline lease cannot be had.
    let writable = fs::OpenOptions::new().append(true).open(&wal).unwrap();
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .stdout(writable)
        .spawn()
        .unwrap();
    let t = "max_size_mb = 0.1\nmin_reclaimable_bytes = 1";
    let table = wal_table("w1", "wal.log", t, "").replace(
        "poll_interval_secs",
        "mode = \"online\"\npoll_interval_secs",
    );
    write_policy(d.path(), &test_policy(&table));
    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.wait_for_log(|v| is_run(v, "w1", "success"));
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(
        daemon.count(|v| is_run(v, "w1", "skipped")),
        0,
        "{}",
        daemon.dump()
    );
    assert_eq!(digest(&wal), before);
}

/// Whether `pid` is a live `sleep` (zombies do not count: nothing may reap orphans here).
fn sleep_alive(pid: &str) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        stat.contains("(sleep)") && state != Some("Z")
    })
}

/// An alert command still running when the daemon stops is killed with its whole process
/// group: the background `sleep` a `sh -c` command started does not outlive the daemon.
#[test]
fn an_alert_command_running_at_shutdown_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    write_wal(d.path(), "wal.log", &clean_wal("a", 10));
    let pidfile = d.path().join("sleep.pid");
    let script = format!(
        "sleep 600 & echo $! > {p}.tmp && mv {p}.tmp {p}; wait",
        p = pidfile.display()
    );
    let alert = format!(
        "[[alert]]\nname = \"Any\"\nmetric = \"wal_size_bytes\"\nabove = 1\n\
         actions = [\"command\"]\ncommand = [\"sh\", \"-c\", {script:?}]\n"
    );
    let policy = test_policy(&wal_table("w1", "wal.log", "", "")) + "\n" + &alert;
    write_policy(d.path(), &policy);
    let mut daemon = Daemon::start(d.path(), "policy.toml");
    assert!(
        wait_until(DEADLINE, || pidfile.exists()),
        "{}",
        daemon.dump()
    );
    let sleep = fs::read_to_string(&pidfile).unwrap().trim().to_string();
    assert!(sleep_alive(&sleep));
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit().expect("daemon exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", daemon.dump());
    assert!(
        wait_until(DEADLINE, || !sleep_alive(&sleep)),
        "the alert command's background sleep {sleep} outlived the daemon"
    );
}

/// A run interrupted by a crash (its journal and temp file left beside the WAL) is undone as
/// soon as the daemon starts, even when no trigger would ever run a compaction.
#[test]
fn an_interrupted_run_is_recovered_at_start_without_a_trigger() {
    use walcompactd::pipeline::journal::{self, Journal, Phase};
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(50));
    let before = fs::read(&wal).unwrap();
    let temp = walcompactd::fsutil::sibling(&wal, journal::TEMP_SUFFIX);
    fs::write(&temp, "partial").unwrap();
    let entry = Journal {
        phase: Phase::Writing,
        mode: Some(walcompactd::pipeline::Mode::Offline),
        temp: temp.clone(),
        backup: None,
        original_digest: None,
        pid: 1,
        len_at_swap: None,
        quarantine: None,
        temp_ino: None,
        wal_ino: None,
        archive: None,
    };
    journal::write(&wal, &entry).unwrap();
    write_policy(d.path(), &test_policy(&wal_table("w1", "wal.log", "", "")));
    let daemon = Daemon::start(d.path(), "policy.toml");
    let r = daemon.wait_for_log(|v| v["event"] == "recover" && v["wal"] == "w1");
    assert_eq!(r["recovered"], "DiscardedTemp", "{r}");
    assert!(!temp.exists() && !journal::journal_path(&wal).exists());
    assert_eq!(fs::read(&wal).unwrap(), before, "the WAL is untouched");
}
