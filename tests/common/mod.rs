//! The one helper black-box tests use to run the real `walcompactd` binary, plus small WAL
//! builders. Each test target includes it with `mod common;`.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;

/// The real binary, built by cargo for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walcompactd"))
}

/// A command for the real binary, with RUST_LOG cleared so output is predictable.
pub fn walcompactd() -> Command {
    let mut c = Command::new(bin());
    c.env_remove("RUST_LOG");
    c
}

pub fn prepare(tx: &str, data: u64) -> String {
    format!(
        "{{\"op\": \"PREPARE\", \"tx_id\": \"{tx}\", \"data\": {{\"amount\": {data}}}, \"timestamp\": 1732780000.5}}\n"
    )
}
pub fn commit(tx: &str) -> String {
    format!("{{\"op\": \"COMMIT\", \"tx_id\": \"{tx}\", \"timestamp\": 1732780001.5}}\n")
}
pub fn abort(tx: &str) -> String {
    format!("{{\"op\": \"ABORT\", \"tx_id\": \"{tx}\", \"reason\": \"timeout\"}}\n")
}

/// A WAL with retries, aborts, duplicate commits, in-flight transactions and a torn tail.
pub fn redundant_wal(n: u64) -> String {
    let mut s = String::new();
    for i in 0..n {
        let tx = format!("tx_{i:05}");
        s += &prepare(&tx, i);
        match i % 5 {
            0 => s += &(prepare(&tx, i + 1) + &commit(&tx)),
            1 => s += &abort(&tx),
            2 => s += &(commit(&tx) + &commit(&tx)),
            3 => s += &prepare(&tx, i + 2),
            _ => s += &commit(&tx),
        }
    }
    s + "{\"op\": \"COMMIT\", \"tx_"
}

/// Writes `content` to `dir/name` and returns the path.
pub fn write_wal(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, content).unwrap();
    p
}

/// Sorted names of the entries in `dir`.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The replay digest of a file, as `walcompactd verify --json` reports it.
pub fn digest(path: &Path) -> String {
    let out = walcompactd()
        .args(["verify", "--json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["digest"].as_str().unwrap().to_string()
}

/// Polls `cond` every 50 ms until it holds or `deadline` passes; generous deadlines keep
/// tests stable on a loaded 2-core machine.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}
