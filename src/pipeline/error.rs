//! The pipeline's error type: each variant names the stage and the file involved, and maps
//! to one stable exit code.

use std::io;
use std::path::PathBuf;

use super::Stage;
use crate::analyze::AnalyzeError;

/// Process exit codes; documented in the README and kept stable for scripts.
pub mod exit_code {
    /// Success, including "nothing to reclaim".
    pub const OK: i32 = 0;
    /// Verification failed; the WAL was left as it was (or rolled back to it).
    pub const VERIFY_FAILED: i32 = 1;
    /// Bad command line or invalid policy.
    pub const USAGE: i32 = 2;
    /// The WAL has a corrupt line and `corrupt_lines = "refuse"`; nothing changed.
    pub const CORRUPT: i32 = 3;
    /// An I/O error, missing file, no permission or no space; nothing lost.
    pub const IO: i32 = 4;
    /// Another compaction holds this WAL's lock.
    pub const BUSY: i32 = 5;
}

/// Why a pipeline run (or a single command) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(
        "{path}: line {line} (byte offset {offset}) is corrupt: {reason}{}; refused (corrupt_lines = \"refuse\"), nothing changed. \"keep\" compacts around corrupt lines, \"quarantine\" moves them aside",
        more_note(*.more)
    )]
    Corrupt {
        path: PathBuf,
        line: u64,
        offset: u64,
        reason: String,
        more: u64,
    },

    #[error("{path}: {what}")]
    BadInput { path: PathBuf, what: String },

    #[error("{stage} stage: {op} {path}: {source}")]
    Io {
        stage: Stage,
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error(
        "{stage} stage: not enough free space for {path}: need {needed} bytes, {available} available"
    )]
    NoSpace {
        stage: Stage,
        path: PathBuf,
        needed: u64,
        available: u64,
    },

    #[error("{path}: another compaction holds the lock ({holder})")]
    Busy { path: PathBuf, holder: String },

    #[error(
        "{path}: writers held the lock for more than {waited_ms} ms; nothing replaced, retry later"
    )]
    LockTimeout { path: PathBuf, waited_ms: u64 },

    #[error(
        "{path}: changed during compaction ({what}); nothing replaced. Stop the writer, or use --mode online if it follows docs/PROTOCOL.md"
    )]
    Changed { path: PathBuf, what: String },

    /// A kernel file lease could not be had, or was given up (lease and offline modes).
    #[error("{source}")]
    Lease {
        path: PathBuf,
        #[source]
        source: crate::lease::LeaseError,
    },

    #[error("verification failed for {path}: {detail}; the WAL was left as it was")]
    VerifyFailed { path: PathBuf, detail: String },

    #[error(
        "{path}: cancelled before the {stage} stage (shutting down); the WAL was left as it was"
    )]
    Cancelled { path: PathBuf, stage: Stage },

    #[error("application check of {path} failed ({detail}); rolled back to backup {backup}")]
    CheckFailed {
        path: PathBuf,
        backup: PathBuf,
        detail: String,
    },
}

fn more_note(more: u64) -> String {
    if more == 0 {
        String::new()
    } else {
        format!(" (and {more} more corrupt lines)")
    }
}

impl PipelineError {
    /// The stable exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            PipelineError::Corrupt { .. } => exit_code::CORRUPT,
            PipelineError::VerifyFailed { .. } | PipelineError::CheckFailed { .. } => {
                exit_code::VERIFY_FAILED
            }
            PipelineError::Busy { .. } | PipelineError::LockTimeout { .. } => exit_code::BUSY,
            PipelineError::Lease { source, .. } if source.is_busy() => exit_code::BUSY,
            _ => exit_code::IO,
        }
    }

    /// The stage the error happened in, when it says (or implies) one.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            PipelineError::Io { stage, .. }
            | PipelineError::NoSpace { stage, .. }
            | PipelineError::Cancelled { stage, .. } => Some(*stage),
            PipelineError::Corrupt { .. } | PipelineError::BadInput { .. } => Some(Stage::Analyze),
            PipelineError::Busy { .. } | PipelineError::LockTimeout { .. } => Some(Stage::Lock),
            PipelineError::Changed { .. } | PipelineError::Lease { .. } => Some(Stage::Swap),
            PipelineError::VerifyFailed { .. } => Some(Stage::Verify),
            PipelineError::CheckFailed { .. } => Some(Stage::Check),
        }
    }

    /// The variant's name, for log fields and scripts (`io`, `corrupt`, `changed`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            PipelineError::Corrupt { .. } => "corrupt",
            PipelineError::BadInput { .. } => "bad_input",
            PipelineError::Io { .. } => "io",
            PipelineError::NoSpace { .. } => "no_space",
            PipelineError::Busy { .. } => "busy",
            PipelineError::LockTimeout { .. } => "lock_timeout",
            PipelineError::Changed { .. } => "changed",
            PipelineError::Lease { .. } => "lease",
            PipelineError::VerifyFailed { .. } => "verify_failed",
            PipelineError::Cancelled { .. } => "cancelled",
            PipelineError::CheckFailed { .. } => "check_failed",
        }
    }

    /// The file the error is about.
    pub fn path(&self) -> &std::path::Path {
        match self {
            PipelineError::Corrupt { path, .. }
            | PipelineError::BadInput { path, .. }
            | PipelineError::Io { path, .. }
            | PipelineError::NoSpace { path, .. }
            | PipelineError::Busy { path, .. }
            | PipelineError::LockTimeout { path, .. }
            | PipelineError::Changed { path, .. }
            | PipelineError::Lease { path, .. }
            | PipelineError::VerifyFailed { path, .. }
            | PipelineError::Cancelled { path, .. }
            | PipelineError::CheckFailed { path, .. } => path,
        }
    }

    /// An I/O error in `stage` while doing `op` on `path`.
    pub fn io(
        stage: Stage,
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> PipelineError {
        let path = path.into();
        move |source| PipelineError::Io {
            stage,
            op,
            path,
            source,
        }
    }

    /// Converts a failed analysis pass of `path`.
    pub fn from_analyze(stage: Stage, path: impl Into<PathBuf>, e: AnalyzeError) -> PipelineError {
        let path = path.into();
        match e {
            AnalyzeError::Io { source, .. } => PipelineError::Io {
                stage,
                op: "read",
                path,
                source,
            },
            other => PipelineError::BadInput {
                path,
                what: other.to_string(),
            },
        }
    }
}
