//! The daemon's runtime never waits on the disk: a state write stalled by a fail point
//! (`state::write::delay`, a slow disk) holds up neither another WAL's supervisor nor the
//! systemd watchdog ping, and shutdown still waits for the stalled write to land.
//!
//! Through the real binary with a real `NOTIFY_SOCKET`. Assertions are about order (what
//! happened while the stalled write had not finished yet), never about speed; every wait
//! polls with a generous deadline.

mod common;

use std::fs;
use std::io::BufRead;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

/// How long the first state write stalls: far longer than another WAL's whole compaction
/// takes even on a loaded machine, so "it happened during the stall" is an ordering fact.
const STALL_MS: u64 = 20_000;

/// The daemon under `sh -c 'WATCHDOG_PID=$$ exec …'` (systemd's view: the watchdog is for
/// exactly this pid), its JSON log lines collected on a thread. Killed on drop.
struct NotifiedDaemon {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl NotifiedDaemon {
    fn start(dir: &Path, socket: &Path, failpoints: &str) -> NotifiedDaemon {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --policy policy.toml"])
            .arg(bin())
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env("NOTIFY_SOCKET", socket)
            .env("WATCHDOG_USEC", "1000000")
            .env("FAILPOINTS", failpoints)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                sink.lock().unwrap().push(v);
            }
        });
        NotifiedDaemon { child, lines }
    }

    fn position(&self, pred: impl Fn(&Value) -> bool) -> Option<usize> {
        self.lines.lock().unwrap().iter().position(pred)
    }

    fn wait_for(&self, pred: impl Fn(&Value) -> bool) {
        let seen = wait_until(DEADLINE, || self.position(&pred).is_some());
        assert!(seen, "log line not seen; log:\n{}", self.dump());
    }

    fn dump(&self) -> String {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(DEADLINE, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        status
    }
}

impl Drop for NotifiedDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wal_table(name: &str, path: &str) -> String {
    format!(
        "[[wal]]\nname = \"{name}\"\npath = \"{path}\"\npoll_interval_secs = 1\n\n\
         [wal.triggers]\nmin_interval_secs = 0\nmax_size_mb = 0.1\nmin_reclaimable_bytes = 1\n\n"
    )
}

fn is_run(v: &Value, wal: &str) -> bool {
    v["event"] == "run" && v["wal"] == wal && v["outcome"] == "success"
}

fn is_state_msg(v: &Value, wal: &str, text: &str) -> bool {
    v["event"] == "state" && v["wal"] == wal && v["message"].as_str().unwrap_or("").contains(text)
}

/// Reads what is already queued on the socket and drops it.
fn drain(sock: &UnixDatagram) {
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    while sock.recv(&mut buf).is_ok() {}
    sock.set_nonblocking(false).unwrap();
}

#[test]
fn a_stalled_state_write_delays_neither_another_wal_nor_the_watchdog() {
    let d = tempfile::tempdir().unwrap();
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write_wal(d.path(), "a.log", &redundant_wal(2000));
    // `wb` is missing at first, so `wa`'s is the first state write: the one that stalls.
    let policy = test_policy(&(wal_table("wa", "a.log") + &wal_table("wb", "b.log")));
    fs::write(d.path().join("policy.toml"), policy).unwrap();
    let (wa_state, wb_state) = (
        d.path().join("state/wa.json"),
        d.path().join("state/wb.json"),
    );
    let failpoints = format!("state::write::delay=1*sleep({STALL_MS})");
    let mut daemon = NotifiedDaemon::start(d.path(), &sock_path, &failpoints);

    daemon.wait_for(|v| is_run(v, "wa"));
    daemon.wait_for(|v| is_state_msg(v, "wa", "still running"));
    assert!(!wa_state.exists(), "the write is stalled");

    // During the stall: the watchdog keeps pinging, and `wb` appears, compacts and records
    // its state.
    drain(&sock);
    write_wal(d.path(), "b.log", &redundant_wal(2000));
    let mut pings = 0;
    let mut buf = [0u8; 4096];
    let progressed = wait_until(DEADLINE, || {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            pings += msg.lines().filter(|l| *l == "WATCHDOG=1").count();
        }
        pings >= 3 && wb_state.exists()
    });
    assert!(progressed, "pings: {pings}; log:\n{}", daemon.dump());
    assert!(daemon.position(|v| is_run(v, "wb")).is_some());
    assert!(
        !wa_state.exists()
            && daemon
                .position(|v| is_state_msg(v, "wa", "finished"))
                .is_none(),
        "all of the above happened while wa's state write was stalled; log:\n{}",
        daemon.dump()
    );

    // Shutdown waits for the pending write before the supervisor stops.
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit().expect("the daemon exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", daemon.dump());
    let state: Value = serde_json::from_slice(&fs::read(&wa_state).unwrap()).unwrap();
    assert_eq!(state["last_outcome"], "success");
    let finished = daemon.position(|v| is_state_msg(v, "wa", "finished"));
    let stopped = daemon
        .position(|v| v["event"] == "supervisor" && v["wal"] == "wa" && v["message"] == "stopped");
    assert!(
        finished.is_some() && finished < stopped,
        "the write lands before wa's supervisor stops; log:\n{}",
        daemon.dump()
    );
}
