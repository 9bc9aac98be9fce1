//! `walcompactd restore WAL --from-archive ARCHIVE [--print]` through the real binary: an
//! archive written by the library prints exactly its lines, and appends them to a stopped
//! WAL after a backup copy; a WAL held open or ending with a torn tail is refused, unchanged.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use walcompactd::pipeline::archive::{Archive, ArchiveWriter};

/// The lines of two expired transactions (one id not ASCII: archived bytes are the WAL's).
fn expired_lines() -> Vec<Vec<u8>> {
    vec![
        prepare("tx_old_1", 1).into_bytes(),
        commit("tx_old_1").into_bytes(),
        prepare("tx_old_\u{e9}", 7).into_bytes(),
        abort("tx_old_\u{e9}").into_bytes(),
    ]
}

/// An archive of `lines` for `wal`, written in `wal`'s directory by the library.
fn make_archive(wal: &Path, lines: &[Vec<u8>]) -> Archive {
    let meta = fs::metadata(wal).unwrap();
    let dir = wal.parent().unwrap();
    let mut w = ArchiveWriter::create(wal, dir, chrono::Utc::now(), &meta).unwrap();
    for l in lines {
        w.write_line(l).unwrap();
    }
    w.finish().unwrap()
}

/// A WAL of complete, live transactions.
fn live_wal(dir: &Path) -> PathBuf {
    let text = prepare("tx_a", 1) + &commit("tx_a") + &prepare("tx_b", 2);
    write_wal(dir, "wal.log", &text)
}

fn backups(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with("wal_backup_"))
        .collect()
}

/// `walcompactd restore WAL --from-archive ARCHIVE`, to run.
fn restore_from(wal: &Path, archive: &Path) -> assert_cmd::Command {
    let mut cmd = walcompactd();
    cmd.arg("restore")
        .arg(wal)
        .arg("--from-archive")
        .arg(archive);
    cmd
}

#[test]
fn print_writes_exactly_the_archived_lines_and_changes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let wal = live_wal(d.path());
    let lines = expired_lines();
    let archive = make_archive(&wal, &lines);
    let before = names(d.path());
    let out = walcompactd()
        .args(["restore"])
        .arg(&wal)
        .arg("--from-archive")
        .arg(&archive.path)
        .arg("--print")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, lines.concat());
    assert_eq!(names(d.path()), before);
}

#[test]
fn appends_the_lines_after_a_backup_copy_and_the_wal_verifies() {
    let d = tempfile::tempdir().unwrap();
    let wal = live_wal(d.path());
    let original = fs::read(&wal).unwrap();
    let lines = expired_lines();
    let archive = make_archive(&wal, &lines);
    let out = walcompactd()
        .args(["restore", "--json"])
        .arg(&wal)
        .arg("--from-archive")
        .arg(&archive.path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout_json(&out);
    let mut want = original.clone();
    want.extend(lines.concat());
    assert_eq!(fs::read(&wal).unwrap(), want);
    assert_eq!(report["lines"], lines.len() as u64);
    assert_eq!(report["bytes"], lines.concat().len() as u64);
    assert_eq!(report["archive"], archive.path.to_str().unwrap());
    assert_eq!(report["wal"], wal.to_str().unwrap());
    // The backup holds the WAL as it was: a copy, not a link that took the appended lines.
    let backup = PathBuf::from(report["previous_backup"].as_str().unwrap());
    assert_eq!(backups(d.path()).len(), 1);
    assert_eq!(fs::read(&backup).unwrap(), original);
    let verify = walcompactd().arg("verify").arg(&wal).output().unwrap();
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn refused_while_a_process_holds_the_wal_open_for_writing() {
    let d = tempfile::tempdir().unwrap();
    let wal = live_wal(d.path());
    let original = fs::read(&wal).unwrap();
    let archive = make_archive(&wal, &expired_lines());
    let writer = fs::OpenOptions::new().append(true).open(&wal).unwrap();
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .stdout(writer)
        .spawn()
        .unwrap();
    let out = restore_from(&wal, &archive.path).output().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("has the WAL open"), "{stderr}");
    assert!(stderr.contains(&child.id().to_string()), "{stderr}");
    assert!(stderr.contains("Nothing was changed"), "{stderr}");
    assert_eq!(fs::read(&wal).unwrap(), original);
    assert!(backups(d.path()).is_empty());
}

#[test]
fn refused_on_a_wal_ending_with_a_torn_tail() {
    let d = tempfile::tempdir().unwrap();
    let wal = live_wal(d.path());
    let archive = make_archive(&wal, &expired_lines());
    let torn = String::from_utf8(fs::read(&wal).unwrap()).unwrap() + "{\"op\": \"COMMIT\", \"tx_";
    fs::write(&wal, &torn).unwrap();
    let out = restore_from(&wal, &archive.path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("torn tail"), "{stderr}");
    assert!(stderr.contains("merge"), "{stderr}");
    assert_eq!(fs::read_to_string(&wal).unwrap(), torn);
    assert!(backups(d.path()).is_empty());
}

#[test]
fn a_damaged_archive_changes_nothing_and_prints_nothing() {
    let d = tempfile::tempdir().unwrap();
    let wal = live_wal(d.path());
    let original = fs::read(&wal).unwrap();
    let archive = make_archive(&wal, &expired_lines());
    let bytes = fs::read(&archive.path).unwrap();
    fs::write(&archive.path, &bytes[..bytes.len() - 4]).unwrap();
    for print in [false, true] {
        let mut cmd = restore_from(&wal, &archive.path);
        if print {
            cmd.arg("--print");
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{stderr}");
        assert!(stderr.contains("archive stage"), "{stderr}");
        assert!(out.stdout.is_empty(), "print={print}");
        assert_eq!(fs::read(&wal).unwrap(), original);
        assert!(backups(d.path()).is_empty());
    }
}
