//! A root process among files another user can write (logrotate's CVE-2011-1098): a user who
//! owns the WAL's directory plants a symlink, or a hard link, to a root-owned victim at every
//! name walcompactd creates there. `compact` in every mode, and the daemon, must never write,
//! truncate or remove the victim; each run completes or refuses naming what it found.
//! Needs root (it creates a user with `useradd` and removes it after); else it says it skipped.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use common::*;

/// A throwaway unprivileged user, removed on drop.
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

impl User {
    /// `tag` keeps the names of tests running at once apart.
    fn create(tag: &str) -> Option<User> {
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = format!("wcd{tag}{}", std::process::id() % 100_000);
        let ok = StdCommand::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        let id = |flag: &str| -> u32 {
            let out = StdCommand::new("id").args([flag, &name]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        let (uid, gid) = (id("-u"), id("-g"));
        Some(User { name, uid, gid })
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = StdCommand::new("userdel").arg(&self.name).status();
    }
}

/// Every name walcompactd creates beside `wal.log` (and backups named for the next seconds).
fn our_names() -> Vec<String> {
    let mut names: Vec<String> = [
        "wal.log.compact.lock",
        "wal.log.compact.journal",
        "wal.log.compact.journal.tmp",
        "wal.log.compact.tmp",
        "wal.log.rollback.tmp",
        "wal.log.compact.late",
        "wal.log.compact.late.tmp",
        "wal.log.lock",
        "wal_quarantine.log",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let now = chrono::Utc::now();
    for s in 0..4 {
        let t = now + chrono::Duration::seconds(s);
        let stamp = t.format("%Y%m%d_%H%M%S");
        names.push(format!("wal_backup_{stamp}.log"));
        names.push(format!("wal_archive_{stamp}.log.zst"));
        names.push(format!("wal_archive_{stamp}.log.zst.partial"));
    }
    names
}

/// The user's WAL directory with a WAL that has something to reclaim and a corrupt line
/// (so the quarantine file is written), and a root-owned victim elsewhere.
fn setup(user: &User) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let secret = d.path().join("root-only");
    fs::create_dir(&secret).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o700)).unwrap();
    let victim = secret.join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    let dir = d.path().join("app");
    fs::create_dir(&dir).unwrap();
    // Old history too (stamped 2020), so a retention run writes an archive.
    let old: String = (0..50)
        .map(|i| {
            stamped("PREPARE", &format!("old{i}"), "1600000000.5")
                + &stamped("COMMIT", &format!("old{i}"), "1600000001")
        })
        .collect();
    let text = old + &wal_text(200) + "{not json}\n" + &wal_text(50);
    let wal = write_wal(&dir, "wal.log", &text);
    for p in [&dir, &wal] {
        std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).unwrap();
    }
    (d, wal, victim)
}

/// Plants `name` in the WAL's directory: a symlink owned by the user, or a hard link.
fn plant(wal: &Path, name: &str, victim: &Path, user: &User, hard: bool) {
    let at = wal.parent().unwrap().join(name);
    if hard {
        fs::hard_link(victim, &at).unwrap();
    } else {
        symlink(victim, &at).unwrap();
        std::os::unix::fs::lchown(&at, Some(user.uid), Some(user.gid)).unwrap();
    }
}

fn assert_victim_intact(victim: &Path, links: u64, what: &str) {
    let m = fs::metadata(victim).unwrap_or_else(|e| panic!("{what}: the victim is gone ({e})"));
    assert_eq!(
        fs::read(victim).unwrap(),
        b"precious\n",
        "{what}: the victim was written"
    );
    assert_eq!(m.uid(), 0, "{what}: the victim changed owner");
    assert_eq!(m.mode() & 0o777, 0o644, "{what}: the victim changed mode");
    assert_eq!(m.nlink(), links, "{what}");
}

#[test]
fn planted_links_are_never_followed_by_compact_in_any_mode() {
    let Some(user) = User::create("c") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    for hard in [false, true] {
        for name in our_names() {
            for mode in ["offline", "lease", "online"] {
                let (_d, wal, victim) = setup(&user);
                fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
                plant(&wal, &name, &victim, &user, hard);
                let links = if hard { 2 } else { 1 };
                let what = format!(
                    "{} at {name}, --mode {mode}",
                    if hard { "hard link" } else { "symlink" }
                );
                let mut cmd = walcompactd();
                cmd.args(["compact", "--corrupt-lines", "quarantine", "--mode", mode]);
                // Retention too: the archive and its partial are names we create.
                cmd.args(["--expire-after", "86400"]);
                if mode != "offline" {
                    cmd.args(["--lock-timeout-ms", "300"]);
                }
                let out = cmd.arg(&wal).output().unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert_victim_intact(&victim, links, &what);
                if !out.status.success() {
                    assert!(
                        stderr.contains(&name) || stderr.contains("refusing"),
                        "{what}: a refusal must name what it found: {stderr}"
                    );
                }
                // Whatever happened, the WAL still replays as it did (or was compacted).
                walcompactd()
                    .arg("verify")
                    .arg(&wal)
                    .assert()
                    .code(predicates::ord::le(3));
            }
        }
    }
}

#[test]
fn planted_links_are_never_followed_by_the_daemon() {
    let Some(user) = User::create("d") else {
        eprintln!("skipped: needs root and useradd");
        return;
    };
    for hard in [false, true] {
        let (d, wal, victim) = setup(&user);
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
        let names = our_names();
        for name in &names {
            plant(&wal, name, &victim, &user, hard);
        }
        let links = if hard { 1 + names.len() as u64 } else { 1 };
        let policy = format!(
            "[[wal]]\nname = \"app\"\npath = \"{}\"\nmode = \"lease\"\ncorrupt_lines = \"quarantine\"\n\
             poll_interval_secs = 1\n\n[wal.triggers]\nmin_interval_secs = 0\nmin_reclaimable_bytes = 1\nmax_size_mb = 0.001\n\n\
             [wal.retention]\nexpire_after_secs = 86400\n",
            wal.display()
        );
        write_policy(d.path(), &test_policy(&policy));
        let daemon = Daemon::start(d.path(), "policy.toml");
        let run = daemon.wait_for_log(|v| v["event"] == "run" && v["wal"] == "app");
        drop(daemon);
        assert_victim_intact(&victim, links, &format!("daemon, hard={hard}: {run}"));
    }
}
