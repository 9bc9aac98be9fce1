//! The Prometheus exporter end to end: install it with a real HTTP listener inside a tokio
//! runtime (as the daemon does), publish the figures of a real WAL's status, scrape over HTTP
//! and check every value; then the node_exporter textfile.
//!
//! A separate test binary with a single test, because the recorder is process-global and can
//! be installed only once.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus_parse::{Sample, Scrape, Value};
use walcompactd::metrics::{self, Metrics, MetricsError, RunOutcome, WalFigures};

use common::{abort, commit, free_port, parse_scrape, prepare, write_wal};

/// GETs `/metrics`, retrying until the listener (spawned on the runtime) answers.
fn scrape(addr: SocketAddr) -> String {
    let url = format!("http://{addr}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ureq::get(&url).call() {
            Ok(mut resp) => return resp.body_mut().read_to_string().unwrap(),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("no answer from {url}: {e}"),
        }
    }
}

/// The value of the sample named `metric` whose labels include all of `labels`.
fn find<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> &'a Sample {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    assert_eq!(found.len(), 1, "{metric} {labels:?}: {found:?}");
    found[0]
}

fn scalar(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    match find(scrape, metric, labels).value {
        Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric} is not a scalar: {other:?}"),
    }
}

fn sorted_lines(text: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    lines.sort_unstable();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_and_textfile_match_a_real_wal_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = String::new();
    wal += &prepare("a", 1);
    wal += &prepare("a", 2);
    wal += &commit("a");
    wal += &prepare("b", 3);
    wal += &abort("b");
    wal += &prepare("c", 4);
    wal += "{\"op\": \"COMMIT\", \"tx";
    let path = write_wal(dir.path(), "orders.wal", &wal);
    let status =
        walcompactd::commands::status(&path, walcompactd::rules::CorruptLines::Keep).unwrap();
    assert!(status.reclaimable_bytes > 0 && status.torn_tail_bytes > 0);

    let addr = free_port();
    let textfile = dir.path().join("walcompactd.prom");
    let m = Metrics::install(Some(addr), Some(textfile.clone())).unwrap();
    assert!(matches!(
        Metrics::install(None, None),
        Err(MetricsError::AlreadyInstalled)
    ));

    let figures = WalFigures::from(&status);
    metrics::publish_wal("orders", &figures);
    metrics::publish_backups("orders", 2, 4096);
    metrics::publish_disk_free("orders", 0.25);
    metrics::record_run(
        "orders",
        RunOutcome::Success,
        Duration::from_millis(300),
        120,
    );
    metrics::record_run("orders", RunOutcome::Failed, Duration::from_secs(3), 999);
    metrics::set_in_progress("orders", true);
    metrics::set_consecutive_failures("orders", 1);
    metrics::set_last_success("orders", 1_732_780_000.0);
    metrics::set_alert_active("orders", "wal_too_big", true);
    metrics::record_policy_reload(true);
    metrics::record_policy_reload(false);
    metrics::record_policy_reload(false);
    // Retention: two runs expired something; the archive stage published its archives.
    metrics::record_expired("orders", 3, 420);
    metrics::record_expired("orders", 1, 80);
    metrics::record_archives("orders", 2, 500);
    metrics::publish_offsite("orders", 4096, 1_700_000_000.5);
    metrics::record_offsite_upload("orders", true);
    metrics::record_offsite_upload("orders", false);
    metrics::record_offsite_upload("orders", false);

    let body = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    let s = parse_scrape(&body);
    let w = ("wal", "orders");

    assert_eq!(
        scalar(&s, metrics::WAL_SIZE_BYTES, &[w]),
        status.size_bytes as f64
    );
    for (op, n) in [
        ("PREPARE", status.entries.prepare),
        ("COMMIT", status.entries.commit),
        ("ABORT", status.entries.abort),
    ] {
        assert_eq!(
            scalar(&s, metrics::WAL_ENTRIES, &[w, ("op", op)]),
            n as f64,
            "{op}"
        );
    }
    assert_eq!(status.entries.prepare, 4);
    for (state, n) in [
        ("committed", status.transactions.committed),
        ("aborted", status.transactions.aborted),
        ("in_flight", status.transactions.in_flight),
    ] {
        let v = scalar(&s, metrics::WAL_TRANSACTIONS, &[w, ("state", state)]);
        assert_eq!(v, n as f64, "{state}");
        assert_eq!(n, 1, "{state}");
    }
    assert_eq!(
        scalar(&s, metrics::WAL_RECLAIMABLE_BYTES, &[w]),
        status.reclaimable_bytes as f64
    );
    assert_eq!(
        scalar(&s, metrics::WAL_RECLAIMABLE_RATIO, &[w]),
        status.reclaimable_ratio
    );
    assert_eq!(
        scalar(&s, metrics::WAL_TORN_TAIL_BYTES, &[w]),
        status.torn_tail_bytes as f64
    );
    assert_eq!(scalar(&s, metrics::BACKUPS, &[w]), 2.0);
    assert_eq!(scalar(&s, metrics::BACKUP_BYTES, &[w]), 4096.0);
    assert_eq!(scalar(&s, metrics::DISK_FREE_RATIO, &[w]), 0.25);
    assert_eq!(scalar(&s, metrics::COMPACTION_IN_PROGRESS, &[w]), 1.0);
    assert_eq!(scalar(&s, metrics::CONSECUTIVE_FAILURES, &[w]), 1.0);
    assert_eq!(
        scalar(&s, metrics::LAST_SUCCESS_TIMESTAMP_SECONDS, &[w]),
        1_732_780_000.0
    );
    assert_eq!(
        scalar(&s, metrics::ALERT_ACTIVE, &[w, ("alert", "wal_too_big")]),
        1.0
    );
    for (outcome, n) in [
        ("success", 1.0),
        ("failed", 1.0),
        ("rolled_back", 0.0),
        ("skipped", 0.0),
    ] {
        let v = scalar(
            &s,
            metrics::COMPACTION_RUNS_TOTAL,
            &[w, ("outcome", outcome)],
        );
        assert_eq!(v, n, "{outcome}");
    }
    // Only the successful run's bytes count as reclaimed.
    assert_eq!(
        scalar(&s, metrics::COMPACTION_RECLAIMED_BYTES_TOTAL, &[w]),
        120.0
    );
    assert_eq!(
        scalar(&s, metrics::POLICY_RELOADS_TOTAL, &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        scalar(&s, metrics::POLICY_RELOADS_TOTAL, &[("result", "invalid")]),
        2.0
    );
    assert_eq!(
        scalar(
            &s,
            metrics::BUILD_INFO,
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // A real histogram (not the exporter's default summary), with our bucket bounds.
    assert!(body.contains("# TYPE walcompactd_compaction_duration_seconds histogram"));
    let bucket = format!("{}_bucket", metrics::COMPACTION_DURATION_SECONDS);
    assert!(body.lines().any(|l| l.starts_with(&bucket)), "{body}");
    let Value::Histogram(ref buckets) = find(&s, metrics::COMPACTION_DURATION_SECONDS, &[w]).value
    else {
        panic!("duration is not a histogram")
    };
    let by_le: HashMap<String, f64> = buckets
        .iter()
        .map(|b| (b.less_than.to_string(), b.count))
        .collect();
    assert_eq!(by_le["0.25"], 0.0);
    assert_eq!(by_le["0.5"], 1.0);
    assert_eq!(by_le["5"], 2.0);
    assert_eq!(by_le["inf"], 2.0);
    assert_eq!(
        buckets.len(),
        metrics::DURATION_BUCKETS.len() + 1,
        "every bound plus +Inf"
    );

    assert_eq!(scalar(&s, metrics::EXPIRED_TRANSACTIONS_TOTAL, &[w]), 4.0);
    assert_eq!(scalar(&s, metrics::ARCHIVED_BYTES_TOTAL, &[w]), 500.0);
    assert_eq!(scalar(&s, metrics::ARCHIVES, &[w]), 2.0);
    assert_eq!(scalar(&s, metrics::ARCHIVE_BYTES, &[w]), 500.0);
    assert_eq!(scalar(&s, metrics::OFFSITE_PENDING_BYTES, &[w]), 4096.0);
    assert_eq!(
        scalar(&s, metrics::OFFSITE_LAST_SUCCESS_TIMESTAMP_SECONDS, &[w]),
        1_700_000_000.5
    );
    for (outcome, n) in [("success", 1.0), ("failed", 2.0)] {
        assert_eq!(
            scalar(
                &s,
                metrics::OFFSITE_UPLOADS_TOTAL,
                &[w, ("outcome", outcome)]
            ),
            n
        );
    }

    // Every metric is described (HELP line).
    for name in metrics::METRIC_NAMES {
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "no HELP for {name}"
        );
    }

    // The textfile: parses, and holds what render() holds (same lines; the exporter's
    // family order comes from a HashMap, so it may differ between two renders).
    m.write_textfile().unwrap();
    let written = std::fs::read_to_string(&textfile).unwrap();
    assert_eq!(sorted_lines(&written), sorted_lines(&m.render()));
    let t = parse_scrape(&written);
    assert_eq!(
        scalar(&t, metrics::WAL_SIZE_BYTES, &[w]),
        status.size_bytes as f64
    );
    assert_eq!(t.samples.len(), s.samples.len());
    assert!(!dir.path().join("walcompactd.prom.tmp").exists());
}
