//! Metrics, alerts and `status --policy` end to end, through the real binary: one daemon per
//! test (the metrics recorder is process-global in the daemon), a real HTTP scrape parsed with
//! prometheus-parse, the node_exporter textfile, alert actions, and the CLI's policy report.
//! Never asserts on speed: everything polls with generous deadlines.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use prometheus_parse::{Scrape, Value as PValue};
use serde_json::Value;

/// One GET of `/metrics`; `None` while the listener does not answer yet.
fn try_scrape(addr: SocketAddr) -> Option<Scrape> {
    Some(parse_scrape(&scrape_text(addr)?))
}

/// The scalar value of the one sample named `metric` carrying all of `labels`.
fn value(s: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .collect();
    match found.as_slice() {
        [one] => match &one.value {
            PValue::Gauge(v) | PValue::Counter(v) | PValue::Untyped(v) => Some(*v),
            PValue::Histogram(b) => b.iter().map(|b| b.count).reduce(f64::max),
            other => panic!("{metric}: unexpected {other:?}"),
        },
        [] => None,
        many => panic!("{metric} {labels:?}: several samples {many:?}"),
    }
}

/// Polls the scrape until `cond` holds; panics with the last scrape otherwise.
fn wait_scrape(addr: SocketAddr, what: &str, mut cond: impl FnMut(&Scrape) -> bool) -> Scrape {
    let mut last = None;
    let ok = wait_until(DEADLINE, || {
        last = try_scrape(addr);
        last.as_ref().is_some_and(&mut cond)
    });
    assert!(ok, "{what}: last scrape {:?}", last.map(|s| s.samples));
    last.unwrap()
}

/// `walcompactd status --json WAL [--policy P]` run in `dir`.
fn status_json(dir: &Path, wal: &str, policy: Option<&str>) -> Value {
    let mut c = walcompactd();
    c.current_dir(dir).args(["status", "--json", wal]);
    if let Some(p) = policy {
        c.args(["--policy", p]);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The WAL figures the metrics carry, as `status --json` reports them, by (metric, labels).
/// A metric name, its labels besides `wal`, and the value `status` reports for it.
type Expected = (&'static str, Vec<(&'static str, &'static str)>, f64);

fn expected(st: &Value) -> Vec<Expected> {
    let n = |v: &Value| v.as_f64().unwrap();
    let mut v = vec![
        ("walcompactd_wal_size_bytes", vec![], n(&st["size_bytes"])),
        (
            "walcompactd_wal_reclaimable_bytes",
            vec![],
            n(&st["reclaimable_bytes"]),
        ),
        (
            "walcompactd_wal_reclaimable_ratio",
            vec![],
            n(&st["reclaimable_ratio"]),
        ),
        (
            "walcompactd_wal_torn_tail_bytes",
            vec![],
            n(&st["torn_tail_bytes"]),
        ),
    ];
    for op in ["PREPARE", "COMMIT", "ABORT"] {
        v.push((
            "walcompactd_wal_entries",
            vec![("op", op)],
            n(&st["entries"][op]),
        ));
    }
    for state in ["committed", "aborted", "in_flight"] {
        v.push((
            "walcompactd_wal_transactions",
            vec![("state", state)],
            n(&st["transactions"][state]),
        ));
    }
    v
}

/// Whether every WAL figure of `st` is in the scrape for `wal`; the mismatches otherwise.
fn mismatches(s: &Scrape, wal: &str, st: &Value) -> Vec<String> {
    expected(st)
        .into_iter()
        .filter_map(|(metric, mut labels, want)| {
            labels.push(("wal", wal));
            let got = value(s, metric, &labels);
            let same = got.is_some_and(|g| (g - want).abs() < 1e-9);
            (!same).then(|| format!("{metric}{labels:?}: scrape {got:?}, status {want}"))
        })
        .collect()
}

fn daemon_section(addr: SocketAddr, textfile: &Path) -> String {
    format!(
        "[daemon]\nstate_dir = \"state\"\nlog_level = \"info\"\nmetrics_listen = \"{addr}\"\nmetrics_textfile = \"{}\"\n\n",
        textfile.display()
    )
}

/// The `[[wal]]` table of the WAL `w1` at `wal.log`: anything reclaimable, plus `triggers`.
fn w1_table(triggers: &str) -> String {
    wal_table(
        "w1",
        "wal.log",
        &format!("min_reclaimable_bytes = 1\n{triggers}"),
        "",
    )
}

/// `n` transactions of `prefix`, each prepared `retries` times before its commit: all but
/// the last PREPARE of each are reclaimable.
fn retried(prefix: &str, n: u64, retries: u64) -> String {
    let mut s = String::new();
    for i in 0..n {
        let tx = format!("{prefix}_{i:03}");
        for r in 0..retries {
            s += &prepare(&tx, r);
        }
        s += &commit(&tx);
    }
    s
}

#[test]
fn scrape_and_textfile_match_status_and_a_compaction_is_counted() {
    let d = tempfile::tempdir().unwrap();
    write_wal(d.path(), "wal.log", &redundant_wal(500));
    let addr = free_port();
    let textfile = d.path().join("walcompactd.prom");
    let head = daemon_section(addr, &textfile);
    write_policy(d.path(), &(head.clone() + &w1_table("max_size_mb = 1000")));
    let daemon = Daemon::start(d.path(), "policy.toml");

    let st = status_json(d.path(), "wal.log", None);
    assert!(st["torn_tail_bytes"].as_u64().unwrap() > 0);
    assert!(st["reclaimable_bytes"].as_u64().unwrap() > 0);
    let s = wait_scrape(addr, "figures equal status", |s| {
        mismatches(s, "w1", &st).is_empty()
    });
    let w = ("wal", "w1");
    let ratio = value(&s, "walcompactd_disk_free_ratio", &[w]).unwrap();
    assert!(ratio > 0.0 && ratio <= 1.0, "{ratio}");
    assert_eq!(
        value(&s, "walcompactd_compaction_in_progress", &[w]),
        Some(0.0)
    );
    assert_eq!(
        value(&s, "walcompactd_consecutive_failures", &[w]),
        Some(0.0)
    );
    assert_eq!(value(&s, "walcompactd_backups", &[w]), Some(0.0));
    assert_eq!(
        value(
            &s,
            "walcompactd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "walcompactd_compaction_runs_total",
            &[w, ("outcome", "success")]
        ),
        Some(0.0)
    );

    // The textfile carries the same figures.
    let mut bad = Vec::new();
    let ok = wait_until(DEADLINE, || {
        let Ok(text) = fs::read_to_string(&textfile) else {
            return false;
        };
        bad = mismatches(&parse_scrape(&text), "w1", &st);
        bad.is_empty()
    });
    assert!(ok, "textfile: {bad:?}");

    // Lower the threshold: the reload is counted and the compaction runs.
    write_policy(d.path(), &(head + &w1_table("max_size_mb = 0.001")));
    daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "success");
    let after = status_json(d.path(), "wal.log", None);
    assert_eq!(after["reclaimable_bytes"], 0);
    let s = wait_scrape(addr, "after the compaction", |s| {
        value(
            s,
            "walcompactd_compaction_runs_total",
            &[w, ("outcome", "success")],
        ) == Some(1.0)
            && value(s, "walcompactd_backups", &[w]).is_some_and(|b| b >= 1.0)
            && mismatches(s, "w1", &after).is_empty()
    });
    assert_eq!(
        value(&s, "walcompactd_compaction_duration_seconds", &[w]),
        Some(1.0),
        "histogram count"
    );
    assert!(value(&s, "walcompactd_last_success_timestamp_seconds", &[w]).unwrap() > 0.0);
    assert!(value(&s, "walcompactd_backup_bytes", &[w]).unwrap() > 0.0);
    assert!(
        value(&s, "walcompactd_compaction_reclaimed_bytes_total", &[w]).unwrap()
            == st["reclaimable_bytes"].as_f64().unwrap()
    );
    assert_eq!(
        value(&s, "walcompactd_policy_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    let ok = wait_until(DEADLINE, || {
        fs::read_to_string(&textfile).is_ok_and(|t| {
            let t = parse_scrape(&t);
            mismatches(&t, "w1", &after).is_empty()
                && value(
                    &t,
                    "walcompactd_compaction_runs_total",
                    &[w, ("outcome", "success")],
                ) == Some(1.0)
        })
    });
    assert!(ok, "textfile after the compaction");
}

#[test]
fn alerts_fire_once_run_their_actions_and_resolve() {
    let d = tempfile::tempdir().unwrap();
    let wal = write_wal(d.path(), "wal.log", &clean_wal("a", 5));
    let s0 = fs::metadata(&wal).unwrap().len() as usize;
    let (b, c, dd) = (retried("b", 3, 10), retried("c", 1, 2), retried("d", 3, 10));
    let size_limit = s0 + b.len() / 2;
    let reclaim_limit = b.len() + c.len() + dd.len() / 2;
    let out = d.path().join("alerts.out");
    let addr = free_port();
    let textfile = d.path().join("walcompactd.prom");
    let cmd = format!(
        "printf '%s %s %s\\n' \"$ALERT_NAME\" \"$ALERT_SEVERITY\" \"$WAL_NAME\" >> '{}'",
        out.display()
    );
    let alerts = format!(
        "[[alert]]\nname = \"Size High\"\nmetric = \"wal_size_bytes\"\nabove = {size_limit}\nseverity = \"critical\"\nactions = [\"log\", \"command\"]\ncommand = [\"sh\", \"-c\", {cmd:?}]\n\n\
         [[alert]]\nname = \"Reclaim\"\nmetric = \"wal_reclaimable_bytes\"\nabove = {reclaim_limit}\nactions = [\"compact\"]\n"
    );
    let policy = daemon_section(addr, &textfile) + &w1_table("") + "\n" + &alerts;
    write_policy(d.path(), &policy);
    let daemon = Daemon::start(d.path(), "policy.toml");
    let active = |s: &Scrape, alert: &str| {
        value(
            s,
            "walcompactd_alert_active",
            &[("wal", "w1"), ("alert", alert)],
        )
    };
    wait_scrape(addr, "alerts inactive", |s| {
        active(s, "Size High") == Some(0.0) && active(s, "Reclaim") == Some(0.0)
    });

    let fired =
        |v: &Value| v["event"] == "alert" && v["alert"] == "Size High" && v["state"] == "firing";
    let resolved =
        |v: &Value| v["event"] == "alert" && v["alert"] == "Size High" && v["state"] == "resolved";
    append(&wal, &b);
    let line = daemon.wait_for_log(fired);
    assert_eq!(line["wal"], "w1");
    assert_eq!(line["severity"], "critical");
    assert_eq!(line["level"], "ERROR", "{line}");
    assert!(wait_until(DEADLINE, || fs::read_to_string(&out)
        .is_ok_and(|t| t == "Size High critical w1\n")));
    wait_scrape(addr, "Size High active", |s| {
        active(s, "Size High") == Some(1.0)
    });

    // More appends while it holds: no second firing, no second command.
    append(&wal, &c);
    let grown = fs::metadata(&wal).unwrap().len();
    wait_scrape(addr, "the append is seen", |s| {
        value(s, "walcompactd_wal_size_bytes", &[("wal", "w1")]) == Some(grown as f64)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.count(fired), 1, "{}", daemon.dump());
    assert_eq!(fs::read_to_string(&out).unwrap(), "Size High critical w1\n");
    assert_eq!(
        daemon.count(|v| v["event"] == "run"),
        0,
        "{}",
        daemon.dump()
    );

    // Enough reclaimable: the compact action runs a real compaction, which resolves both.
    append(&wal, &dd);
    let run = daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "success");
    assert_eq!(run["trigger"], "alert:Reclaim", "{run}");
    daemon.wait_for_log(resolved);
    assert!((fs::metadata(&wal).unwrap().len() as usize) < size_limit);
    wait_scrape(addr, "alerts resolved", |s| {
        active(s, "Size High") == Some(0.0) && active(s, "Reclaim") == Some(0.0)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.count(fired), 1, "{}", daemon.dump());
    assert_eq!(daemon.count(resolved), 1, "{}", daemon.dump());
    assert_eq!(
        daemon.count(|v| v["event"] == "run"),
        1,
        "{}",
        daemon.dump()
    );
    assert_eq!(fs::read_to_string(&out).unwrap(), "Size High critical w1\n");

    // Reload without the rules: nothing stays active.
    write_policy(d.path(), &(daemon_section(addr, &textfile) + &w1_table("")));
    daemon.wait_for_log(|v| {
        v["event"] == "policy" && v["message"].as_str().unwrap().contains("reloaded")
    });
}

#[test]
fn status_with_policy_shows_state_backups_decision_and_alerts() {
    let d = tempfile::tempdir().unwrap();
    let text = redundant_wal(300);
    let text = &text[..text.rfind('\n').unwrap() + 1]; // no torn tail: we append below
    let wal = write_wal(d.path(), "wal.log", text);
    write_wal(d.path(), "other.log", &clean_wal("o", 3));
    let alerts = "[[alert]]\nname = \"Big\"\nmetric = \"wal_size_bytes\"\nabove = 100\n\n\
                  [[alert]]\nname = \"Big For A While\"\nmetric = \"wal_size_bytes\"\nabove = 100\nfor_secs = 60\n\n\
                  [[alert]]\nname = \"Failing\"\nmetric = \"consecutive_failures\"\nabove = 0\n";
    let policy = test_policy(
        &w1_table("max_size_mb = 0.001")
            .replace("min_interval_secs = 0", "min_interval_secs = 3600"),
    ) + "\n"
        + alerts;
    write_policy(d.path(), &policy);

    let before = status_json(d.path(), "wal.log", Some("policy.toml"));
    let p = &before["policy"];
    assert_eq!(p["name"], "w1");
    assert_eq!(p["state_file_status"], "fresh");
    assert_eq!(p["decision"]["verdict"], "compact", "{p}");
    assert_eq!(p["decision"]["would_compact"], true);
    assert!(
        p["decision"]["triggers"][0]
            .as_str()
            .unwrap()
            .starts_with("size "),
        "{p}"
    );
    assert_eq!(p["backups"]["count"], 0);
    let free = p["disk_free_ratio"].as_f64().unwrap();
    assert!(free > 0.0 && free <= 1.0);
    assert_eq!(p["commits_since_compaction"], before["entries"]["COMMIT"]);
    let alert = |p: &Value, name: &str| {
        p["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(alert(p, "Big")["would_fire"], true);
    assert_eq!(
        alert(p, "Big")["value"].as_f64(),
        before["size_bytes"].as_f64()
    );
    assert_eq!(alert(p, "Big For A While")["condition_holds"], true);
    assert_eq!(alert(p, "Big For A While")["would_fire"], false);
    assert_eq!(alert(p, "Failing")["condition_holds"], false);

    let daemon = Daemon::start(d.path(), "policy.toml");
    daemon.wait_for_log(|v| v["event"] == "run" && v["outcome"] == "success");
    // Something reclaimable again: the size trigger holds, the cooldown blocks it.
    append(&wal, &retried("z", 3, 5));
    // The state file is saved just after the run's log line: poll for it.
    let mut after = Value::Null;
    wait_until(DEADLINE, || {
        after = status_json(d.path(), "wal.log", Some("policy.toml"));
        after["policy"]["state"]["last_outcome"] == "success"
    });
    let p = &after["policy"];
    assert_eq!(p["state_file_status"], "found");
    assert_eq!(p["state"]["last_outcome"], "success");
    assert_eq!(p["state"]["consecutive_failures"], 0);
    assert!(p["state"]["last_success"].is_string());
    assert!(p["last_success_timestamp_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(p["commits_since_compaction"], 3);
    assert!(p["backups"]["count"].as_u64().unwrap() >= 1);
    assert!(p["backups"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(p["decision"]["verdict"], "cooldown", "{p}");
    assert_eq!(p["decision"]["would_compact"], false);
    assert!(p["decision"]["until"].is_string());
    assert!(
        p["decision"]["explanation"]
            .as_str()
            .unwrap()
            .contains("cooldown")
    );

    // Human output too.
    let out = walcompactd()
        .current_dir(d.path())
        .args(["status", "wal.log", "--policy", "policy.toml"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(text.contains("policy         wal \"w1\""), "{text}");
    assert!(text.contains("decision       cooldown: "), "{text}");
    assert!(
        text.contains("alert          Big [warning]: wal_size_bytes = "),
        "{text}"
    );
    assert!(
        text.contains("condition holds (fires after 60 s)"),
        "{text}"
    );
    assert!(
        text.contains("last run       ") && text.contains("(success)"),
        "{text}"
    );

    // A WAL the policy does not name: today's status, no policy part.
    let other = status_json(d.path(), "other.log", Some("policy.toml"));
    assert!(other.get("policy").is_none(), "{other}");
    assert_eq!(other["entries"]["COMMIT"], 3);
    drop(daemon);
}
