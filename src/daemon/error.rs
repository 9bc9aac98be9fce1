//! The daemon's error type: every variant says what the daemon was doing (and with what),
//! so a log line alone is enough to act on.

use std::io;

/// Why a daemon step failed. Only startup errors are fatal; everything during operation
/// is logged and the daemon keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("logging setup: {0}")]
    Logging(String),

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
