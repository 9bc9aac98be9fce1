//! External commands around a compaction (argv arrays, no shell), run by [`crate::process`]
//! (own process group, killed whole on timeout, stderr captured). The offline-mode check that
//! no other process holds the WAL open is the offline guard's admission
//! (`pipeline::guard::offline`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tracing::debug;

use super::DaemonError;
use crate::process::{self, Finished, Spec, Stdout};

/// A hook running longer than this is killed (with its process group) and counts as failed:
/// hooks are meant to be quick (stop a service, run a check), and a stuck one must not wedge
/// the supervisor.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// The environment every hook gets.
#[derive(Debug, Clone)]
pub struct HookEnv {
    pub wal_path: PathBuf,
    pub wal_name: String,
    /// Empty when there is no backup (yet).
    pub backup_path: Option<PathBuf>,
}

impl HookEnv {
    /// `WAL_PATH`, `WAL_NAME`, `BACKUP_PATH` (empty without a backup), added to the daemon's.
    fn vars(&self) -> Vec<(OsString, OsString)> {
        let backup = self
            .backup_path
            .as_ref()
            .map(|p| p.as_os_str().to_owned())
            .unwrap_or_default();
        vec![
            ("WAL_PATH".into(), self.wal_path.clone().into()),
            ("WAL_NAME".into(), self.wal_name.clone().into()),
            ("BACKUP_PATH".into(), backup),
        ]
    }
}

/// Runs `argv` with the hook environment; `Ok(status)` when it ran to completion.
/// Its stdout goes to our stderr so it can never corrupt the JSON log stream on stdout.
pub fn run_blocking(
    argv: &[String],
    env: &HookEnv,
    timeout: Duration,
) -> Result<ExitStatus, DaemonError> {
    run_captured(argv, env, timeout).map(|f| f.status)
}

fn run_captured(
    argv: &[String],
    env: &HookEnv,
    timeout: Duration,
) -> Result<Finished, DaemonError> {
    let spec = Spec {
        argv,
        env: env.vars(),
        stdout: Stdout::Stderr,
        timeout,
        cancel: None,
    };
    process::run(&spec).map_err(|source| DaemonError::Hook {
        argv: argv.to_vec(),
        source,
    })
}

/// Runs a hook and turns a non-zero exit into an error message carrying the hook's captured
/// stderr (for the run's log line and the verify check).
pub fn run_checked(argv: &[String], env: &HookEnv, timeout: Duration) -> Result<(), String> {
    match run_captured(argv, env, timeout) {
        Ok(f) if f.status.success() => {
            if !f.stderr.is_empty() {
                debug!(event = "hook", wal = %env.wal_name, ?argv, stderr = %f.stderr_text(),
                    "hook succeeded and wrote to stderr");
            }
            Ok(())
        }
        Ok(f) if f.stderr.is_empty() => Err(format!("{argv:?} exited with {}", f.status)),
        Ok(f) => Err(format!(
            "{argv:?} exited with {}; stderr: {}",
            f.status,
            f.stderr_text()
        )),
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

    #[test]
    fn a_timed_out_hook_leaves_nothing_of_its_process_group_behind() {
        use crate::process::testing::*;
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("sleep.pid");
        let env = HookEnv {
            wal_path: "/x/wal.log".into(),
            wal_name: "w".into(),
            backup_path: None,
        };
        let argv = orphaning_argv(&pidfile);
        let sleep = sleep_pid_after(&pidfile, |timeout| {
            let e = run_checked(&argv, &env, timeout).unwrap_err();
            assert!(e.contains("killed"), "{e}");
        });
        assert_sleep_gone(sleep);
    }

    #[test]
    fn a_failed_hook_reports_its_stderr() {
        let env = HookEnv {
            wal_path: "/x/wal.log".into(),
            wal_name: "w".into(),
            backup_path: None,
        };
        let argv = ["sh", "-c", "echo 'service refused to stop' >&2; exit 1"].map(String::from);
        let e = run_checked(&argv, &env, HOOK_TIMEOUT).unwrap_err();
        assert!(e.contains("stderr: service refused to stop"), "{e}");
    }
}
