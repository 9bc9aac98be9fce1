//! The Diotec360 application's writers, as `tests/fixtures/diotec360_wal.py` reproduces them:
//! each append opens the WAL (`open(path, 'a')`), writes one line, fsyncs and closes; no lock.
//! Each writer records the exact bytes it appended, so a test can check afterwards that
//! every line is in the WAL exactly once, in order, none torn or merged.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::fixture;

/// The application's fixture.
pub const FIXTURE: &str = "diotec360_wal.py";

/// Writers running the application's commit path at full speed until [`Writers::stop`].
pub struct Writers {
    children: Vec<Child>,
    stop_file: PathBuf,
    pub records: Vec<PathBuf>,
}

impl Writers {
    /// Starts `n` writers (`a`, `b`, ...) appending to `<wal_dir>/wal.log`; their state
    /// files and records go to `work`.
    pub fn start(n: usize, wal_dir: &Path, work: &Path) -> Writers {
        let stop_file = work.join("writers.stop");
        let _ = std::fs::remove_file(&stop_file);
        let mut children = Vec::new();
        let mut records = Vec::new();
        for i in 0..n {
            let name = ((b'a' + i as u8) as char).to_string();
            let record = work.join(format!("record.{name}"));
            let child = Command::new("python3")
                .arg(fixture(FIXTURE))
                .arg("run")
                .arg(wal_dir)
                .arg(work.join(format!("state.{name}")))
                .args(["--writer", &name, "--stop-file"])
                .arg(&stop_file)
                .arg("--record")
                .arg(&record)
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3 is required for the application's writer fixture");
            children.push(child);
            records.push(record);
        }
        Writers {
            children,
            stop_file,
            records,
        }
    }

    /// Total lines the writers recorded so far (see [`fs_lines`]).
    pub fn lines_written(&self) -> usize {
        self.records
            .iter()
            .map(|r| {
                std::fs::read(r)
                    .map(|b| b.iter().filter(|&&c| c == b'\n').count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Stops the writers, then asserts each wrote, every line is in `wal` once in order,
    /// and the WAL verifies.
    pub fn finish(self, wal: &Path) {
        let records = self.records.clone();
        // On a loaded machine a writer's Python may still be starting: let each commit once.
        let started = |r: &PathBuf| fs_lines(r) >= 2;
        assert!(
            super::wait_until(super::DEADLINE, || records.iter().all(started)),
            "a writer never wrote"
        );
        let reports = self.stop();
        assert!(reports.iter().all(|r| r["commits"].as_u64().unwrap() > 0));
        assert_all_lines_once(wal, &records);
        super::walcompactd()
            .arg("verify")
            .arg(wal)
            .assert()
            .success();
    }

    /// Stops the writers and returns their reports (`commits`, `worst_append_ms`, ...).
    pub fn stop(mut self) -> Vec<serde_json::Value> {
        std::fs::write(&self.stop_file, b"").unwrap();
        let children = std::mem::take(&mut self.children);
        children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().unwrap();
                assert!(out.status.success(), "writer failed: {out:?}");
                serde_json::from_slice(&out.stdout).unwrap()
            })
            .collect()
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop_file, b"");
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A daemon policy (after `test_policy`) for one WAL named `app` in lease mode, run as soon
/// as anything is reclaimable; `tail` follows (e.g. `[wal.hooks]`).
pub fn lease_policy(wal: &Path, tail: &str) -> String {
    format!(
        "[[wal]]\nname = \"app\"\npath = \"{}\"\nmode = \"lease\"\npoll_interval_secs = 1\n\n\
         [wal.triggers]\nmin_interval_secs = 0\nmin_reclaimable_bytes = 1\nmax_size_mb = 0.01\n\n{tail}",
        wal.display()
    )
}

/// Asserts every line the writers recorded is in `wal` exactly once, in each writer's
/// order, byte for byte (only first attempts a retry superseded may be gone).
pub fn assert_all_lines_once(wal: &Path, records: &[PathBuf]) {
    let mut args = vec!["check".as_ref(), wal.as_os_str()];
    args.extend(records.iter().map(|r| r.as_os_str()));
    let out = super::run_python_fixture(FIXTURE, &args);
    assert!(
        out.status.success(),
        "writers' lines lost, duplicated, torn or reordered: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One application commit of `tx_id` (PREPARE, state file, COMMIT), as a child process.
pub fn commit(wal_dir: &Path, state_dir: &Path, tx_id: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(fixture(FIXTURE))
        .arg("append")
        .arg(wal_dir)
        .arg(state_dir)
        .args(["commit", tx_id, r#"{"k": 1}"#]);
    cmd
}

/// A Diotec360 WAL with history (retries, crashes; no torn lines) in `<dir>/.diotec360_wal`.
pub fn seeded_wal(dir: &Path, transactions: u32) -> PathBuf {
    let wal_dir = dir.join(".diotec360_wal");
    super::python_fixture(
        FIXTURE,
        &[
            "scenario".to_string(),
            wal_dir.display().to_string(),
            dir.join("state").display().to_string(),
            "--torn".into(),
            "0".into(),
            "--transactions".into(),
            transactions.to_string(),
        ],
    );
    wal_dir.join("wal.log")
}

/// Lines in a writer's record so far.
fn fs_lines(record: &Path) -> usize {
    std::fs::read(record)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}
