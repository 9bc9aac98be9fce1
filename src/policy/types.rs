//! The typed, validated policy: what the daemon and the other modules consume.
//!
//! Every value here has already been checked and every default filled in, so
//! consumers never re-validate. All types derive `PartialEq` because the daemon
//! diffs the old and the new policy on reload to restart only what changed.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::errors::CronError;
use croner::parser::{CronParser, Seconds};

use crate::pipeline::retain::RetentionRequest;

/// The whole effective policy: daemon settings, the WALs to watch, and the alert rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Process-wide settings (logging, state, metrics).
    pub daemon: DaemonPolicy,
    /// The WALs to compact; may be empty, in which case the daemon idles.
    pub wals: Vec<WalPolicy>,
    /// Alert rules evaluated against every (or one named) WAL.
    pub alerts: Vec<AlertRule>,
}

/// Process-wide settings from `[daemon]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonPolicy {
    /// Log line format.
    pub log_format: LogFormat,
    /// A `tracing` EnvFilter directive, already checked to parse; `RUST_LOG` overrides it.
    pub log_level: String,
    /// Absolute directory for the daemon's own state (defaults resolved from the environment).
    pub state_dir: PathBuf,
    /// Prometheus listener address; `None` disables the HTTP exporter.
    pub metrics_listen: Option<SocketAddr>,
    /// Absolute node_exporter textfile path; `None` disables it.
    pub metrics_textfile: Option<PathBuf>,
}

/// How log lines are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, for journald and log shippers.
    Json,
    /// Human-readable lines, for terminals.
    Pretty,
}

/// One `[[wal]]` entry: a WAL file and how to compact it.
#[derive(Debug, Clone, PartialEq)]
pub struct WalPolicy {
    /// Unique label used in logs and metrics.
    pub name: String,
    /// The path exactly as written in the policy (shown back to the user).
    pub path: PathBuf,
    /// `path` made absolute against the daemon's working directory and normalized lexically.
    pub resolved_path: PathBuf,
    /// Whether the writer may be running while we compact.
    pub mode: Mode,
    /// What compaction does with corrupt complete lines (default: keep them in place).
    pub corrupt_lines: crate::rules::CorruptLines,
    /// Absolute backup directory; `None` means the WAL's own directory.
    pub backup_dir: Option<PathBuf>,
    /// Online mode: how long to wait for the writer lock before giving up.
    pub lock_timeout: Duration,
    /// A pipeline run longer than this is abandoned at a safe point and counted failed.
    pub job_timeout: Duration,
    /// Fallback stat poll for filesystems without change events.
    pub poll_interval: Duration,
    /// Compact a WAL whose inode has other hard links (they keep naming the old file after
    /// the swap); false refuses such a WAL before its backup is made.
    pub allow_hard_links: bool,
    /// When to compact.
    pub triggers: Triggers,
    /// How many backups to keep.
    pub backups: BackupPolicy,
    /// External commands around a compaction.
    pub hooks: Hooks,
    /// `[wal.retention]`; `None` when the table is absent (nothing ever expires).
    pub retention: Option<RetentionPolicy>,
    /// `[wal.offsite]`; `None` when absent (nothing leaves the host).
    pub offsite: Option<OffsitePolicy>,
}

/// `[wal.offsite]`: where copies of backups and archives go. Credentials are never here:
/// the client reads them from the daemon's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsitePolicy {
    /// The URL template as written (`{host}`, `{wal}` resolved when used), already checked.
    pub url: String,
    /// `None`: the provider's own endpoint (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    pub allow_http: bool,
    pub upload_backups: bool,
    pub upload_archives: bool,
    /// Remove a local backup or archive once its copy is confirmed (never the newest backup).
    pub delete_local_after_upload: bool,
}

impl OffsitePolicy {
    /// The destination of the WAL named `wal` on this host.
    pub fn target(&self, wal: &str) -> Result<crate::offsite::target::Target, String> {
        crate::offsite::target::Target::resolve(&self.url, &crate::offsite::hostname(), wal)
    }

    /// The client settings for `target`.
    pub fn store_config(
        &self,
        target: &crate::offsite::target::Target,
    ) -> crate::offsite::store::StoreConfig {
        crate::offsite::store::StoreConfig {
            bucket: target.bucket.clone(),
            endpoint: self.endpoint.clone(),
            allow_http: self.allow_http,
        }
    }
}

/// How writers are kept out during compaction: the pipeline's own mode (one type from the
/// policy to the journal), spelled here as the policy's keyword.
pub use crate::pipeline::guard::Mode;

impl WalPolicy {
    /// The guard a run of this WAL holds: its mode with its settings.
    pub fn guard(&self) -> crate::pipeline::Guard {
        crate::pipeline::Guard::new(self.mode, self.lock_timeout)
    }

    /// What a run of this WAL is asked to expire, if anything (see [`RetentionPolicy::request`]).
    pub fn retention_request(&self) -> Option<RetentionRequest> {
        self.retention.as_ref().and_then(RetentionPolicy::request)
    }
}

/// Opt-in retention from `[wal.retention]`: old finished (and, if asked, abandoned in-flight)
/// transactions leave the WAL for a verified archive. Horizons are seconds, as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Finished transactions whose final line is older than this many seconds expire;
    /// `None` (the key absent) = they never do.
    pub expire_after_secs: Option<u64>,
    /// In-flight transactions whose last PREPARE is older than this many seconds expire;
    /// `None` = never (the key absent or 0, normalized so a rendered policy re-parses equal).
    pub expire_in_flight_after_secs: Option<u64>,
    /// Absolute archive directory; `None` = the backup directory (itself the WAL's own by
    /// default), so archives sit with the backups unless told otherwise.
    pub archive_dir: Option<PathBuf>,
    /// Archives older than this many days may be pruned; 0 = kept for ever (the default:
    /// an archive is the only copy of what expired once the backups rotate).
    pub archive_keep_days: u32,
}

impl RetentionPolicy {
    /// The pipeline's request, or `None` when no horizon is set: a table with only
    /// `archive_dir`/`archive_keep_days` expires nothing, so runs stay exactly as without it.
    pub fn request(&self) -> Option<RetentionRequest> {
        if self.expire_after_secs.is_none() && self.expire_in_flight_after_secs.is_none() {
            return None;
        }
        Some(RetentionRequest {
            expire_after_secs: self.expire_after_secs,
            expire_in_flight_after_secs: self.expire_in_flight_after_secs,
            archive_dir: self.archive_dir.clone(),
        })
    }
}

/// Compaction triggers; `None` / empty means that trigger is disabled.
#[derive(Debug, Clone, PartialEq)]
pub struct Triggers {
    /// Compact when the WAL is larger than this many bytes.
    pub max_size_bytes: Option<u64>,
    /// Compact after this many commits since the last compaction.
    pub max_commits_since_compaction: Option<u64>,
    /// Compact when reclaimable bytes / size reaches this ratio (0..=1).
    pub min_reclaimable_ratio: Option<f64>,
    /// Compact when free space on the WAL's filesystem falls below this percentage.
    pub min_free_disk_percent: Option<f64>,
    /// Cron schedules (UTC) on which to compact.
    pub schedule: Vec<Schedule>,
    /// Guard: never compact to reclaim fewer bytes than this (0 = no floor).
    pub min_reclaimable_bytes: u64,
    /// Guard: cooldown after a compaction (zero = none).
    pub min_interval: Duration,
}

/// Backup retention for one WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPolicy {
    /// Backups older than this many days may be pruned (0 = age alone never keeps one).
    pub keep_days: u32,
    /// Pruning never goes below this many backups (at least 1: it is the rollback path).
    pub keep_last: u32,
    /// zstd-compress backups after the pipeline, off the critical path.
    pub compress: bool,
}

/// External commands as argv arrays; an empty vector means no hook.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    /// Runs before compaction; a non-zero exit aborts the run.
    pub pre_compact: Vec<String>,
    /// Runs after every run, successful or not.
    pub post_compact: Vec<String>,
    /// The application's own check of the new WAL; non-zero means rollback.
    pub verify: Vec<String>,
}

/// One `[[alert]]` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// Unique human-readable name, passed to commands as `ALERT_NAME`.
    pub name: String,
    /// What is measured.
    pub metric: AlertMetric,
    /// Which side of the threshold fires.
    pub threshold: Threshold,
    /// The condition must hold this long before the alert fires.
    pub for_duration: Duration,
    /// How loud the alert is.
    pub severity: Severity,
    /// What to do when it fires; never empty, no duplicates.
    pub actions: Vec<AlertAction>,
    /// argv for the `command` action; empty unless `actions` contains `Command`.
    pub command: Vec<String>,
    /// Restrict the rule to the `[[wal]]` with this name; `None` = every WAL.
    pub wal: Option<String>,
}

/// A firing condition: the metric is strictly above or strictly below the value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Fires when the metric is greater than the value.
    Above(f64),
    /// Fires when the metric is less than the value.
    Below(f64),
}

impl Threshold {
    /// Whether `value` is on the firing side of the threshold.
    pub fn is_breached(&self, value: f64) -> bool {
        match *self {
            Threshold::Above(limit) => value > limit,
            Threshold::Below(limit) => value < limit,
        }
    }
}

/// How loud an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
}

/// What an alert does when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertAction {
    /// Write a log event.
    Log,
    /// Request a compaction of the affected WAL (subject to its guards).
    Compact,
    /// Run the rule's `command`.
    Command,
}

/// Lets validation name the accepted keywords of any keyword enum.
pub(crate) trait KeywordList {
    /// The accepted keywords, comma-separated.
    fn expected_list() -> String;
}

/// Generates a string-keyed enum's `as_str`, `ALL` and `FromStr` from one table,
/// so the policy keyword, the parser and the error message's list never disagree.
macro_rules! keyword_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every accepted keyword, in documentation order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];
            /// The keyword as written in the policy file.
            pub fn as_str(&self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
            /// The accepted keywords, for error messages.
            pub fn expected() -> String {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                names.join(", ")
            }
        }
        impl FromStr for $ty {
            type Err = ();
            fn from_str(text: &str) -> Result<Self, ()> {
                Self::ALL.iter().copied().find(|v| v.as_str() == text).ok_or(())
            }
        }
        impl KeywordList for $ty {
            fn expected_list() -> String {
                Self::expected()
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(LogFormat { Json => "json", Pretty => "pretty" });

impl KeywordList for crate::rules::CorruptLines {
    fn expected_list() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
        names.join(", ")
    }
}
keyword_enum!(Mode { Offline => "offline", Online => "online", Lease => "lease" });
keyword_enum!(Severity { Warning => "warning", Critical => "critical" });
keyword_enum!(AlertAction { Log => "log", Compact => "compact", Command => "command" });

/// The quantities an alert can watch; the daemon computes each one per WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertMetric {
    /// WAL size in MB (1 MB = 1_000_000 bytes).
    WalSizeMb,
    /// WAL size in bytes.
    WalSizeBytes,
    /// Bytes a compaction would reclaim.
    WalReclaimableBytes,
    /// Reclaimable bytes / size, 0..=1.
    WalReclaimableRatio,
    /// Bytes of an incomplete last line.
    WalTornTailBytes,
    /// Corrupt complete lines (reported whatever `corrupt_lines` does with them).
    WalCorruptLines,
    /// Transactions prepared but not yet committed or aborted.
    WalInFlightTransactions,
    /// Seconds since the last successful compaction.
    SecondsSinceLastSuccess,
    /// Seconds since last success while reclaimable bytes ≥ min_reclaimable_bytes, else 0.
    CompactionStalledSeconds,
    /// Failed compaction runs in a row.
    ConsecutiveFailures,
    /// Free space on the WAL's filesystem, percent.
    DiskFreePercent,
    /// Seconds since the oldest backup or archive still waiting for its off-host copy was
    /// queued; 0 when none waits; unknown without `[wal.offsite]`.
    OffsitePendingSeconds,
}

keyword_enum!(AlertMetric {
    WalSizeMb => "wal_size_mb",
    WalSizeBytes => "wal_size_bytes",
    WalReclaimableBytes => "wal_reclaimable_bytes",
    WalReclaimableRatio => "wal_reclaimable_ratio",
    WalTornTailBytes => "wal_torn_tail_bytes",
    WalCorruptLines => "wal_corrupt_lines",
    WalInFlightTransactions => "wal_in_flight_transactions",
    SecondsSinceLastSuccess => "seconds_since_last_success",
    CompactionStalledSeconds => "compaction_stalled_seconds",
    ConsecutiveFailures => "consecutive_failures",
    DiskFreePercent => "disk_free_percent",
    OffsitePendingSeconds => "offsite_pending_seconds",
});

impl AlertMetric {
    /// The largest meaningful threshold: ratios stop at 1, percentages at 100.
    pub fn max_threshold(&self) -> Option<f64> {
        match self {
            AlertMetric::WalReclaimableRatio => Some(1.0),
            AlertMetric::DiskFreePercent => Some(100.0),
            _ => None,
        }
    }
}

/// A cron schedule (UTC), parsed exactly as tokio-cron-scheduler 0.15 parses it.
///
/// Equality compares the expression text, which is what reload diffing needs.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    cron: Cron,
}

impl Schedule {
    /// Parses with the scheduler's own settings (seconds required, optional
    /// year, day-of-month AND day-of-week), so check-policy accepts exactly what
    /// `Job::new_async` accepts.
    pub fn parse(expression: &str) -> Result<Self, CronError> {
        let cron = scheduler_parser().parse(expression)?;
        Ok(Schedule {
            expression: expression.to_string(),
            cron,
        })
    }

    /// The expression as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.expression
    }

    /// The first fire time strictly after `after`, or `None` if it never fires again.
    pub fn next_fire(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expression == other.expression
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expression)
    }
}

/// The parser configuration copied from tokio-cron-scheduler 0.15 (`Job::new_async`):
/// `Seconds::Required`, `dom_and_dow(true)`, year left at its default (optional).
fn scheduler_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
}
