//! The compaction policy: which WALs to watch, when to compact them, how to
//! keep backups, and which alerts to raise.
//!
//! A policy is a TOML file (see `config/policy.toml`, also embedded as the
//! default). Parsing happens in two passes that both collect *every* error with
//! its key path (`wal[1].triggers.schedule[0]: ...`): `document` checks syntax,
//! types and unknown keys section by section; `validate` checks ranges,
//! keywords, cron expressions, paths and cross references and fills in defaults.
//! `parse` is pure; `load` is the thin layer that touches the filesystem and the
//! environment. `trust` decides whether a policy whose commands run as root may be
//! believed (owners and modes of its file and of its commands' executables);
//! `load_trusted`, what the daemon and `check-policy` use, loads and then checks.

mod alerts;
mod document;
mod env;
mod offsite;
mod render;
mod schema;
pub mod trust;
mod types;
mod validate;
mod wal;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use env::{ParseEnv, SYSTEM_STATE_DIR, normalize};
pub use trust::Trust;
pub use types::{
    AlertAction, AlertMetric, AlertRule, BackupPolicy, DaemonPolicy, Hooks, LogFormat, Mode,
    OffsitePolicy, Policy, RetentionPolicy, Schedule, Severity, Threshold, Triggers, WalPolicy,
};

/// Where a packaged install keeps its policy; used when no path is given and it exists.
pub const DEFAULT_POLICY_PATH: &str = "/etc/walcompactd/policy.toml";

/// The built-in policy (the old operations guide), used when no file is found.
pub const EMBEDDED_POLICY: &str = include_str!("../../config/policy.toml");

/// Origin label of the embedded policy in messages.
const EMBEDDED_ORIGIN: &str = "embedded default";

/// Where the effective policy came from, for logs and `check-policy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// Read from this file.
    File(PathBuf),
    /// `EMBEDDED_POLICY`, because no file was given or found.
    Embedded,
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::File(path) => write!(f, "{}", path.display()),
            PolicySource::Embedded => f.write_str(EMBEDDED_ORIGIN),
        }
    }
}

/// One problem in a policy, located by its key path (empty for document-level
/// problems such as TOML syntax errors, whose message carries line:column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    /// Dotted key path with array indices, e.g. `wal[1].triggers.schedule[0]`.
    pub key: String,
    /// What is wrong, including the offending value where useful.
    pub message: String,
}

impl KeyError {
    /// Builds an error for `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        KeyError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Why a policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("cannot read policy {}: {source}", path.display())]
    Read {
        /// The file we tried to read.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The working directory (needed to resolve relative paths) is unavailable.
    #[error("cannot determine the working directory to resolve policy paths: {source}")]
    WorkingDir {
        /// The underlying I/O error.
        source: io::Error,
    },
    /// The policy was read but is invalid; every problem found is listed.
    #[error("{}", list_errors(origin, errors))]
    Invalid {
        /// The file path or "embedded default".
        origin: String,
        /// Every problem found, in document order per pass.
        errors: Vec<KeyError>,
    },
    /// The policy is valid, but its file or a command's executable could be changed by
    /// someone other than root or the daemon's user (see `trust`); every problem is listed.
    #[error("{}", list_errors(origin, errors))]
    Untrusted {
        /// The file path or "embedded default".
        origin: String,
        /// Every file that cannot be trusted, keyed like validation errors.
        errors: Vec<KeyError>,
    },
}

/// One error per line, each prefixed by the origin, like a compiler's output.
fn list_errors(origin: &str, errors: &[KeyError]) -> String {
    let lines: Vec<String> = errors.iter().map(|e| format!("{origin}: {e}")).collect();
    lines.join("\n")
}

/// Parses and validates a policy. Pure: paths resolve against `env.base_dir`
/// and defaults come from `env`, never from the process. `origin` labels errors.
pub fn parse(text: &str, origin: &str, env: &ParseEnv) -> Result<Policy, PolicyError> {
    let mut errors = Vec::new();
    let policy =
        document::read(text, &mut errors).and_then(|doc| validate::policy(doc, env, &mut errors));
    match policy {
        Some(policy) if errors.is_empty() => Ok(policy),
        _ => {
            sort_by_section(&mut errors);
            Err(PolicyError::Invalid {
                origin: origin.to_string(),
                errors,
            })
        }
    }
}

/// One error per key, grouped by section in file order (document-level, `daemon`, each
/// `wal[i]`, each `alert[i]`); the sort is stable, so within one section the
/// passes' own order (unknown keys, types, then values) is kept.
/// A key that failed to deserialize is validated at its default, which can
/// yield a second, spurious error for the same key; only the first is kept.
fn sort_by_section(errors: &mut Vec<KeyError>) {
    errors.sort_by_key(|e| section_rank(&e.key));
    let mut seen = std::collections::HashSet::new();
    errors.retain(|e| seen.insert(e.key.clone()));
}

fn section_rank(key: &str) -> (usize, usize) {
    let top_end = key.find(['.', '[']).unwrap_or(key.len());
    let rank = match &key[..top_end] {
        "daemon" => 1,
        "wal" => 2,
        "alert" => 3,
        _ => 0,
    };
    let index = key[top_end..]
        .strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    (rank, index)
}

/// Loads the policy: `explicit` if given; else `DEFAULT_POLICY_PATH` if it
/// exists; else the embedded default. Reads the working directory and
/// environment for path resolution and the state directory default.
pub fn load(explicit: Option<&Path>) -> Result<(Policy, PolicySource), PolicyError> {
    let env = ParseEnv::from_process().map_err(|source| PolicyError::WorkingDir { source })?;
    load_with(explicit, Path::new(DEFAULT_POLICY_PATH), &env)
}

/// `load` with the default path and environment injected, for tests.
pub fn load_with(
    explicit: Option<&Path>,
    default_path: &Path,
    env: &ParseEnv,
) -> Result<(Policy, PolicySource), PolicyError> {
    let path = match explicit {
        Some(path) => path,
        None if default_path.exists() => default_path,
        None => {
            return Ok((
                parse(EMBEDDED_POLICY, EMBEDDED_ORIGIN, env)?,
                PolicySource::Embedded,
            ));
        }
    };
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let policy = parse(&text, &path.display().to_string(), env)?;
    Ok((policy, PolicySource::File(path.to_path_buf())))
}

/// `load`, then `trust::verify`: what the daemon (start and reload) and `check-policy` use,
/// since the commands of the policy they accept run with the daemon's privileges.
pub fn load_trusted(explicit: Option<&Path>) -> Result<(Policy, PolicySource, Trust), PolicyError> {
    let (policy, source) = load(explicit)?;
    let trust = trust::verify(&policy, &source)?;
    Ok((policy, source, trust))
}

impl Policy {
    /// The effective policy as TOML (all defaults filled in), for `check-policy`.
    pub fn to_toml(&self) -> String {
        render::to_toml(self)
    }

    /// Things that are valid but worth telling the user, e.g. that there is no WAL to watch.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.wals.is_empty() {
            notes.push("no [[wal]] entries: the daemon will start and idle".to_string());
        }
        notes.extend(self.wal_notes());
        notes
    }

    /// The notes about individual `[[wal]]` entries (the daemon says "no WALs" its own way).
    pub fn wal_notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for (i, wal) in self.wals.iter().enumerate() {
            if !wal.triggers.any_enabled() {
                notes.push(format!(
                    "wal[{i}] ({}): no trigger enabled; only alerts with the \"compact\" action or a manual run will compact it",
                    wal.name
                ));
            }
            if wal.retention.is_some() && wal.retention_request().is_none() {
                notes.push(format!(
                    "wal[{i}] ({}): [wal.retention] sets neither expire_after_secs nor expire_in_flight_after_secs; nothing expires",
                    wal.name
                ));
            }
        }
        notes
    }
}

impl Triggers {
    /// Whether any trigger (not counting the guards) can start a compaction.
    pub fn any_enabled(&self) -> bool {
        self.max_size_bytes.is_some()
            || self.max_commits_since_compaction.is_some()
            || self.min_reclaimable_ratio.is_some()
            || self.min_free_disk_percent.is_some()
            || !self.schedule.is_empty()
    }
}

#[cfg(test)]
mod tests;
