use super::*;
use std::io::Read;
use std::sync::mpsc;

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap()
}

#[test]
fn appends_land_in_order() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wal.log");
    let mut w = WalWriter::open(&p, Durability::Fsync).unwrap();
    assert!(lock_path(&p).exists(), "lock file created at open");
    let mut expected = String::new();
    for i in 0..100 {
        let line = format!("{{\"n\":{i}}}");
        let stats = w.append(line.as_bytes()).unwrap();
        assert_eq!(stats.offset, expected.len() as u64);
        assert_eq!(stats.bytes, line.len() + 1);
        assert!(stats.synced && !stats.reopened);
        expected.push_str(&line);
        expected.push('\n');
    }
    // A line given with its final newline is written as is, not doubled.
    w.append(b"{\"last\":true}\n").unwrap();
    expected.push_str("{\"last\":true}\n");
    assert_eq!(read(&p), expected);
}

#[test]
fn append_json_writes_one_compact_line() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wal.log");
    let mut w = WalWriter::open(&p, Durability::None).unwrap();
    let v = serde_json::json!({"op": "PREPARE", "tx_id": "t1", "data": {"s": "a\nb"}});
    w.append_json(&v).unwrap();
    let text = read(&p);
    assert_eq!(text.lines().count(), 1);
    let back: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(back, v);
}

#[test]
fn embedded_newline_and_empty_line_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wal.log");
    let mut w = WalWriter::open(&p, Durability::None).unwrap();
    assert!(matches!(
        w.append(b"{\"a\":1}\n{\"b\":2}"),
        Err(WriterError::EmbeddedNewline { at: 7 })
    ));
    assert!(matches!(
        w.append(b"x\n\n"),
        Err(WriterError::EmbeddedNewline { at: 1 })
    ));
    assert!(matches!(w.append(b""), Err(WriterError::EmptyLine)));
    assert!(matches!(w.append(b"\n"), Err(WriterError::EmptyLine)));
    assert_eq!(read(&p), "", "nothing written for a refused line");
}

#[test]
fn fsync_every_n_syncs_on_the_nth_append() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wal.log");
    let mut w = WalWriter::open(&p, Durability::FsyncEvery(3)).unwrap();
    let synced: Vec<bool> = (0..7).map(|_| w.append(b"x").unwrap().synced).collect();
    assert_eq!(
        synced,
        [false, false, true, false, false, true, false],
        "every third append syncs"
    );
}

/// Simulates a compactor swap: under the protocol lock, write `content` to a temp file
/// and rename it over the WAL.
fn swap_under_lock(wal: &Path, content: &[u8]) {
    let lock = File::open(lock_path(wal)).unwrap();
    lock.lock().unwrap();
    let tmp = wal.with_extension("compact.tmp");
    fs::write(&tmp, content).unwrap();
    fs::rename(&tmp, wal).unwrap();
    lock.unlock().unwrap();
}

#[test]
fn after_a_swap_appends_go_to_the_new_file_only() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wal.log");
    let mut w = WalWriter::open(&p, Durability::None).unwrap();
    w.append(b"{\"n\":1}").unwrap();
    // Keep a handle on the old inode to see what it receives after the swap.
    let mut old = File::open(&p).unwrap();
    swap_under_lock(&p, b"{\"compacted\":true}\n");

    let stats = w.append(b"{\"n\":2}").unwrap();
    assert!(stats.reopened, "the inode change is noticed");
    assert_eq!(stats.offset, "{\"compacted\":true}\n".len() as u64);
    let stats = w.append(b"{\"n\":3}").unwrap();
    assert!(
        !stats.reopened,
        "reopened once, then the new handle is kept"
    );

    assert_eq!(read(&p), "{\"compacted\":true}\n{\"n\":2}\n{\"n\":3}\n");
    let mut old_text = String::new();
    old.read_to_string(&mut old_text).unwrap();
    assert_eq!(old_text, "{\"n\":1}\n", "the old inode gets nothing more");
}

#[test]
fn a_missing_wal_is_recreated() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wal.log");
    let mut w = WalWriter::open(&p, Durability::None).unwrap();
    w.append(b"{\"n\":1}").unwrap();
    fs::remove_file(&p).unwrap();
    let stats = w.append(b"{\"n\":2}").unwrap();
    assert!(stats.reopened);
    assert_eq!(stats.offset, 0);
    assert_eq!(read(&p), "{\"n\":2}\n");
}

/// The audit mirror fails after the WAL write (`/dev/full` accepts the open, then fails
/// every write with ENOSPC): the error says the line is in the WAL and is not retry-safe,
/// and a caller that retries only on retry-safe errors leaves the line there exactly once.
#[test]
fn a_failed_mirror_write_says_the_line_is_in_the_wal() {
    let full = Path::new("/dev/full");
    if !full.exists() {
        eprintln!("SKIPPED: no /dev/full");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wal.log");
    let mut w = WalWriter::open(&p, Durability::Fsync).unwrap();
    w.mirror_to(full).unwrap();
    let line = b"{\"op\": \"COMMIT\", \"tx_id\": \"t1\"}";
    let mut attempts = 0;
    let err = loop {
        attempts += 1;
        match w.append(line) {
            Err(e) if e.is_retry_safe() && attempts < 3 => continue,
            Err(e) => break e,
            Ok(stats) => panic!("the mirror write cannot succeed: {stats:?}"),
        }
    };
    assert_eq!(attempts, 1, "not retried: {err}");
    assert!(!err.is_retry_safe());
    match &err {
        WriterError::AppendedButMirrorFailed {
            wal,
            mirror,
            source,
        } => {
            assert_eq!(wal, &p);
            assert_eq!(mirror, full);
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("do not retry"), "{err}");
    assert_eq!(
        read(&p),
        "{\"op\": \"COMMIT\", \"tx_id\": \"t1\"}\n",
        "the line is in the WAL exactly once"
    );
    // The lock was released: another writer appends.
    let mut other = WalWriter::open(&p, Durability::None).unwrap();
    other.append(b"{\"n\":2}").unwrap();
    assert_eq!(read(&p).lines().count(), 2);
}

#[test]
fn errors_before_the_write_are_retry_safe() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wal.log");
    let mut w = WalWriter::open(&p, Durability::None).unwrap();
    assert!(w.append(b"").unwrap_err().is_retry_safe());
    assert!(w.append(b"a\nb").unwrap_err().is_retry_safe());
    let torn = WriterError::Write {
        path: p.clone(),
        written: 3,
        len: 9,
        source: io::ErrorKind::WriteZero.into(),
    };
    assert!(
        !torn.is_retry_safe(),
        "a torn fragment: the next line would be glued to it"
    );
    let nothing = WriterError::Write {
        path: p.clone(),
        written: 0,
        len: 9,
        source: io::ErrorKind::WriteZero.into(),
    };
    assert!(nothing.is_retry_safe());
    let fsync = WriterError::Io {
        op: Operation::Fsync,
        path: p.clone(),
        source: io::Error::other("x"),
    };
    assert!(
        !fsync.is_retry_safe(),
        "the line was written before the fsync"
    );
    assert_eq!(read(&p), "");
}

#[test]
fn open_reports_the_operation_and_path() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("no-such-dir").join("wal.log");
    let err = WalWriter::open(&p, Durability::None).unwrap_err();
    match &err {
        WriterError::Io { op, path, .. } => {
            assert_eq!(*op, Operation::OpenLockFile);
            assert_eq!(path, &lock_path(&p));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().starts_with("open lock file "), "{err}");
}

#[test]
fn the_lock_excludes_appends_while_held() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("wal.log");
    let mut w = WalWriter::open(&p, Durability::None).unwrap();

    // Another open file description of the lock file, as another process would have.
    let holder = File::open(lock_path(&p)).unwrap();
    holder.lock().unwrap();

    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let r = w.append(b"{\"n\":1}").map(|s| s.waited);
        tx.send(r.is_ok()).unwrap();
    });
    // While held, the append must not complete. (A slow machine can only make this
    // check weaker, never make it fail spuriously.)
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "append completed while another holder had LOCK_EX"
    );
    assert_eq!(read(&p), "", "nothing written while the lock is held");

    holder.unlock().unwrap();
    assert!(
        rx.recv_timeout(Duration::from_secs(60))
            .expect("append completes after the lock is released"),
        "append succeeded"
    );
    t.join().unwrap();
    assert_eq!(read(&p), "{\"n\":1}\n");
}
