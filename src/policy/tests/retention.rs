//! `[wal.retention]`: absent is off, every value checked with its key path, the effective
//! policy prints it and re-parses equal.

use super::*;
use crate::pipeline::retain::RetentionRequest;

fn wal_with(retention: &str) -> String {
    format!("{MINIMAL_WAL}[wal.retention]\n{retention}")
}

#[test]
fn absent_table_is_off_and_prints_nothing() {
    let policy = ok(MINIMAL_WAL);
    assert_eq!(policy.wals[0].retention, None);
    assert_eq!(policy.wals[0].retention_request(), None);
    assert!(
        !policy.to_toml().contains("retention"),
        "{}",
        policy.to_toml()
    );
    // The embedded default documents the table commented out: retention stays off.
    assert!(EMBEDDED_POLICY.contains("# [wal.retention]"));
    assert_eq!(ok(EMBEDDED_POLICY).wals[0].retention, None);
}

#[test]
fn every_key_is_read_and_archive_dir_resolves_like_backup_dir() {
    let policy = ok(&wal_with(
        "expire_after_secs = 2592000\nexpire_in_flight_after_secs = 86400\n\
         archive_dir = \"archives\"\narchive_keep_days = 90\n",
    ));
    let r = policy.wals[0].retention.clone().unwrap();
    assert_eq!(
        r,
        RetentionPolicy {
            expire_after_secs: Some(2_592_000),
            expire_in_flight_after_secs: Some(86_400),
            archive_dir: Some(PathBuf::from("/srv/app/archives")),
            archive_keep_days: 90,
        }
    );
    assert_eq!(
        r.request(),
        Some(RetentionRequest {
            expire_after_secs: Some(2_592_000),
            expire_in_flight_after_secs: Some(86_400),
            archive_dir: Some(PathBuf::from("/srv/app/archives")),
        })
    );
    let notes = policy.notes();
    assert!(!notes.iter().any(|n| n.contains("retention")), "{notes:?}");
}

#[test]
fn defaults_keep_archives_for_ever_beside_the_backups() {
    let r = ok(&wal_with("expire_after_secs = 60\n")).wals[0]
        .retention
        .clone()
        .unwrap();
    assert_eq!(r.expire_in_flight_after_secs, None);
    assert_eq!(r.archive_dir, None, "empty = the backup directory");
    assert_eq!(r.archive_keep_days, 0, "0 = kept for ever");
    let req = r.request().unwrap();
    assert_eq!((req.expire_after_secs, req.archive_dir), (Some(60), None));
}

#[test]
fn in_flight_horizon_alone_is_allowed_and_zero_means_never() {
    let policy = ok(&wal_with("expire_in_flight_after_secs = 600\n"));
    let req = policy.wals[0].retention_request().unwrap();
    assert_eq!(req.expire_after_secs, None);
    assert_eq!(req.expire_in_flight_after_secs, Some(600));

    let policy = ok(&wal_with(
        "expire_in_flight_after_secs = 0\narchive_keep_days = 3\n",
    ));
    let r = policy.wals[0].retention.as_ref().unwrap();
    assert_eq!(r.expire_in_flight_after_secs, None);
    assert_eq!(
        r.request(),
        None,
        "no horizon: runs are exactly as without the table"
    );
    assert_eq!(
        policy.notes(),
        [
            "wal[0] (a): no trigger enabled; only alerts with the \"compact\" action or a manual run will compact it",
            "wal[0] (a): [wal.retention] sets neither expire_after_secs nor expire_in_flight_after_secs; nothing expires"
        ]
    );
}

#[test]
fn each_invalid_value_is_reported_with_its_key_path() {
    let text = format!(
        "{}[[wal]]\nname = \"b\"\npath = \"b.log\"\n[wal.retention]\nexpire_after_secs = -5\n\
         archive_keep_days = 4294967296\n",
        wal_with(
            "expire_after_secs = 0\nexpire_in_flight_after_secs = -1\narchive_keep_days = -2\n"
        )
    );
    assert_eq!(
        lines(&text),
        [
            "wal[0].retention.expire_after_secs: must be greater than 0, got 0",
            "wal[0].retention.expire_in_flight_after_secs: must not be negative, got -1",
            "wal[0].retention.archive_keep_days: must not be negative, got -2",
            "wal[1].retention.expire_after_secs: must be greater than 0, got -5",
            "wal[1].retention.archive_keep_days: must be at most 4294967295, got 4294967296",
        ]
    );
}

#[test]
fn types_unknown_keys_and_shape_are_reported_with_their_key_paths() {
    let text = format!(
        "{}[[wal]]\nname = \"b\"\npath = \"b.log\"\nretention = 3\n",
        wal_with(
            "expire_after = 1\nexpire_after_secs = \"30d\"\narchive_dir = 7\n\
             expire_in_flight_after_secs = 1.5\n"
        )
    );
    assert_eq!(
        lines(&text),
        [
            "wal[0].retention.expire_after: unknown key (expected one of expire_after_secs, \
             expire_in_flight_after_secs, archive_dir, archive_keep_days)",
            "wal[0].retention.archive_dir: invalid type: integer `7`, expected a string",
            "wal[0].retention.expire_after_secs: invalid type: string \"30d\", expected an integer",
            "wal[0].retention.expire_in_flight_after_secs: invalid type: floating point `1.5`, expected an integer",
            "wal[1].retention: expected a table ([wal.retention]), got integer",
        ]
    );
}

#[test]
fn two_wals_of_one_file_name_may_not_share_an_archive_dir() {
    let wal = |name: &str, path: &str, tail: &str| {
        format!("[[wal]]\nname = \"{name}\"\npath = \"{path}\"\n{tail}")
    };
    let text = [
        wal(
            "a",
            "x/wal.log",
            "[wal.retention]\nexpire_after_secs = 1\narchive_dir = \"/arch\"\n",
        ),
        wal(
            "b",
            "y/wal.log",
            "[wal.retention]\nexpire_after_secs = 1\narchive_dir = \"/arch\"\n",
        ),
        // Its archives go to its backup directory, /arch: the same names again.
        wal(
            "c",
            "z/wal.log",
            "backup_dir = \"/arch\"\n[wal.retention]\nexpire_after_secs = 1\n",
        ),
        // Another file name, or no retention at all: no archive to share.
        wal(
            "d",
            "w/other.log",
            "[wal.retention]\nexpire_after_secs = 1\narchive_dir = \"/arch\"\n",
        ),
        wal("e", "v/wal.log", "backup_dir = \"/bk\"\n"),
    ]
    .concat();
    assert_eq!(
        keys(&text),
        [
            "wal[1].retention.archive_dir",
            "wal[2].retention.archive_dir"
        ]
    );
    assert!(
        errors(&text)[0]
            .message
            .starts_with("archives into /arch like wal[0], a WAL with the same file name"),
        "{:?}",
        errors(&text)
    );
}

#[test]
fn the_effective_policy_prints_retention_and_re_parses_equal() {
    for table in [
        "expire_after_secs = 86400\n",
        "expire_after_secs = 86400\nexpire_in_flight_after_secs = 3600\narchive_dir = \"/a\"\narchive_keep_days = 7\n",
        "expire_in_flight_after_secs = 60\n",
        "",
    ] {
        let policy = ok(&wal_with(table));
        let rendered = policy.to_toml();
        assert!(rendered.contains("[wal.retention]"), "{rendered}");
        assert!(rendered.contains("archive_keep_days = "), "{rendered}");
        let again =
            parse(&rendered, "rendered", &env()).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
        assert_eq!(again, policy, "{rendered}");
    }
    let rendered = ok(&wal_with("expire_after_secs = 86400\n")).to_toml();
    for key in [
        "expire_after_secs = 86400",
        "expire_in_flight_after_secs = 0",
        "archive_dir = \"\"",
        "archive_keep_days = 0",
    ] {
        assert!(rendered.contains(key), "{key} missing from:\n{rendered}");
    }
}
