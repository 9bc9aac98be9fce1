//! Copies of transaction data never widen permissions: a `0600` WAL's backup (a hard link on
//! the same filesystem, a copy on another), its quarantine file and the compacted WAL itself
//! are `0600` and owned like the WAL. Run as root, the WAL belongs to `nobody` (so ownership
//! is really carried over); otherwise to the test's own user.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

fn owner_and_mode(p: &Path) -> (u32, u32) {
    let m = fs::metadata(p).unwrap();
    (m.uid(), m.mode() & 0o7777)
}

fn private_wal(dir: &Path) -> (std::path::PathBuf, u32) {
    let text = wal_text(100) + "{not json}\n" + &wal_text(20);
    let wal = write_wal(dir, "wal.log", &text);
    fs::set_permissions(&wal, fs::Permissions::from_mode(0o600)).unwrap();
    let uid = if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&wal, Some(65534), Some(65534)).unwrap();
        65534
    } else {
        unsafe { libc::geteuid() }
    };
    (wal, uid)
}

fn compact_into(wal: &Path, backup_dir: Option<&Path>) -> serde_json::Value {
    let mut args = vec!["--corrupt-lines", "quarantine"];
    let dir;
    if let Some(b) = backup_dir {
        dir = b.display().to_string();
        args.extend(["--backup-dir", dir.as_str()]);
    }
    compact_json(wal, &args)
}

fn assert_private(r: &serde_json::Value, wal: &Path, uid: u32) {
    for key in ["backup", "quarantine"] {
        let p = Path::new(r[key].as_str().unwrap_or_else(|| panic!("no {key}: {r}")));
        assert_eq!(owner_and_mode(p), (uid, 0o600), "{key} {}", p.display());
    }
    assert_eq!(owner_and_mode(wal), (uid, 0o600), "the compacted WAL");
}

#[test]
fn a_private_wal_stays_private_in_its_backup_and_quarantine_on_the_same_filesystem() {
    let d = tempfile::tempdir().unwrap();
    let (wal, uid) = private_wal(d.path());
    let r = compact_into(&wal, None);
    assert_eq!(r["backup_linked"], true, "{r}");
    assert_private(&r, &wal, uid);
}

#[test]
fn a_private_wal_stays_private_in_a_copied_backup_and_quarantine_on_another_filesystem() {
    let d = tempfile::tempdir().unwrap();
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() || fs::metadata(shm).unwrap().dev() == fs::metadata(d.path()).unwrap().dev() {
        eprintln!("SKIPPED: no second filesystem at /dev/shm");
        return;
    }
    let other = tempfile::tempdir_in(shm).unwrap();
    let (wal, uid) = private_wal(d.path());
    // Even under a permissive umask (only this test's binary, and only this test creates
    // files that depend on it).
    unsafe { libc::umask(0) };
    let r = compact_into(&wal, Some(other.path()));
    assert_eq!(r["backup_linked"], false, "{r}");
    assert_private(&r, &wal, uid);
}
