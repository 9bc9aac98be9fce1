//! Semantic validation of `[[wal]]` entries and their sub-tables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::KeyError;
use super::env::ParseEnv;
use super::schema::{RawBackups, RawHooks, RawTriggers, RawWal};
use super::types::{BackupPolicy, Hooks, Mode, Schedule, Triggers, WalPolicy};
use super::validate::{BYTES_PER_MB, Section, non_empty, push, required_name};
use crate::rules::CorruptLines;

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

/// Validates `wal[index]`; `None` if it added any error.
pub(crate) fn wal(
    index: usize,
    raw: RawWal,
    env: &ParseEnv,
    errors: &mut Vec<KeyError>,
) -> Option<WalPolicy> {
    let before = errors.len();
    let mut s = Section::new(format!("wal[{index}]"), errors);
    let name = required_name(raw.name, &s.key("name"), s.errors);
    let (path, resolved_path) = wal_path(raw.path, env, &mut s);
    let wal = WalPolicy {
        name,
        path,
        resolved_path,
        mode: s.keyword("mode", raw.mode, Mode::Offline),
        corrupt_lines: s.keyword("corrupt_lines", raw.corrupt_lines, CorruptLines::Keep),
        backup_dir: non_empty(raw.backup_dir).map(|d| env.resolve(Path::new(&d))),
        lock_timeout: s.millis(
            "lock_timeout_ms",
            raw.lock_timeout_ms,
            DEFAULT_LOCK_TIMEOUT_MS,
        ),
        job_timeout: s.secs(
            "job_timeout_secs",
            raw.job_timeout_secs,
            DEFAULT_JOB_TIMEOUT_SECS,
            1,
        ),
        poll_interval: s.secs(
            "poll_interval_secs",
            raw.poll_interval_secs,
            DEFAULT_POLL_INTERVAL_SECS,
            1,
        ),
        allow_hard_links: raw.allow_hard_links.unwrap_or(false),
        triggers: triggers(
            raw.triggers,
            &mut Section::new(s.key("triggers"), s.errors),
            env,
        ),
        backups: backups(raw.backups, &mut Section::new(s.key("backups"), s.errors)),
        hooks: hooks(raw.hooks, &mut Section::new(s.key("hooks"), s.errors)),
    };
    (errors.len() == before).then_some(wal)
}

/// `path` is required and must name a file; returns (as written, resolved).
fn wal_path(raw: Option<String>, env: &ParseEnv, s: &mut Section) -> (PathBuf, PathBuf) {
    let Some(written) = non_empty(raw) else {
        s.push("path", "is required (the WAL file to compact)");
        return (PathBuf::new(), PathBuf::new());
    };
    let resolved = env.resolve(Path::new(&written));
    if written.ends_with('/') || resolved.file_name().is_none() {
        s.push("path", format!("must name a file, got {written:?}"));
    }
    (PathBuf::from(written), resolved)
}

/// Every trigger is disabled when absent or 0 (schedule: empty); the two guards have defaults.
fn triggers(raw: RawTriggers, s: &mut Section, env: &ParseEnv) -> Triggers {
    let max_size_mb = s.optional_number("max_size_mb", raw.max_size_mb, None);
    let commits = s.int(
        "max_commits_since_compaction",
        raw.max_commits_since_compaction,
        0,
        0,
    );
    Triggers {
        max_size_bytes: max_size_mb.map(mb_to_bytes),
        max_commits_since_compaction: (commits > 0).then_some(commits),
        min_reclaimable_ratio: s.optional_number(
            "min_reclaimable_ratio",
            raw.min_reclaimable_ratio,
            Some(1.0),
        ),
        min_free_disk_percent: s.optional_number(
            "min_free_disk_percent",
            raw.min_free_disk_percent,
            Some(100.0),
        ),
        schedule: schedules(raw.schedule.unwrap_or_default(), s, env),
        min_reclaimable_bytes: s.int(
            "min_reclaimable_bytes",
            raw.min_reclaimable_bytes,
            DEFAULT_MIN_RECLAIMABLE_BYTES,
            0,
        ),
        min_interval: s.secs(
            "min_interval_secs",
            raw.min_interval_secs,
            DEFAULT_MIN_INTERVAL_SECS,
            0,
        ),
    }
}

/// Decimal MB to bytes; a positive size never rounds down to "disabled".
fn mb_to_bytes(mb: f64) -> u64 {
    ((mb * BYTES_PER_MB).round() as u64).max(1)
}

/// Each expression must parse as the scheduler parses it and fire at least once more.
fn schedules(exprs: Vec<String>, s: &mut Section, env: &ParseEnv) -> Vec<Schedule> {
    let mut out = Vec::new();
    for (i, expr) in exprs.iter().enumerate() {
        let field = format!("schedule[{i}]");
        match Schedule::parse(expr) {
            Err(e) => s.push(&field, format!("invalid cron expression {expr:?}: {e}")),
            Ok(schedule) if schedule.next_fire(env.now).is_none() => {
                let now = env.now.format("%Y-%m-%d %H:%M:%S UTC");
                s.push(
                    &field,
                    format!("cron expression {expr:?} never fires after {now}"),
                );
            }
            Ok(schedule) => out.push(schedule),
        }
    }
    out
}

fn backups(raw: RawBackups, s: &mut Section) -> BackupPolicy {
    BackupPolicy {
        keep_days: s.u32("keep_days", raw.keep_days, DEFAULT_KEEP_DAYS, 0),
        keep_last: s.u32("keep_last", raw.keep_last, DEFAULT_KEEP_LAST, 1),
        compress: raw.compress.unwrap_or(false),
    }
}

fn hooks(raw: RawHooks, s: &mut Section) -> Hooks {
    Hooks {
        pre_compact: s.argv("pre_compact", raw.pre_compact),
        post_compact: s.argv("post_compact", raw.post_compact),
        verify: s.argv("verify", raw.verify),
    }
}

/// Two entries naming the same WAL (by name or by normalized path) would race each other, and
/// two WALs with the same file name backing up into one directory would share backup names
/// and one quarantine file (runs of both at once could take back each other's records).
pub(crate) fn check_duplicate_wals(wals: &[(usize, WalPolicy)], errors: &mut Vec<KeyError>) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut paths: HashMap<&Path, (usize, &Path)> = HashMap::new();
    let mut beside: HashMap<PathBuf, usize> = HashMap::new();
    for (i, wal) in wals {
        if let Some(first) = names.get(wal.name.as_str()) {
            let msg = format!("duplicate name {:?} (also wal[{first}])", wal.name);
            push(errors, &format!("wal[{i}].name"), msg);
        } else {
            names.insert(&wal.name, *i);
        }
        if let Some((first, written)) = paths.get(wal.resolved_path.as_path()) {
            let msg = format!(
                "same WAL as wal[{first}] ({:?})",
                written.display().to_string()
            );
            push(errors, &format!("wal[{i}].path"), msg);
            continue;
        }
        paths.insert(&wal.resolved_path, (*i, &wal.path));
        let dir =
            crate::pipeline::backup::backup_dir(&wal.resolved_path, wal.backup_dir.as_deref());
        let shared = dir.join(wal.resolved_path.file_name().unwrap_or_default());
        if let Some(first) = beside.get(&shared) {
            let msg = format!(
                "backs up into {} like wal[{first}], a WAL with the same file name: they would share backup names and a quarantine file; give one its own backup_dir",
                dir.display()
            );
            push(errors, &format!("wal[{i}].backup_dir"), msg);
        } else {
            beside.insert(shared, *i);
        }
    }
}
