//! What the daemon exposes to other users and other hosts, through the real binary: the
//! state directory it creates (0700) or finds open to others (named in a WARN, left alone),
//! a metrics listener beyond loopback (a WARN at start and on a reload that changes to one),
//! and what a scrape and the node_exporter textfile carry after a real compaction: no
//! transaction id, no payload, no WAL path — only names, labels and figures.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use prometheus_parse::Value as PValue;
use serde_json::Value;

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

/// A `[daemon]` section with state in `dir/state`, the given listener and textfile, and the
/// WAL `w1` at `wal.log`, compacted as soon as anything is reclaimable; `extra` follows.
fn policy(listen: &str, textfile: Option<&Path>, extra: &str) -> String {
    let textfile = textfile
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!(
        "[daemon]\nstate_dir = \"state\"\nlog_level = \"info\"\nmetrics_listen = \"{listen}\"\nmetrics_textfile = \"{textfile}\"\n\n{}\n{extra}",
        wal_table(
            "w1",
            "wal.log",
            "min_reclaimable_bytes = 1\nmax_size_mb = 0.001",
            ""
        )
    )
}

#[test]
fn the_state_dir_is_created_private_and_an_open_one_is_named_and_left_alone() {
    let d = tempfile::tempdir().unwrap();
    write_wal(d.path(), "wal.log", &clean_wal("a", 3));
    write_policy(d.path(), &test_policy(&wal_table("w1", "wal.log", "", "")));
    let state = d.path().join("state");
    let state_warning = |v: &Value| v["event"] == "state" && v["level"] == "WARN";
    {
        let daemon = Daemon::start(d.path(), "policy.toml");
        let created = daemon.wait_for_log(|v| {
            v["event"] == "state" && message(v).contains("created the state directory")
        });
        assert_eq!(created["mode"], "0700", "{created}");
        assert_eq!(mode_of(&state), 0o700);
        assert_eq!(daemon.count(state_warning), 0, "{}", daemon.dump());
    }

    // Opened up by someone: the next start says so, naming it and its mode, and changes nothing.
    fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
    let daemon = Daemon::start(d.path(), "policy.toml");
    let warned = daemon.wait_for_log(state_warning);
    let named = warned["state_dir"].as_str().unwrap();
    assert!(named.ends_with("/state"), "{warned}");
    assert_eq!(warned["mode"], "0777", "{warned}");
    let text = message(&warned);
    assert!(
        text.contains(named) && text.contains("0777") && text.contains("writable by every user"),
        "{warned}"
    );
    assert_eq!(
        mode_of(&state),
        0o777,
        "an existing directory is not chmod-ed"
    );
}

/// The WARN a metrics listener beyond loopback gets.
fn exposure_warning(v: &Value) -> bool {
    v["event"] == "metrics"
        && v["level"] == "WARN"
        && message(v).contains("is not a loopback address")
}

#[test]
fn a_metrics_listener_beyond_loopback_is_warned_at_start_and_on_reload() {
    let d = tempfile::tempdir().unwrap();
    write_wal(d.path(), "wal.log", &clean_wal("a", 3));
    let local = free_port();
    write_policy(d.path(), &policy(&local.to_string(), None, ""));
    let wide = format!("0.0.0.0:{}", free_port().port());
    {
        let daemon = Daemon::start(d.path(), "policy.toml");
        daemon.wait_for_log(|v| v["event"] == "metrics" && message(v).contains("started"));
        assert_eq!(daemon.count(exposure_warning), 0, "{}", daemon.dump());

        // Changed to every interface on reload: warned now, effective after a restart.
        write_policy(d.path(), &policy(&wide, None, ""));
        let warned = daemon.wait_for_log(exposure_warning);
        assert_eq!(warned["listen"], wide.as_str(), "{warned}");
        assert!(message(&warned).contains("next restart"), "{warned}");
        assert_eq!(daemon.count(exposure_warning), 1, "{}", daemon.dump());
    }

    // Started on every interface: warned at start, and it does serve (here through loopback).
    let daemon = Daemon::start(d.path(), "policy.toml");
    let warned = daemon.wait_for_log(exposure_warning);
    assert_eq!(warned["listen"], wide.as_str(), "{warned}");
    assert!(!message(&warned).contains("restart"), "{warned}");
    let port = wide.rsplit(':').next().unwrap();
    let via_loopback: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_until(DEADLINE, || scrape_text(via_loopback).is_some()),
        "no answer on {via_loopback}"
    );
}

/// A WAL whose every transaction id, payload and reason is marked `SECRET`: retried
/// transactions (reclaimable), an abort, a corrupt line, one in flight and a torn tail.
fn secret_wal() -> String {
    let prepare = |tx: &str, payload: &str| {
        format!(
            "{{\"op\": \"PREPARE\", \"tx_id\": \"{tx}\", \"data\": {{\"card\": \"{payload}\"}}, \"timestamp\": 1732780000.5}}\n"
        )
    };
    let mut s = String::new();
    for i in 0..20 {
        let tx = format!("SECRET-TX-{i:04}");
        for r in 0..3 {
            s += &prepare(&tx, &format!("SECRET-PAYLOAD-{i:04}-{r}"));
        }
        s += &format!("{{\"op\": \"COMMIT\", \"tx_id\": \"{tx}\", \"timestamp\": 1732780001.5}}\n");
    }
    s += &prepare("SECRET-TX-ABORTED", "SECRET-PAYLOAD-ABORTED");
    s += "{\"op\": \"ABORT\", \"tx_id\": \"SECRET-TX-ABORTED\", \"reason\": \"SECRET-PAYLOAD-REASON\"}\n";
    s += "{\"op\": \"PREPARE\", \"tx_id\": \"SECRET-TX-CORRUPT\", \"data\": \"SECRET-PAYLOAD-CORRUPT\"\n";
    s += &prepare("SECRET-TX-INFLIGHT", "SECRET-PAYLOAD-INFLIGHT");
    s + "{\"op\": \"COMMIT\", \"tx_id\": \"SECRET-TX-TORN"
}

/// Whether exposition `text` counts one successful run of `w1` and one corrupt line in it.
fn after_the_run(text: &str) -> bool {
    let s = parse_scrape(text);
    let one = |metric: &str, label: Option<(&str, &str)>| {
        s.samples.iter().any(|x| {
            x.metric == metric
                && x.labels.get("wal") == Some("w1")
                && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v))
                && matches!(x.value, PValue::Gauge(v) | PValue::Counter(v) | PValue::Untyped(v) if v == 1.0)
        })
    };
    one(
        "walcompactd_compaction_runs_total",
        Some(("outcome", "success")),
    ) && one("walcompactd_wal_corrupt_lines", None)
}

#[test]
fn metrics_carry_no_transaction_id_payload_or_path() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &secret_wal());
    let addr = free_port();
    let textfile = d.path().join("walcompactd.prom");
    let alert = "[[alert]]\nname = \"Corrupt Lines\"\nmetric = \"wal_corrupt_lines\"\nabove = 0\n";
    write_policy(d.path(), &policy(&addr.to_string(), Some(&textfile), alert));
    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.wait_for_log(|v| is_run(v, "w1", "success"));
    let text = fs::read_to_string(&wal).unwrap();
    assert!(
        text.contains("SECRET-TX-0000") && text.contains("SECRET-PAYLOAD-0000-2"),
        "the compacted WAL still holds the secrets the metrics must not"
    );

    let mut scraped = String::new();
    let ok = wait_until(DEADLINE, || {
        scraped = scrape_text(addr).unwrap_or_default();
        after_the_run(&scraped)
    });
    assert!(ok, "scrape after the run:\n{scraped}");
    let mut written = String::new();
    let ok = wait_until(DEADLINE, || {
        written = fs::read_to_string(&textfile).unwrap_or_default();
        after_the_run(&written)
    });
    assert!(ok, "textfile after the run:\n{written}");

    let dir = d.path().display().to_string();
    for (what, body) in [("scrape", &scraped), ("textfile", &written)] {
        assert!(
            body.contains("wal=\"w1\""),
            "{what}: the WAL's name is its label"
        );
        assert!(body.contains("alert=\"Corrupt Lines\""), "{what}");
        for needle in ["SECRET", "tx_", dir.as_str(), "wal.log"] {
            assert!(!body.contains(needle), "{what} carries {needle:?}:\n{body}");
        }
    }
}

/// The modes of the files the daemon writes by `atomic_write`: the state file 0600, the
/// textfile 0644 (node_exporter reads it as another user), under the unit's `UMask=0027`
/// (so a mode given to `open` alone would come out 0640: it must survive the umask).
#[test]
fn the_state_file_is_0600_and_the_textfile_0644_whatever_the_umask() {
    // The whole test process gets the unit's umask; the daemon inherits it. Harmless to the
    // other tests here (they only read what they write, as the same user).
    unsafe { libc::umask(0o027) };
    let d = tempfile::tempdir().unwrap();
    write_wal(d.path(), "wal.log", &secret_wal());
    let textfile = d.path().join("walcompactd.prom");
    write_policy(d.path(), &policy("", Some(&textfile), ""));
    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.wait_for_log(|v| is_run(v, "w1", "success"));
    let state_file = d.path().join("state/w1.json");
    assert!(
        wait_until(DEADLINE, || state_file.exists() && textfile.exists()),
        "{}",
        daemon.dump()
    );
    let octal = |p: &Path| format!("{:04o}", mode_of(p));
    assert_eq!(octal(&state_file), "0600", "state file");
    assert_eq!(octal(&textfile), "0644", "textfile");
}
