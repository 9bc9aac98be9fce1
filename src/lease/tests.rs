//! Against the real kernel: leases on files in a temp directory (which this process owns).

use super::*;
use std::process::{Command, Stdio};

fn temp_file(dir: &Path) -> PathBuf {
    let p = dir.join("wal.log");
    std::fs::write(&p, b"{}\n").unwrap();
    p
}

/// Whether the temp directory's filesystem grants leases at all (it does on ext4, xfs,
/// btrfs, tmpfs, overlayfs); tests that need one say so when it does not.
fn leases_here(p: &Path) -> bool {
    !matches!(
        ReadLease::try_take(p, None),
        Err(LeaseError::Unavailable { .. })
    )
}

#[test]
fn a_writer_opening_the_file_blocks_until_the_lease_is_released() {
    let d = tempfile::tempdir().unwrap();
    let p = temp_file(d.path());
    assert!(leases_here(&p), "this filesystem grants no leases");
    let lease = ReadLease::take(&p, None, Duration::from_secs(10)).unwrap();
    assert!(!lease.broken().unwrap());
    // The application's append: open for appending, one write, close.
    let mut writer = Command::new("python3")
        .args([
            "-c",
            "import sys; f = open(sys.argv[1], 'a'); f.write('x\\n'); f.close()",
        ])
        .arg(&p)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lease.broken().unwrap() {
        assert!(
            Instant::now() < deadline,
            "the writer's open never broke the lease"
        );
        assert!(
            writer.try_wait().unwrap().is_none(),
            "the writer got past the lease"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Its open is blocked in the kernel while we hold the lease: it has written nothing.
    assert!(
        writer.try_wait().unwrap().is_none(),
        "the writer got past the lease"
    );
    assert_eq!(std::fs::read(&p).unwrap(), b"{}\n");
    lease.release();
    assert!(writer.wait().unwrap().success());
    assert_eq!(std::fs::read(&p).unwrap(), b"{}\nx\n");
}

#[test]
fn no_lease_while_a_writer_holds_the_file_open() {
    let d = tempfile::tempdir().unwrap();
    let p = temp_file(d.path());
    let writer = OpenOptions::new().append(true).open(&p).unwrap();
    assert!(ReadLease::try_take(&p, None).unwrap().is_none());
    match ReadLease::take(&p, None, Duration::from_millis(20)) {
        Err(LeaseError::Busy { waited_ms: 20, .. }) => {}
        other => panic!("{other:?}"),
    }
    drop(writer);
    assert!(ReadLease::try_take(&p, None).unwrap().is_some());
}

#[test]
fn a_non_regular_file_is_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    match ReadLease::try_take(d.path(), None) {
        Err(e @ LeaseError::Unavailable { .. }) => {
            assert!(e.to_string().contains("not a regular file"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn another_inode_at_the_path_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = temp_file(d.path());
    let m = std::fs::metadata(&p).unwrap();
    assert!(
        ReadLease::try_take(&p, Some((m.dev(), m.ino())))
            .unwrap()
            .is_some()
    );
    let e = ReadLease::try_take(&p, Some((m.dev(), m.ino() + 1))).unwrap_err();
    assert!(e.to_string().contains("another file"), "{e}");
}

#[test]
fn the_filesystem_and_break_time_checks_read_the_system() {
    let d = tempfile::tempdir().unwrap();
    check_filesystem(d.path()).unwrap();
    match lease_break_time() {
        Ok(t) => assert!(t > Duration::ZERO),
        Err(e @ LeaseError::NoBreakTime) => assert!(e.to_string().contains("set it above 0")),
        Err(e) => panic!("{e}"),
    }
}
