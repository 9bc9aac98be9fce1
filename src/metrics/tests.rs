use super::*;

const DASHBOARD: &str = include_str!("../../config/grafana-dashboard.json");

/// Every `walcompactd_*` identifier in a PromQL expression.
fn metric_refs(expr: &str) -> Vec<&str> {
    let mut refs = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("walcompactd_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        refs.push(&tail[..end]);
        rest = &tail[end..];
    }
    refs
}

/// Whether `name` is exported: a listed name, or a histogram's derived series.
fn is_exported(name: &str) -> bool {
    METRIC_NAMES.contains(&name)
        || ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name.strip_suffix(suffix) == Some(COMPACTION_DURATION_SECONDS))
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_parses_and_queries_only_exported_metrics() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = dash["templating"]["list"].as_array().unwrap();
    let wal = vars
        .iter()
        .find(|v| v["name"] == "wal")
        .expect("a wal variable");
    assert_eq!(
        wal["definition"],
        "label_values(walcompactd_wal_size_bytes, wal)"
    );
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    let panel_exprs: usize = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["targets"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(panel_exprs >= 9, "only {panel_exprs} panel queries");
    let mut referenced = Vec::new();
    for expr in &exprs {
        let refs = metric_refs(expr);
        assert!(!refs.is_empty() || !expr.contains("walcompactd"), "{expr}");
        for name in refs {
            assert!(is_exported(name), "{name:?} in {expr:?} is not exported");
            referenced.push(name.to_string());
        }
    }
    for wanted in [
        WAL_SIZE_BYTES,
        WAL_RECLAIMABLE_BYTES,
        WAL_RECLAIMABLE_RATIO,
        WAL_TRANSACTIONS,
        COMPACTION_RUNS_TOTAL,
        LAST_SUCCESS_TIMESTAMP_SECONDS,
        ALERT_ACTIVE,
        DISK_FREE_RATIO,
    ] {
        assert!(
            referenced.iter().any(|r| r == wanted),
            "no panel shows {wanted}"
        );
    }
    let bucket = format!("{COMPACTION_DURATION_SECONDS}_bucket");
    let quantiles = exprs
        .iter()
        .filter(|e| e.contains("histogram_quantile") && e.contains(&bucket))
        .count();
    assert_eq!(quantiles, 2, "p50 and p99 of the duration histogram");
}

#[test]
fn metric_refs_splits_identifiers() {
    assert_eq!(
        metric_refs("time() - walcompactd_a_b{wal=~\"$wal\"} + walcompactd_c"),
        ["walcompactd_a_b", "walcompactd_c"]
    );
}

#[test]
fn metric_names_are_prefixed_and_unique() {
    let mut seen = std::collections::HashSet::new();
    for name in METRIC_NAMES {
        assert!(name.starts_with("walcompactd_"), "{name}");
        assert!(seen.insert(name), "{name} listed twice");
    }
}

#[test]
fn outcome_labels() {
    let labels: Vec<_> = RunOutcome::ALL.iter().map(RunOutcome::as_str).collect();
    assert_eq!(labels, ["success", "failed", "rolled_back", "skipped"]);
}

#[test]
fn publishing_without_a_recorder_is_a_no_op() {
    publish_wal("w", &WalFigures::default());
    publish_backups("w", 1, 2);
    publish_disk_free("w", 0.5);
    record_run("w", RunOutcome::Success, Duration::from_millis(5), 10);
    record_expired("w", 3, 300);
    record_archives("w", 1, 300);
    set_in_progress("w", true);
    set_consecutive_failures("w", 0);
    set_last_success("w", 1.0);
    set_alert_active("w", "a", true);
    record_policy_reload(true);
}
