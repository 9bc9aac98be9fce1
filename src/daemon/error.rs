//! The daemon's error type: every variant says what the daemon was doing and on which file,
//! so a log line alone is enough to act on.

use std::io;
use std::path::PathBuf;

use crate::policy::PolicyError;

/// Why a daemon step failed. Only startup errors are fatal; everything during operation
/// is logged and the daemon keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("policy: {0}")]
    Policy(#[from] PolicyError),

    #[error("logging setup: {0}")]
    Logging(String),

    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("watching files: {0}")]
    Watch(#[from] notify::Error),

    #[error("cron scheduler: {0}")]
    Schedule(#[from] tokio_cron_scheduler::JobSchedulerError),

    #[error("signal handler: {0}")]
    Signal(io::Error),

    #[error("hook {argv:?}: {source}")]
    Hook {
        argv: Vec<String>,
        source: crate::process::ProcessError,
    },
}

impl DaemonError {
    /// An I/O error while doing `op` on `path`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> DaemonError {
        let path = path.into();
        move |source| DaemonError::Io { op, path, source }
    }
}
