//! The one helper black-box tests use to run the real `walcompactd` binary, plus small WAL
//! builders. Each test target includes it with `mod common;`.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;

pub mod app;

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

/// The replay digest of a file, as `walcompactd verify --json` reports it (corrupt lines,
/// which make `verify` exit 3, are part of it).
pub fn digest(path: &Path) -> String {
    let out = walcompactd()
        .args(["verify", "--json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
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

/// A running `walcompactd run --policy X` with cwd in a temp dir; its stdout JSON lines are
/// collected on a thread. Killed on drop.
pub struct Daemon {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Generous: a loaded 2-core machine can be slow, and we only ever poll.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A policy with test-friendly daemon settings (state inside `dir`, no metrics listener)
/// followed by `wals` (the `[[wal]]` tables).
pub fn test_policy(wals: &str) -> String {
    format!(
        "[daemon]\nstate_dir = \"state\"\nmetrics_listen = \"\"\nlog_level = \"info\"\n\n{wals}"
    )
}

impl Daemon {
    /// Starts the daemon in `dir` with the policy file `policy` (relative to `dir` or absolute).
    pub fn start(dir: &Path, policy: &str) -> Daemon {
        Self::start_with_env(dir, policy, &[])
    }

    /// [`Daemon::start`] with extra environment variables (e.g. `FAILPOINTS`).
    pub fn start_with_env(dir: &Path, policy: &str, env: &[(&str, &str)]) -> Daemon {
        use std::io::BufRead;
        let mut child = std::process::Command::new(bin())
            .args(["run", "--policy", policy])
            .current_dir(dir)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
                sink.lock().unwrap().push(v);
            }
        });
        let d = Daemon {
            child,
            lines,
            reader: Some(reader),
        };
        d.wait_for_log(|v| v["event"] == "ready");
        d
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.child.id() as i32)
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().clone()
    }

    /// How many log lines so far match.
    pub fn count(&self, pred: impl Fn(&serde_json::Value) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| pred(v))
            .count()
    }

    /// Waits (up to [`DEADLINE`]) for a matching log line; panics with the log otherwise.
    pub fn wait_for_log(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        self.wait_for_nth(1, pred)
    }

    /// Waits for the `n`-th matching log line.
    pub fn wait_for_nth(
        &self,
        n: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut found = None;
        wait_until(DEADLINE, || {
            found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|v| pred(v))
                .nth(n - 1)
                .cloned();
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("log line not seen; log:\n{}", self.dump()))
    }

    /// The log as text, for failure messages.
    pub fn dump(&self) -> String {
        let lines: Vec<String> = self.logs().iter().map(|v| v.to_string()).collect();
        lines.join("\n")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), sig).unwrap();
    }

    /// Waits for the process to exit; `None` if it did not within [`DEADLINE`].
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(DEADLINE, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        if status.is_some()
            && let Some(r) = self.reader.take()
        {
            let _ = r.join();
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends `text` to the file at `path`.
pub fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `n` cleanly committed transactions (nothing reclaimable), ids prefixed by `prefix`.
pub fn clean_wal(prefix: &str, n: u64) -> String {
    (0..n)
        .map(|i| {
            let tx = format!("{prefix}_{i:05}");
            prepare(&tx, i) + &commit(&tx)
        })
        .collect()
}

/// A script under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs the Python fixture `tests/fixtures/<name>` with `args` (python3 is required: CI
/// installs it). Returns its output whatever the exit status.
pub fn run_python_fixture<S: AsRef<std::ffi::OsStr>>(
    name: &str,
    args: &[S],
) -> std::process::Output {
    std::process::Command::new("python3")
        .arg(fixture(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3 is required for tests/fixtures/{name} ({e})"))
}

/// [`run_python_fixture`] that must succeed; returns its stdout.
pub fn python_fixture<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> String {
    let out = run_python_fixture(name, args);
    assert!(
        out.status.success(),
        "tests/fixtures/{name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("fixture output is UTF-8")
}

/// The uncompressed backups of `wal` in `dir` (`<stem>_backup_*<ext>`, as the pipeline names
/// them), sorted.
pub fn backups(dir: &Path, wal: &Path) -> Vec<PathBuf> {
    let name = wal.file_name().unwrap().to_string_lossy();
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (&name[..], ""),
    };
    let prefix = format!("{stem}_backup_");
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && n.ends_with(ext) && !n.ends_with(".partial"))
        .map(|n| dir.join(n))
        .collect()
}

/// A command's stdout as one JSON value (commands run with `--json`).
pub fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `walcompactd compact --json ARGS WAL`, asserts it exited 0, returns its report.
pub fn compact_json(wal: &Path, args: &[&str]) -> serde_json::Value {
    let out = walcompactd()
        .args(["compact", "--json"])
        .args(args)
        .arg(wal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compact {}: {}",
        wal.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)
}

/// [`redundant_wal`] without its torn tail: complete lines only, so appends start on a fresh
/// line.
pub fn wal_text(n: u64) -> String {
    let s = redundant_wal(n);
    s[..s.rfind('\n').unwrap() + 1].to_string()
}

/// One `[[wal]]` table polled every second with no minimum interval between runs; `triggers`
/// goes into `[wal.triggers]`, `tail` after it (e.g. `[wal.hooks]`).
pub fn wal_table(name: &str, path: &str, triggers: &str, tail: &str) -> String {
    format!(
        "[[wal]]\nname = \"{name}\"\npath = \"{path}\"\npoll_interval_secs = 1\n\n[wal.triggers]\nmin_interval_secs = 0\n{triggers}\n{tail}\n"
    )
}

/// Writes `dir/policy.toml` by atomic replace, as editors do, so a running daemon never
/// reads a half-written file.
pub fn write_policy(dir: &Path, text: &str) {
    let tmp = dir.join("policy.toml.tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join("policy.toml")).unwrap();
}

/// A daemon's `run` log line for the WAL named `wal` with this `outcome`.
pub fn is_run(v: &serde_json::Value, wal: &str, outcome: &str) -> bool {
    v["event"] == "run" && v["wal"] == wal && v["outcome"] == outcome
}

/// Makes `cmd` run the real binary as `nobody` when we are root (root ignores permission
/// bits); false, leaving `cmd` alone, otherwise.
pub fn as_nobody(cmd: &mut Command) -> bool {
    use std::os::unix::process::CommandExt;
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    let mut std_cmd = std::process::Command::new(bin());
    std_cmd.uid(65534).gid(65534).env_remove("RUST_LOG");
    *cmd = Command::from_std(std_cmd);
    true
}

/// No compaction temp file or journal is left in `dir`.
pub fn assert_no_leftovers(dir: &Path) {
    let left = names(dir);
    assert!(
        left.iter()
            .all(|n| !n.contains(".tmp") && !n.ends_with(".journal")),
        "{left:?}"
    );
}

/// The names in `dir` of the backups of `wal.log` (`wal_backup_*`, any suffix), sorted.
pub fn backup_names(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with("wal_backup_"))
        .collect()
}

/// The `stress_writer` example, which `cargo test` builds beside the test binaries.
pub fn stress_writer() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/stress_writer");
    assert!(
        path.exists(),
        "{} missing: run through `cargo test`, which builds examples",
        path.display()
    );
    path
}

/// A local address with a port free right now, for a metrics listener.
pub fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// One GET of `/metrics` on a daemon's listener: its body, or `None` while it does not
/// answer yet.
pub fn scrape_text(addr: std::net::SocketAddr) -> Option<String> {
    let mut resp = ureq::get(&format!("http://{addr}/metrics")).call().ok()?;
    resp.body_mut().read_to_string().ok()
}

/// Prometheus exposition text, parsed (panics if it is not valid).
pub fn parse_scrape(text: &str) -> prometheus_parse::Scrape {
    use std::io::BufRead;
    prometheus_parse::Scrape::parse(text.as_bytes().lines()).expect("valid exposition text")
}

/// Holds the writers' lock of `wal` (as a protocol writer mid-append) until dropped.
pub fn hold_writer_lock(wal: &Path) -> fs::File {
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(walcompactd::writer::lock_path(wal))
        .unwrap();
    lock.lock().unwrap();
    lock
}

/// Mounts a tiny tmpfs (root only); `None` where mounting is not permitted.
pub struct TinyFs(tempfile::TempDir);

impl TinyFs {
    pub fn mount(size: &str) -> Option<TinyFs> {
        let d = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d.path())
            .status()
            .ok()?
            .success();
        ok.then_some(TinyFs(d))
    }
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// One WAL line: `op` of `tx` with `timestamp` written as given (a JSON number such as
/// `1600000000.5`, or a string such as `"\"2020-09-13\""`), for retention tests.
pub fn stamped(op: &str, tx: &str, timestamp: &str) -> String {
    let data = if op == "PREPARE" {
        ", \"data\": {\"amount\": 1}"
    } else {
        ""
    };
    format!("{{\"op\": \"{op}\", \"tx_id\": \"{tx}\"{data}, \"timestamp\": {timestamp}}}\n")
}

/// Every entry of `dir`: name, inode, modification time (ns) and bytes. Equal before and
/// after a command means it changed nothing there (nor created or removed anything).
pub fn dir_state(dir: &Path) -> Vec<(String, u64, i128, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    names(dir)
        .into_iter()
        .map(|n| {
            let p = dir.join(&n);
            let m = fs::symlink_metadata(&p).unwrap();
            let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            let bytes = if m.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            (n, m.ino(), mtime, bytes)
        })
        .collect()
}

/// The replay digest of `bytes` under retention `r` (the original's state minus what `r`
/// expires; [`walcompactd::rules::Retention::NONE`] for the plain state).
pub fn replay_digest(bytes: &[u8], r: walcompactd::rules::Retention) -> [u8; 32] {
    let want =
        walcompactd::analyze::Want::replay(walcompactd::rules::CorruptLines::Keep).retaining(r);
    walcompactd::analyze::analyze(bytes, want, &mut |_| {})
        .unwrap()
        .replay
        .unwrap()
        .digest
}
