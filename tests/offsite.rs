//! Off-host copies against a real S3 HTTP server (moto's, started per test on 127.0.0.1 by
//! `common/s3.rs`, signatures checked): a daemon run uploads the backup and the archive, byte
//! for byte; `restore WAL s3://...` round-trips; wrong credentials are a clear error and keep
//! the local files pending; a copy changed on the server is refused by `restore`; an upload
//! cut by the server stopping resumes after a daemon restart and completes once; no
//! credential appears in any log line, `status` or `offsite list` output, or state file.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use s3::{BUCKET, Run, S3, assert_no_secret, cli, key_of, object_bytes};
use s3::{offsite_failed, offsite_ok, sha256_hex, state_text};

const DAY: i64 = 86_400;

/// A WAL with `old` transactions 40 days old (retention expires them into an archive) and
/// `new` recent ones, each retried twice (compaction reclaims the retries).
fn history_wal(dir: &Path, old: u64, new: u64) -> PathBuf {
    let now = chrono::Utc::now().timestamp();
    let mut s = String::new();
    for i in 0..old {
        let ts = (now - 40 * DAY + i as i64).to_string();
        s += &stamped("PREPARE", &format!("old{i}"), &ts);
        s += &stamped("COMMIT", &format!("old{i}"), &ts);
    }
    for i in 0..new {
        let tx = format!("new{i:06}");
        for _ in 0..3 {
            s += &stamped("PREPARE", &tx, &now.to_string());
        }
        s += &stamped("COMMIT", &tx, &now.to_string());
    }
    write_wal(dir, "wal.log", &s)
}

/// The policy: one WAL compacted as soon as it is seen, retention on, copies to `s3`.
fn policy(dir: &Path, s3: &S3) {
    let text = test_policy(&wal_table(
        "orders",
        "wal.log",
        "max_size_mb = 0.01",
        &format!(
            "[wal.retention]\nexpire_after_secs = 604800\n\n[wal.offsite]\nurl = \"s3://{BUCKET}/{{host}}/{{wal}}/\"\nendpoint = \"{}\"\nallow_http = true\n",
            s3.endpoint()
        ),
    ));
    write_policy(dir, &text);
}

/// A server, a [`history_wal`] of `old` and `new` transactions under [`policy`], and one
/// daemon run over it, stopped once it has logged both copies (the backup and the archive).
struct Copied {
    s3: S3,
    dir: tempfile::TempDir,
    wal: PathBuf,
    daemon: Run,
    copies: Vec<serde_json::Value>,
}

fn copied(old: u64, new: u64) -> Copied {
    let s3 = S3::start(0);
    let dir = tempfile::tempdir().unwrap();
    let wal = history_wal(dir.path(), old, new);
    policy(dir.path(), &s3);
    let mut daemon = Run::start(dir.path(), &s3.env(), "daemon");
    let copies = daemon.wait_for(2, offsite_ok);
    daemon.stop();
    Copied {
        s3,
        dir,
        wal,
        daemon,
        copies,
    }
}

#[test]
fn a_daemon_run_uploads_the_backup_and_the_archive_and_restore_round_trips() {
    if !s3::available() {
        return;
    }
    let Copied {
        s3,
        dir: d,
        wal,
        daemon,
        copies,
    } = copied(300, 3000);
    let mut kinds: Vec<&str> = copies.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(kinds, ["archive", "backup"], "{}", daemon.text());
    let mut backup_url = String::new();
    for c in &copies {
        let local = Path::new(c["path"].as_str().unwrap());
        let url = c["url"].as_str().unwrap();
        assert_eq!(object_bytes(&s3, url), fs::read(local).unwrap(), "{url}");
        assert_eq!(c["sha256"].as_str().unwrap(), sha256_hex(local));
        assert!(url.ends_with(&format!(
            "/orders/{}",
            local.file_name().unwrap().to_string_lossy()
        )));
        if c["kind"] == "backup" {
            backup_url = url.to_string();
        }
    }

    // `offsite list`: both confirmed, both on the server with their digests.
    let out = cli(
        d.path(),
        &s3.env(),
        &[
            "offsite",
            "list",
            "wal.log",
            "--policy",
            "policy.toml",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = stdout_json(&out);
    let local = listing["local"].as_array().unwrap();
    assert_eq!(local.len(), 2, "{listing}");
    assert!(
        local.iter().all(|f| f["offsite"] == "confirmed"),
        "{listing}"
    );
    let remote = listing["remote"].as_array().unwrap();
    assert_eq!(remote.len(), 2, "{listing}");
    for r in remote {
        let twin = local
            .iter()
            .find(|f| f["url"] == r["url"])
            .expect("a local twin");
        assert_eq!(r["sha256"], twin["sha256"], "{listing}");
    }

    // Restore from the URL: the WAL becomes the backup's bytes again.
    let backup_bytes = object_bytes(&s3, &backup_url);
    append(&wal, &stamped("PREPARE", "later", "1"));
    let out = cli(
        d.path(),
        &s3.env(),
        &[
            "restore",
            "wal.log",
            &backup_url,
            "--policy",
            "policy.toml",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["restored_from"], backup_url.as_str());
    assert_eq!(fs::read(&wal).unwrap(), backup_bytes);
    assert!(
        names(d.path()).iter().all(|n| !n.contains("download")),
        "no download left: {:?}",
        names(d.path())
    );

    // An archive by its URL: `--print` writes exactly what the local archive holds.
    let archive = copies.iter().find(|c| c["kind"] == "archive").unwrap();
    let print = |from: &str| {
        let out = cli(
            d.path(),
            &s3.env(),
            &[
                "restore",
                "wal.log",
                "--from-archive",
                from,
                "--print",
                "--policy",
                "policy.toml",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let remote_lines = print(archive["url"].as_str().unwrap());
    assert!(!remote_lines.is_empty());
    assert_eq!(remote_lines, print(archive["path"].as_str().unwrap()));

    // status shows the target and nothing pending.
    let out = cli(
        d.path(),
        &s3.env(),
        &["status", "wal.log", "--policy", "policy.toml", "--json"],
    );
    let status = stdout_json(&out);
    let offsite = &status["policy"]["offsite"];
    assert!(
        offsite["target"]
            .as_str()
            .unwrap()
            .starts_with(&format!("s3://{BUCKET}/")),
        "{status}"
    );
    assert_eq!(offsite["pending"].as_array().unwrap().len(), 0, "{status}");

    for (what, text) in [
        ("the daemon's output", daemon.text()),
        (
            "status --json",
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        ("offsite list --json", listing.to_string()),
        ("the state files", state_text(d.path())),
    ] {
        assert_no_secret(&s3, &[], &text, what);
    }
}

#[test]
fn wrong_credentials_are_a_clear_error_and_keep_the_local_files_pending() {
    if !s3::available() {
        return;
    }
    let s3 = S3::start(0);
    let d = tempfile::tempdir().unwrap();
    history_wal(d.path(), 100, 500);
    policy(d.path(), &s3);
    let wrong_secret = "wrongSecretKeyForTheTest0123456789abcdefgh".to_string();
    let mut env = s3.env();
    env[1].1 = wrong_secret.clone();
    let mut daemon = Run::start(d.path(), &env, "daemon");
    let failures = daemon.wait_for(2, offsite_failed);
    daemon.stop();
    for f in &failures {
        let msg = f["message"].as_str().unwrap();
        assert!(
            msg.contains("403") && msg.contains("SignatureDoesNotMatch"),
            "{msg}"
        );
        assert!(msg.contains("the local file is kept"), "{msg}");
        assert!(Path::new(f["path"].as_str().unwrap()).exists(), "{f}");
    }

    let out = cli(
        d.path(),
        &env,
        &["status", "wal.log", "--policy", "policy.toml", "--json"],
    );
    let status = stdout_json(&out);
    let pending = status["policy"]["offsite"]["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 2, "{status}");
    assert!(
        pending
            .iter()
            .all(|p| p["attempts"] == 1 && p["last_error"].as_str().unwrap().contains("403")),
        "{status}"
    );
    let status_text = String::from_utf8_lossy(&out.stdout).into_owned();

    // `offsite push` says the same and exits 4; with the right key it empties the queue.
    let push = cli(
        d.path(),
        &env,
        &["offsite", "push", "wal.log", "--policy", "policy.toml"],
    );
    assert_eq!(push.status.code(), Some(4));
    let push_text = String::from_utf8_lossy(&push.stdout).into_owned();
    assert!(
        push_text.contains("FAILED") && push_text.contains("SignatureDoesNotMatch"),
        "{push_text}"
    );
    let fixed = cli(
        d.path(),
        &s3.env(),
        &[
            "offsite",
            "push",
            "wal.log",
            "--policy",
            "policy.toml",
            "--json",
        ],
    );
    assert!(
        fixed.status.success(),
        "{}",
        String::from_utf8_lossy(&fixed.stdout)
    );
    assert_eq!(stdout_json(&fixed)["pending"], 0);

    for (what, text) in [
        ("the daemon's output", daemon.text()),
        ("status --json", status_text),
        ("offsite push", push_text),
        ("the state files", state_text(d.path())),
    ] {
        assert_no_secret(&s3, &[&wrong_secret], &text, what);
    }
}

#[test]
fn restore_refuses_an_object_whose_bytes_changed_on_the_server() {
    if !s3::available() {
        return;
    }
    let Copied {
        s3,
        dir: d,
        wal,
        copies,
        ..
    } = copied(100, 500);
    let backup = copies.iter().find(|c| c["kind"] == "backup").unwrap();
    let url = backup["url"].as_str().unwrap();

    // Same size, same sha256 metadata, one byte different: only the digest can tell.
    let mut bytes = object_bytes(&s3, url);
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'7' { b'8' } else { b'7' };
    let store = s3.client();
    let mut attributes = object_store::Attributes::new();
    attributes.insert(
        object_store::Attribute::Metadata("sha256".into()),
        backup["sha256"].as_str().unwrap().to_string().into(),
    );
    let opts = object_store::PutOptions {
        attributes,
        ..Default::default()
    };
    let key = object_store::path::Path::from(key_of(url));
    s3::block_on(store.put_opts(&key, bytes.into(), opts)).unwrap();

    let before = fs::read(&wal).unwrap();
    let out = cli(
        d.path(),
        &s3.env(),
        &["restore", "wal.log", url, "--policy", "policy.toml"],
    );
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("digest mismatch") && err.contains("refusing"),
        "{err}"
    );
    assert_eq!(fs::read(&wal).unwrap(), before, "the WAL is untouched");
    assert!(names(d.path()).iter().all(|n| !n.contains("download")));
}

#[test]
fn check_policy_names_a_bad_offsite_url_and_a_plain_http_endpoint() {
    let d = tempfile::tempdir().unwrap();
    let text = test_policy(&wal_table(
        "orders",
        "wal.log",
        "",
        "[wal.offsite]\nurl = \"s3://key:secret@bucket/{host}/\"\nendpoint = \"http://127.0.0.1:9000\"\n",
    ));
    write_policy(d.path(), &text);
    let out = walcompactd()
        .current_dir(d.path())
        .args(["check-policy", "policy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wal[0].offsite.url") && err.contains("credentials do not belong"),
        "{err}"
    );
    assert!(
        err.contains("wal[0].offsite.endpoint") && err.contains("allow_http"),
        "{err}"
    );
}

/// The server stops between two parts of a multipart upload (a fail point pauses there),
/// the daemon records the failure and is stopped; a new (empty: moto keeps nothing) server
/// starts on the same port and the daemon restarts: the pending upload runs again from the
/// start and completes exactly once.
#[cfg(feature = "failpoints")]
#[test]
fn an_upload_cut_by_the_server_stopping_resumes_after_a_daemon_restart() {
    if !s3::available() {
        return;
    }
    let mut s3 = S3::start(0);
    let d = tempfile::tempdir().unwrap();
    history_wal(d.path(), 10, 12_000);
    policy(d.path(), &s3);
    let slow: Vec<(String, String)> = s3
        .env()
        .into_iter()
        .chain([
            (
                "WALCOMPACTD_OFFSITE_PART_BYTES".into(),
                (1usize << 20).to_string(),
            ),
            (
                "FAILPOINTS".into(),
                "offsite::upload::between_parts=sleep(2000)".into(),
            ),
        ])
        .collect();
    let mut first = Run::start(d.path(), &slow, "first");
    let run = first
        .wait_for(1, |v| is_run(v, "orders", "success"))
        .remove(0);
    let backup = PathBuf::from(run["backup"].as_str().unwrap());
    assert!(
        fs::metadata(&backup).unwrap().len() > 3 << 20,
        "several parts"
    );
    // Hashing and the first part take well under a second; then the upload sleeps 2 s
    // after each part: the server stops during one of those pauses.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    s3.stop();
    let failed = first.wait_for(1, |v| offsite_failed(v) && v["kind"] == "backup");
    first.stop();
    assert!(
        first
            .logs()
            .iter()
            .all(|v| !(offsite_ok(v) && v["kind"] == "backup")),
        "the backup's upload did not complete before the server stopped:\n{}",
        first.text()
    );
    assert!(failed[0]["path"] == run["backup"]);
    let why = failed[0]["message"].as_str().unwrap();
    assert!(
        why.contains("upload part") || why.contains("multipart"),
        "cut mid-upload: {why}"
    );

    let s3 = S3::start(s3.port);
    let fast: Vec<(String, String)> = s3
        .env()
        .into_iter()
        .chain([(
            "WALCOMPACTD_OFFSITE_PART_BYTES".into(),
            (1usize << 20).to_string(),
        )])
        .collect();
    let mut second = Run::start(d.path(), &fast, "second");
    let done = second
        .wait_for(1, |v| offsite_ok(v) && v["kind"] == "backup")
        .remove(0);
    // Let it settle, then count: exactly one confirmed copy of the backup, no second run.
    std::thread::sleep(std::time::Duration::from_secs(2));
    second.stop();
    let copies = second
        .logs()
        .into_iter()
        .filter(|v| offsite_ok(v) && v["path"] == run["backup"])
        .count();
    assert_eq!(copies, 1, "{}", second.text());
    assert!(done["parts"].as_u64().unwrap() >= 3, "{done}");
    assert_eq!(
        object_bytes(&s3, done["url"].as_str().unwrap()),
        fs::read(&backup).unwrap()
    );
    assert!(
        second.logs().iter().all(|v| v["event"] != "run"),
        "no new compaction"
    );
    let queue: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(d.path().join("state/orders.offsite.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(queue["pending"].as_array().unwrap().len(), 0, "{queue}");
}

/// The server is down (nothing listens on the endpoint): compaction goes on, each failure
/// costs a log line and a retry, and a backup still waiting for its copy is never pruned,
/// even when `keep_last = 1` and `keep_days = 0` would prune it.
#[test]
fn a_server_that_is_down_costs_a_retry_and_pending_backups_are_not_pruned() {
    let d = tempfile::tempdir().unwrap();
    let wal = history_wal(d.path(), 10, 800);
    let closed = free_port();
    let text = test_policy(&wal_table(
        "orders",
        "wal.log",
        "max_size_mb = 0.01",
        &format!(
            "[wal.backups]\nkeep_days = 0\nkeep_last = 1\n\n[wal.offsite]\nurl = \"s3://{BUCKET}/{{wal}}/\"\nendpoint = \"http://{closed}\"\nallow_http = true\n"
        ),
    )) + "[[alert]]\nname = \"Offsite Behind\"\nmetric = \"offsite_pending_seconds\"\nabove = 0\n";
    write_policy(d.path(), &text);
    let env = vec![
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            "AKIAEXAMPLEKEYID0000".to_string(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "exampleSecretKeyThatMustNotLeak000000000".to_string(),
        ),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
    ];
    let mut daemon = Run::start(d.path(), &env, "daemon");
    let first = daemon
        .wait_for(1, |v| is_run(v, "orders", "success"))
        .remove(0);
    daemon.wait_for(1, |v| offsite_failed(v) && v["path"] == first["backup"]);
    // The alert metric counts how long the oldest file has waited.
    daemon.wait_for(1, |v| {
        v["event"] == "alert" && v["alert"] == "Offsite Behind" && v["state"] == "firing"
    });
    // A second run's housekeeping would prune the first backup, were it not pending.
    let now = chrono::Utc::now().timestamp().to_string();
    let mut more = String::new();
    for i in 0..800 {
        for _ in 0..3 {
            more += &stamped("PREPARE", &format!("more{i:05}"), &now);
        }
        more += &stamped("COMMIT", &format!("more{i:05}"), &now);
    }
    append(&wal, &more);
    let second = daemon
        .wait_for(2, |v| is_run(v, "orders", "success"))
        .remove(1);
    daemon.wait_for(1, |v| offsite_failed(v) && v["path"] == second["backup"]);
    daemon.stop();
    let text = daemon.text();
    for run in [&first, &second] {
        let b = run["backup"].as_str().unwrap();
        assert!(
            Path::new(b).exists(),
            "{b} was pruned while pending:\n{text}"
        );
    }
    // `prune-backups` keeps them too; without the policy it would prune the older one.
    let out = cli(
        d.path(),
        &env,
        &[
            "prune-backups",
            "wal.log",
            "--keep-days",
            "0",
            "--keep-last",
            "1",
            "--policy",
            "policy.toml",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["removed"].as_array().unwrap().len(), 0);
    let failed = daemon.logs().into_iter().find(offsite_failed).unwrap();
    assert_eq!(failed["retry_in_secs"], 30, "{failed}");
    assert!(
        !text.contains("AKIAEXAMPLEKEYID0000") && !text.contains("exampleSecretKeyThatMustNotLeak")
    );
}

/// Old copies on the server are pruned by `keep_days`/`keep_last` and `archive_keep_days`
/// like local files; `delete_local_after_upload` removes a confirmed archive locally but
/// keeps the newest backup.
#[test]
fn remote_copies_are_pruned_by_age_and_confirmed_local_files_removed() {
    if !s3::available() {
        return;
    }
    use object_store::ObjectStoreExt;
    let s3 = S3::start(0);
    let d = tempfile::tempdir().unwrap();
    history_wal(d.path(), 100, 500);
    let text = test_policy(&wal_table(
        "orders",
        "wal.log",
        "max_size_mb = 0.01",
        &format!(
            "[wal.backups]\nkeep_days = 7\nkeep_last = 1\n\n[wal.retention]\nexpire_after_secs = 604800\narchive_keep_days = 30\n\n[wal.offsite]\nurl = \"s3://{BUCKET}/{{wal}}/\"\nendpoint = \"{}\"\nallow_http = true\ndelete_local_after_upload = true\n",
            s3.endpoint()
        ),
    ));
    write_policy(d.path(), &text);
    let store = s3.client();
    let old = [
        "orders/wal_backup_20200101_000000.log",
        "orders/wal_archive_20200101_000000.log.zst",
    ];
    for key in old {
        s3::block_on(store.put(&object_store::path::Path::from(key), b"old".to_vec().into()))
            .unwrap();
    }
    let mut daemon = Run::start(d.path(), &s3.env(), "daemon");
    let copies = daemon.wait_for(2, offsite_ok);
    daemon.wait_for(1, |v| {
        v["event"] == "offsite" && v["message"].as_str().unwrap_or("").contains("pruned")
    });
    daemon.stop();
    let listed: Vec<String> = s3::block_on(async {
        use futures_util::StreamExt;
        store
            .list(None)
            .map(|m| m.unwrap().location.to_string())
            .collect::<Vec<_>>()
            .await
    });
    for key in old {
        assert!(
            !listed.contains(&key.to_string()),
            "{key} not pruned: {listed:?}"
        );
    }
    assert_eq!(listed.len(), 2, "{listed:?}");
    for c in &copies {
        let local = Path::new(c["path"].as_str().unwrap());
        match c["kind"].as_str().unwrap() {
            "archive" => assert!(!local.exists(), "the confirmed archive is removed locally"),
            _ => assert!(local.exists(), "the newest backup stays"),
        }
    }
}
