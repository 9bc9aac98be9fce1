//! The operator's commands: `offsite list WAL` (what is where), `offsite push WAL` (upload
//! what is pending now) and the download half of `restore WAL s3://...`. Each runs its own
//! small async runtime; the daemon's uploader may run at the same time (the queue is
//! changed under its lock; a file both upload is uploaded twice, identically).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::OffsiteError;
use super::push::{self, PassReport, Uploader};
use super::queue::{Kind, QueueFile};
use super::remote::{self, Downloaded, RemoteObject};
use super::store::{self, StoreConfig};
use super::target::parse_object_url;
use crate::commands::{self, RestoreReport};
use crate::pipeline::{Guard, PipelineError};
use crate::pipeline::{archive, backup, links};
use crate::policy::WalPolicy;
use crate::policy::{self as policy_mod, PolicyError};

/// Why an offsite command could not run, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{} is not a [[wal]] of the policy {source_name}", wal.display())]
    NotInPolicy { wal: PathBuf, source_name: String },
    #[error(transparent)]
    Offsite(#[from] OffsiteError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl CliError {
    /// The documented exit code: policy problems are usage errors (2).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Policy(_) | CliError::NotInPolicy { .. } => crate::pipeline::exit_code::USAGE,
            CliError::Offsite(e) => e.exit_code(),
            CliError::Pipeline(e) => e.exit_code(),
        }
    }
}

/// The policy entry of the WAL at `wal` (policy file `path`, else the default lookup) and
/// the daemon's state directory, where the WAL's queue is.
pub fn lookup(wal: &Path, path: Option<&Path>) -> Result<(WalPolicy, PathBuf), CliError> {
    let (policy, source) = policy_mod::load(path)?;
    let w = crate::daemon::report::find_wal(&policy, wal).ok_or_else(|| CliError::NotInPolicy {
        wal: wal.to_path_buf(),
        source_name: source.to_string(),
    })?;
    Ok((w.clone(), policy.daemon.state_dir.clone()))
}

/// The WAL's files still waiting for an off-host copy, for `prune-backups` to keep. Empty
/// when the WAL is not in the (default) policy or has no `[wal.offsite]`; an error when a
/// policy given explicitly cannot be loaded or the queue cannot be read (then nothing may be
/// pruned).
pub fn pending_for(wal: &Path, policy_path: Option<&Path>) -> Result<Vec<PathBuf>, CliError> {
    match lookup(wal, policy_path) {
        Ok((w, state_dir)) => Ok(push::pending_paths(&w, &state_dir)?),
        Err(e @ CliError::Policy(_)) if policy_path.is_some() => Err(e),
        Err(_) => Ok(Vec::new()),
    }
}

/// A verified download, removed when dropped (the restore commands copy what they use).
pub struct Fetched(Downloaded);

impl Fetched {
    pub fn path(&self) -> &Path {
        &self.0.path
    }
}

impl Drop for Fetched {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0.path);
    }
}

/// Downloads the object at `url` beside the WAL's backups (the WAL's policy entry, when
/// there is one, gives the endpoint and `backup_dir`) and refuses it unless its digest
/// matches: for `restore WAL s3://...` and `restore WAL --from-archive s3://...`. A policy
/// file given explicitly must load; the default one may be absent.
pub fn fetch_for(
    wal: &Path,
    url: &str,
    backup_dir: Option<&Path>,
    policy_path: Option<&Path>,
) -> Result<Fetched, CliError> {
    let entry = match lookup(wal, policy_path) {
        Ok((w, _)) => Some(w),
        Err(e @ CliError::Policy(_)) if policy_path.is_some() => return Err(e),
        Err(_) => None,
    };
    let dir = backup_dir
        .map(Path::to_path_buf)
        .or_else(|| entry.as_ref().and_then(|w| w.backup_dir.clone()))
        .unwrap_or_else(|| backup::backup_dir(&links::real_path_or_given(wal), None));
    Ok(Fetched(fetch(url, entry.as_ref(), &dir)?))
}

/// `restore WAL s3://...`: [`fetch_for`], then the restore `restore WAL BACKUP` does.
pub fn restore_from_url(
    wal: &Path,
    url: &str,
    backup_dir: Option<&Path>,
    policy_path: Option<&Path>,
    guard: Guard,
) -> Result<RestoreReport, CliError> {
    let fetched = fetch_for(wal, url, backup_dir, policy_path)?;
    let mut report = commands::restore(wal, fetched.path(), backup_dir, guard)?;
    report.restored_from = PathBuf::from(url);
    Ok(report)
}

/// A local backup or archive of the WAL, and whether its copy is known.
#[derive(Debug, Clone, Serialize)]
pub struct LocalFile {
    pub path: PathBuf,
    pub kind: Kind,
    pub bytes: u64,
    /// `pending` (waiting for its copy; with `attempts` and `last_error`), `confirmed`
    /// (uploaded and checked, see `url`), or `local only` (made before offsite was on, or
    /// not uploaded by `upload`).
    pub offsite: &'static str,
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// `offsite list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub wal: String,
    pub target: String,
    pub local: Vec<LocalFile>,
    pub remote: Vec<RemoteObject>,
    pub pending: usize,
    pub pending_bytes: u64,
}

fn runtime() -> Result<tokio::runtime::Runtime, OffsiteError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OffsiteError::local(
            "start the async runtime",
            PathBuf::new(),
        ))
}

/// Lists the WAL's local backups and archives with their offsite status, and the objects
/// on the server with their digests.
pub fn list(wal: &WalPolicy, state_dir: &Path) -> Result<Listing, OffsiteError> {
    let up = Uploader::new(wal, state_dir)?;
    let queue = up.queue.load()?;
    let local = local_files(wal)?
        .into_iter()
        .map(|(path, kind, bytes)| {
            let pending = queue.pending.iter().find(|p| p.path == path);
            let confirmed = queue.confirmed.iter().rev().find(|c| c.path == path);
            LocalFile {
                offsite: match (pending, confirmed) {
                    (Some(_), _) => "pending",
                    (None, Some(_)) => "confirmed",
                    (None, None) => "local only",
                },
                url: confirmed.map(|c| c.url.clone()),
                sha256: confirmed.map(|c| c.sha256.clone()),
                attempts: pending.map_or(0, |p| p.attempts),
                last_error: pending.and_then(|p| p.last_error.clone()),
                path,
                kind,
                bytes,
            }
        })
        .collect();
    let real = links::real_path_or_given(&wal.resolved_path);
    let remote = runtime()?.block_on(remote::list(&up.store, &up.target, &real, true))?;
    Ok(Listing {
        wal: wal.name.clone(),
        target: up.target.to_string(),
        local,
        remote,
        pending: queue.pending.len(),
        pending_bytes: queue.pending_bytes(),
    })
}

/// The WAL's local backups and archives (path, kind, bytes), oldest first per kind.
fn local_files(wal: &WalPolicy) -> Result<Vec<(PathBuf, Kind, u64)>, OffsiteError> {
    let real = links::real_path_or_given(&wal.resolved_path);
    let dir = backup::backup_dir(&real, wal.backup_dir.as_deref());
    let mut out: Vec<(PathBuf, Kind, u64)> = match backup::list(&real, &dir) {
        Ok(list) => list
            .into_iter()
            .map(|b| (b.path, Kind::Backup, b.bytes))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(OffsiteError::local("list", &dir)(e)),
    };
    if let Some(r) = &wal.retention {
        let adir = r.archive_dir.clone().unwrap_or(dir);
        match archive::list(&real, &adir) {
            Ok(list) => out.extend(list.into_iter().map(|a| (a.path, Kind::Archive, a.bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(OffsiteError::local("list", &adir)(e)),
        }
    }
    Ok(out)
}

/// `offsite push`: uploads every pending file now, whatever its backoff.
pub fn push(wal: &WalPolicy, state_dir: &Path) -> Result<PassReport, OffsiteError> {
    let up = Uploader::new(wal, state_dir)?;
    runtime()?.block_on(push::pass(&up, true))
}

/// Whether `text` names an object (`s3://...`) rather than a local file.
pub fn is_object_url(text: &str) -> bool {
    text.starts_with("s3://") || text.starts_with("s3a://")
}

/// Downloads the object at `url` into `dir` (a hidden temp name keeping the object's file
/// name, so a `.zst` is still recognized) and checks it against its stored digest. The
/// endpoint comes from the WAL's `[wal.offsite]` when it has one, else from the environment
/// (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`). The caller removes the file when done.
pub fn fetch(url: &str, wal: Option<&WalPolicy>, dir: &Path) -> Result<Downloaded, OffsiteError> {
    let (bucket, key) = parse_object_url(url).map_err(OffsiteError::Target)?;
    let name = key.rsplit('/').next().unwrap_or_default();
    if name.is_empty() {
        return Err(OffsiteError::Target(format!(
            "{url:?} names no object (it ends with /)"
        )));
    }
    let offsite = wal.and_then(|w| w.offsite.as_ref());
    let cfg = StoreConfig {
        bucket,
        endpoint: offsite.and_then(|o| o.endpoint.clone()),
        allow_http: offsite.is_some_and(|o| o.allow_http),
    };
    let store = store::build(&cfg)?;
    let dest = dir.join(format!(
        ".walcompactd-download-{}-{name}",
        std::process::id()
    ));
    runtime()?.block_on(remote::download(&store, &key, url, &dest))
}

/// The queue file of a WAL (for `status`).
pub fn queue_file(wal: &WalPolicy, state_dir: &Path) -> QueueFile {
    QueueFile::new(state_dir, &wal.name)
}

/// `offsite list` for people.
pub fn render_listing(l: &Listing) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(o, "wal            {}", l.wal);
    let _ = writeln!(o, "target         {}", l.target);
    let _ = writeln!(
        o,
        "pending        {} files ({} bytes)",
        l.pending, l.pending_bytes
    );
    let _ = writeln!(o, "\nlocal:");
    for f in &l.local {
        let mut note = f.offsite.to_string();
        if f.attempts > 0 {
            let _ = write!(note, ", {} failed attempts", f.attempts);
        }
        let _ = writeln!(
            o,
            "  {:<8} {:>12} bytes  {}  [{note}]",
            f.kind.as_str(),
            f.bytes,
            f.path.display()
        );
    }
    let _ = writeln!(o, "\nremote:");
    for r in &l.remote {
        let _ = writeln!(
            o,
            "  {:<8} {:>12} bytes  {}  sha256 {}",
            r.kind.as_str(),
            r.bytes,
            r.url,
            r.sha256.as_deref().unwrap_or("(none)")
        );
    }
    o
}

/// `offsite push` for people.
pub fn render_push(r: &PassReport) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    for a in &r.attempts {
        match &a.error {
            None => {
                let _ = writeln!(
                    o,
                    "uploaded  {} → {} ({} bytes, sha256 {}, confirmed)",
                    a.path.display(),
                    a.url,
                    a.bytes,
                    a.sha256.as_deref().unwrap_or("")
                );
            }
            Some(e) => {
                let _ = writeln!(o, "FAILED    {}: {e}", a.path.display());
            }
        }
    }
    for p in &r.pruned_remote {
        let _ = writeln!(o, "pruned    {p} (remote, past its keep_days)");
    }
    for p in &r.deleted_local {
        let _ = writeln!(
            o,
            "removed   {} (local; its copy is confirmed)",
            p.display()
        );
    }
    let _ = writeln!(
        o,
        "pending   {} files ({} bytes)",
        r.pending, r.pending_bytes
    );
    o
}
