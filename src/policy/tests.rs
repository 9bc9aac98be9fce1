//! Tests of the public API: the embedded default, error key paths, defaults, round trip.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap()
}

fn env() -> ParseEnv {
    let mut env = ParseEnv::bare("/srv/app", now());
    env.home = Some("/home/op".into());
    env
}

fn ok(text: &str) -> Policy {
    match parse(text, "test.toml", &env()) {
        Ok(policy) => policy,
        Err(e) => panic!("expected a valid policy, got:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<KeyError> {
    match parse(text, "test.toml", &env()) {
        Ok(policy) => panic!("expected errors, got {policy:?}"),
        Err(PolicyError::Invalid { errors, .. }) => errors,
        Err(other) => panic!("unexpected error kind: {other}"),
    }
}

/// The errors as `key: message` lines, for exact assertions.
fn lines(text: &str) -> Vec<String> {
    errors(text).iter().map(ToString::to_string).collect()
}

fn keys(text: &str) -> Vec<String> {
    errors(text).into_iter().map(|e| e.key).collect()
}

const MINIMAL_WAL: &str = "[[wal]]\nname = \"a\"\npath = \"a.log\"\n";

#[test]
fn embedded_default_is_the_config_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/policy.toml");
    assert_eq!(EMBEDDED_POLICY, std::fs::read_to_string(path).unwrap());
}

#[test]
fn embedded_default_parses_to_the_operations_guide() {
    let policy = ok(EMBEDDED_POLICY);
    assert_eq!(policy.daemon.log_format, LogFormat::Json);
    assert_eq!(
        policy.daemon.state_dir,
        PathBuf::from("/home/op/.local/state/walcompactd")
    );
    assert_eq!(
        policy.daemon.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(policy.daemon.metrics_textfile, None);
    let [wal] = policy.wals.as_slice() else {
        panic!("one wal expected")
    };
    assert_eq!(wal.name, "diotec360");
    assert_eq!(wal.path, PathBuf::from(".diotec360_wal/wal.log"));
    assert_eq!(
        wal.resolved_path,
        PathBuf::from("/srv/app/.diotec360_wal/wal.log")
    );
    // The Diotec360 application writes with no lock, opening the WAL per append.
    assert_eq!(wal.mode, Mode::Lease);
    assert_eq!(wal.triggers.max_size_bytes, Some(10_000_000));
    assert_eq!(wal.triggers.max_commits_since_compaction, Some(10_000));
    assert_eq!(wal.triggers.min_reclaimable_ratio, Some(0.5));
    assert_eq!(wal.triggers.min_free_disk_percent, Some(10.0));
    assert_eq!(wal.triggers.schedule[0].as_str(), "0 0 2 * * Sun");
    assert_eq!(
        wal.backups,
        BackupPolicy {
            keep_days: 7,
            keep_last: 3,
            compress: false
        }
    );
    let names: Vec<&str> = policy.alerts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "WAL Size Warning",
            "WAL Size Critical",
            "Reclaimable Ratio High",
            "Compaction Stalled",
            "WAL Has Corrupt Lines",
            "Offsite Copies Behind"
        ]
    );
    let stalled = &policy.alerts[3];
    assert_eq!(stalled.metric, AlertMetric::CompactionStalledSeconds);
    assert_eq!(stalled.threshold, Threshold::Above(21_600.0));
    assert_eq!(stalled.severity, Severity::Critical);
    assert_eq!(
        policy.alerts[1].actions,
        [AlertAction::Log, AlertAction::Compact]
    );
    assert!(policy.notes().is_empty());
}

#[test]
fn empty_policy_is_valid_and_idles() {
    let policy = ok("");
    assert!(policy.wals.is_empty() && policy.alerts.is_empty());
    assert_eq!(
        policy.notes(),
        ["no [[wal]] entries: the daemon will start and idle"]
    );
}

#[test]
fn defaults_are_filled_in() {
    let policy = ok(MINIMAL_WAL);
    assert_eq!(policy.daemon.log_level, "info");
    assert_eq!(
        policy.daemon.metrics_listen,
        Some("127.0.0.1:9464".parse().unwrap())
    );
    let wal = &policy.wals[0];
    assert_eq!(wal.mode, Mode::Offline);
    assert_eq!(wal.backup_dir, None);
    assert_eq!(wal.lock_timeout, Duration::from_millis(2000));
    assert_eq!(wal.job_timeout, Duration::from_secs(3600));
    assert_eq!(wal.poll_interval, Duration::from_secs(30));
    assert!(!wal.triggers.any_enabled());
    assert_eq!(wal.triggers.min_reclaimable_bytes, 65_536);
    assert_eq!(wal.triggers.min_interval, Duration::from_secs(300));
    assert_eq!(
        wal.backups,
        BackupPolicy {
            keep_days: 7,
            keep_last: 3,
            compress: false
        }
    );
    assert_eq!(wal.hooks, Hooks::default());
    assert_eq!(policy.notes().len(), 1, "a WAL without triggers is noted");
}

#[test]
fn alert_defaults_are_filled_in() {
    let policy = ok("[[alert]]\nname = \"x\"\nmetric = \"consecutive_failures\"\nabove = 2\n");
    let alert = &policy.alerts[0];
    assert_eq!(alert.severity, Severity::Warning);
    assert_eq!(alert.actions, [AlertAction::Log]);
    assert_eq!(alert.for_duration, Duration::ZERO);
    assert_eq!(alert.wal, None);
    assert!(alert.threshold.is_breached(3.0) && !alert.threshold.is_breached(2.0));
}

#[test]
fn zero_disables_triggers_and_empty_disables_metrics() {
    let text = format!(
        "[daemon]\nmetrics_listen = \"\"\n{MINIMAL_WAL}[wal.triggers]\nmax_size_mb = 0\nmax_commits_since_compaction = 0\nmin_reclaimable_ratio = 0.0\n"
    );
    let policy = ok(&text);
    assert_eq!(policy.daemon.metrics_listen, None);
    assert!(!policy.wals[0].triggers.any_enabled());
}

#[test]
fn explicit_paths_resolve_against_the_base_dir() {
    let text = format!(
        "[daemon]\nstate_dir = \"state\"\nmetrics_textfile = \"/var/lib/node/w.prom\"\n{MINIMAL_WAL}backup_dir = \"../bk\"\n"
    );
    let policy = ok(&text);
    assert_eq!(policy.daemon.state_dir, PathBuf::from("/srv/app/state"));
    assert_eq!(
        policy.daemon.metrics_textfile,
        Some(PathBuf::from("/var/lib/node/w.prom"))
    );
    assert_eq!(policy.wals[0].backup_dir, Some(PathBuf::from("/srv/bk")));
}

#[test]
fn invalid_cron_has_its_key_path() {
    let text = format!(
        "{MINIMAL_WAL}[[wal]]\nname = \"b\"\npath = \"b.log\"\n[wal.triggers]\nschedule = [\"x\"]\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].key, "wal[1].triggers.schedule[0]");
    assert!(
        errs[0]
            .message
            .starts_with("invalid cron expression \"x\": "),
        "{}",
        errs[0]
    );
}

#[test]
fn cron_accepts_what_the_scheduler_accepts() {
    for expr in [
        "*/1 * * * * *",
        "0 0 2 * * Sun",
        "0 */15 * * * *",
        "0 0 0 1 1 * 2099",
        "@daily",
    ] {
        let schedule = Schedule::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert!(schedule.next_fire(now()).is_some(), "{expr}");
    }
    // Five fields (no seconds) are refused, as by tokio-cron-scheduler.
    assert!(Schedule::parse("0 2 * * Sun").is_err());
    assert!(Schedule::parse("0 0 25 * * *").is_err());
}

#[test]
fn next_fire_is_utc() {
    let sunday_2am = Schedule::parse("0 0 2 * * Sun").unwrap();
    // 2025-01-01 is a Wednesday; the next Sunday is the 5th.
    let expected = Utc.with_ymd_and_hms(2025, 1, 5, 2, 0, 0).unwrap();
    assert_eq!(sunday_2am.next_fire(now()), Some(expected));
    assert_eq!(
        sunday_2am.next_fire(expected),
        Some(expected + chrono::Duration::days(7))
    );
}

#[test]
fn schedule_that_never_fires_again_is_refused() {
    let text = format!("{MINIMAL_WAL}[wal.triggers]\nschedule = [\"0 0 0 1 1 * 2020\"]\n");
    let errs = errors(&text);
    assert_eq!(errs[0].key, "wal[0].triggers.schedule[0]");
    assert!(errs[0].message.contains("never fires"), "{}", errs[0]);
}

#[test]
fn duplicate_names_and_paths() {
    let text = "[[wal]]\nname = \"a\"\npath = \".diotec360_wal/wal.log\"\n\
                [[wal]]\nname = \"b\"\npath = \"./x/../.diotec360_wal/wal.log\"\n\
                [[wal]]\nname = \"a\"\npath = \"other.log\"\n";
    assert_eq!(
        lines(text),
        [
            "wal[1].path: same WAL as wal[0] (\".diotec360_wal/wal.log\")",
            "wal[2].name: duplicate name \"a\" (also wal[0])",
        ]
    );
}

#[test]
fn absolute_and_relative_spellings_of_one_file_collide() {
    let text = "[[wal]]\nname = \"a\"\npath = \"/srv/app/w.log\"\n[[wal]]\nname = \"b\"\npath = \"w.log\"\n";
    assert_eq!(keys(text), ["wal[1].path"]);
}

#[test]
fn ratio_out_of_range() {
    let text = format!("{MINIMAL_WAL}[wal.triggers]\nmin_reclaimable_ratio = -0.5\n");
    assert_eq!(
        lines(&text),
        ["wal[0].triggers.min_reclaimable_ratio: must be between 0 and 1, got -0.5"]
    );
    let text = format!("{MINIMAL_WAL}[wal.triggers]\nmin_free_disk_percent = 101\n");
    assert_eq!(
        lines(&text),
        ["wal[0].triggers.min_free_disk_percent: must be between 0 and 100, got 101"]
    );
}

#[test]
fn negative_numbers_are_refused() {
    let text = format!(
        "{MINIMAL_WAL}lock_timeout_ms = -1\n[wal.triggers]\nmax_size_mb = -3.5\nmin_reclaimable_bytes = -1\nmin_interval_secs = -5\n\
         [wal.backups]\nkeep_days = -7\n[[alert]]\nname = \"n\"\nmetric = \"wal_size_bytes\"\nbelow = -1\nfor_secs = -2\n"
    );
    assert_eq!(
        lines(&text),
        [
            "wal[0].lock_timeout_ms: must not be negative, got -1",
            "wal[0].triggers.max_size_mb: must not be negative, got -3.5",
            "wal[0].triggers.min_reclaimable_bytes: must not be negative, got -1",
            "wal[0].triggers.min_interval_secs: must not be negative, got -5",
            "wal[0].backups.keep_days: must not be negative, got -7",
            "alert[0].below: must not be negative, got -1",
            "alert[0].for_secs: must not be negative, got -2",
        ]
    );
}

#[test]
fn lower_bounds_above_zero() {
    let text = format!(
        "{MINIMAL_WAL}job_timeout_secs = 0\npoll_interval_secs = 0\n[wal.backups]\nkeep_last = 0\n"
    );
    assert_eq!(
        lines(&text),
        [
            "wal[0].job_timeout_secs: must be at least 1, got 0",
            "wal[0].poll_interval_secs: must be at least 1, got 0",
            "wal[0].backups.keep_last: must be at least 1, got 0",
        ]
    );
}

#[test]
fn alert_with_both_or_neither_threshold() {
    let both = "[[alert]]\nname = \"x\"\nmetric = \"wal_size_mb\"\nabove = 1\nbelow = 2\n";
    assert_eq!(
        lines(both),
        ["alert[0].above: exactly one of above/below is required"]
    );
    let neither = "[[alert]]\nname = \"x\"\nmetric = \"wal_size_mb\"\n";
    assert_eq!(
        lines(neither),
        ["alert[0].above: exactly one of above/below is required"]
    );
}

#[test]
fn alert_semantic_errors() {
    let text = "[[alert]]\nname = \"x\"\nmetric = \"wal_sise_mb\"\nabove = 1\nseverity = \"loud\"\n\
                actions = [\"log\", \"page\", \"log\", \"command\"]\nwal = \"nope\"\n\
                [[alert]]\nname = \"x\"\nmetric = \"disk_free_percent\"\nbelow = 150\ncommand = [\"true\"]\n";
    let got = lines(text);
    let expected = [
        "alert[0].metric: must be one of wal_size_mb, wal_size_bytes, wal_reclaimable_bytes, wal_reclaimable_ratio, wal_torn_tail_bytes, wal_corrupt_lines, wal_in_flight_transactions, seconds_since_last_success, compaction_stalled_seconds, consecutive_failures, disk_free_percent, offsite_pending_seconds; got \"wal_sise_mb\"",
        "alert[0].severity: must be one of warning, critical; got \"loud\"",
        "alert[0].actions[1]: must be one of log, compact, command; got \"page\"",
        "alert[0].actions[2]: duplicate action \"log\"",
        "alert[0].command: must not be empty when actions include \"command\"",
        "alert[0].wal: no [[wal]] is named \"nope\"",
        "alert[1].below: must be between 0 and 100, got 150",
        "alert[1].command: is set but actions do not include \"command\"",
    ];
    assert_eq!(got, expected);
}

#[test]
fn duplicate_alert_names() {
    let rule = "[[alert]]\nname = \"x\"\nmetric = \"wal_size_mb\"\nabove = 1\n";
    assert_eq!(
        lines(&rule.repeat(2)),
        ["alert[1].name: duplicate name \"x\" (also alert[0])"]
    );
}

#[test]
fn alert_may_name_an_existing_wal() {
    let text = format!(
        "{MINIMAL_WAL}[[alert]]\nname = \"x\"\nmetric = \"wal_size_mb\"\nabove = 1\nwal = \"a\"\n"
    );
    assert_eq!(ok(&text).alerts[0].wal.as_deref(), Some("a"));
}

#[test]
fn unknown_keys_in_every_section() {
    let text = "typo = 1\n[daemon]\nlog_levle = \"x\"\n[[wal]]\nname = \"a\"\npath = \"a\"\npth = 1\n\
                [wal.triggers]\nmax_sise_mb = 1\n[wal.backups]\nkeep = 1\n[wal.hooks]\npre = []\n\
                [[alert]]\nname = \"x\"\nmetric = \"wal_size_mb\"\nabove = 1\nabvoe = 2\n";
    assert_eq!(
        keys(text),
        [
            "typo",
            "daemon.log_levle",
            "wal[0].triggers.max_sise_mb",
            "wal[0].backups.keep",
            "wal[0].hooks.pre",
            "wal[0].pth",
            "alert[0].abvoe",
        ]
    );
    let errs = errors("[[wal]]\nname = \"a\"\npath = \"a\"\n[wal.triggers]\nmax_sise_mb = 1\n");
    assert_eq!(
        errs[0].to_string(),
        "wal[0].triggers.max_sise_mb: unknown key (expected one of max_size_mb, max_commits_since_compaction, \
         min_reclaimable_ratio, min_free_disk_percent, schedule, min_reclaimable_bytes, min_interval_secs)"
    );
}

#[test]
fn type_errors_have_key_paths() {
    let text = "[daemon]\nlog_format = 3\n[[wal]]\nname = \"a\"\npath = \"a\"\nmode = true\n\
                [wal.backups]\ncompress = \"yes\"\n[wal.hooks]\nverify = \"check.sh\"\n";
    assert_eq!(
        keys(text),
        [
            "daemon.log_format",
            "wal[0].backups.compress",
            "wal[0].hooks.verify",
            "wal[0].mode"
        ]
    );
}

#[test]
fn daemon_errors() {
    let text =
        "[daemon]\nlog_format = \"xml\"\nlog_level = \"info,[\"\nmetrics_listen = \"localhost\"\n";
    let errs = errors(text);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "daemon.log_format",
            "daemon.log_level",
            "daemon.metrics_listen"
        ]
    );
    assert_eq!(errs[0].message, "must be one of json, pretty; got \"xml\"");
    assert!(
        errs[2]
            .message
            .starts_with("invalid socket address \"localhost\""),
        "{}",
        errs[2]
    );
}

#[test]
fn wal_field_errors() {
    let text = "[[wal]]\npath = \"\"\nmode = \"sideways\"\n[[wal]]\nname = \"bad name\"\npath = \"dir/\"\n\
                [wal.hooks]\npre_compact = [\"\", \"x\"]\n";
    assert_eq!(
        lines(text),
        [
            "wal[0].name: is required and must not be empty",
            "wal[0].path: is required (the WAL file to compact)",
            "wal[0].mode: must be one of offline, online, lease; got \"sideways\"",
            "wal[1].name: must match [A-Za-z0-9_.-]+, got \"bad name\"",
            "wal[1].path: must name a file, got \"dir/\"",
            "wal[1].hooks.pre_compact[0]: program must not be empty",
        ]
    );
}

#[test]
fn several_sections_report_together() {
    let text = "[daemon]\nmetrics_listen = \"nope\"\n\
                [[wal]]\nname = \"a\"\npath = \"a\"\n[wal.triggers]\nmax_sise_mb = 1\nschedule = [\"x\"]\n\
                [[wal]]\nname = \"b\"\npath = \"b\"\n[wal.triggers]\nmin_reclaimable_ratio = 2\n\
                [[alert]]\nname = \"x\"\nmetric = \"wal_size_mb\"\nabove = 1\nbelow = 1\n";
    assert_eq!(
        keys(text),
        [
            "daemon.metrics_listen",
            "wal[0].triggers.max_sise_mb",
            "wal[0].triggers.schedule[0]",
            "wal[1].triggers.min_reclaimable_ratio",
            "alert[0].above",
        ]
    );
}

#[test]
fn keys_with_type_errors_do_not_hide_other_checks() {
    let text = "[daemon]\nbogus = 1\nlog_format = \"xml\"\n\
                [[wal]]\nname = 7\npath = \"a\"\nmode = 1\nlock_timeout_ms = -1\n\
                [[wal]]\nname = \"b\"\npath = \"./a\"\npoll_interval_secs = \"x\"\n\
                [[wal]]\nname = \"b\"\npath = \"c\"\n\
                [[alert]]\nname = \"x\"\nmetric = \"wal_size_mb\"\nabove = \"1\"\n";
    assert_eq!(
        lines(text),
        [
            "daemon.bogus: unknown key (expected one of log_format, log_level, state_dir, metrics_listen, metrics_textfile)",
            "daemon.log_format: must be one of json, pretty; got \"xml\"",
            "wal[0].mode: invalid type: integer `1`, expected a string",
            "wal[0].name: invalid type: integer `7`, expected a string",
            "wal[0].lock_timeout_ms: must not be negative, got -1",
            "wal[1].poll_interval_secs: invalid type: string \"x\", expected an integer",
            "wal[2].name: duplicate name \"b\" (also wal[1])",
            "alert[0].above: invalid type: string \"1\", expected a number",
        ]
    );
}

#[test]
fn syntax_error_reports_line_and_column() {
    let errs = errors("[daemon]\nlog_level = \"info\"\n[[wal]\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0]
            .message
            .starts_with("TOML syntax error at line 3, column"),
        "{}",
        errs[0]
    );
}

#[test]
fn invalid_display_lists_every_error_prefixed_by_origin() {
    let err = parse(
        "[daemon]\nlog_format = \"x\"\nmetrics_listen = \"y\"\n",
        "/etc/p.toml",
        &env(),
    )
    .unwrap_err();
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines.iter().all(|l| l.starts_with("/etc/p.toml: daemon.")),
        "{text}"
    );
}

#[test]
fn to_toml_round_trips() {
    let full = format!(
        "{EMBEDDED_POLICY}\n[[wal]]\nname = \"b\"\npath = \"/data/b.log\"\nmode = \"online\"\nbackup_dir = \"bk\"\n\
         [wal.triggers]\nmax_size_mb = 0.123457\nschedule = [\"*/1 * * * * *\", \"0 0 2 * * Sun\"]\n\
         [wal.hooks]\nverify = [\"sh\", \"-c\", \"check \\\"$WAL_PATH\\\"\"]\n\
         [[alert]]\nname = \"low disk\"\nmetric = \"disk_free_percent\"\nbelow = 5\nfor_secs = 60\n\
         actions = [\"command\"]\ncommand = [\"notify\"]\nwal = \"b\"\n"
    );
    for text in [EMBEDDED_POLICY, "", MINIMAL_WAL, full.as_str()] {
        let policy = ok(text);
        let rendered = policy.to_toml();
        let again =
            parse(&rendered, "rendered", &env()).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
        assert_eq!(again, policy, "{rendered}");
    }
}

#[test]
fn to_toml_shows_every_key() {
    let rendered = ok(MINIMAL_WAL).to_toml();
    for key in [
        "state_dir = \"/home/op/.local/state/walcompactd\"",
        "metrics_textfile = \"\"",
        "max_size_mb = 0.0",
        "keep_last = 3",
        "verify = []",
    ] {
        assert!(rendered.contains(key), "{key} missing from:\n{rendered}");
    }
}

#[test]
fn load_falls_back_to_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let (policy, source) = load_with(None, &missing, &env()).unwrap();
    assert_eq!(source, PolicySource::Embedded);
    assert_eq!(source.to_string(), "embedded default");
    assert_eq!(policy, ok(EMBEDDED_POLICY));
}

#[test]
fn load_reads_explicit_then_default_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, MINIMAL_WAL).unwrap();
    let (policy, source) = load_with(None, &file, &env()).unwrap();
    assert_eq!(
        (policy.wals.len(), source),
        (1, PolicySource::File(file.clone()))
    );
    let (_, source) = load_with(Some(&file), Path::new("/nonexistent"), &env()).unwrap();
    assert_eq!(source.to_string(), file.display().to_string());
    let err = load_with(Some(&dir.path().join("nope.toml")), &file, &env()).unwrap_err();
    assert!(matches!(err, PolicyError::Read { .. }), "{err}");
}

#[test]
fn invalid_file_errors_are_prefixed_by_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(&file, "[daemon]\nlog_format = \"x\"\n").unwrap();
    let err = load_with(Some(&file), &file, &env()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}: daemon.log_format: ", file.display()))
    );
}

#[test]
fn cron_acceptance_matches_tokio_cron_scheduler() {
    let exprs = [
        "*/1 * * * * *",
        "0 0 2 * * Sun",
        "0 0 2 * * SUN",
        "0 0 0 1 1 * 2099",
        "0 0 0 ? * MON-FRI",
        "0 0 0 L * *",
        "@hourly",
        "x",
        "",
        "0 2 * * Sun",
        "0 0 2 * * Funday",
        "60 * * * * *",
        "0 0 0 1 1 * 2099 1",
    ];
    for expr in exprs {
        let ours = Schedule::parse(expr).is_ok();
        let scheduler =
            tokio_cron_scheduler::Job::new_async(expr, |_, _| Box::pin(async {})).is_ok();
        assert_eq!(
            ours, scheduler,
            "{expr:?}: ours {ours}, scheduler {scheduler}"
        );
    }
}

mod retention;
