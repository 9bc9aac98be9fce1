//! The effective policy back to TOML, every default filled in, for `check-policy`.
//!
//! Goes through the same `schema` structs as parsing, so the output re-parses
//! (with the same `ParseEnv`) to an equal `Policy`. Disabled triggers print as 0
//! and disabled strings as `""`, which is what the file format means by "off";
//! retention is off by the absence of `[wal.retention]`, so it prints only when present.

use std::path::Path;

use super::schema::{
    RawAlert, RawBackups, RawDaemon, RawHooks, RawPolicy, RawRetention, RawTriggers, RawWal,
};
use super::types::{
    AlertRule, DaemonPolicy, Policy, RetentionPolicy, Threshold, Triggers, WalPolicy,
};
use super::validate::BYTES_PER_MB;

/// Serializes the policy; infallible because every value is a plain TOML type.
pub(crate) fn to_toml(policy: &Policy) -> String {
    let raw = RawPolicy {
        daemon: daemon(&policy.daemon),
        wal: policy.wals.iter().map(wal).collect(),
        alert: policy.alerts.iter().map(alert).collect(),
    };
    toml::to_string(&raw).expect("policy schema structs always serialize to TOML")
}

fn daemon(d: &DaemonPolicy) -> RawDaemon {
    RawDaemon {
        log_format: Some(d.log_format.to_string()),
        log_level: Some(d.log_level.clone()),
        state_dir: Some(path_text(&d.state_dir)),
        metrics_listen: Some(d.metrics_listen.map(|a| a.to_string()).unwrap_or_default()),
        metrics_textfile: Some(
            d.metrics_textfile
                .as_deref()
                .map(path_text)
                .unwrap_or_default(),
        ),
    }
}

fn wal(w: &WalPolicy) -> RawWal {
    RawWal {
        name: Some(w.name.clone()),
        path: Some(path_text(&w.path)),
        mode: Some(w.mode.to_string()),
        corrupt_lines: Some(w.corrupt_lines.to_string()),
        backup_dir: Some(w.backup_dir.as_deref().map(path_text).unwrap_or_default()),
        lock_timeout_ms: Some(saturating_i64(w.lock_timeout.as_millis())),
        job_timeout_secs: Some(saturating_i64(w.job_timeout.as_secs().into())),
        poll_interval_secs: Some(saturating_i64(w.poll_interval.as_secs().into())),
        allow_hard_links: Some(w.allow_hard_links),
        triggers: triggers(&w.triggers),
        backups: RawBackups {
            keep_days: Some(w.backups.keep_days.into()),
            keep_last: Some(w.backups.keep_last.into()),
            compress: Some(w.backups.compress),
        },
        hooks: RawHooks {
            pre_compact: Some(w.hooks.pre_compact.clone()),
            post_compact: Some(w.hooks.post_compact.clone()),
            verify: Some(w.hooks.verify.clone()),
        },
        retention: w.retention.as_ref().map(retention),
        offsite: w.offsite.as_ref().map(super::offsite::render),
    }
}

/// Every key but an absent `expire_after_secs`, which has no "off" value to print.
fn retention(r: &RetentionPolicy) -> RawRetention {
    let secs = |v: u64| saturating_i64(v.into());
    RawRetention {
        expire_after_secs: r.expire_after_secs.map(secs),
        expire_in_flight_after_secs: Some(secs(r.expire_in_flight_after_secs.unwrap_or(0))),
        archive_dir: Some(r.archive_dir.as_deref().map(path_text).unwrap_or_default()),
        archive_keep_days: Some(r.archive_keep_days.into()),
    }
}

fn triggers(t: &Triggers) -> RawTriggers {
    let count = |v: Option<u64>| Some(saturating_i64(v.unwrap_or(0).into()));
    RawTriggers {
        max_size_mb: Some(t.max_size_bytes.map_or(0.0, |b| b as f64 / BYTES_PER_MB)),
        max_commits_since_compaction: count(t.max_commits_since_compaction),
        min_reclaimable_ratio: Some(t.min_reclaimable_ratio.unwrap_or(0.0)),
        min_free_disk_percent: Some(t.min_free_disk_percent.unwrap_or(0.0)),
        schedule: Some(t.schedule.iter().map(|s| s.as_str().to_string()).collect()),
        min_reclaimable_bytes: count(Some(t.min_reclaimable_bytes)),
        min_interval_secs: count(Some(t.min_interval.as_secs())),
    }
}

fn alert(a: &AlertRule) -> RawAlert {
    let (above, below) = match a.threshold {
        Threshold::Above(v) => (Some(v), None),
        Threshold::Below(v) => (None, Some(v)),
    };
    RawAlert {
        name: Some(a.name.clone()),
        metric: Some(a.metric.to_string()),
        above,
        below,
        for_secs: Some(saturating_i64(a.for_duration.as_secs().into())),
        severity: Some(a.severity.to_string()),
        actions: Some(a.actions.iter().map(|x| x.to_string()).collect()),
        command: Some(a.command.clone()),
        wal: Some(a.wal.clone().unwrap_or_default()),
    }
}

/// Policy paths came from TOML strings, so they are valid UTF-8; lossy is only a fallback.
fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// TOML integers are i64; every value here came from one, so saturation never happens in practice.
fn saturating_i64(value: u128) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
