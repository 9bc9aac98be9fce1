//! What can go wrong with off-host copies. Every message names the object or file and is
//! already redacted (no credential in any of them): they go to logs, the queue file and
//! `status`.

use std::io;
use std::path::PathBuf;

/// Appended to a refusal (HTTP 403): the usual causes, named for the operator.
const CREDENTIALS_HINT: &str = " (the server refused our credentials or their permissions: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION in the daemon's environment, and the bucket's policy)";

/// One error type for the offsite domain, with the object or file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum OffsiteError {
    /// The policy's URL or endpoint cannot be used (check-policy catches these first).
    #[error("offsite target: {0}")]
    Target(String),
    /// The object store client could not be built.
    #[error("cannot set up the object store client for {target}: {detail}")]
    Client { target: String, detail: String },
    /// A request to the server failed (unreachable, refused, wrong credentials, ...).
    #[error("{op} {url}: {detail}")]
    Remote {
        op: &'static str,
        url: String,
        detail: String,
    },
    /// A local file could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Local {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The uploaded object does not match what was sent (size or digest metadata).
    #[error("{url}: the uploaded copy does not match the local file: {why}")]
    Unconfirmed { url: String, why: String },
    /// A downloaded object's bytes do not hash to the digest stored with it.
    #[error(
        "{url}: digest mismatch: the object's bytes hash to {actual}, its metadata says {expected}; refusing it"
    )]
    Corrupt {
        url: String,
        expected: String,
        actual: String,
    },
    /// A downloaded object carries no digest of ours: it cannot be checked, so it is refused.
    #[error(
        "{url}: no sha256 metadata on the object (not uploaded by walcompactd?); refusing an unverifiable copy"
    )]
    NoDigest { url: String },
    /// The WAL has no `[wal.offsite]` in the policy.
    #[error("{wal}: no [wal.offsite] in the policy {source_name}; nothing leaves this host")]
    NotConfigured { wal: String, source_name: String },
    /// The daemon's pending list could not be read or saved.
    #[error("offsite queue {}: {detail}", path.display())]
    Queue { path: PathBuf, detail: String },
}

impl OffsiteError {
    /// A failed request, its error chain redacted.
    pub fn remote(op: &'static str, url: &str, e: &object_store::Error) -> OffsiteError {
        let mut detail = super::error_chain(e);
        if detail.contains("403 Forbidden") {
            detail.push_str(CREDENTIALS_HINT);
        }
        OffsiteError::Remote {
            op,
            url: url.to_string(),
            detail,
        }
    }

    /// A local I/O error, as a closure for `map_err`.
    pub fn local(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| OffsiteError::Local { op, path, source }
    }

    /// For the `outcome` and `error_kind` labels.
    pub fn kind(&self) -> &'static str {
        match self {
            OffsiteError::Target(_) | OffsiteError::NotConfigured { .. } => "config",
            OffsiteError::Client { .. } => "client",
            OffsiteError::Remote { .. } => "remote",
            OffsiteError::Local { .. } => "local",
            OffsiteError::Unconfirmed { .. } => "unconfirmed",
            OffsiteError::Corrupt { .. } | OffsiteError::NoDigest { .. } => "corrupt",
            OffsiteError::Queue { .. } => "queue",
        }
    }

    /// The exit code of the CLI commands (README's table): a server or a digest problem is
    /// I/O (4), like a missing file; a missing `[wal.offsite]` is a usage error (2).
    pub fn exit_code(&self) -> i32 {
        match self {
            OffsiteError::Target(_) | OffsiteError::NotConfigured { .. } => {
                crate::pipeline::exit_code::USAGE
            }
            _ => crate::pipeline::exit_code::IO,
        }
    }
}
