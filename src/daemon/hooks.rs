//! External commands around a compaction (argv arrays, no shell) and the offline-mode check
//! that no other process holds the WAL open.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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

/// Who else has the WAL open, as far as /proc lets us see.
#[derive(Debug, PartialEq, Eq)]
pub enum Holders {
    /// Nobody else among the processes we could inspect; `uninspected` processes hid their
    /// descriptors from us (another user's, without privilege).
    None { uninspected: usize },
    /// These pids hold it open.
    Found(Vec<u32>),
    /// /proc itself could not be read: we could not check at all.
    Unknown(String),
}

/// Scans `/proc/*/fd` for descriptors on the WAL (by device and inode, so a renamed path
/// still matches), ignoring this process.
pub fn holders(wal: &Path) -> Holders {
    holders_in(Path::new("/proc"), wal, std::process::id())
}

/// [`holders`] with the /proc root and own pid injected, for tests.
pub fn holders_in(proc_root: &Path, wal: &Path, own_pid: u32) -> Holders {
    let target = match fs::metadata(wal) {
        Ok(m) => (m.dev(), m.ino()),
        Err(_) => return Holders::None { uninspected: 0 },
    };
    let entries = match fs::read_dir(proc_root) {
        Ok(e) => e,
        Err(e) => return Holders::Unknown(format!("cannot read {}: {e}", proc_root.display())),
    };
    let mut found = Vec::new();
    let mut uninspected = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        match holds(&entry.path().join("fd"), target) {
            Ok(true) => found.push(pid),
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // exited meanwhile
            Err(_) => uninspected += 1,
        }
    }
    if found.is_empty() {
        Holders::None { uninspected }
    } else {
        found.sort_unstable();
        Holders::Found(found)
    }
}

fn holds(fd_dir: &Path, target: (u64, u64)) -> io::Result<bool> {
    for fd in fs::read_dir(fd_dir)?.flatten() {
        // metadata() follows the magic link to the open file itself, even if renamed.
        if let Ok(m) = fs::metadata(fd.path())
            && (m.dev(), m.ino()) == target
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_holding_the_file_and_not_ourselves() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("wal.log");
        fs::write(&wal, b"x\n").unwrap();
        let _ours = fs::File::open(&wal).unwrap();
        assert!(matches!(holders(&wal), Holders::None { .. }));
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(fs::File::open(&wal).unwrap())
            .spawn()
            .unwrap();
        let found = holders(&wal);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Holders::Found(vec![child.id()]));
    }

    #[test]
    fn unreadable_proc_is_reported_not_assumed() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("wal.log");
        fs::write(&wal, b"x\n").unwrap();
        let h = holders_in(&d.path().join("no-proc"), &wal, 1);
        assert!(matches!(h, Holders::Unknown(_)), "{h:?}");
    }

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
