//! Policy trust through the real binary: a policy whose commands would run as root is
//! refused when someone else could change it — the file, a directory above it, or a hook's
//! executable writable by group or others — by `check-policy` and `run` (exit 2, naming the
//! path and its mode) and by a reload (the running policy stays); the escape hatch
//! `WALCOMPACTD_INSECURE_POLICY=1` lets it through with a warning. The rule's cases (sticky
//! directories, owners, symlinks, `PATH`) are unit-tested in `src/policy/trust/tests.rs`.
//!
//! The checks apply as root (and to other users' policy files): these tests need root, as
//! CI runs them; as another user they say they skipped.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// `run` on a refused policy exits at once; this only bounds a regression that starts it.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the checks apply to our own files: they do only as root.
fn root() -> bool {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the policy trust checks apply to one's own files only as root");
        return false;
    }
    true
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// A temp dir by its canonical path, as the refusals name it.
fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().canonicalize().unwrap();
    (d, path)
}

/// `check-policy PATH`: exit code and stderr.
fn check_policy(policy: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = walcompactd()
        .arg("check-policy")
        .arg(policy)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `run --policy PATH` in `dir`: exit code and stderr.
fn run(dir: &Path, policy: &Path) -> (Option<i32>, String) {
    let out = walcompactd()
        .arg("run")
        .arg("--policy")
        .arg(policy)
        .current_dir(dir)
        .timeout(RUN_TIMEOUT)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check-policy` and `run` both exit 2 with a message containing every one of `needles`.
fn both_refuse(dir: &Path, policy: &Path, needles: &[&str]) {
    for (what, (code, err)) in [
        ("check-policy", check_policy(policy, &[])),
        ("run", run(dir, policy)),
    ] {
        assert_eq!(code, Some(2), "{what}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{what}: {needle:?} not in: {err}");
        }
    }
}

#[test]
fn a_policy_file_writable_by_others_is_refused() {
    if !root() {
        return;
    }
    let (_d, dir) = tempdir();
    let policy = dir.join("policy.toml");
    fs::write(&policy, test_policy("")).unwrap();
    assert_eq!(check_policy(&policy, &[]).0, Some(0), "accepted at 0644");
    chmod(&policy, 0o666);
    let mode = format!(
        "{}: mode 0666 is writable by group or others",
        policy.display()
    );
    both_refuse(&dir, &policy, &[&mode, "refusing", "chmod go-w"]);
}

#[test]
fn a_policy_in_a_world_writable_directory_without_the_sticky_bit_is_refused() {
    if !root() {
        return;
    }
    let (_d, dir) = tempdir();
    let open = dir.join("open");
    fs::create_dir(&open).unwrap();
    let policy = open.join("policy.toml");
    fs::write(&policy, test_policy("")).unwrap();
    chmod(&open, 0o777);
    let mode = format!(
        "{}: mode 0777 is writable by group or others without the sticky bit",
        open.display()
    );
    both_refuse(&dir, &policy, &[&mode]);
    // With the sticky bit (as /tmp), only an entry's owner may replace it: accepted.
    chmod(&open, 0o1777);
    let (code, err) = check_policy(&policy, &[]);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_hook_executable_writable_by_others_is_refused_under_its_key() {
    if !root() {
        return;
    }
    let (_d, dir) = tempdir();
    let hook = dir.join("hook.sh");
    fs::write(&hook, "#!/bin/sh\ntouch hook-ran\n").unwrap();
    chmod(&hook, 0o755);
    let hooks = format!(
        "[wal.hooks]\npre_compact = [{:?}]\n",
        hook.display().to_string()
    );
    let policy = dir.join("policy.toml");
    fs::write(
        &policy,
        test_policy(&wal_table("w1", "wal.log", "", &hooks)),
    )
    .unwrap();
    let (code, err) = check_policy(&policy, &[]);
    assert_eq!(code, Some(0), "accepted at 0755: {err}");
    chmod(&hook, 0o777);
    let keyed = format!(
        "wal[0].hooks.pre_compact[0]: {}: mode 0777 is writable by group or others; \
         refusing to run it as root",
        hook.display()
    );
    both_refuse(&dir, &policy, &[&keyed]);
    assert!(!dir.join("hook-ran").exists());
}

/// The policy turned writable by others under a running daemon: the reload (the watcher's,
/// then SIGHUP's) is refused with the file's mode, the daemon goes on with the old policy;
/// made private again, the same file reloads.
#[test]
fn a_reload_of_a_policy_turned_writable_by_others_keeps_the_running_one() {
    if !root() {
        return;
    }
    let (_d, dir) = tempdir();
    write_wal(&dir, "a.log", &clean_wal("a", 10));
    write_wal(&dir, "b.log", &clean_wal("b", 10));
    write_policy(&dir, &test_policy(&wal_table("wa", "a.log", "", "")));
    let daemon = Daemon::start(&dir, "policy.toml");
    daemon.wait_for_log(|v| v["event"] == "supervisor" && v["wal"] == "wa");
    let policy = dir.join("policy.toml");
    chmod(&policy, 0o666);
    // Rewritten in place (the mode stays): a second WAL that must not start.
    let both = wal_table("wa", "a.log", "", "") + &wal_table("wb", "b.log", "", "");
    fs::write(&policy, test_policy(&both)).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let err = daemon.wait_for_log(|v| {
        v["event"] == "policy_error" && message(v).contains("mode 0666 is writable")
    });
    assert!(
        message(&err).contains(&policy.display().to_string()),
        "{err}"
    );
    let summary = daemon.wait_for_log(|v| {
        v["event"] == "policy_error" && message(v).contains("keeping the running policy")
    });
    assert!(message(&summary).contains("not trusted"), "{summary}");
    // Still running, still on the old policy.
    std::thread::sleep(Duration::from_secs(2));
    assert!(nix::sys::signal::kill(daemon.pid(), None).is_ok());
    assert_eq!(
        daemon.count(|v| v["event"] == "supervisor" && v["wal"] == "wb"),
        0,
        "{}",
        daemon.dump()
    );
    assert_eq!(
        daemon.count(|v| v["event"] == "policy" && message(v).contains("reloaded")),
        0
    );
    // Private again: the same text is trusted and applied.
    chmod(&policy, 0o644);
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    daemon.wait_for_log(|v| v["event"] == "policy" && message(v).contains("reloaded"));
    daemon.wait_for_log(|v| v["event"] == "supervisor" && v["wal"] == "wb");
}

#[test]
fn the_escape_hatch_lets_an_insecure_policy_through_with_a_warning() {
    if !root() {
        return;
    }
    let (_d, dir) = tempdir();
    write_policy(&dir, &test_policy(""));
    let policy = dir.join("policy.toml");
    chmod(&policy, 0o666);
    let hatch = [("WALCOMPACTD_INSECURE_POLICY", "1")];
    let (code, err) = check_policy(&policy, &hatch);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: WALCOMPACTD_INSECURE_POLICY=1"),
        "{err}"
    );
    // Only `1` opens it.
    let (code, _) = check_policy(&policy, &[("WALCOMPACTD_INSECURE_POLICY", "yes")]);
    assert_eq!(code, Some(2));
    let daemon = Daemon::start_with_env(&dir, "policy.toml", &hatch);
    let warn = daemon.wait_for_log(|v| v["event"] == "policy_trust");
    assert_eq!(warn["level"], "WARN", "{warn}");
    assert!(message(&warn).contains("not checked"), "{warn}");
    // And again at a reload.
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    daemon.wait_for_nth(2, |v| v["event"] == "policy_trust");
}
