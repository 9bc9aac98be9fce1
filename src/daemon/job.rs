//! One compaction attempt for one WAL: pre_compact hook → (offline) /proc holder check →
//! the pipeline in a blocking thread with a timeout → post_compact hook, then backup
//! housekeeping off the critical path. Every step is logged; nothing here panics the daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::hooks::{self, HOOK_TIMEOUT, HookEnv};
use super::state::LastOutcome;
use crate::metrics::RunOutcome;
use crate::pipeline::guard::Admission;
use crate::pipeline::{self, PipelineError, Report, Stage, backup};
use crate::policy::WalPolicy;
use crate::rules::Expiry;

/// Once shutdown is requested, wait this long for a running step to reach a safe point
/// (or finish) before giving up on it; the journal makes an interrupted run recoverable.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// Who the pipeline's lock file names.
const WHO: &str = "walcompactd daemon";

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// `job_timeout` passed: the run was cancelled at its next safe point.
    #[error("timed out after {secs} s: {error}")]
    TimedOut { secs: u64, error: PipelineError },
    #[error("pipeline panicked: {0}")]
    Panicked(String),
}

impl JobError {
    /// The pipeline's error, if the pipeline returned one.
    pub fn pipeline(&self) -> Option<&PipelineError> {
        match self {
            JobError::Pipeline(e) | JobError::TimedOut { error: e, .. } => Some(e),
            JobError::Panicked(_) => None,
        }
    }

    /// For the log line's `error_kind` field: the pipeline error's kind, or what happened.
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::Pipeline(e) => e.kind(),
            JobError::TimedOut { .. } => "timeout",
            JobError::Panicked(_) => "panic",
        }
    }
}

/// How an attempt ended.
#[derive(Debug)]
pub enum JobResult {
    Success(Report),
    NothingToDo(Report),
    /// Not attempted, and why.
    Skipped(String),
    /// Failed, with the error's structure (stage, kind, file) kept for the log line.
    Failed(JobError),
    /// Verification or the application's check failed: the WAL was left as it was or rolled
    /// back to its backup. Counts as a failure for backoff.
    RolledBack(PipelineError),
    Cancelled,
}

impl JobResult {
    /// The state file's view of this result.
    pub fn outcome(&self) -> LastOutcome {
        match self {
            JobResult::Success(_) => LastOutcome::Success,
            JobResult::NothingToDo(_) => LastOutcome::NothingToDo,
            JobResult::Skipped(_) => LastOutcome::Skipped,
            JobResult::Failed(..) | JobResult::RolledBack(..) => LastOutcome::Failed,
            JobResult::Cancelled => LastOutcome::Cancelled,
        }
    }

    /// The `outcome` label of the run metrics; `None` for a cancelled run (shutdown).
    pub fn run_outcome(&self) -> Option<RunOutcome> {
        match self {
            JobResult::Success(_) => Some(RunOutcome::Success),
            JobResult::NothingToDo(_) | JobResult::Skipped(_) => Some(RunOutcome::Skipped),
            JobResult::Failed(..) => Some(RunOutcome::Failed),
            JobResult::RolledBack(..) => Some(RunOutcome::RolledBack),
            JobResult::Cancelled => None,
        }
    }

    /// Bytes the run removed (0 unless it succeeded).
    pub fn reclaimed_bytes(&self) -> u64 {
        match self {
            JobResult::Success(r) => r.reclaimed_bytes,
            _ => 0,
        }
    }

    /// What the run expired into its archive (only a successful run expires anything).
    pub fn expired(&self) -> Option<Expiry> {
        match self {
            JobResult::Success(r) => r.expired,
            _ => None,
        }
    }
}

/// Runs one attempt. `trigger` is the decision's reasons, for the logs; `offsite` is where
/// a successful run's new files are queued for their off-host copies.
pub async fn run(
    policy: &WalPolicy,
    trigger: &str,
    cancel: &CancellationToken,
    offsite: &super::offsite::Link,
) -> JobResult {
    let started = Instant::now();
    let env = HookEnv {
        wal_path: policy.resolved_path.clone(),
        wal_name: policy.name.clone(),
        backup_path: None,
    };
    let pre_ran = !policy.hooks.pre_compact.is_empty();
    let result = match pre_compact(policy, &env, cancel).await {
        Some(skip) => skip,
        None => guarded_pipeline(policy, trigger, cancel).await,
    };
    if pre_ran || !policy.hooks.post_compact.is_empty() {
        let backup = match &result {
            JobResult::Success(r) => r.backup.clone(),
            _ => None,
        };
        post_compact(
            policy,
            HookEnv {
                backup_path: backup,
                ..env
            },
        )
        .await;
    }
    log_result(policy, trigger, &result, started);
    if let JobResult::Success(report) = &result
        && let Some(b) = &report.backup
    {
        housekeeping(
            policy.clone(),
            b.clone(),
            report.archive.clone(),
            offsite.clone(),
        );
    }
    result
}

/// Runs pre_compact; `Some(result)` means "do not compact".
async fn pre_compact(
    policy: &WalPolicy,
    env: &HookEnv,
    cancel: &CancellationToken,
) -> Option<JobResult> {
    let argv = &policy.hooks.pre_compact;
    if argv.is_empty() {
        return None;
    }
    let status = hook(argv.clone(), env.clone()).await;
    if cancel.is_cancelled() {
        return Some(JobResult::Cancelled);
    }
    match status {
        Ok(()) => None,
        Err(detail) => Some(JobResult::Skipped(format!("pre_compact hook: {detail}"))),
    }
}

async fn post_compact(policy: &WalPolicy, env: HookEnv) {
    let argv = &policy.hooks.post_compact;
    if argv.is_empty() {
        return;
    }
    if let Err(detail) = hook(argv.clone(), env).await {
        warn!(event = "hook", wal = %policy.name, hook = "post_compact", "post_compact hook failed: {detail}");
    }
}

async fn hook(argv: Vec<String>, env: HookEnv) -> Result<(), String> {
    tokio::task::spawn_blocking(move || hooks::run_checked(&argv, &env, HOOK_TIMEOUT))
        .await
        .unwrap_or_else(|e| Err(format!("hook runner panicked: {e}")))
}

/// The guard's admission (offline: nobody holds the WAL open), then the pipeline.
async fn guarded_pipeline(
    policy: &WalPolicy,
    trigger: &str,
    cancel: &CancellationToken,
) -> JobResult {
    let (guard, wal) = (policy.guard(), policy.resolved_path.clone());
    let admission = tokio::task::spawn_blocking(move || guard.admit(&wal))
        .await
        .unwrap_or_else(|e| Admission::Refused(format!("admission check panicked: {e}")));
    match admission {
        Admission::Refused(why) => return JobResult::Skipped(why),
        Admission::Admitted { note: Some(note) } => {
            info!(event = "holders", wal = %policy.name, "{note}");
        }
        Admission::Admitted { note: None } => {}
    }
    let _ = trigger;
    pipeline_with_timeout(policy, cancel).await
}

/// The pipeline in a blocking thread: single call, cancel flag on timeout or shutdown.
async fn pipeline_with_timeout(policy: &WalPolicy, cancel: &CancellationToken) -> JobResult {
    let flag = Arc::new(AtomicBool::new(false));
    let mut task = tokio::task::spawn_blocking({
        let flag = Arc::clone(&flag);
        let policy = policy.clone();
        move || run_pipeline(&policy, &flag)
    });
    let mut timed_out = false;
    let joined = tokio::select! {
        r = &mut task => r,
        _ = tokio::time::sleep(policy.job_timeout) => {
            timed_out = true;
            flag.store(true, Ordering::SeqCst);
            warn!(event = "timeout", wal = %policy.name, "job_timeout reached; cancelling at the next safe point");
            task.await
        }
        _ = cancel.cancelled() => {
            flag.store(true, Ordering::SeqCst);
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(r) => r,
                Err(_) => {
                    warn!(event = "shutdown", wal = %policy.name,
                        "pipeline still running after the grace period; leaving it (its journal makes it recoverable)");
                    return JobResult::Cancelled;
                }
            }
        }
    };
    match joined {
        Ok(Ok(r)) if r.outcome == pipeline::Outcome::Success => JobResult::Success(r),
        Ok(Ok(r)) => JobResult::NothingToDo(r),
        Ok(Err(PipelineError::Busy { holder, .. })) => {
            JobResult::Skipped(format!("another compaction holds the lock ({holder})"))
        }
        // A rollback that could not get the writers' lock left its journal: that is a
        // failure (the rejected WAL is still live), not a run to retry quietly.
        Ok(Err(e @ PipelineError::LockTimeout { .. }))
            if rollback_pending(&policy.resolved_path) =>
        {
            JobResult::Failed(e.into())
        }
        Ok(Err(PipelineError::LockTimeout { waited_ms, .. })) => JobResult::Skipped(format!(
            "online mode: the writer lock was not free within {waited_ms} ms; retrying later"
        )),
        // Lease and offline modes: a writer had the WAL open; nothing changed, retry later.
        Ok(Err(PipelineError::Lease { source, .. })) if source.is_busy() => {
            JobResult::Skipped(source.to_string())
        }
        Ok(Err(e @ PipelineError::Cancelled { .. })) if timed_out => {
            JobResult::Failed(JobError::TimedOut {
                secs: policy.job_timeout.as_secs(),
                error: e,
            })
        }
        Ok(Err(PipelineError::Cancelled { .. })) => JobResult::Cancelled,
        Ok(Err(e @ (PipelineError::VerifyFailed { .. } | PipelineError::CheckFailed { .. }))) => {
            JobResult::RolledBack(e)
        }
        Ok(Err(e)) => JobResult::Failed(e.into()),
        Err(join) => JobResult::Failed(JobError::Panicked(join.to_string())),
    }
}

/// Whether a rollback of the WAL at `wal` is still owed (its journal says `rolling_back`).
fn rollback_pending(wal: &Path) -> bool {
    let real = pipeline::links::real_path_or_given(wal);
    std::fs::read(pipeline::journal::journal_path(&real))
        .ok()
        .and_then(|b| serde_json::from_slice::<pipeline::journal::Journal>(&b).ok())
        .is_some_and(|j| j.phase == pipeline::journal::Phase::RollingBack)
}

/// Builds the request (verify hook as the post-swap check) and runs the pipeline.
fn run_pipeline(policy: &WalPolicy, cancel: &AtomicBool) -> Result<Report, PipelineError> {
    let verify = policy.hooks.verify.clone();
    let env = HookEnv {
        wal_path: policy.resolved_path.clone(),
        wal_name: policy.name.clone(),
        backup_path: None,
    };
    let check = move |_wal: &Path, backup: &Path| {
        let env = HookEnv {
            backup_path: Some(backup.to_path_buf()),
            ..env.clone()
        };
        hooks::run_checked(&verify, &env, HOOK_TIMEOUT)
    };
    let mut req = request(policy, cancel);
    if !policy.hooks.verify.is_empty() {
        req.check = Some(&check);
    }
    pipeline::run(&req)
}

/// The request for a run of `policy`, everything but the verify hook's check: the policy's
/// settings, its retention among them, and the daemon's cancel flag.
fn request<'a>(policy: &WalPolicy, cancel: &'a AtomicBool) -> pipeline::Request<'a> {
    let mut req = pipeline::Request::new(&policy.resolved_path, WHO);
    req.backup_dir = policy.backup_dir.clone();
    req.allow_hard_links = policy.allow_hard_links;
    req.cancel = Some(cancel);
    req.corrupt_lines = policy.corrupt_lines;
    req.retention = policy.retention_request();
    req.guard = policy.guard();
    req
}

/// What the run's message says of corrupt lines, if there are any.
fn corrupt_note(r: &Report) -> String {
    match (r.corrupt_lines, r.quarantined_lines) {
        (0, _) => String::new(),
        (_, q) if q > 0 => format!("; {q} corrupt lines quarantined"),
        (n, _) => format!("; {n} corrupt lines ({})", r.corrupt_lines_policy),
    }
}

/// What the run's message says of expired transactions, if any expired.
fn expiry_note(r: &Report) -> String {
    match (&r.expired, &r.archive) {
        (Some(e), Some(a)) => format!(
            "; {} transactions expired ({} bytes) into {}",
            e.transactions,
            e.bytes,
            a.display()
        ),
        (Some(e), None) => format!(
            "; {} transactions expired ({} bytes)",
            e.transactions, e.bytes
        ),
        (None, _) => String::new(),
    }
}

/// One event per stage, then one per run, with flat fields for `jq`.
fn log_result(policy: &WalPolicy, trigger: &str, result: &JobResult, started: Instant) {
    let wal = policy.name.as_str();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let outcome = result.outcome().as_str();
    match result {
        JobResult::Success(r) | JobResult::NothingToDo(r) => {
            for s in &r.stages {
                info!(
                    event = "stage",
                    wal,
                    stage = s.stage.as_str(),
                    trigger,
                    duration_ms = s.duration_ms,
                    "{wal}: {} stage took {:.1} ms",
                    s.stage,
                    s.duration_ms
                );
            }
            let path_text = |p: Option<&Path>| p.map(|b| b.display().to_string());
            let backup = path_text(r.backup.as_deref()).unwrap_or_default();
            let quarantine = path_text(r.quarantine.as_deref()).unwrap_or_default();
            let archive = path_text(r.archive.as_deref());
            info!(
                event = "run",
                wal,
                stage = "done",
                trigger,
                outcome,
                duration_ms,
                bytes_before = r.bytes_before,
                bytes_after = r.bytes_after,
                reclaimed_bytes = r.reclaimed_bytes,
                backup = backup.as_str(),
                corrupt_lines = r.corrupt_lines,
                corrupt_lines_policy = r.corrupt_lines_policy.as_str(),
                quarantined_lines = r.quarantined_lines,
                quarantine = quarantine.as_str(),
                // Lease mode: how long writers were held back, and lines merged late.
                lease_held_ms = r.lease.as_ref().map(|l| l.lease_held_ms),
                writers_paused_ms = r.lease.as_ref().map(|l| l.writers_paused_ms),
                late_bytes = r.lease.as_ref().map(|l| l.late_bytes),
                // Retention: present only when the run expired something.
                expired_transactions = r.expired.map(|e| e.transactions),
                archived_bytes = r.expired.map(|e| e.bytes),
                archive = archive.as_deref(),
                "{wal}: compaction {outcome}: {} → {} bytes ({} reclaimed){}{}",
                r.bytes_before,
                r.bytes_after,
                r.reclaimed_bytes,
                corrupt_note(r),
                expiry_note(r)
            );
        }
        JobResult::Skipped(why) => {
            warn!(
                event = "run",
                wal,
                stage = "precheck",
                trigger,
                outcome,
                duration_ms,
                "{wal}: compaction skipped: {why}"
            );
        }
        JobResult::Failed(why) => {
            let e = why.pipeline();
            let stage = e
                .and_then(PipelineError::stage)
                .map_or("run", Stage::as_str);
            let path = e
                .map(|e| e.path().display().to_string())
                .unwrap_or_default();
            let exit_code = e.map(PipelineError::exit_code);
            error!(
                event = "run",
                wal,
                stage,
                trigger,
                outcome,
                duration_ms,
                error_kind = why.kind(),
                path = path.as_str(),
                exit_code,
                "{wal}: compaction failed in the {stage} stage: {why}"
            );
        }
        JobResult::RolledBack(why) => {
            let stage = why.stage().unwrap_or(Stage::Verify).as_str();
            let path = why.path().display().to_string();
            error!(
                event = "run",
                wal,
                stage,
                trigger,
                outcome,
                rolled_back = true,
                duration_ms,
                error_kind = why.kind(),
                path = path.as_str(),
                exit_code = why.exit_code(),
                "{wal}: compaction failed in the {stage} stage and was rolled back: {why}"
            );
        }
        JobResult::Cancelled => {
            warn!(
                event = "run",
                wal,
                stage = "cancel",
                trigger,
                outcome,
                duration_ms,
                "{wal}: compaction cancelled at a safe point (shutting down); the WAL is unchanged"
            );
        }
    }
}

/// Prune old backups (protecting the new one and those still waiting for an off-host
/// copy), then compress the new one if asked, then queue the new backup and archive for
/// their off-host copies and wake the uploader — in the background: failures are logged,
/// never counted as run failures.
fn housekeeping(
    policy: WalPolicy,
    new_backup: PathBuf,
    archive: Option<PathBuf>,
    offsite: super::offsite::Link,
) {
    tokio::task::spawn_blocking(move || {
        // Backups are named after and (by default) beside the real file behind a symlink.
        let wal = &pipeline::links::real_path_or_given(&policy.resolved_path);
        let dir = backup::backup_dir(wal, policy.backup_dir.as_deref());
        // A pending list that cannot be read protects nothing: then nothing is pruned.
        if let Some(pending) = offsite.pending(&policy) {
            let mut protect: Vec<&Path> = pending.iter().map(PathBuf::as_path).collect();
            protect.push(&new_backup);
            prune_backups(&policy, wal, &dir, &protect);
            prune_archives(&policy, wal, &dir, &protect);
        }
        if policy.backups.compress {
            match backup::compress(&new_backup) {
                Ok(p) => {
                    info!(event = "compress", wal = %policy.name, backup = %p.display(), "backup compressed")
                }
                Err(e) => {
                    warn!(event = "compress", wal = %policy.name, "backup compression failed: {e}")
                }
            }
        }
        offsite.enqueue(&policy, &new_backup, archive.as_deref());
    });
}

/// Prunes old backups by `keep_days`/`keep_last`, never one in `protect`.
fn prune_backups(policy: &WalPolicy, wal: &Path, dir: &Path, protect: &[&Path]) {
    let b = policy.backups;
    {
        match backup::prune(
            wal,
            dir,
            b.keep_days,
            b.keep_last,
            protect,
            chrono::Utc::now(),
        ) {
            Ok(gone) if !gone.is_empty() => {
                info!(event = "prune", wal = %policy.name, removed = gone.len(), "pruned {} old backups", gone.len())
            }
            Ok(_) => {}
            Err(e) => warn!(event = "prune", wal = %policy.name, "backup pruning failed: {e}"),
        }
    }
}

/// Prunes the WAL's archives by `archive_keep_days` (never the newest; separately from
/// backups) and publishes how many remain and their size.
fn prune_archives(policy: &WalPolicy, wal: &Path, backup_dir: &Path, protect: &[&Path]) {
    let Some(r) = &policy.retention else { return };
    let dir = r
        .archive_dir
        .clone()
        .unwrap_or_else(|| backup_dir.to_path_buf());
    match pipeline::archive::prune(wal, &dir, r.archive_keep_days, protect, chrono::Utc::now()) {
        Ok(gone) if !gone.is_empty() => {
            info!(event = "prune", wal = %policy.name, removed = gone.len(), "pruned {} old archives", gone.len())
        }
        Ok(_) => {}
        Err(e) => warn!(event = "prune", wal = %policy.name, "archive pruning failed: {e}"),
    }
    if let Ok(left) = pipeline::archive::list(wal, &dir) {
        let bytes = left.iter().map(|a| a.bytes).sum();
        crate::metrics::record_archives(&policy.name, left.len() as u64, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::journal::{self, Journal, Phase};

    #[test]
    fn a_rollback_is_pending_only_while_the_journal_says_so() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("wal.log");
        std::fs::write(&wal, "{}\n").unwrap();
        assert!(!rollback_pending(&wal), "no journal");
        let backup = pipeline::backup::Backup {
            path: d.path().join("b.log"),
            linked: true,
        };
        let mut entry = Journal::start(pipeline::Mode::Online, &wal, 1, &backup, None);
        for (phase, pending) in [
            (Phase::Writing, false),
            (Phase::Swapping, false),
            (Phase::RollingBack, true),
        ] {
            entry.phase = phase;
            journal::write(&wal, &entry).unwrap();
            assert_eq!(rollback_pending(&wal), pending, "{phase:?}");
        }
    }

    fn wal_policy(dir: &Path, tail: &str) -> WalPolicy {
        let text = format!("[[wal]]\nname = \"w\"\npath = \"wal.log\"\n{tail}");
        let env = crate::policy::ParseEnv::bare(dir, chrono::Utc::now());
        crate::policy::parse(&text, "test", &env)
            .unwrap()
            .wals
            .remove(0)
    }

    #[test]
    fn the_request_carries_the_policy_retention() {
        let d = tempfile::tempdir().unwrap();
        let flag = AtomicBool::new(false);
        assert_eq!(request(&wal_policy(d.path(), ""), &flag).retention, None);
        let p = wal_policy(
            d.path(),
            "[wal.retention]\nexpire_after_secs = 3600\narchive_dir = \"arch\"\n",
        );
        let req = request(&p, &flag);
        let r = req.retention.expect("retention requested");
        assert_eq!(r.expire_after_secs, Some(3600));
        assert_eq!(r.expire_in_flight_after_secs, None);
        assert_eq!(r.archive_dir, Some(d.path().join("arch")));
        assert_eq!(req.wal, d.path().join("wal.log"));
    }

    #[test]
    fn only_a_successful_run_reports_what_it_expired() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("wal.log");
        let p =
            |tx: &str, n: u8| format!("{{\"op\": \"PREPARE\", \"tx_id\": \"{tx}\", \"n\": {n}}}\n");
        std::fs::write(
            &wal,
            p("a", 1) + &p("a", 2) + "{\"op\": \"COMMIT\", \"tx_id\": \"a\"}\n",
        )
        .unwrap();
        let mut r = pipeline::run(&pipeline::Request::new(&wal, "test")).unwrap();
        assert_eq!(r.expired, None);
        assert_eq!(expiry_note(&r), "");
        r.expired = Some(Expiry {
            transactions: 2,
            lines: 3,
            bytes: 120,
            oldest: Some(1),
            newest: Some(2),
        });
        assert_eq!(expiry_note(&r), "; 2 transactions expired (120 bytes)");
        r.archive = Some(d.path().join("wal_archive.log"));
        assert_eq!(
            expiry_note(&r),
            format!(
                "; 2 transactions expired (120 bytes) into {}",
                d.path().join("wal_archive.log").display()
            )
        );
        assert_eq!(
            JobResult::Success(r.clone()).expired().map(|e| e.bytes),
            Some(120)
        );
        assert_eq!(JobResult::NothingToDo(r).expired(), None);
    }
}
