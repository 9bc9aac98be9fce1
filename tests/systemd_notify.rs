//! The daemon speaks systemd's notify protocol to a real `NOTIFY_SOCKET` (a datagram socket
//! this test binds, as systemd does): READY=1 once watching, STATUS= lines, RELOADING=1 then
//! READY=1 around a SIGHUP reload, and WATCHDOG=1 when systemd's WATCHDOG_USEC/WATCHDOG_PID ask.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

/// Receives notify datagrams until `want` has all been seen (or the deadline passes).
fn collect_until(sock: &UnixDatagram, seen: &mut Vec<String>, want: &[&str]) -> bool {
    let end = Instant::now() + DEADLINE;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if want
            .iter()
            .all(|w| seen.iter().any(|m| m.lines().any(|l| l.starts_with(w))))
        {
            return true;
        }
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    false
}

#[test]
fn ready_status_reloading_and_watchdog_reach_a_real_notify_socket() {
    let d = tempfile::tempdir().unwrap();
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write_wal(d.path(), "wal.log", &(prepare("a", 1) + &commit("a")));
    let policy = test_policy("[[wal]]\nname = \"w\"\npath = \"wal.log\"\n");
    std::fs::write(d.path().join("policy.toml"), policy).unwrap();
    let sock_env = sock_path.to_str().unwrap();
    let daemon = Daemon::start_with_env(d.path(), "policy.toml", &[("NOTIFY_SOCKET", sock_env)]);
    let mut seen = Vec::new();
    assert!(
        collect_until(&sock, &mut seen, &["READY=1", "STATUS="]),
        "got {seen:?}"
    );
    let status = seen
        .iter()
        .flat_map(|m| m.lines())
        .find(|l| l.starts_with("STATUS="))
        .unwrap();
    assert!(status.contains("watching 1 WAL"), "{status}");
    let before_reload = seen.len();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let mut after = Vec::new();
    assert!(
        collect_until(&sock, &mut after, &["RELOADING=1", "READY=1"]),
        "got {after:?} (before: {before_reload} messages)"
    );
    let reloading = after
        .iter()
        .position(|m| m.contains("RELOADING=1"))
        .unwrap();
    assert!(
        after[reloading..].iter().any(|m| m.contains("READY=1")),
        "READY=1 follows RELOADING=1: {after:?}"
    );
}

/// systemd sets WATCHDOG_PID to the service's pid; `exec` from a shell keeps `$$`, so the
/// daemon sees exactly what systemd would give it.
#[test]
fn watchdog_pings_reach_a_real_notify_socket() {
    let d = tempfile::tempdir().unwrap();
    let sock_path = d.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::fs::write(d.path().join("policy.toml"), test_policy("")).unwrap();
    let mut child = std::process::Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" run --policy policy.toml"])
        .arg(bin())
        .current_dir(d.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let ok = collect_until(&sock, &mut seen, &["READY=1", "WATCHDOG=1"]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "got {seen:?}");
}
