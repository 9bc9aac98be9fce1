//! Planted names are never followed: a symlink or a foreign file where ours goes is refused,
//! a leftover of ours is replaced, nothing outside is written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

use super::*;

fn setup() -> (tempfile::TempDir, Dir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let victim = d.path().join("victim");
    fs::write(&victim, b"precious\n").unwrap();
    fs::create_dir(d.path().join("wal")).unwrap();
    let dir = Dir::open(&d.path().join("wal")).unwrap();
    (d, dir, victim)
}

#[test]
fn a_planted_symlink_is_refused_and_its_target_untouched() {
    let (_d, dir, victim) = setup();
    symlink(&victim, dir.path_of("x.tmp".as_ref())).unwrap();
    let e = dir.create_new("x.tmp".as_ref(), 0o600).unwrap_err();
    assert!(e.to_string().contains("a symlink owned by uid"), "{e}");
    let e = dir
        .open_persistent("x.tmp".as_ref(), 0o600, Owners::Anyone)
        .unwrap_err();
    assert!(e.to_string().contains("a symlink"), "{e}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
}

#[test]
fn a_hard_link_to_another_file_is_refused() {
    let (_d, dir, victim) = setup();
    fs::hard_link(&victim, dir.path_of("x.lock".as_ref())).unwrap();
    let e = dir
        .open_persistent("x.lock".as_ref(), 0o600, Owners::Anyone)
        .unwrap_err();
    assert!(e.to_string().contains("other hard links"), "{e}");
    let e = dir.create_new("x.lock".as_ref(), 0o600).unwrap_err();
    assert!(e.to_string().contains("other hard links"), "{e}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
}

#[test]
fn a_leftover_of_ours_is_replaced_with_the_mode_asked() {
    let (_d, dir, _victim) = setup();
    fs::write(dir.path_of("x.tmp".as_ref()), b"old").unwrap();
    let mut f = dir.create_new("x.tmp".as_ref(), 0o600).unwrap();
    f.write_all(b"new").unwrap();
    let m = fs::metadata(dir.path_of("x.tmp".as_ref())).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read(dir.path_of("x.tmp".as_ref())).unwrap(), b"new");
}

#[test]
fn rename_replaces_a_planted_link_not_its_target() {
    let (_d, dir, victim) = setup();
    symlink(&victim, dir.path_of("state".as_ref())).unwrap();
    fs::write(dir.path_of("state.tmp".as_ref()), b"ours").unwrap();
    dir.rename("state.tmp".as_ref(), "state".as_ref()).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    let m = fs::symlink_metadata(dir.path_of("state".as_ref())).unwrap();
    assert!(m.is_file() && m.nlink() == 1);
}

#[test]
fn a_persistent_file_of_another_owner_is_refused_unless_allowed() {
    let (_d, dir, _victim) = setup();
    let p = dir.path_of("x.lock".as_ref());
    fs::write(&p, b"theirs").unwrap();
    std::os::unix::fs::chown(&p, Some(65534), None).unwrap();
    let e = dir
        .open_persistent("x.lock".as_ref(), 0o600, Owners::UsOr(None))
        .unwrap_err();
    assert!(e.to_string().contains("a file owned by uid 65534"), "{e}");
    let theirs = Owners::UsOr(Some(65534));
    drop(
        dir.open_persistent("x.lock".as_ref(), 0o600, theirs)
            .unwrap(),
    );
    assert_eq!(fs::read(&p).unwrap(), b"theirs");
}

#[test]
fn a_persistent_file_of_ours_is_reopened_without_truncation() {
    let (_d, dir, _victim) = setup();
    fs::write(dir.path_of("x.lock".as_ref()), b"holder").unwrap();
    drop(
        dir.open_persistent("x.lock".as_ref(), 0o600, Owners::UsOr(None))
            .unwrap(),
    );
    assert_eq!(fs::read(dir.path_of("x.lock".as_ref())).unwrap(), b"holder");
}
