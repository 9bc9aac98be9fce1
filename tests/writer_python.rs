//! The online protocol across languages: the Python reference writer
//! (`examples/protocol_writer.py`) and a Rust `WalWriter` append to one WAL concurrently while
//! this test repeatedly swaps the WAL the way an online compactor does (with a no-op plan).
//! Afterwards every line of both writers is in the live WAL exactly once, in each writer's
//! order, and every line is whole JSON.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use walcompactd::writer::{Durability, WalWriter, lock_path};

const PY_TX: u64 = 1500;
const RUST_TX: u64 = 1500;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/protocol_writer.py")
}

fn python_available() -> bool {
    Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn record(writer: &str, op: &str, seq: u64) -> serde_json::Value {
    serde_json::json!({
        "op": op,
        "tx_id": format!("{writer}-{seq}"),
        "data": {"writer": writer, "seq": seq},
        "timestamp": 0.0,
    })
}

/// One compactor-style swap with a no-op plan: copy the prefix WITHOUT the lock, then under
/// `LOCK_EX` copy the tail appended meanwhile, rename over the WAL, release. Returns the tail
/// length copied under the lock.
fn swap(wal: &Path, tmp: &Path) -> io::Result<u64> {
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(tmp)?;
    let mut src = File::open(wal)?;
    let prefix = io::copy(&mut src, &mut out)?;

    let lock = File::open(lock_path(wal))?;
    lock.lock()?;
    // Under the lock the path cannot change (only this "compactor" renames, and it holds the
    // lock); `src` is still the live inode, so the tail is whatever was appended after the
    // prefix.
    src.seek(SeekFrom::Start(prefix))?;
    let mut tail = Vec::new();
    src.read_to_end(&mut tail)?;
    out.write_all(&tail)?;
    out.sync_data()?;
    fs::rename(tmp, wal)?;
    lock.unlock()?;
    Ok(tail.len() as u64)
}

#[test]
fn python_and_rust_writers_survive_concurrent_swaps() {
    if !python_available() {
        println!("SKIPPED: python3 not found");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("wal.log");
    let tmp = dir.path().join("wal.log.compact.tmp");
    // Create the WAL and its lock file before anyone swaps.
    let mut rust_writer = WalWriter::open(&wal, Durability::None).unwrap();

    let mut child = Command::new("python3")
        .arg(script())
        .args(["--wal", wal.to_str().unwrap(), "--writer-id", "py"])
        .args(["--count", &PY_TX.to_string(), "--rate", "6000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");

    let rust = thread::spawn(move || {
        let mut reopens = 0;
        for seq in 0..RUST_TX {
            for op in ["PREPARE", "COMMIT"] {
                let stats = rust_writer.append_json(&record("rs", op, seq)).unwrap();
                reopens += u64::from(stats.reopened);
            }
            if seq % 3 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        reopens
    });

    let deadline = Instant::now() + Duration::from_secs(300);
    let mut swaps = 0u64;
    let mut tail_bytes = 0u64;
    let py_status = loop {
        tail_bytes += swap(&wal, &tmp).unwrap();
        swaps += 1;
        if let Some(status) = child.try_wait().unwrap()
            && rust.is_finished()
        {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("writers did not finish within the deadline");
        }
        thread::sleep(Duration::from_millis(2));
    };
    let mut py_err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut py_err)
        .unwrap();
    assert!(py_status.success(), "python writer failed: {py_err}");
    let rust_reopens = rust.join().unwrap();
    // One last swap after both writers stopped must change nothing either.
    swap(&wal, &tmp).unwrap();
    println!("swaps={swaps} tail_bytes_under_lock={tail_bytes} rust_reopens={rust_reopens}");
    assert!(swaps >= 3, "the test must actually swap while writing");
    assert!(rust_reopens >= 1, "the Rust writer saw at least one swap");

    let text = fs::read_to_string(&wal).unwrap();
    assert!(text.ends_with('\n'), "no torn tail");
    let mut seen: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("line {} is not JSON ({e}): {line:?}", i + 1));
        let writer = v["data"]["writer"].as_str().unwrap().to_string();
        let seq = v["data"]["seq"].as_u64().unwrap();
        assert_eq!(v["tx_id"], format!("{writer}-{seq}"), "line {}", i + 1);
        let op = v["op"].as_str().unwrap().to_string();
        seen.entry(writer).or_default().push((seq, op));
    }
    for (writer, count) in [("py", PY_TX), ("rs", RUST_TX)] {
        let expected: Vec<(u64, String)> = (0..count)
            .flat_map(|s| [(s, "PREPARE".to_string()), (s, "COMMIT".to_string())])
            .collect();
        let got = seen.remove(writer).unwrap_or_default();
        assert_eq!(
            got.len(),
            expected.len(),
            "{writer}: every line exactly once"
        );
        assert!(
            got == expected,
            "{writer}: lines out of order or duplicated"
        );
    }
    assert!(seen.is_empty(), "unexpected writers: {:?}", seen.keys());
}

/// docs/PROTOCOL.md shows the core of the Python writer; it must be the script's own code.
#[test]
fn protocol_doc_python_example_is_the_script() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join("docs/PROTOCOL.md")).unwrap();
    let script = fs::read_to_string(script()).unwrap();
    let start = doc.find("```python\n").expect("a python block in the doc") + "```python\n".len();
    let len = doc[start..].find("```").unwrap();
    let block = &doc[start..start + len];
    assert!(block.contains("fcntl.flock(self.lock_fd, fcntl.LOCK_EX)"));
    assert!(
        script.contains(block),
        "the doc's Python example differs from examples/protocol_writer.py"
    );
}
