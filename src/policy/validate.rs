//! Semantic pass: raw sections → the typed `Policy`, with defaults filled in and
//! every range, keyword, path, cron and cross-reference error collected.
//!
//! Helpers push errors and return a fallback value instead of stopping, so one
//! bad key never hides another; a section is kept only if it added no errors.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use super::KeyError;
use super::alerts::{alert, check_duplicate_alerts};
use super::document::RawDocument;
use super::env::ParseEnv;
use super::schema::RawDaemon;
use super::types::{DaemonPolicy, KeywordList, LogFormat, Policy, WalPolicy};
use super::wal::{check_duplicate_wals, wal};

/// Default `daemon.log_level`: quiet enough for production, RUST_LOG overrides it.
pub(crate) const DEFAULT_LOG_LEVEL: &str = "info";
/// Default Prometheus listener: loopback only, on the port conventionally used by OpenTelemetry/Prometheus exporters.
pub(crate) const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// `max_size_mb` unit: decimal megabytes, as disk vendors and `df -H` count.
pub(crate) const BYTES_PER_MB: f64 = 1_000_000.0;

/// Validates the whole document; `None` if any error was collected (including
/// structural ones). Cross-checks cover every section that passed semantic
/// validation, even one whose other keys had type errors.
pub(crate) fn policy(
    doc: RawDocument,
    env: &ParseEnv,
    errors: &mut Vec<KeyError>,
) -> Option<Policy> {
    let daemon = daemon(doc.daemon, env, errors);
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
        push(
            errors,
            "daemon.log_level",
            format!("invalid log filter {log_level:?}: {e}"),
        );
    }
    let state_dir = match non_empty(raw.state_dir) {
        Some(dir) => env.resolve(Path::new(&dir)),
        None => env.default_state_dir(),
    };
    let listen = raw
        .metrics_listen
        .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string());
    let metrics_listen = socket_addr(&listen, errors);
    let metrics_textfile = non_empty(raw.metrics_textfile).map(|p| env.resolve(Path::new(&p)));
    let daemon = DaemonPolicy {
        log_format,
        log_level,
        state_dir,
        metrics_listen,
        metrics_textfile,
    };
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
            let msg = format!(
                "invalid socket address {text:?} (expected IP:PORT, e.g. {DEFAULT_METRICS_LISTEN}): {e}"
            );
            push(errors, "daemon.metrics_listen", msg);
            None
        }
    }
}

/// Labels appear in metrics and logs, so they are restricted to a safe alphabet.
pub(crate) fn required_name(raw: Option<String>, key: &str, errors: &mut Vec<KeyError>) -> String {
    let Some(name) = non_empty(raw) else {
        push(errors, key, "is required and must not be empty");
        return String::new();
    };
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if !name.chars().all(allowed) {
        push(
            errors,
            key,
            format!("must match [A-Za-z0-9_.-]+, got {name:?}"),
        );
    }
    name
}

/// An argv array: empty means "none"; otherwise the program must be named.
pub(crate) fn argv(raw: Option<Vec<String>>, key: &str, errors: &mut Vec<KeyError>) -> Vec<String> {
    let argv = raw.unwrap_or_default();
    if argv
        .first()
        .is_some_and(|program| program.trim().is_empty())
    {
        push(errors, &format!("{key}[0]"), "program must not be empty");
    }
    argv
}

/// The key path of one section plus the error list, so field checks read as
/// one line each: `section.int("keep_last", raw.keep_last, DEFAULT, 1)`.
pub(crate) struct Section<'a> {
    prefix: String,
    pub errors: &'a mut Vec<KeyError>,
}

impl<'a> Section<'a> {
    pub(crate) fn new(prefix: impl Into<String>, errors: &'a mut Vec<KeyError>) -> Self {
        Section {
            prefix: prefix.into(),
            errors,
        }
    }

    /// The full key path of `field` in this section.
    pub(crate) fn key(&self, field: &str) -> String {
        format!("{}.{field}", self.prefix)
    }

    pub(crate) fn int(&mut self, field: &str, raw: Option<i64>, default: u64, min: u64) -> u64 {
        let key = self.key(field);
        int(raw, default, min, &key, self.errors)
    }

    pub(crate) fn millis(&mut self, field: &str, raw: Option<i64>, default: u64) -> Duration {
        Duration::from_millis(self.int(field, raw, default, 0))
    }

    pub(crate) fn secs(
        &mut self,
        field: &str,
        raw: Option<i64>,
        default: u64,
        min: u64,
    ) -> Duration {
        Duration::from_secs(self.int(field, raw, default, min))
    }

    /// A float trigger: absent or 0 disables it; otherwise within `0..=max` (or finite and ≥ 0).
    pub(crate) fn optional_number(
        &mut self,
        field: &str,
        raw: Option<f64>,
        max: Option<f64>,
    ) -> Option<f64> {
        let value = raw.unwrap_or(0.0);
        let key = self.key(field);
        (check_number(value, max, &key, self.errors) && value > 0.0).then_some(value)
    }

    pub(crate) fn keyword<T: FromStr + KeywordList>(
        &mut self,
        field: &str,
        raw: Option<String>,
        default: T,
    ) -> T {
        let key = self.key(field);
        keyword(raw, default, &key, self.errors)
    }

    pub(crate) fn argv(&mut self, field: &str, raw: Option<Vec<String>>) -> Vec<String> {
        let key = self.key(field);
        argv(raw, &key, self.errors)
    }

    pub(crate) fn u32(&mut self, field: &str, raw: Option<i64>, default: u64, min: u64) -> u32 {
        let value = self.int(field, raw, default, min);
        u32::try_from(value).unwrap_or_else(|_| {
            let message = format!("must be at most {}, got {value}", u32::MAX);
            fail(self.errors, &self.key(field), message, u32::MAX)
        })
    }

    pub(crate) fn push(&mut self, field: &str, message: impl Into<String>) {
        let key = self.key(field);
        push(self.errors, &key, message);
    }
}

/// A keyword key (`mode`, `log_format`, ...): absent means `default`.
pub(crate) fn keyword<T: FromStr + KeywordList>(
    raw: Option<String>,
    default: T,
    key: &str,
    errors: &mut Vec<KeyError>,
) -> T {
    let Some(text) = raw else { return default };
    text.parse().unwrap_or_else(|_| {
        push(
            errors,
            key,
            format!("must be one of {}; got {text:?}", T::expected_list()),
        );
        default
    })
}

/// An integer key with a default and a lower bound (TOML integers are signed, so negatives arrive here).
pub(crate) fn int(
    raw: Option<i64>,
    default: u64,
    min: u64,
    key: &str,
    errors: &mut Vec<KeyError>,
) -> u64 {
    let Some(value) = raw else { return default };
    match u64::try_from(value) {
        Ok(v) if v >= min => v,
        _ if min == 0 => fail(
            errors,
            key,
            format!("must not be negative, got {value}"),
            default,
        ),
        _ => fail(
            errors,
            key,
            format!("must be at least {min}, got {value}"),
            default,
        ),
    }
}

/// Checks a float is a finite non-negative number, at most `max` if given.
pub(crate) fn check_number(
    value: f64,
    max: Option<f64>,
    key: &str,
    errors: &mut Vec<KeyError>,
) -> bool {
    let message = match max {
        Some(max) if !(0.0..=max).contains(&value) => {
            format!("must be between 0 and {max}, got {value}")
        }
        None if !value.is_finite() => format!("must be a finite number, got {value}"),
        None if value < 0.0 => format!("must not be negative, got {value}"),
        _ => return true,
    };
    push(errors, key, message);
    false
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
