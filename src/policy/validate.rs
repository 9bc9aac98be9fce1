//! Semantic pass: raw sections → the typed `Policy`, with defaults filled in and
//! every range, keyword, path, cron and cross-reference error collected.
//!
//! Helpers push errors and return a fallback value instead of stopping, so one
//! bad key never hides another; a section is kept only if it added no errors.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use super::KeyError;
use super::alerts::{alert, check_duplicate_alerts};
use super::document::RawDocument;
use super::env::ParseEnv;
use super::schema::{RawBackups, RawDaemon, RawHooks, RawTriggers, RawWal};
use super::types::{
    BackupPolicy, DaemonPolicy, Hooks, KeywordList, LogFormat, Mode, Policy, Schedule, Triggers,
    WalPolicy,
};

/// Default `daemon.log_level`: quiet enough for production, RUST_LOG overrides it.
pub(crate) const DEFAULT_LOG_LEVEL: &str = "info";
/// Default Prometheus listener: loopback only, the port registered for this kind of exporter.
pub(crate) const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Default online-mode wait for the writer lock: long enough for a writer's fsync, short enough not to stall.
const DEFAULT_LOCK_TIMEOUT_MS: u64 = 2_000;
/// Default pipeline deadline: one hour is far beyond any healthy compaction.
const DEFAULT_JOB_TIMEOUT_SECS: u64 = 3_600;
/// Default stat-poll period for filesystems without change events.
const DEFAULT_POLL_INTERVAL_SECS: u64 = 30;
/// Default floor on reclaimable bytes: below 64 KiB a rewrite costs more than it saves.
const DEFAULT_MIN_RECLAIMABLE_BYTES: u64 = 65_536;
/// Default cooldown after a compaction, so bursts of triggers do not rewrite the WAL repeatedly.
const DEFAULT_MIN_INTERVAL_SECS: u64 = 300;
/// Default backup age kept: one week.
const DEFAULT_KEEP_DAYS: u64 = 7;
/// Default minimum backups kept whatever their age.
const DEFAULT_KEEP_LAST: u64 = 3;
/// `max_size_mb` unit: decimal megabytes, as disk vendors and `df -H` count.
pub(crate) const BYTES_PER_MB: f64 = 1_000_000.0;

/// Validates the whole document; `None` if any error was collected (including structural ones).
pub(crate) fn policy(doc: RawDocument, env: &ParseEnv, errors: &mut Vec<KeyError>) -> Option<Policy> {
    let daemon = doc.daemon.and_then(|raw| daemon(raw, env, errors));
    let wals: Vec<(usize, WalPolicy)> = doc
        .wals
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| Some((i, wal(i, raw?, env, errors)?)))
        .collect();
    check_duplicate_wals(&wals, errors);
    let alerts: Vec<_> = doc
        .alerts
        .into_iter()
        .enumerate()
        .filter_map(|(i, raw)| Some((i, alert(i, raw?, &doc.wal_names, errors)?)))
        .collect();
    check_duplicate_alerts(&alerts, errors);
    if !errors.is_empty() {
        return None;
    }
    Some(Policy {
        daemon: daemon?,
        wals: wals.into_iter().map(|(_, w)| w).collect(),
        alerts: alerts.into_iter().map(|(_, a)| a).collect(),
    })
}

fn daemon(raw: RawDaemon, env: &ParseEnv, errors: &mut Vec<KeyError>) -> Option<DaemonPolicy> {
    let before = errors.len();
    let log_format = keyword(raw.log_format, LogFormat::Json, "daemon.log_format", errors);
    let log_level = non_empty(raw.log_level).unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
        push(errors, "daemon.log_level", format!("invalid log filter {log_level:?}: {e}"));
    }
    let state_dir = match non_empty(raw.state_dir) {
        Some(dir) => env.resolve(Path::new(&dir)),
        None => env.default_state_dir(),
    };
    let listen = raw.metrics_listen.unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string());
    let metrics_listen = socket_addr(&listen, errors);
    let metrics_textfile = non_empty(raw.metrics_textfile).map(|p| env.resolve(Path::new(&p)));
    let daemon = DaemonPolicy { log_format, log_level, state_dir, metrics_listen, metrics_textfile };
    (errors.len() == before).then_some(daemon)
}

/// Empty disables the listener; anything else must be `IP:PORT`.
fn socket_addr(text: &str, errors: &mut Vec<KeyError>) -> Option<SocketAddr> {
    if text.is_empty() {
        return None;
    }
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(e) => {
            let msg = format!("invalid socket address {text:?} (expected IP:PORT, e.g. {DEFAULT_METRICS_LISTEN}): {e}");
            push(errors, "daemon.metrics_listen", msg);
            None
        }
    }
}

fn wal(index: usize, raw: RawWal, env: &ParseEnv, errors: &mut Vec<KeyError>) -> Option<WalPolicy> {
    let before = errors.len();
    let prefix = format!("wal[{index}]");
    let key = |k: &str| format!("{prefix}.{k}");
    let name = required_name(raw.name, &key("name"), errors);
    let (path, resolved_path) = wal_path(raw.path, env, &key("path"), errors);
    let wal = WalPolicy {
        name,
        path,
        resolved_path,
        mode: keyword(raw.mode, Mode::Offline, &key("mode"), errors),
        backup_dir: non_empty(raw.backup_dir).map(|d| env.resolve(Path::new(&d))),
        lock_timeout: Duration::from_millis(int(raw.lock_timeout_ms, DEFAULT_LOCK_TIMEOUT_MS, 0, &key("lock_timeout_ms"), errors)),
        job_timeout: secs(int(raw.job_timeout_secs, DEFAULT_JOB_TIMEOUT_SECS, 1, &key("job_timeout_secs"), errors)),
        poll_interval: secs(int(raw.poll_interval_secs, DEFAULT_POLL_INTERVAL_SECS, 1, &key("poll_interval_secs"), errors)),
        triggers: triggers(raw.triggers, &key("triggers"), env, errors),
        backups: backups(raw.backups, &key("backups"), errors),
        hooks: hooks(raw.hooks, &key("hooks"), errors),
    };
    (errors.len() == before).then_some(wal)
}

/// `path` is required and must name a file; returns (as written, resolved).
fn wal_path(raw: Option<String>, env: &ParseEnv, key: &str, errors: &mut Vec<KeyError>) -> (PathBuf, PathBuf) {
    let Some(written) = non_empty(raw) else {
        push(errors, key, "is required (the WAL file to compact)");
        return (PathBuf::new(), PathBuf::new());
    };
    let resolved = env.resolve(Path::new(&written));
    if written.ends_with('/') || resolved.file_name().is_none() {
        push(errors, key, format!("must name a file, got {written:?}"));
    }
    (PathBuf::from(written), resolved)
}

/// Labels appear in metrics and logs, so they are restricted to a safe alphabet.
pub(crate) fn required_name(raw: Option<String>, key: &str, errors: &mut Vec<KeyError>) -> String {
    let Some(name) = non_empty(raw) else {
        push(errors, key, "is required and must not be empty");
        return String::new();
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !name.chars().all(allowed) {
        push(errors, key, format!("must match [A-Za-z0-9_.-]+, got {name:?}"));
    }
    name
}

/// Every trigger is disabled when absent or 0; the two guards have defaults.
fn triggers(raw: RawTriggers, prefix: &str, env: &ParseEnv, errors: &mut Vec<KeyError>) -> Triggers {
    let key = |k: &str| format!("{prefix}.{k}");
    let max_size_mb = optional_number(raw.max_size_mb, None, &key("max_size_mb"), errors);
    let commits = int(raw.max_commits_since_compaction, 0, 0, &key("max_commits_since_compaction"), errors);
    Triggers {
        max_size_bytes: max_size_mb.map(|mb| ((mb * BYTES_PER_MB).round() as u64).max(1)),
        max_commits_since_compaction: (commits > 0).then_some(commits),
        min_reclaimable_ratio: optional_number(raw.min_reclaimable_ratio, Some(1.0), &key("min_reclaimable_ratio"), errors),
        min_free_disk_percent: optional_number(raw.min_free_disk_percent, Some(100.0), &key("min_free_disk_percent"), errors),
        schedule: schedules(raw.schedule.unwrap_or_default(), &key("schedule"), env, errors),
        min_reclaimable_bytes: int(raw.min_reclaimable_bytes, DEFAULT_MIN_RECLAIMABLE_BYTES, 0, &key("min_reclaimable_bytes"), errors),
        min_interval: secs(int(raw.min_interval_secs, DEFAULT_MIN_INTERVAL_SECS, 0, &key("min_interval_secs"), errors)),
    }
}

fn schedules(exprs: Vec<String>, key: &str, env: &ParseEnv, errors: &mut Vec<KeyError>) -> Vec<Schedule> {
    let mut out = Vec::new();
    for (i, expr) in exprs.iter().enumerate() {
        let key = format!("{key}[{i}]");
        match Schedule::parse(expr) {
            Err(e) => push(errors, &key, format!("invalid cron expression {expr:?}: {e}")),
            Ok(s) if s.next_fire(env.now).is_none() => {
                push(errors, &key, format!("cron expression {expr:?} never fires after {}", env.now))
            }
            Ok(s) => out.push(s),
        }
    }
    out
}

fn backups(raw: RawBackups, prefix: &str, errors: &mut Vec<KeyError>) -> BackupPolicy {
    let key = |k: &str| format!("{prefix}.{k}");
    let keep_days = int(raw.keep_days, DEFAULT_KEEP_DAYS, 0, &key("keep_days"), errors);
    let keep_last = int(raw.keep_last, DEFAULT_KEEP_LAST, 1, &key("keep_last"), errors);
    BackupPolicy {
        keep_days: fit_u32(keep_days, &key("keep_days"), errors),
        keep_last: fit_u32(keep_last, &key("keep_last"), errors),
        compress: raw.compress.unwrap_or(false),
    }
}

fn hooks(raw: RawHooks, prefix: &str, errors: &mut Vec<KeyError>) -> Hooks {
    let key = |k: &str| format!("{prefix}.{k}");
    Hooks {
        pre_compact: argv(raw.pre_compact, &key("pre_compact"), errors),
        post_compact: argv(raw.post_compact, &key("post_compact"), errors),
        verify: argv(raw.verify, &key("verify"), errors),
    }
}

/// An argv array: empty means "none"; otherwise the program must be named.
pub(crate) fn argv(raw: Option<Vec<String>>, key: &str, errors: &mut Vec<KeyError>) -> Vec<String> {
    let argv = raw.unwrap_or_default();
    if argv.first().is_some_and(|program| program.trim().is_empty()) {
        push(errors, &format!("{key}[0]"), "program must not be empty");
    }
    argv
}

/// Two entries naming the same WAL (by name or by normalized path) would race each other.
fn check_duplicate_wals(wals: &[(usize, WalPolicy)], errors: &mut Vec<KeyError>) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut paths: HashMap<&Path, (usize, &Path)> = HashMap::new();
    for (i, wal) in wals {
        if let Some(first) = names.get(wal.name.as_str()) {
            push(errors, &format!("wal[{i}].name"), format!("duplicate name {:?} (also wal[{first}])", wal.name));
        } else {
            names.insert(&wal.name, *i);
        }
        if let Some((first, written)) = paths.get(wal.resolved_path.as_path()) {
            let msg = format!("same WAL as wal[{first}] ({:?})", written.display().to_string());
            push(errors, &format!("wal[{i}].path"), msg);
        } else {
            paths.insert(&wal.resolved_path, (*i, &wal.path));
        }
    }
}

/// A keyword key (`mode`, `log_format`, ...): absent means `default`.
pub(crate) fn keyword<T: FromStr + KeywordList>(raw: Option<String>, default: T, key: &str, errors: &mut Vec<KeyError>) -> T {
    let Some(text) = raw else { return default };
    text.parse().unwrap_or_else(|_| {
        push(errors, key, format!("must be one of {}; got {text:?}", T::expected_list()));
        default
    })
}

/// An integer key with a default and a lower bound (TOML integers are signed, so negatives arrive here).
pub(crate) fn int(raw: Option<i64>, default: u64, min: u64, key: &str, errors: &mut Vec<KeyError>) -> u64 {
    let Some(value) = raw else { return default };
    match u64::try_from(value) {
        Ok(v) if v >= min => v,
        _ if min == 0 => fail(errors, key, format!("must not be negative, got {value}"), default),
        _ => fail(errors, key, format!("must be at least {min}, got {value}"), default),
    }
}

fn fit_u32(value: u64, key: &str, errors: &mut Vec<KeyError>) -> u32 {
    u32::try_from(value).unwrap_or_else(|_| fail(errors, key, format!("must be at most {}, got {value}", u32::MAX), u32::MAX))
}

/// A float trigger: absent or 0 disables it; otherwise within `0..=max` (or finite and ≥ 0).
fn optional_number(raw: Option<f64>, max: Option<f64>, key: &str, errors: &mut Vec<KeyError>) -> Option<f64> {
    let value = raw.unwrap_or(0.0);
    (check_number(value, max, key, errors) && value > 0.0).then_some(value)
}

/// Checks a float is a finite non-negative number, at most `max` if given.
pub(crate) fn check_number(value: f64, max: Option<f64>, key: &str, errors: &mut Vec<KeyError>) -> bool {
    let message = match max {
        Some(max) if !(0.0..=max).contains(&value) => format!("must be between 0 and {max}, got {value}"),
        None if !value.is_finite() => format!("must be a finite number, got {value}"),
        None if value < 0.0 => format!("must not be negative, got {value}"),
        _ => return true,
    };
    push(errors, key, message);
    false
}

fn secs(value: u64) -> Duration {
    Duration::from_secs(value)
}

/// `None` for absent and for `""`, which the policy uses to mean "default".
pub(crate) fn non_empty(raw: Option<String>) -> Option<String> {
    raw.filter(|s| !s.is_empty())
}

pub(crate) fn push(errors: &mut Vec<KeyError>, key: &str, message: impl Into<String>) {
    errors.push(KeyError::new(key, message));
}

fn fail<T>(errors: &mut Vec<KeyError>, key: &str, message: String, fallback: T) -> T {
    push(errors, key, message);
    fallback
}
