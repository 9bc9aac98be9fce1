//! Online compaction under load: Python and Rust writer processes following the lock
//! protocol append thousands of lines while `walcompactd compact --online` runs back to back.
//! Every writer also appends each line to one audit file under the same lock, so the audit is
//! the uncompacted stream in its exact order. Afterwards the WAL must be exactly the
//! compaction of that stream: every surviving line present once, in order, nothing torn or
//! merged, and the same replay state.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use walcompactd::pipeline::compact::compact_bytes;

/// Transactions per writer process: thousands of lines each.
const TXS_PER_WRITER: u64 = 1500;

fn spawn_writers(wal: &Path, audit: &Path) -> Vec<Child> {
    let mut children = Vec::new();
    for id in ["rs1", "rs2"] {
        let c = Command::new(stress_writer())
            .args([
                "--writer-id",
                id,
                "--count",
                &TXS_PER_WRITER.to_string(),
                "--rate",
                "1000",
                "--wal",
            ])
            .arg(wal)
            .arg("--mirror")
            .arg(audit)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        children.push(c);
    }
    if Command::new("python3").arg("--version").output().is_ok() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/protocol_writer.py");
        for id in ["py1", "py2"] {
            let c = Command::new("python3")
                .arg(&script)
                .args([
                    "--writer-id",
                    id,
                    "--count",
                    &TXS_PER_WRITER.to_string(),
                    "--rate",
                    "900",
                    "--wal",
                ])
                .arg(wal)
                .arg("--mirror")
                .arg(audit)
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            children.push(c);
        }
    } else {
        panic!("python3 is required for the online stress test (CI installs it)");
    }
    children
}

/// Runs `compact --online` once; returns its outcome ("success", "skipped", or a clean
/// refusal) and the bytes writers appended during it.
fn compact_online(wal: &Path) -> (String, u64) {
    let out = walcompactd()
        .args(["compact", "--online", "--json"])
        .arg(wal)
        .output()
        .unwrap();
    match out.status.code() {
        Some(0) => {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let appended = v["online"]["appended_bytes"].as_u64().unwrap_or(0);
            (v["outcome"].as_str().unwrap().to_string(), appended)
        }
        // Writers held the lock too long: a clean refusal, retried.
        Some(5) => ("lock_timeout".into(), 0),
        code => panic!(
            "compact --online failed ({code:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn writers_keep_appending_through_back_to_back_online_compactions() {
    let d = tempfile::tempdir().unwrap();
    let seed = &wal_text(3_000); // no torn tail: writers append after it
    let wal = write_wal(d.path(), "wal.log", seed);
    let audit = write_wal(d.path(), "audit.log", seed);
    let mut writers = spawn_writers(&wal, &audit);
    let mut outcomes = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while writers.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        assert!(Instant::now() < deadline, "writers did not finish");
        outcomes.push(compact_online(&wal));
    }
    for mut c in writers {
        assert!(c.wait().unwrap().success(), "a writer failed");
    }
    outcomes.push(compact_online(&wal));
    let swaps = outcomes.iter().filter(|(o, _)| o == "success").count();
    eprintln!(
        "online compactions: {swaps} swaps of {} runs: {outcomes:?}",
        outcomes.len()
    );
    assert!(
        swaps >= 2,
        "compactions must really run while writers append: {outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|(o, appended)| o == "success" && *appended > 0),
        "some swap must carry lines appended during it: {outcomes:?}"
    );

    let stream = fs::read(&audit).unwrap();
    let lines = stream.iter().filter(|&&b| b == b'\n').count();
    assert!(
        lines > 4 * 2 * TXS_PER_WRITER as usize,
        "every writer wrote thousands of lines"
    );
    let expected = compact_bytes(&stream).unwrap();
    let got = fs::read(&wal).unwrap();
    assert!(
        got == expected,
        "the WAL is not the compaction of the uncompacted stream ({} vs {} bytes)",
        got.len(),
        expected.len()
    );
    assert_eq!(
        digest(&wal),
        digest(&audit),
        "replay state equals the uncompacted stream's"
    );
    let left = names(d.path());
    assert!(
        left.iter()
            .all(|n| !n.contains(".tmp") && !n.ends_with(".journal")),
        "{left:?}"
    );
}
