//! Recovery from the late record: what an interrupted leased exchange left is merged once.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::*;

/// A swapped state as an interrupted exchange leaves it: the new WAL at `wal` copies the
/// old inode (at `old_at`) from `old_from`/`new_from` on; returns the record.
fn swapped(
    dir: &Path,
    old: &[u8],
    old_from: u64,
    new: &[u8],
    new_from: u64,
) -> (PathBuf, LateRecord) {
    let wal = dir.join("wal.log");
    let old_at = dir.join("wal.log.compact.tmp");
    fs::write(&old_at, old).unwrap();
    fs::write(&wal, new).unwrap();
    let (o, n) = (fs::metadata(&old_at).unwrap(), fs::metadata(&wal).unwrap());
    let record = LateRecord {
        old_at,
        dev: o.dev(),
        old_ino: o.ino(),
        new_ino: n.ino(),
        old_from,
        new_from,
    };
    write_record(&wal, &record).unwrap();
    (wal, record)
}

const PREFIX_OLD: &[u8] = b"a1\na2\na3\n";
const PREFIX_NEW: &[u8] = b"A\n";

fn case(old_tail: &[u8], new_tail: &[u8]) -> (tempfile::TempDir, PathBuf, LateRecord) {
    let d = tempfile::tempdir().unwrap();
    let old = [PREFIX_OLD, old_tail].concat();
    let new = [PREFIX_NEW, new_tail].concat();
    let (wal, r) = swapped(
        d.path(),
        &old,
        PREFIX_OLD.len() as u64,
        &new,
        PREFIX_NEW.len() as u64,
    );
    (d, wal, r)
}

#[test]
fn lines_not_yet_merged_are_appended_after_what_writers_wrote_since() {
    // Delta d1 copied under the lease; late l1 l2 never merged; w1 written after the crash.
    let (_d, wal, r) = case(b"d1\nl1\nl2\n", b"d1\nw1\n");
    assert!(recover(&wal).unwrap().is_some());
    assert_eq!(fs::read(&wal).unwrap(), b"A\nd1\nw1\nl1\nl2\n");
    assert!(!r.old_at.exists() && !record_path(&wal).exists());
}

#[test]
fn a_partly_merged_old_file_gets_only_the_rest() {
    let (_d, wal, _r) = case(b"d1\nl1\nl2\n", b"d1\nl1\nw1\n");
    assert!(recover(&wal).unwrap().is_some());
    assert_eq!(fs::read(&wal).unwrap(), b"A\nd1\nl1\nw1\nl2\n");
}

#[test]
fn a_fully_merged_old_file_adds_nothing() {
    let (_d, wal, _r) = case(b"d1\nl1\n", b"d1\nl1\nw1\n");
    assert!(recover(&wal).unwrap().is_some());
    assert_eq!(fs::read(&wal).unwrap(), b"A\nd1\nl1\nw1\n");
}

#[test]
fn a_line_sharing_a_prefix_with_a_late_one_does_not_swallow_it() {
    // w1 begins like l1: the shared bytes end mid-line, so l1 is appended whole.
    let (_d, wal, _r) = case(b"d1\nlate-1\n", b"d1\nlate-2\n");
    assert!(recover(&wal).unwrap().is_some());
    assert_eq!(fs::read(&wal).unwrap(), b"A\nd1\nlate-2\nlate-1\n");
}

#[test]
fn no_exchange_means_nothing_to_merge_and_the_record_goes() {
    let (_d, wal, r) = case(b"d1\nl1\n", b"d1\n");
    // The exchange never happened: the WAL's path holds another inode than the new one.
    let other = wal.with_extension("other");
    fs::write(&other, b"the original\n").unwrap();
    fs::rename(&other, &wal).unwrap();
    assert!(recover(&wal).unwrap().is_some());
    assert_eq!(fs::read(&wal).unwrap(), b"the original\n");
    assert!(r.old_at.exists(), "not ours to remove");
    assert!(!record_path(&wal).exists());
}

#[test]
fn no_record_is_none() {
    let d = tempfile::tempdir().unwrap();
    assert_eq!(recover(&d.path().join("wal.log")).unwrap(), None);
}
