//! Semantic validation of `[[wal]]` entries and their sub-tables.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::KeyError;
use super::env::ParseEnv;
use super::schema::{RawBackups, RawHooks, RawRetention, RawTriggers, RawWal};
use super::types::{BackupPolicy, Hooks, Mode, RetentionPolicy, Schedule, Triggers, WalPolicy};
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
/// Default archive age kept: 0, for ever. An archive holds the only copy of what expired
/// once the backups that still have it rotate out, so deleting one is opted into.
const DEFAULT_ARCHIVE_KEEP_DAYS: u64 = 0;

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
        retention: raw
            .retention
            .map(|r| retention(r, &mut Section::new(s.key("retention"), s.errors), env)),
        offsite: raw
            .offsite
            .map(|o| super::offsite::offsite(o, &mut Section::new(s.key("offsite"), s.errors))),
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

/// `[wal.retention]`. `expire_after_secs = 0` is refused rather than read as "off": it would
/// expire every finished transaction at once, and leaving the key out already means off.
/// An in-flight horizon of 0 means never, normalized to `None`.
fn retention(raw: RawRetention, s: &mut Section, env: &ParseEnv) -> RetentionPolicy {
    let expire_after_secs = raw
        .expire_after_secs
        .and_then(|value| match u64::try_from(value) {
            Ok(v) if v > 0 => Some(v),
            _ => {
                s.push(
                    "expire_after_secs",
                    format!("must be greater than 0, got {value}"),
                );
                None
            }
        });
    let in_flight = s.int(
        "expire_in_flight_after_secs",
        raw.expire_in_flight_after_secs,
        0,
        0,
    );
    RetentionPolicy {
        expire_after_secs,
        expire_in_flight_after_secs: (in_flight > 0).then_some(in_flight),
        archive_dir: non_empty(raw.archive_dir).map(|d| env.resolve(Path::new(&d))),
        archive_keep_days: s.u32(
            "archive_keep_days",
            raw.archive_keep_days,
            DEFAULT_ARCHIVE_KEEP_DAYS,
            0,
        ),
    }
}

/// Two entries naming the same WAL (by name or by normalized path) would race each other, and
/// two WALs with the same file name backing up into one directory would share backup names
/// and one quarantine file (runs of both at once could take back each other's records).
pub(crate) fn check_duplicate_wals(wals: &[(usize, WalPolicy)], errors: &mut Vec<KeyError>) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut paths: HashMap<&Path, (usize, &Path)> = HashMap::new();
    let mut beside: HashMap<PathBuf, usize> = HashMap::new();
    let mut archives: HashMap<PathBuf, (usize, bool)> = HashMap::new();
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
        check_shared_archives(*i, wal, &dir, &mut archives, errors);
    }
}

/// Like backups, archives are named after the WAL's file name: two WALs with the same file
/// name archiving into one directory would share archive names. Reported when an explicit
/// `archive_dir` is involved (archives in the backup directories of both share a directory
/// exactly when the backups do, which is reported on `backup_dir`). `archives` maps each
/// directory-and-name taken to (the entry's index, whether its `archive_dir` is explicit).
fn check_shared_archives(
    i: usize,
    wal: &WalPolicy,
    backup_dir: &Path,
    archives: &mut HashMap<PathBuf, (usize, bool)>,
    errors: &mut Vec<KeyError>,
) {
    let Some(r) = &wal.retention else { return };
    let explicit = r.archive_dir.is_some();
    let dir = r.archive_dir.as_deref().unwrap_or(backup_dir);
    let shared = dir.join(wal.resolved_path.file_name().unwrap_or_default());
    match archives.get(&shared) {
        None => {
            archives.insert(shared, (i, explicit));
        }
        Some(&(first, first_explicit)) if explicit || first_explicit => {
            let msg = format!(
                "archives into {} like wal[{first}], a WAL with the same file name: they would share archive names; give one its own archive_dir",
                dir.display()
            );
            push(errors, &format!("wal[{i}].retention.archive_dir"), msg);
        }
        Some(_) => {}
    }
}
