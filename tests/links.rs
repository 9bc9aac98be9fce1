//! WALs behind links, through the real binary: a symlink at the WAL's path (the real file
//! is compacted, the symlink stays a symlink) and WALs with other hard links (refused
//! unless allowed; the tool's own leftover backups do not count).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};

use common::*;

/// `dir/wal.log -> data/wal.log` holding `content`; returns (symlink, real file).
fn symlinked_wal(dir: &Path, content: &str) -> (PathBuf, PathBuf) {
    fs::create_dir(dir.join("data")).unwrap();
    let real = write_wal(&dir.join("data"), "wal.log", content);
    let link = dir.join("wal.log");
    symlink("data/wal.log", &link).unwrap();
    (link, fs::canonicalize(&real).unwrap())
}

fn is_symlink_to(link: &Path, target: &str) -> bool {
    fs::symlink_metadata(link).unwrap().file_type().is_symlink()
        && fs::read_link(link).unwrap() == Path::new(target)
}

#[test]
fn compact_through_a_symlink_compacts_the_real_file_and_keeps_the_link() {
    let d = tempfile::tempdir().unwrap();
    let (link, real) = symlinked_wal(d.path(), &wal_text(200));
    let original = fs::read(&real).unwrap();
    let ino = fs::metadata(&real).unwrap().ino();
    let before = digest(&link);
    let v = compact_json(&link, &[]);
    assert_eq!(v["wal"], link.to_str().unwrap(), "the path as given");
    assert_eq!(v["compacted"], real.to_str().unwrap(), "the file compacted");
    assert!(
        is_symlink_to(&link, "data/wal.log"),
        "still the same symlink"
    );
    assert!(fs::metadata(&real).unwrap().len() < original.len() as u64);
    assert_eq!(digest(&real), before);
    // The backup is a hard link of the real file's original inode, beside it.
    let backup = PathBuf::from(v["backup"].as_str().unwrap());
    assert_eq!(backup.parent().unwrap(), real.parent().unwrap());
    let meta = fs::symlink_metadata(&backup).unwrap();
    assert!(
        meta.file_type().is_file(),
        "a regular file, not a link to a link"
    );
    assert_eq!(meta.ino(), ino, "the original inode");
    assert_eq!(fs::read(&backup).unwrap(), original);
    // Lock, journal, temp and backup all live beside the real file, nothing beside the link.
    assert_eq!(names(d.path()), ["data", "wal.log"]);
    assert!(names(&d.path().join("data")).contains(&"wal.log.compact.lock".to_string()));

    // Human output says which file was compacted.
    append(&real, &(prepare("again", 1) + &prepare("again", 2)));
    walcompactd()
        .arg("compact")
        .arg(&link)
        .assert()
        .success()
        .stdout(predicates::str::contains(format!(
            "compacted: {}",
            real.display()
        )));
    assert!(is_symlink_to(&link, "data/wal.log"));
}

#[test]
fn backup_and_recover_through_a_symlink_use_the_real_file() {
    let d = tempfile::tempdir().unwrap();
    let (link, real) = symlinked_wal(d.path(), &redundant_wal(20));
    let out = walcompactd()
        .args(["backup", "--json"])
        .arg(&link)
        .output()
        .unwrap();
    assert!(out.status.success());
    let backup = PathBuf::from(stdout_json(&out)["backup"].as_str().unwrap());
    let meta = fs::symlink_metadata(&backup).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.ino(), fs::metadata(&real).unwrap().ino());
    // A leftover temp beside the real file is what recovery through the link removes.
    fs::write(real.with_file_name("wal.log.compact.tmp"), "stale").unwrap();
    walcompactd().arg("recover").arg(&link).assert().success();
    assert!(!real.with_file_name("wal.log.compact.tmp").exists());
    assert!(is_symlink_to(&link, "data/wal.log"));
}

/// The daemon watches a WAL configured through a symlink in the real file's directory too:
/// appends through the real path (the application's) trigger a run, which compacts the real
/// file and leaves the symlink in place. The poll is an hour, so only the watch can see it.
#[test]
fn daemon_compacts_a_symlinked_wal_appended_through_its_real_path() {
    let d = tempfile::tempdir().unwrap();
    let seed = clean_wal("a", 200);
    let (link, real) = symlinked_wal(d.path(), &seed);
    let policy = test_policy(
        "[[wal]]\nname = \"w\"\npath = \"wal.log\"\npoll_interval_secs = 3600\n\
         [wal.triggers]\nmax_size_mb = 0.001\nmin_reclaimable_bytes = 1\nmin_interval_secs = 0\n",
    );
    fs::write(d.path().join("policy.toml"), policy).unwrap();
    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.wait_for_log(|v| v["event"] == "blocked");
    let extra = prepare("late", 1) + &prepare("late", 2);
    append(&real, &extra);
    let run = daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "success");
    let backup = PathBuf::from(run["backup"].as_str().unwrap());
    assert_eq!(backup.parent().unwrap(), real.parent().unwrap(), "{run}");
    assert!(is_symlink_to(&link, "data/wal.log"));
    let expected =
        walcompactd::pipeline::compact::compact_bytes((seed + &extra).as_bytes()).unwrap();
    assert_eq!(fs::read(&real).unwrap(), expected);
}

/// Entries of `dir` a compaction would leave: backups, temp files, journals.
fn run_litter(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.contains("_backup_") || n.ends_with(".tmp") || n.ends_with(".journal"))
        .collect()
}

#[test]
fn a_wal_with_another_hard_link_is_refused_unless_allowed() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(100));
    let alias = d.path().join("alias.log");
    fs::hard_link(&wal, &alias).unwrap();
    let original = fs::read(&wal).unwrap();
    let out = walcompactd().arg("compact").arg(&wal).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&wal.display().to_string())
            && stderr.contains("has 2 hard links (st_nlink = 2)")
            && stderr.contains("allow_hard_links = true")
            && stderr.contains("--allow-hard-links"),
        "{stderr}"
    );
    assert_eq!(fs::read(&wal).unwrap(), original, "nothing changed");
    assert!(run_litter(d.path()).is_empty(), "{:?}", names(d.path()));
    assert_eq!(
        fs::metadata(&alias).unwrap().ino(),
        fs::metadata(&wal).unwrap().ino()
    );

    let before = digest(&wal);
    walcompactd()
        .args(["compact", "--allow-hard-links"])
        .arg(&wal)
        .assert()
        .success();
    assert_eq!(digest(&wal), before);
    assert!(fs::metadata(&wal).unwrap().len() < original.len() as u64);
    assert_eq!(
        fs::read(&alias).unwrap(),
        original,
        "the alias keeps the old file"
    );
}

/// A hard-link backup left by an earlier run (killed between its backup and its swap) is
/// this tool's own name for the inode: it does not block later runs, beside the WAL or in
/// the backup directory. With another link as well, the message says what was not counted.
#[test]
fn leftover_backups_of_our_own_do_not_count_as_hard_links() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(100));
    let before = digest(&wal);
    let bk = d.path().join("bk");
    fs::create_dir(&bk).unwrap();
    fs::hard_link(&wal, d.path().join("wal_backup_20200101_000000.log")).unwrap();
    fs::hard_link(&wal, bk.join("wal_backup_20200101_000001.log")).unwrap();
    assert_eq!(fs::metadata(&wal).unwrap().nlink(), 3);

    let alias = d.path().join("alias.log");
    fs::hard_link(&wal, &alias).unwrap();
    let out = walcompactd()
        .args(["compact", "--backup-dir"])
        .arg(&bk)
        .arg(&wal)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("has 2 hard links (st_nlink = 4, not counting 2 of walcompactd's own"),
        "{stderr}"
    );
    fs::remove_file(&alias).unwrap();

    walcompactd()
        .args(["compact", "--backup-dir"])
        .arg(&bk)
        .arg(&wal)
        .assert()
        .success();
    assert_eq!(digest(&wal), before);
}

/// The daemon refuses too, and logs why; `allow_hard_links = true` in the policy lets it
/// compact (check-policy prints the key).
#[test]
fn daemon_logs_the_hard_link_refusal_and_the_policy_can_allow_it() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &wal_text(100));
    fs::hard_link(&wal, d.path().join("alias.log")).unwrap();
    let original = fs::read(&wal).unwrap();
    let policy = |allow: bool| {
        test_policy(&format!(
            "[[wal]]\nname = \"w\"\npath = \"wal.log\"\npoll_interval_secs = 1\n\
             allow_hard_links = {allow}\n\
             [wal.triggers]\nmax_size_mb = 0.001\nmin_reclaimable_bytes = 1\nmin_interval_secs = 0\n"
        ))
    };
    fs::write(d.path().join("policy.toml"), policy(false)).unwrap();
    walcompactd()
        .current_dir(d.path())
        .args(["check-policy", "policy.toml"])
        .assert()
        .success()
        .stdout(predicates::str::contains("allow_hard_links = false"));
    {
        let daemon = Daemon::start(d.path(), "policy.toml");
        let run = daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "failed");
        let msg = run["message"].as_str().unwrap();
        assert!(msg.contains("has 2 hard links (st_nlink = 2)"), "{msg}");
        assert_eq!(fs::read(&wal).unwrap(), original);
        assert!(run_litter(d.path()).is_empty(), "{:?}", names(d.path()));
    }
    fs::write(d.path().join("policy.toml"), policy(true)).unwrap();
    // A fresh state: no backoff after the refused run.
    fs::remove_dir_all(d.path().join("state")).unwrap();
    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "success");
    assert!(fs::metadata(&wal).unwrap().len() < original.len() as u64);
}
