//! The one way the daemon runs an external command: compaction hooks (`daemon::hooks`) and
//! alert commands (`alerts`). A top-level module because both use it and `alerts` must not
//! depend on the daemon.
//!
//! Every command runs in a process group of its own (`process_group(0)`: its pid is the group
//! id), so a timeout or a cancellation kills the whole group with one SIGKILL — a `sh -c`
//! command's background children too, not only the shell. Stdin is closed; stdout is
//! discarded or sent to the daemon's stderr, never its stdout (the JSON log stream); stderr is
//! captured, its first [`CAPTURE_BYTES`] kept for the caller's log line. The environment is
//! the daemon's plus the caller's variables. Blocking: callers on the runtime use
//! `spawn_blocking`.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How much of a command's stderr is kept for the log; the rest is read and dropped, so the
/// command never blocks on a full pipe and a chatty one cannot flood the log.
pub const CAPTURE_BYTES: usize = 4096;
/// How often a running command is polled for exit (and its stderr read); negligible next to
/// a fork, short enough that a timeout or cancellation acts within a blink.
const POLL: Duration = Duration::from_millis(20);
/// After the command exited, how long to keep reading its stderr: a background grandchild
/// may hold the pipe open indefinitely, and the caller must not wait for it.
const STDERR_DRAIN_WAIT: Duration = Duration::from_secs(1);

/// Where a command's stdout goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdout {
    /// Discarded (alert commands).
    Null,
    /// The daemon's stderr (hooks): visible to the operator, never mixed into the JSON log.
    Stderr,
}

/// What to run and how.
#[derive(Debug)]
pub struct Spec<'a> {
    /// `argv[0]` is looked up in `PATH`; no shell.
    pub argv: &'a [String],
    /// Added to the daemon's own environment.
    pub env: Vec<(OsString, OsString)>,
    pub stdout: Stdout,
    /// Past this, the process group is killed and the run is [`ProcessError::TimedOut`].
    pub timeout: Duration,
    /// Set by the caller to stop the command early (the group is killed likewise).
    pub cancel: Option<&'a AtomicBool>,
}

/// A command that ran to its end.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The first [`CAPTURE_BYTES`] of its stderr.
    pub stderr: Vec<u8>,
}

impl Finished {
    /// The captured stderr as text for a log line (lossy UTF-8, trailing whitespace cut).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim_end().to_string()
    }
}

/// Why a command did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("empty argv")]
    EmptyArgv,
    #[error("cannot start {program:?}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("cannot set up the output of {program:?}: {source}")]
    Stdio { program: String, source: io::Error },
    #[error("waiting for {program:?}: {source}")]
    Wait { program: String, source: io::Error },
    #[error("{program:?} still running after {after:?}; killed with its process group {pgid}")]
    TimedOut {
        program: String,
        after: Duration,
        pgid: i32,
    },
    #[error("{program:?} cancelled; killed with its process group {pgid}")]
    Cancelled { program: String, pgid: i32 },
}

impl From<ProcessError> for io::Error {
    /// Keeps the kind callers test for: `InvalidInput`, `TimedOut`, `Interrupted`, or the
    /// underlying error's.
    fn from(e: ProcessError) -> io::Error {
        let kind = match &e {
            ProcessError::EmptyArgv => io::ErrorKind::InvalidInput,
            ProcessError::Spawn { source, .. }
            | ProcessError::Stdio { source, .. }
            | ProcessError::Wait { source, .. } => source.kind(),
            ProcessError::TimedOut { .. } => io::ErrorKind::TimedOut,
            ProcessError::Cancelled { .. } => io::ErrorKind::Interrupted,
        };
        io::Error::new(kind, e)
    }
}

/// Runs `spec` to its end, its timeout, or its cancellation (see the module docs).
pub fn run(spec: &Spec) -> Result<Finished, ProcessError> {
    let (program, args) = spec.argv.split_first().ok_or(ProcessError::EmptyArgv)?;
    let stdio_err = |source| ProcessError::Stdio {
        program: program.clone(),
        source,
    };
    let stdout = match spec.stdout {
        Stdout::Null => Stdio::null(),
        Stdout::Stderr => Stdio::from(
            io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(stdio_err)?,
        ),
    };
    let mut child = Command::new(program)
        .args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: program.clone(),
            source,
        })?;
    // Until the child is reaped its pid cannot be reused, so the group id stays ours.
    let pgid = child.id() as i32;
    let mut capture = Capture::new(child.stderr.take());
    let deadline = Instant::now() + spec.timeout;
    let status = loop {
        capture.pump();
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if spec.cancel.is_some_and(|c| c.load(Ordering::SeqCst)) => {
                kill_group(&mut child, pgid);
                let program = program.clone();
                return Err(ProcessError::Cancelled { program, pgid });
            }
            Ok(None) if Instant::now() >= deadline => {
                kill_group(&mut child, pgid);
                let (program, after) = (program.clone(), spec.timeout);
                return Err(ProcessError::TimedOut {
                    program,
                    after,
                    pgid,
                });
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(source) => {
                kill_group(&mut child, pgid);
                let program = program.clone();
                return Err(ProcessError::Wait { program, source });
            }
        }
    };
    let drain_until = Instant::now() + STDERR_DRAIN_WAIT;
    while capture.pump() && Instant::now() < drain_until {
        std::thread::sleep(POLL);
    }
    Ok(Finished {
        status,
        stderr: capture.kept,
    })
}

/// SIGKILL to the whole group (the command and whatever it started), then reap the command.
fn kill_group(child: &mut Child, pgid: i32) {
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    // The group leader may already have exited (then killpg reached only the rest).
    let _ = child.kill();
    let _ = child.wait();
}

/// The stderr pipe, read without blocking; the first [`CAPTURE_BYTES`] kept.
struct Capture {
    pipe: Option<ChildStderr>,
    kept: Vec<u8>,
}

impl Capture {
    fn new(pipe: Option<ChildStderr>) -> Capture {
        // Without O_NONBLOCK a read would wait for the command; then we read nothing.
        let pipe = pipe.filter(|p| fcntl(p.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).is_ok());
        Capture {
            pipe,
            kept: Vec::new(),
        }
    }

    /// Reads what is available; `false` once the pipe is closed (or unreadable).
    fn pump(&mut self) -> bool {
        let Some(pipe) = &mut self.pipe else {
            return false;
        };
        let mut buf = [0u8; 4096];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = CAPTURE_BYTES.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.pipe = None;
        false
    }
}

/// Helpers for the tests of every caller: a command that leaves a background `sleep` in its
/// group, and a /proc check that it is gone.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// `sh -c` starting `sleep 600` in the background, writing its pid to `pidfile`
    /// (atomically), then waiting for it: only a kill of the whole group ends the sleep.
    pub fn orphaning_argv(pidfile: &Path) -> Vec<String> {
        let script = r#"sleep 600 & echo $! > "$0.tmp" && mv "$0.tmp" "$0"; wait"#;
        ["sh", "-c", script, pidfile.to_str().unwrap()]
            .map(String::from)
            .to_vec()
    }

    /// Calls `attempt(timeout)` with a growing timeout until the script got as far as
    /// starting its sleep before the timeout (a loaded machine may fork slowly); returns the
    /// sleep's pid. Keeps the tests meaningful without betting on the machine's speed.
    pub fn sleep_pid_after(pidfile: &Path, mut attempt: impl FnMut(Duration)) -> i32 {
        let mut timeout = Duration::from_millis(300);
        for _ in 0..6 {
            attempt(timeout);
            if let Ok(text) = std::fs::read_to_string(pidfile)
                && let Ok(pid) = text.trim().parse()
            {
                return pid;
            }
            timeout *= 2;
        }
        panic!("the script never started its sleep");
    }

    /// Whether `pid` is a live `sleep` (a zombie does not count: nothing reaps orphans in
    /// some containers).
    pub fn sleep_alive(pid: i32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let comm_ok = stat.contains("(sleep)");
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        comm_ok && state != Some("Z")
    }

    /// Polls until the sleep is gone: SIGKILL is delivered asynchronously.
    pub fn assert_sleep_gone(pid: i32) {
        let end = Instant::now() + Duration::from_secs(30);
        while sleep_alive(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !sleep_alive(pid),
            "the background sleep {pid} outlived its command"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn spec(argv: &[String], timeout: Duration) -> Spec<'_> {
        Spec {
            argv,
            env: vec![("WHO".into(), "runner".into())],
            stdout: Stdout::Null,
            timeout,
            cancel: None,
        }
    }

    #[test]
    fn timeout_kills_the_whole_process_group() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("sleep.pid");
        let argv = orphaning_argv(&pidfile);
        let mut pgid = 0;
        let sleep = sleep_pid_after(&pidfile, |timeout| match run(&spec(&argv, timeout)) {
            Err(ProcessError::TimedOut { pgid: g, .. }) => pgid = g,
            other => panic!("{other:?}"),
        });
        assert_sleep_gone(sleep);
        // Nothing of the group is left that could still receive a signal, zombies aside.
        match nix::sys::signal::killpg(Pid::from_raw(pgid), None) {
            Err(nix::errno::Errno::ESRCH) => {}
            Ok(()) => assert!(!sleep_alive(sleep)),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn cancel_kills_the_whole_process_group() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("sleep.pid");
        let argv = orphaning_argv(&pidfile);
        let cancel = AtomicBool::new(false);
        let sleep = std::thread::scope(|s| {
            let runner = s.spawn(|| {
                run(&Spec {
                    cancel: Some(&cancel),
                    ..spec(&argv, Duration::from_secs(600))
                })
            });
            let end = Instant::now() + Duration::from_secs(60);
            while !pidfile.exists() && Instant::now() < end {
                std::thread::sleep(POLL);
            }
            cancel.store(true, Ordering::SeqCst);
            let r = runner.join().unwrap();
            assert!(matches!(r, Err(ProcessError::Cancelled { .. })), "{r:?}");
            std::fs::read_to_string(&pidfile)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        });
        assert_sleep_gone(sleep);
    }

    #[test]
    fn stderr_is_captured_bounded_and_env_is_added() {
        let argv = [
            "sh",
            "-c",
            "printf 'who=%s\\n' \"$WHO\" >&2; head -c 100000 /dev/zero | tr '\\0' x >&2; exit 4",
        ]
        .map(String::from);
        let f = run(&spec(&argv, Duration::from_secs(600))).unwrap();
        assert_eq!(f.status.code(), Some(4));
        assert_eq!(
            f.stderr.len(),
            CAPTURE_BYTES,
            "bounded, and read to the end"
        );
        assert!(
            f.stderr_text().starts_with("who=runner\nxxx"),
            "{}",
            f.stderr_text()
        );
    }

    #[test]
    fn errors_keep_their_io_kinds() {
        let e = run(&spec(&[], Duration::from_secs(1))).unwrap_err();
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::InvalidInput);
        let missing = ["/nonexistent/walcompactd-test".to_string()];
        let e = run(&spec(&missing, Duration::from_secs(1))).unwrap_err();
        assert!(matches!(e, ProcessError::Spawn { .. }), "{e:?}");
        assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
    }
}
