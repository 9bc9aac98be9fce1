//! Prometheus metrics: installing the exporter and the small typed publishing functions
//! the daemon calls after each observation or run.
//!
//! One process-global recorder (the `metrics` facade) is installed by [`Metrics::install`];
//! the publishing functions are free functions over that facade, so they are cheap no-ops
//! when no recorder is installed (unit tests, CLI commands). This module knows nothing of the
//! daemon: it is handed figures and labels, never decides anything.
//!
//! Every per-WAL series carries the label `wal="<name>"`. The exporter cannot drop a series
//! once created (its registry is private and has no removal API), so a WAL removed from the
//! policy keeps its last values until the daemon restarts; there is no `forget_wal`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use crate::commands::{OpEntries, Status};
use crate::fsutil::atomic_write;
use crate::rules::TxCounts;

/// The textfile is read by node_exporter (another user): it holds counts and names, no
/// payload or transaction id.
const TEXTFILE_MODE: u32 = 0o644;

/// Size of a WAL file in bytes.
pub const WAL_SIZE_BYTES: &str = "walcompactd_wal_size_bytes";
/// Entries per op (`op` label).
pub const WAL_ENTRIES: &str = "walcompactd_wal_entries";
/// Transactions per state (`state` label).
pub const WAL_TRANSACTIONS: &str = "walcompactd_wal_transactions";
/// Bytes a compaction would reclaim now.
pub const WAL_RECLAIMABLE_BYTES: &str = "walcompactd_wal_reclaimable_bytes";
/// Reclaimable bytes / size.
pub const WAL_RECLAIMABLE_RATIO: &str = "walcompactd_wal_reclaimable_ratio";
/// Bytes of an incomplete last line.
pub const WAL_TORN_TAIL_BYTES: &str = "walcompactd_wal_torn_tail_bytes";
/// Corrupt complete lines in the WAL now (whatever `corrupt_lines` does with them).
pub const WAL_CORRUPT_LINES: &str = "walcompactd_wal_corrupt_lines";
/// Unix time of the last successful compaction.
pub const LAST_SUCCESS_TIMESTAMP_SECONDS: &str = "walcompactd_last_success_timestamp_seconds";
/// Failed runs in a row.
pub const CONSECUTIVE_FAILURES: &str = "walcompactd_consecutive_failures";
/// 1 while a pipeline run is in progress.
pub const COMPACTION_IN_PROGRESS: &str = "walcompactd_compaction_in_progress";
/// Number of backups kept.
pub const BACKUPS: &str = "walcompactd_backups";
/// Bytes used by the backups.
pub const BACKUP_BYTES: &str = "walcompactd_backup_bytes";
/// Free space on the WAL's filesystem, 0..=1.
pub const DISK_FREE_RATIO: &str = "walcompactd_disk_free_ratio";
/// 1 while an alert is firing (`alert` label).
pub const ALERT_ACTIVE: &str = "walcompactd_alert_active";
/// Pipeline runs per outcome (`outcome` label).
pub const COMPACTION_RUNS_TOTAL: &str = "walcompactd_compaction_runs_total";
/// Bytes removed by successful compactions.
pub const COMPACTION_RECLAIMED_BYTES_TOTAL: &str = "walcompactd_compaction_reclaimed_bytes_total";
/// Duration of pipeline runs (a real histogram, see [`DURATION_BUCKETS`]).
pub const COMPACTION_DURATION_SECONDS: &str = "walcompactd_compaction_duration_seconds";
/// Transactions expired into an archive by successful runs (retention).
pub const EXPIRED_TRANSACTIONS_TOTAL: &str = "walcompactd_expired_transactions_total";
/// Bytes of WAL lines moved into archives by successful runs (retention).
pub const ARCHIVED_BYTES_TOTAL: &str = "walcompactd_archived_bytes_total";
/// Number of archives kept (retention).
pub const ARCHIVES: &str = "walcompactd_archives";
/// Bytes used by the archives (retention).
pub const ARCHIVE_BYTES: &str = "walcompactd_archive_bytes";
/// Bytes of backups and archives still waiting for a confirmed off-host copy.
pub const OFFSITE_PENDING_BYTES: &str = "walcompactd_offsite_pending_bytes";
/// Off-host upload attempts per outcome (`outcome` label: success, failed).
pub const OFFSITE_UPLOADS_TOTAL: &str = "walcompactd_offsite_uploads_total";
/// Unix time of the last confirmed off-host copy.
pub const OFFSITE_LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
    "walcompactd_offsite_last_success_timestamp_seconds";
/// Policy reloads per result (`result` label); daemon-wide.
pub const POLICY_RELOADS_TOTAL: &str = "walcompactd_policy_reloads_total";
/// Constant 1 with the `version` label; daemon-wide.
pub const BUILD_INFO: &str = "walcompactd_build_info";

/// Every metric name this module exports (histograms without their `_bucket`/`_sum`/`_count`
/// suffixes). The Grafana dashboard test checks its queries against this list.
pub const METRIC_NAMES: &[&str] = &[
    WAL_SIZE_BYTES,
    WAL_ENTRIES,
    WAL_TRANSACTIONS,
    WAL_RECLAIMABLE_BYTES,
    WAL_RECLAIMABLE_RATIO,
    WAL_TORN_TAIL_BYTES,
    LAST_SUCCESS_TIMESTAMP_SECONDS,
    CONSECUTIVE_FAILURES,
    COMPACTION_IN_PROGRESS,
    BACKUPS,
    BACKUP_BYTES,
    DISK_FREE_RATIO,
    ALERT_ACTIVE,
    COMPACTION_RUNS_TOTAL,
    COMPACTION_RECLAIMED_BYTES_TOTAL,
    COMPACTION_DURATION_SECONDS,
    EXPIRED_TRANSACTIONS_TOTAL,
    ARCHIVED_BYTES_TOTAL,
    ARCHIVES,
    ARCHIVE_BYTES,
    OFFSITE_PENDING_BYTES,
    OFFSITE_UPLOADS_TOTAL,
    OFFSITE_LAST_SUCCESS_TIMESTAMP_SECONDS,
    POLICY_RELOADS_TOTAL,
    BUILD_INFO,
];

/// Histogram bucket upper bounds for [`COMPACTION_DURATION_SECONDS`], in seconds: from a
/// small WAL's tens of milliseconds to a large one's several minutes.
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// How often histogram samples are folded into their buckets when no HTTP listener (which
/// runs its own upkeep task) is configured.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Set once the global recorder is installed: the facade accepts only one per process.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Why the exporter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `Metrics::install` already succeeded (or is running) in this process.
    #[error("the metrics recorder is already installed in this process")]
    AlreadyInstalled,
    /// The exporter could not be built or installed (e.g. the listen address is taken).
    #[error("cannot start the Prometheus exporter: {0}")]
    Build(#[from] BuildError),
    /// The background runtime or thread for the exporter could not be started.
    #[error("cannot start the metrics exporter thread: {0}")]
    Thread(#[source] io::Error),
}

/// The installed exporter: renders the exposition text and writes the textfile.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    textfile: Option<PathBuf>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("textfile", &self.textfile)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Installs the process-global recorder, describes every metric, sets `build_info`, and
    /// serves `/metrics` (any path, in fact) over HTTP on `listen` when given.
    ///
    /// Inside a tokio runtime the listener and its upkeep task are spawned on that runtime;
    /// outside one, on a single-threaded runtime in a background thread. Without a listener,
    /// histogram upkeep runs on a small background thread. Fails with
    /// [`MetricsError::AlreadyInstalled`] on a second call in the same process.
    pub fn install(
        listen: Option<SocketAddr>,
        textfile: Option<PathBuf>,
    ) -> Result<Metrics, MetricsError> {
        if INSTALLED.swap(true, Ordering::SeqCst) {
            return Err(MetricsError::AlreadyInstalled);
        }
        let result = install_recorder(listen);
        if result.is_err() {
            // Nothing was installed globally, so a later attempt may succeed.
            INSTALLED.store(false, Ordering::SeqCst);
        }
        let handle = result?;
        describe_all();
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        for result in ["ok", "invalid"] {
            counter!(POLICY_RELOADS_TOTAL, "result" => result).increment(0);
        }
        Ok(Metrics { handle, textfile })
    }

    /// The Prometheus text exposition of every metric, as a scrape would return it.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// The node_exporter textfile path, if one is configured.
    pub fn textfile(&self) -> Option<&Path> {
        self.textfile.as_deref()
    }

    /// Writes [`render`](Self::render) atomically to the textfile path (temp file, fsync,
    /// rename), so node_exporter never reads half a file. A no-op without a textfile.
    pub fn write_textfile(&self) -> io::Result<()> {
        match &self.textfile {
            // The unit's UMask=0027 would make a plain create 0640, unreadable to
            // node_exporter: atomic_write sets the mode on the temp before the rename.
            Some(path) => atomic_write(path, self.render().as_bytes(), TEXTFILE_MODE),
            None => Ok(()),
        }
    }
}

fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new().set_buckets_for_metric(
        Matcher::Full(COMPACTION_DURATION_SECONDS.to_string()),
        DURATION_BUCKETS,
    )
}

/// Builds the recorder, sets it as the global one, then (only then) starts the listener.
fn install_recorder(listen: Option<SocketAddr>) -> Result<PrometheusHandle, MetricsError> {
    let Some(addr) = listen else {
        let recorder = builder()?.build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(BuildError::from)?;
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("walcompactd-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            })
            .map_err(MetricsError::Thread)?;
        return Ok(handle);
    };
    let builder = builder()?.with_http_listener(addr);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        // build() binds the socket now and spawns the upkeep task on the current runtime.
        let (recorder, exporter) = {
            let _guard = rt.enter();
            builder.build()?
        };
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(BuildError::from)?;
        rt.spawn(exporter);
        return Ok(handle);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(MetricsError::Thread)?;
    let (recorder, exporter) = {
        let _guard = runtime.enter();
        builder.build()?
    };
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(BuildError::from)?;
    std::thread::Builder::new()
        .name("walcompactd-metrics-http".into())
        .spawn(move || runtime.block_on(exporter))
        .map_err(MetricsError::Thread)?;
    Ok(handle)
}

fn describe_all() {
    describe_offsite();
    describe_gauge!(WAL_SIZE_BYTES, Unit::Bytes, "Size of the WAL file.");
    describe_gauge!(
        WAL_ENTRIES,
        Unit::Count,
        "WAL entries per op (PREPARE, COMMIT, ABORT)."
    );
    describe_gauge!(
        WAL_TRANSACTIONS,
        Unit::Count,
        "Transactions in the WAL per state (committed, aborted, in_flight)."
    );
    describe_gauge!(
        WAL_RECLAIMABLE_BYTES,
        Unit::Bytes,
        "Bytes a compaction would reclaim now."
    );
    describe_gauge!(
        WAL_RECLAIMABLE_RATIO,
        "Reclaimable bytes divided by the WAL size (0..1)."
    );
    describe_gauge!(
        WAL_TORN_TAIL_BYTES,
        Unit::Bytes,
        "Bytes of an incomplete last line."
    );
    describe_gauge!(
        LAST_SUCCESS_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of the last successful compaction."
    );
    describe_gauge!(
        CONSECUTIVE_FAILURES,
        Unit::Count,
        "Failed compaction runs in a row."
    );
    describe_gauge!(
        COMPACTION_IN_PROGRESS,
        "1 while a compaction of the WAL is running."
    );
    describe_gauge!(BACKUPS, Unit::Count, "Backups kept for the WAL.");
    describe_gauge!(
        BACKUP_BYTES,
        Unit::Bytes,
        "Bytes used by the WAL's backups."
    );
    describe_gauge!(
        DISK_FREE_RATIO,
        "Free space on the WAL's filesystem (0..1)."
    );
    describe_gauge!(
        ALERT_ACTIVE,
        "1 while the named alert is firing for the WAL."
    );
    describe_counter!(
        COMPACTION_RUNS_TOTAL,
        Unit::Count,
        "Compaction runs per outcome (success, failed, rolled_back, skipped)."
    );
    describe_counter!(
        COMPACTION_RECLAIMED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes removed by successful compactions."
    );
    describe_histogram!(
        COMPACTION_DURATION_SECONDS,
        Unit::Seconds,
        "Duration of compaction runs."
    );
    describe_counter!(
        EXPIRED_TRANSACTIONS_TOTAL,
        Unit::Count,
        "Transactions expired into an archive by successful compactions (retention)."
    );
    describe_counter!(
        ARCHIVED_BYTES_TOTAL,
        Unit::Bytes,
        "Bytes of WAL lines moved into archives by successful compactions (retention)."
    );
    describe_gauge!(
        ARCHIVES,
        Unit::Count,
        "Archives kept for the WAL (retention)."
    );
    describe_gauge!(
        ARCHIVE_BYTES,
        Unit::Bytes,
        "Bytes used by the WAL's archives (retention)."
    );
    describe_counter!(
        POLICY_RELOADS_TOTAL,
        Unit::Count,
        "Policy reloads per result (ok, invalid)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label names the running build."
    );
}

/// What [`publish_wal`] exports about one WAL: the figures of one status pass.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WalFigures {
    pub size_bytes: u64,
    pub prepare_entries: u64,
    pub commit_entries: u64,
    pub abort_entries: u64,
    pub committed_transactions: u64,
    pub aborted_transactions: u64,
    pub in_flight_transactions: u64,
    pub reclaimable_bytes: u64,
    pub reclaimable_ratio: f64,
    pub torn_tail_bytes: u64,
    pub corrupt_lines: u64,
}

impl WalFigures {
    /// The figures of one WAL from its counts; the ratio is derived, never passed in, so the
    /// daemon's series and `walcompactd status` cannot disagree.
    pub fn new(
        size_bytes: u64,
        entries: OpEntries,
        transactions: TxCounts,
        reclaimable_bytes: u64,
        torn_tail_bytes: u64,
        corrupt_lines: u64,
    ) -> Self {
        WalFigures {
            size_bytes,
            prepare_entries: entries.prepare,
            commit_entries: entries.commit,
            abort_entries: entries.abort,
            committed_transactions: transactions.committed,
            aborted_transactions: transactions.aborted,
            in_flight_transactions: transactions.in_flight,
            reclaimable_bytes,
            reclaimable_ratio: crate::rules::reclaimable_ratio(reclaimable_bytes, size_bytes),
            torn_tail_bytes,
            corrupt_lines,
        }
    }
}

impl From<&Status> for WalFigures {
    fn from(s: &Status) -> Self {
        WalFigures::new(
            s.size_bytes,
            s.entries,
            s.transactions,
            s.reclaimable_bytes,
            s.torn_tail_bytes,
            s.corrupt_lines,
        )
    }
}

/// How a pipeline run ended, as the `outcome` label of [`COMPACTION_RUNS_TOTAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunOutcome {
    Success,
    Failed,
    RolledBack,
    Skipped,
}

impl RunOutcome {
    /// Every outcome, in label order.
    pub const ALL: &'static [RunOutcome] = &[
        RunOutcome::Success,
        RunOutcome::Failed,
        RunOutcome::RolledBack,
        RunOutcome::Skipped,
    ];

    /// The `outcome` label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunOutcome::Success => "success",
            RunOutcome::Failed => "failed",
            RunOutcome::RolledBack => "rolled_back",
            RunOutcome::Skipped => "skipped",
        }
    }
}

fn wal_label(name: &str) -> [(&'static str, String); 1] {
    [("wal", name.to_string())]
}

/// Publishes one WAL's figures. Also creates its run counters at 0 so `rate()` works from the
/// first run on.
pub fn publish_wal(name: &str, s: &WalFigures) {
    let wal = wal_label(name);
    gauge!(WAL_SIZE_BYTES, &wal).set(s.size_bytes as f64);
    for (op, n) in [
        ("PREPARE", s.prepare_entries),
        ("COMMIT", s.commit_entries),
        ("ABORT", s.abort_entries),
    ] {
        gauge!(WAL_ENTRIES, "wal" => name.to_string(), "op" => op).set(n as f64);
    }
    for (state, n) in [
        ("committed", s.committed_transactions),
        ("aborted", s.aborted_transactions),
        ("in_flight", s.in_flight_transactions),
    ] {
        gauge!(WAL_TRANSACTIONS, "wal" => name.to_string(), "state" => state).set(n as f64);
    }
    gauge!(WAL_RECLAIMABLE_BYTES, &wal).set(s.reclaimable_bytes as f64);
    gauge!(WAL_RECLAIMABLE_RATIO, &wal).set(s.reclaimable_ratio);
    gauge!(WAL_TORN_TAIL_BYTES, &wal).set(s.torn_tail_bytes as f64);
    gauge!(WAL_CORRUPT_LINES, &wal).set(s.corrupt_lines as f64);
    for outcome in RunOutcome::ALL {
        counter!(COMPACTION_RUNS_TOTAL, "wal" => name.to_string(), "outcome" => outcome.as_str())
            .increment(0);
    }
    counter!(COMPACTION_RECLAIMED_BYTES_TOTAL, &wal).increment(0);
}

/// Publishes how many backups the WAL has and how many bytes they use.
pub fn publish_backups(name: &str, count: u64, bytes: u64) {
    let wal = wal_label(name);
    gauge!(BACKUPS, &wal).set(count as f64);
    gauge!(BACKUP_BYTES, &wal).set(bytes as f64);
}

/// Publishes the free-space ratio (0..=1) of the WAL's filesystem.
pub fn publish_disk_free(name: &str, ratio: f64) {
    gauge!(DISK_FREE_RATIO, &wal_label(name)).set(ratio);
}

/// Records one finished run: its outcome, its duration, and the bytes it removed (counted
/// only for successful runs, whatever the caller passes otherwise).
pub fn record_run(name: &str, outcome: RunOutcome, duration: Duration, reclaimed_bytes: u64) {
    counter!(COMPACTION_RUNS_TOTAL, "wal" => name.to_string(), "outcome" => outcome.as_str())
        .increment(1);
    histogram!(COMPACTION_DURATION_SECONDS, &wal_label(name)).record(duration.as_secs_f64());
    let reclaimed = if outcome == RunOutcome::Success {
        reclaimed_bytes
    } else {
        0
    };
    counter!(COMPACTION_RECLAIMED_BYTES_TOTAL, &wal_label(name)).increment(reclaimed);
}

/// Records what one successful run expired (its report's `expired`): transactions and the
/// bytes of their lines now in an archive. Called once per run that expired anything.
pub fn record_expired(name: &str, transactions: u64, archived_bytes: u64) {
    let wal = wal_label(name);
    counter!(EXPIRED_TRANSACTIONS_TOTAL, &wal).increment(transactions);
    counter!(ARCHIVED_BYTES_TOTAL, &wal).increment(archived_bytes);
}

/// Publishes how many archives the WAL has and how many bytes they use. For the archive
/// stage to call after it lists or prunes the WAL's archives (`archive_keep_days`), with the
/// archives that remain, as [`publish_backups`] is for backups.
pub fn record_archives(name: &str, count: u64, bytes: u64) {
    let wal = wal_label(name);
    gauge!(ARCHIVES, &wal).set(count as f64);
    gauge!(ARCHIVE_BYTES, &wal).set(bytes as f64);
}

fn describe_offsite() {
    describe_gauge!(
        OFFSITE_PENDING_BYTES,
        Unit::Bytes,
        "Bytes of backups and archives waiting for a confirmed off-host copy."
    );
    describe_counter!(
        OFFSITE_UPLOADS_TOTAL,
        Unit::Count,
        "Off-host upload attempts per outcome."
    );
    describe_gauge!(
        OFFSITE_LAST_SUCCESS_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of the last confirmed off-host copy."
    );
}

/// Publishes what still waits for an off-host copy and when the last one was confirmed
/// (0 when none ever was). Also creates both upload counters at 0.
pub fn publish_offsite(name: &str, pending_bytes: u64, last_success_secs: f64) {
    let wal = wal_label(name);
    gauge!(OFFSITE_PENDING_BYTES, &wal).set(pending_bytes as f64);
    gauge!(OFFSITE_LAST_SUCCESS_TIMESTAMP_SECONDS, &wal).set(last_success_secs);
    for outcome in ["success", "failed"] {
        counter!(OFFSITE_UPLOADS_TOTAL, "wal" => name.to_string(), "outcome" => outcome)
            .increment(0);
    }
}

/// Counts one upload attempt (`success`: confirmed on the server; `failed`: anything else).
pub fn record_offsite_upload(name: &str, success: bool) {
    let outcome = if success { "success" } else { "failed" };
    counter!(OFFSITE_UPLOADS_TOTAL, "wal" => name.to_string(), "outcome" => outcome).increment(1);
}

/// Sets whether a run of the WAL is in progress.
pub fn set_in_progress(name: &str, running: bool) {
    gauge!(COMPACTION_IN_PROGRESS, &wal_label(name)).set(f64::from(u8::from(running)));
}

/// Sets the number of failed runs in a row.
pub fn set_consecutive_failures(name: &str, n: u64) {
    gauge!(CONSECUTIVE_FAILURES, &wal_label(name)).set(n as f64);
}

/// Sets the Unix time (seconds) of the last successful compaction.
pub fn set_last_success(name: &str, unix_secs: f64) {
    gauge!(LAST_SUCCESS_TIMESTAMP_SECONDS, &wal_label(name)).set(unix_secs);
}

/// Sets whether `alert` is firing for the WAL.
pub fn set_alert_active(name: &str, alert: &str, active: bool) {
    gauge!(ALERT_ACTIVE, "wal" => name.to_string(), "alert" => alert.to_string())
        .set(f64::from(u8::from(active)));
}

/// Counts one policy reload, valid (`ok`) or rejected (`invalid`).
pub fn record_policy_reload(ok: bool) {
    let result = if ok { "ok" } else { "invalid" };
    counter!(POLICY_RELOADS_TOTAL, "result" => result).increment(1);
}

#[cfg(test)]
mod tests;
