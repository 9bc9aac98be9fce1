//! One pass over a WAL's pending list: each due file uploaded and confirmed, the result
//! recorded in the queue (a failure delays that file by the backoff), confirmed local files
//! removed if asked, the server pruned by the policy's ages. Shared by the daemon's
//! uploader and `walcompactd offsite push`; what happens is logged here, once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use object_store::ObjectStore;
use serde::Serialize;
use tracing::{info, warn};

use super::OffsiteError;
use super::queue::{Confirmed, Kind, Pending, Queue, QueueFile};
use super::remote;
use super::target::Target;
use super::upload::{self, PART_BYTES, blocking};
use crate::pipeline::{backup, links};
use crate::policy::{OffsitePolicy, WalPolicy};

/// Everything a pass needs for one WAL: its policy, where copies go, the client, its queue.
#[derive(Clone)]
pub struct Uploader {
    pub wal: WalPolicy,
    pub offsite: OffsitePolicy,
    pub target: Target,
    pub store: Arc<dyn ObjectStore>,
    pub queue: QueueFile,
    /// [`PART_BYTES`]; smaller in tests.
    pub part_bytes: usize,
}

impl Uploader {
    /// The uploader of `wal` (its `[wal.offsite]`), its queue in `state_dir`.
    pub fn new(wal: &WalPolicy, state_dir: &Path) -> Result<Uploader, OffsiteError> {
        let offsite = wal
            .offsite
            .clone()
            .ok_or_else(|| OffsiteError::NotConfigured {
                wal: wal.name.clone(),
                source_name: "in use".into(),
            })?;
        let target = offsite.target(&wal.name).map_err(OffsiteError::Target)?;
        let store = super::store::build(&offsite.store_config(&target))?;
        Ok(Uploader {
            wal: wal.clone(),
            offsite,
            target,
            store,
            queue: QueueFile::new(state_dir, &wal.name),
            part_bytes: part_bytes(),
        })
    }

    /// The real WAL file (backups and archives are named after it).
    fn real_wal(&self) -> PathBuf {
        links::real_path_or_given(&self.wal.resolved_path)
    }
}

/// Multipart part size: [`PART_BYTES`], or `WALCOMPACTD_OFFSITE_PART_BYTES` in
/// `failpoints` builds (the tests' way to make a small file take several parts).
fn part_bytes() -> usize {
    #[cfg(feature = "failpoints")]
    if let Some(n) = std::env::var("WALCOMPACTD_OFFSITE_PART_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    PART_BYTES
}

/// One file's attempt, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub path: PathBuf,
    pub kind: Kind,
    pub url: String,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// What a pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    pub attempts: Vec<Attempt>,
    pub deleted_local: Vec<PathBuf>,
    pub pruned_remote: Vec<String>,
    pub pending: usize,
    pub pending_bytes: u64,
    /// When the next retry is due, if something waits on its backoff.
    pub next_retry: Option<DateTime<Utc>>,
}

impl PassReport {
    pub fn failures(&self) -> usize {
        self.attempts.iter().filter(|a| a.error.is_some()).count()
    }
}

/// Uploads what is due (everything pending with `all`, as `offsite push` does), then prunes.
pub async fn pass(up: &Uploader, all: bool) -> Result<PassReport, OffsiteError> {
    let q = load(up).await?;
    let now = Utc::now();
    let due: Vec<Pending> = if all { q.pending.clone() } else { q.due(now) };
    let mut report = PassReport::default();
    for p in due {
        if let Some(a) = attempt(up, p, &mut report).await? {
            report.attempts.push(a);
        }
    }
    if report.attempts.iter().any(|a| a.error.is_none()) {
        prune_remote(up, &mut report).await;
    }
    let q = load(up).await?;
    report.pending = q.pending.len();
    report.pending_bytes = q.pending_bytes();
    report.next_retry = q.next_retry();
    crate::metrics::publish_offsite(&up.wal.name, q.pending_bytes(), last_success_secs(&q));
    Ok(report)
}

/// Unix time of the last confirmed copy, 0 if none.
pub fn last_success_secs(q: &Queue) -> f64 {
    q.last_success
        .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0)
}

async fn load(up: &Uploader) -> Result<Queue, OffsiteError> {
    let f = up.queue.clone();
    blocking(move || f.load()).await
}

/// Changes the queue on the blocking pool.
async fn update(
    up: &Uploader,
    change: impl FnOnce(&mut Queue) + Send + 'static,
) -> Result<(), OffsiteError> {
    let f = up.queue.clone();
    blocking(move || f.update(change)).await
}

/// Uploads one pending file and records the outcome. `None` when the file is gone (its
/// entry is dropped: nothing left to copy).
async fn attempt(
    up: &Uploader,
    p: Pending,
    report: &mut PassReport,
) -> Result<Option<Attempt>, OffsiteError> {
    let name = up.wal.name.clone();
    let Some(local) = current_path(&p.path) else {
        warn!(event = "offsite", wal = %name, path = %p.path.display(),
            "{name}: {} {} is gone before its copy was made; dropped from the pending list",
            p.kind.as_str(), p.path.display());
        let gone = p.path.clone();
        update(up, move |q| q.forget(&gone)).await?;
        return Ok(None);
    };
    let file_name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (key, url) = (up.target.key(&file_name), up.target.url_of(&file_name));
    let started = std::time::Instant::now();
    let result = upload::upload(&up.store, &key, &url, &local, up.part_bytes).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    crate::metrics::record_offsite_upload(&name, result.is_ok());
    let queued = p.path.clone();
    match result {
        Ok(done) => {
            info!(event = "offsite", wal = %name, outcome = "success", kind = p.kind.as_str(),
                path = %local.display(), url = %done.url, bytes = done.bytes, sha256 = %done.sha256,
                parts = done.parts, duration_ms,
                "{name}: {} copied to {} ({} bytes, sha256 {}, confirmed)",
                p.kind.as_str(), done.url, done.bytes, done.sha256);
            let confirmed = Confirmed {
                path: local.clone(),
                kind: p.kind,
                url: done.url.clone(),
                bytes: done.bytes,
                sha256: done.sha256.clone(),
                at: Utc::now(),
            };
            update(up, move |q| {
                q.forget(&queued);
                q.confirm(confirmed);
            })
            .await?;
            if up.offsite.delete_local_after_upload {
                delete_local(up, &local, p.kind, report).await;
            }
            Ok(Some(Attempt {
                path: local,
                kind: p.kind,
                url: done.url,
                bytes: done.bytes,
                sha256: Some(done.sha256),
                error: None,
                duration_ms,
            }))
        }
        Err(e) => {
            let text = e.to_string();
            let retry = super::queue::backoff(p.attempts + 1);
            warn!(event = "offsite", wal = %name, outcome = "failed", kind = p.kind.as_str(),
                path = %local.display(), url = %url, error_kind = e.kind(), attempts = p.attempts + 1,
                retry_in_secs = retry.as_secs(),
                "{name}: copying {} to {url} failed (the local file is kept; retry in {} s): {text}",
                local.display(), retry.as_secs());
            let stored = text.clone();
            update(up, move |q| q.failed(&queued, stored, Utc::now())).await?;
            Ok(Some(Attempt {
                path: local,
                kind: p.kind,
                url,
                bytes: p.bytes,
                sha256: None,
                error: Some(text),
                duration_ms,
            }))
        }
    }
}

/// The queued path, or its compressed successor (`compress = true` replaces a backup with
/// `<name>.zst` after the run); `None` when neither exists.
fn current_path(queued: &Path) -> Option<PathBuf> {
    if queued.exists() {
        return Some(queued.to_path_buf());
    }
    let mut zst = queued.as_os_str().to_owned();
    zst.push(format!(".{}", backup::COMPRESSED_EXT));
    let zst = PathBuf::from(zst);
    zst.exists().then_some(zst)
}

/// `delete_local_after_upload`: removes a confirmed copy's local file, except the newest
/// backup (a quick local restore, and what the next run's rollback would use first).
async fn delete_local(up: &Uploader, local: &Path, kind: Kind, report: &mut PassReport) {
    let wal = up.real_wal();
    let dir = backup::backup_dir(&wal, up.wal.backup_dir.as_deref());
    let path = local.to_path_buf();
    let removed = blocking(move || {
        if kind == Kind::Backup {
            let newest = backup::list(&wal, &dir)
                .map_err(super::OffsiteError::local("list", &dir))?
                .pop()
                .map(|b| b.path);
            if newest.as_deref() == Some(path.as_path()) {
                return Ok(false);
            }
        }
        std::fs::remove_file(&path).map_err(super::OffsiteError::local("remove", &path))?;
        Ok(true)
    })
    .await;
    match removed {
        Ok(true) => {
            info!(event = "offsite", wal = %up.wal.name, path = %local.display(),
                "{}: removed the local {} (its copy is confirmed)", up.wal.name, kind.as_str());
            report.deleted_local.push(local.to_path_buf());
        }
        Ok(false) => {}
        Err(e) => warn!(event = "offsite", wal = %up.wal.name, "{}: {e}", up.wal.name),
    }
}

/// Prunes the server by `keep_days`/`keep_last` and `archive_keep_days`; failures are
/// logged (the next pass tries again), never fatal.
async fn prune_remote(up: &Uploader, report: &mut PassReport) {
    let archive_days = up.wal.retention.as_ref().map(|r| r.archive_keep_days);
    let wal = up.real_wal();
    match remote::prune(
        &up.store,
        &up.target,
        &wal,
        up.wal.backups,
        archive_days,
        Utc::now(),
    )
    .await
    {
        Ok(gone) if !gone.is_empty() => {
            info!(event = "offsite", wal = %up.wal.name, removed = gone.len(),
                "{}: pruned {} old copies from {}", up.wal.name, gone.len(), up.target);
            report.pruned_remote = gone;
        }
        Ok(_) => {}
        Err(e) => warn!(event = "offsite", wal = %up.wal.name,
            "{}: pruning old copies failed: {e}", up.wal.name),
    }
}

/// Queues what a successful run made (per `upload`), in the WAL's queue in `state_dir`.
/// Blocking. Called right after the run's housekeeping, so a compressed backup is queued
/// under its final name.
pub fn enqueue_run(
    wal: &WalPolicy,
    state_dir: &Path,
    backup: Option<&Path>,
    archive: Option<&Path>,
) -> Result<(), OffsiteError> {
    let Some(o) = &wal.offsite else { return Ok(()) };
    let mut files = Vec::new();
    if o.upload_backups
        && let Some(b) = backup.and_then(current_path)
    {
        files.push((b, Kind::Backup));
    }
    if o.upload_archives
        && let Some(a) = archive
    {
        files.push((a.to_path_buf(), Kind::Archive));
    }
    if files.is_empty() {
        return Ok(());
    }
    let sized: Vec<(PathBuf, Kind, u64)> = files
        .into_iter()
        .map(|(p, k)| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, k, len)
        })
        .collect();
    let now = Utc::now();
    QueueFile::new(state_dir, &wal.name).update(|q| {
        for (p, k, len) in sized {
            q.enqueue(p, k, len, now);
        }
    })
}

/// The files of `wal` still waiting for a confirmed copy (never pruned locally). Blocking.
/// A queue that cannot be read protects nothing and says so.
pub fn pending_paths(wal: &WalPolicy, state_dir: &Path) -> Result<Vec<PathBuf>, OffsiteError> {
    if wal.offsite.is_none() {
        return Ok(Vec::new());
    }
    let q = QueueFile::new(state_dir, &wal.name).load()?;
    Ok(q.pending.into_iter().map(|p| p.path).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_policy(dir: &Path, offsite: &str) -> WalPolicy {
        let text = format!(
            "[[wal]]\nname = \"w\"\npath = \"wal.log\"\n[wal.offsite]\nurl = \"s3://b/{{wal}}/\"\n{offsite}"
        );
        let env = crate::policy::ParseEnv::bare(dir, Utc::now());
        crate::policy::parse(&text, "test", &env)
            .unwrap()
            .wals
            .remove(0)
    }

    #[test]
    fn a_run_queues_what_upload_lists_under_its_final_name() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let backup = d.path().join("wal_backup_20260101_000000.log");
        let archive = d.path().join("wal_archive_20260101_000000.log.zst");
        // Compressed by the housekeeping before it queues: the .zst is what goes up.
        std::fs::write(d.path().join("wal_backup_20260101_000000.log.zst"), b"zz").unwrap();
        std::fs::write(&archive, b"aaa").unwrap();
        let both = wal_policy(d.path(), "");
        enqueue_run(&both, &state, Some(&backup), Some(&archive)).unwrap();
        let q = QueueFile::new(&state, "w").load().unwrap();
        let queued: Vec<(&str, u64)> = q
            .pending
            .iter()
            .map(|p| (p.kind.as_str(), p.bytes))
            .collect();
        assert_eq!(queued, [("backup", 2), ("archive", 3)]);
        assert!(
            q.pending[0]
                .path
                .ends_with("wal_backup_20260101_000000.log.zst")
        );
        assert_eq!(pending_paths(&both, &state).unwrap().len(), 2);

        let state2 = d.path().join("state2");
        let archives_only = wal_policy(d.path(), "upload = [\"archives\"]\n");
        enqueue_run(&archives_only, &state2, Some(&backup), Some(&archive)).unwrap();
        let q = QueueFile::new(&state2, "w").load().unwrap();
        assert_eq!(q.pending.len(), 1);
        assert_eq!(q.pending[0].kind, Kind::Archive);
    }

    #[test]
    fn without_offsite_nothing_is_queued_or_protected() {
        let d = tempfile::tempdir().unwrap();
        let env = crate::policy::ParseEnv::bare(d.path(), Utc::now());
        let plain = crate::policy::parse("[[wal]]\nname = \"w\"\npath = \"wal.log\"\n", "t", &env)
            .unwrap()
            .wals
            .remove(0);
        let b = d.path().join("b.log");
        enqueue_run(&plain, d.path(), Some(&b), None).unwrap();
        assert!(!QueueFile::new(d.path(), "w").path().exists());
        assert!(pending_paths(&plain, d.path()).unwrap().is_empty());
    }
}
