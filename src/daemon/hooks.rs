//! External commands around a compaction (argv arrays, no shell). The offline-mode check
//! that no other process holds the WAL open is the offline guard's admission
//! (`pipeline::guard::offline`).

use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::DaemonError;

/// A hook running longer than this is killed and counts as failed: hooks are meant to be
/// quick (stop a service, run a check), and a stuck one must not wedge the supervisor.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a running hook is polled for exit; its cost is negligible next to a fork.
const HOOK_POLL: Duration = Duration::from_millis(20);

/// The environment every hook gets.
#[derive(Debug, Clone)]
pub struct HookEnv {
    pub wal_path: PathBuf,
    pub wal_name: String,
    /// Empty when there is no backup (yet).
    pub backup_path: Option<PathBuf>,
}

/// Runs `argv` with the hook environment; `Ok(status)` when it ran to completion.
/// Its stdout goes to our stderr so it can never corrupt the JSON log stream on stdout.
pub fn run_blocking(
    argv: &[String],
    env: &HookEnv,
    timeout: Duration,
) -> Result<ExitStatus, DaemonError> {
    let err = |detail: String| DaemonError::Hook {
        argv: argv.to_vec(),
        detail,
    };
    let (program, args) = argv.split_first().ok_or_else(|| err("empty argv".into()))?;
    let stdout = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| err(format!("dup stderr: {e}")))?;
    let backup = env
        .backup_path
        .as_ref()
        .map(|p| p.as_os_str().to_owned())
        .unwrap_or_default();
    let mut child = Command::new(program)
        .args(args)
        .env("WAL_PATH", &env.wal_path)
        .env("WAL_NAME", &env.wal_name)
        .env("BACKUP_PATH", backup)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .spawn()
        .map_err(|e| err(format!("cannot start: {e}")))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!("killed after {} s", timeout.as_secs())));
            }
            Ok(None) => std::thread::sleep(HOOK_POLL),
            Err(e) => return Err(err(format!("wait: {e}"))),
        }
    }
}

/// Runs a hook and turns a non-zero exit into an error message (for the verify check).
pub fn run_checked(argv: &[String], env: &HookEnv, timeout: Duration) -> Result<(), String> {
    match run_blocking(argv, env, timeout) {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{argv:?} exited with {s}")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn hook_gets_env_and_times_out() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("env");
        let env = HookEnv {
            wal_path: "/x/wal.log".into(),
            wal_name: "w".into(),
            backup_path: None,
        };
        let argv: Vec<String> = ["sh", "-c", "env > \"$0\"", out.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(run_blocking(&argv, &env, HOOK_TIMEOUT).unwrap().success());
        let text = fs::read_to_string(&out).unwrap();
        assert!(text.contains("WAL_PATH=/x/wal.log"), "{text}");
        assert!(text.contains("WAL_NAME=w\n"), "{text}");
        assert!(text.contains("BACKUP_PATH=\n"), "{text}");
        let slow: Vec<String> = vec!["sleep".into(), "10".into()];
        let e = run_blocking(&slow, &env, Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("killed"), "{e}");
        assert!(run_checked(&["false".to_string()], &env, HOOK_TIMEOUT).is_err());
    }
}
