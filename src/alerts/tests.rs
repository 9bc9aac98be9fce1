use super::*;
use crate::policy::Threshold;

fn rule(name: &str, metric: AlertMetric, threshold: Threshold, for_secs: u64) -> AlertRule {
    AlertRule {
        name: name.to_string(),
        metric,
        threshold,
        for_duration: Duration::from_secs(for_secs),
        severity: Severity::Warning,
        actions: vec![AlertAction::Log],
        command: Vec::new(),
        wal: None,
    }
}

fn size(bytes: u64) -> AlertValues {
    AlertValues {
        wal_size_bytes: Some(bytes),
        ..AlertValues::default()
    }
}

/// Evaluates at `t0 + secs` and returns the edges as ("fired"|"resolved", rule, value).
struct Clock {
    t0: Instant,
    states: AlertStates,
}

impl Clock {
    fn new() -> Self {
        Clock {
            t0: Instant::now(),
            states: AlertStates::new(),
        }
    }

    fn eval(
        &mut self,
        rules: &[AlertRule],
        wal: &str,
        v: AlertValues,
        secs: u64,
    ) -> Vec<(&'static str, String, f64)> {
        let now = self.t0 + Duration::from_secs(secs);
        evaluate(rules, wal, &v, &mut self.states, now)
            .into_iter()
            .map(|t| (t.edge().as_str(), t.rule().name.clone(), t.value()))
            .collect()
    }
}

fn fired(name: &str, v: f64) -> Vec<(&'static str, String, f64)> {
    vec![("firing", name.to_string(), v)]
}

fn resolved(name: &str, v: f64) -> Vec<(&'static str, String, f64)> {
    vec![("resolved", name.to_string(), v)]
}

#[test]
fn fires_once_while_the_condition_holds() {
    let rules = [rule(
        "big",
        AlertMetric::WalSizeMb,
        Threshold::Above(10.0),
        0,
    )];
    let mut c = Clock::new();
    assert!(c.eval(&rules, "w", size(5_000_000), 0).is_empty());
    assert_eq!(c.eval(&rules, "w", size(20_000_000), 1), fired("big", 20.0));
    for t in 2..10 {
        assert!(c.eval(&rules, "w", size(30_000_000), t).is_empty(), "t={t}");
    }
    assert!(c.states.get("big", "w").unwrap().firing);
    assert_eq!(c.states.firing(), [("big".to_string(), "w".to_string())]);
}

#[test]
fn for_duration_delays_firing_until_the_condition_held_that_long() {
    let rules = [rule(
        "big",
        AlertMetric::WalSizeBytes,
        Threshold::Above(100.0),
        60,
    )];
    let mut c = Clock::new();
    assert!(c.eval(&rules, "w", size(200), 0).is_empty());
    let pending = *c.states.get("big", "w").unwrap();
    assert_eq!(pending.pending_since, Some(c.t0));
    assert!(!pending.firing);
    assert!(c.eval(&rules, "w", size(200), 30).is_empty());
    assert!(c.eval(&rules, "w", size(200), 59).is_empty());
    assert_eq!(c.eval(&rules, "w", size(300), 60), fired("big", 300.0));
    assert!(c.eval(&rules, "w", size(300), 120).is_empty());
}

#[test]
fn an_interruption_restarts_the_pending_period() {
    let rules = [rule(
        "big",
        AlertMetric::WalSizeBytes,
        Threshold::Above(100.0),
        60,
    )];
    let mut c = Clock::new();
    assert!(c.eval(&rules, "w", size(200), 0).is_empty());
    assert!(
        c.eval(&rules, "w", size(50), 40).is_empty(),
        "pending, never fired: no edge"
    );
    assert!(c.eval(&rules, "w", size(200), 50).is_empty());
    assert!(
        c.eval(&rules, "w", size(200), 100).is_empty(),
        "only 50 s since the restart"
    );
    assert_eq!(c.eval(&rules, "w", size(200), 110), fired("big", 200.0));
}

#[test]
fn resolves_once_and_can_fire_again() {
    let rules = [rule(
        "big",
        AlertMetric::WalSizeBytes,
        Threshold::Above(100.0),
        10,
    )];
    let mut c = Clock::new();
    c.eval(&rules, "w", size(200), 0);
    assert_eq!(c.eval(&rules, "w", size(200), 10), fired("big", 200.0));
    assert_eq!(c.eval(&rules, "w", size(40), 11), resolved("big", 40.0));
    for t in 12..20 {
        assert!(c.eval(&rules, "w", size(40), t).is_empty(), "t={t}");
    }
    assert!(!c.states.get("big", "w").unwrap().firing);
    // Re-fire: a fresh pending period, then exactly one more edge.
    assert!(c.eval(&rules, "w", size(500), 20).is_empty());
    assert_eq!(c.eval(&rules, "w", size(500), 30), fired("big", 500.0));
    assert!(c.eval(&rules, "w", size(500), 31).is_empty());
    assert_eq!(c.eval(&rules, "w", size(100), 32), resolved("big", 100.0));
}

#[test]
fn below_thresholds_fire_strictly_below() {
    let rules = [rule(
        "disk",
        AlertMetric::DiskFreePercent,
        Threshold::Below(10.0),
        0,
    )];
    let disk = |p: f64| AlertValues {
        disk_free_percent: Some(p),
        ..AlertValues::default()
    };
    let mut c = Clock::new();
    assert!(
        c.eval(&rules, "w", disk(10.0), 0).is_empty(),
        "equal is not below"
    );
    assert_eq!(c.eval(&rules, "w", disk(9.5), 1), fired("disk", 9.5));
    assert!(c.eval(&rules, "w", disk(3.0), 2).is_empty());
    assert_eq!(c.eval(&rules, "w", disk(50.0), 3), resolved("disk", 50.0));
}

#[test]
fn wal_filter_applies_a_rule_to_its_wal_only() {
    let mut only_a = rule("a_big", AlertMetric::WalSizeBytes, Threshold::Above(1.0), 0);
    only_a.wal = Some("a".into());
    let every = rule(
        "any_big",
        AlertMetric::WalSizeBytes,
        Threshold::Above(1.0),
        0,
    );
    let rules = [only_a, every];
    let mut c = Clock::new();
    let on_b = c.eval(&rules, "b", size(10), 0);
    assert_eq!(on_b, fired("any_big", 10.0));
    assert!(c.states.get("a_big", "b").is_none());
    let on_a = c.eval(&rules, "a", size(10), 0);
    assert_eq!(on_a.len(), 2);
    assert_eq!(on_a[0].1, "a_big");
    assert_eq!(on_a[1].1, "any_big");
    // States are per WAL: b resolving leaves a firing.
    assert_eq!(c.eval(&rules, "b", size(0), 1), resolved("any_big", 0.0));
    assert!(c.states.get("any_big", "a").unwrap().firing);
}

#[test]
fn unknown_values_never_fire_and_do_not_resolve() {
    let rules = [rule(
        "stale",
        AlertMetric::SecondsSinceLastSuccess,
        Threshold::Above(3600.0),
        0,
    )];
    let since = |s: Option<f64>| AlertValues {
        seconds_since_last_success: s,
        ..AlertValues::default()
    };
    let mut c = Clock::new();
    for t in 0..5 {
        assert!(c.eval(&rules, "w", since(None), t).is_empty());
    }
    assert!(c.eval(&rules, "w", since(Some(f64::NAN)), 5).is_empty());
    assert!(!c.states.get("stale", "w").unwrap().firing);
    assert_eq!(
        c.eval(&rules, "w", since(Some(4000.0)), 6),
        fired("stale", 4000.0)
    );
    assert!(
        c.eval(&rules, "w", since(None), 7).is_empty(),
        "unknown keeps it firing"
    );
    assert!(c.states.get("stale", "w").unwrap().firing);
    assert_eq!(
        c.eval(&rules, "w", since(Some(1.0)), 8),
        resolved("stale", 1.0)
    );
}

#[test]
fn unknown_value_restarts_a_pending_period() {
    let rules = [rule(
        "big",
        AlertMetric::WalSizeBytes,
        Threshold::Above(1.0),
        10,
    )];
    let mut c = Clock::new();
    c.eval(&rules, "w", size(5), 0);
    c.eval(&rules, "w", AlertValues::default(), 5);
    assert!(c.eval(&rules, "w", size(5), 6).is_empty());
    assert!(c.eval(&rules, "w", size(5), 12).is_empty());
    assert_eq!(c.eval(&rules, "w", size(5), 16), fired("big", 5.0));
}

#[test]
fn values_map_every_metric() {
    let v = AlertValues {
        wal_size_bytes: Some(2_500_000),
        wal_reclaimable_bytes: Some(1),
        wal_reclaimable_ratio: Some(0.5),
        wal_torn_tail_bytes: Some(3),
        wal_corrupt_lines: Some(9),
        wal_in_flight_transactions: Some(4),
        seconds_since_last_success: Some(5.0),
        compaction_stalled_seconds: Some(6.0),
        consecutive_failures: Some(7),
        disk_free_percent: Some(8.0),
        offsite_pending_seconds: Some(10.0),
    };
    let got: Vec<_> = AlertMetric::ALL.iter().map(|m| v.value(*m)).collect();
    let want = [
        2.5,
        2_500_000.0,
        1.0,
        0.5,
        3.0,
        9.0,
        4.0,
        5.0,
        6.0,
        7.0,
        8.0,
        10.0,
    ];
    assert_eq!(got, want.map(Some));
    assert!(
        AlertMetric::ALL
            .iter()
            .all(|m| AlertValues::default().value(*m).is_none())
    );
}

#[test]
fn stalled_seconds_counts_only_while_worth_compacting() {
    assert_eq!(stalled_seconds(None, 100, 0), None);
    assert_eq!(stalled_seconds(Some(50.0), 100, 10), Some(50.0));
    assert_eq!(stalled_seconds(Some(50.0), 5, 10), Some(0.0));
    assert_eq!(stalled_seconds(Some(50.0), 0, 0), Some(0.0));
}

#[test]
fn compaction_is_requested_on_fire_only() {
    let mut r = rule("big", AlertMetric::WalSizeBytes, Threshold::Above(1.0), 0);
    r.actions = vec![AlertAction::Log, AlertAction::Compact];
    let fired = Transition::Fired {
        rule: r.clone(),
        value: 2.0,
    };
    let resolved = Transition::Resolved {
        rule: r.clone(),
        value: 0.0,
    };
    assert!(fired.requests_compaction());
    assert!(!resolved.requests_compaction());
    r.actions = vec![AlertAction::Log];
    assert!(
        !Transition::Fired {
            rule: r,
            value: 2.0
        }
        .requests_compaction()
    );
}

#[test]
fn reload_drops_states_of_removed_or_refiltered_rules() {
    let a = rule("a", AlertMetric::WalSizeBytes, Threshold::Above(1.0), 0);
    let b = rule("b", AlertMetric::WalSizeBytes, Threshold::Above(1.0), 0);
    let mut c = Clock::new();
    c.eval(&[a.clone(), b.clone()], "w1", size(5), 0);
    c.eval(&[a.clone(), b.clone()], "w2", size(5), 0);
    let mut a_on_w2 = a.clone();
    a_on_w2.wal = Some("w2".into());
    let dropped = c.states.retain_rules(&[a_on_w2]);
    let pair = |r: &str, w: &str| (r.to_string(), w.to_string());
    assert_eq!(dropped, [pair("a", "w1"), pair("b", "w1"), pair("b", "w2")]);
    assert_eq!(c.states.firing(), [pair("a", "w2")]);
    assert_eq!(c.states.forget_wal("w2"), [pair("a", "w2")]);
    assert!(c.states.firing().is_empty());
}

fn env(t: &Transition) -> AlertEnv {
    AlertEnv::new(t, "orders", Path::new("/var/lib/app/orders.wal"))
}

#[tokio::test]
async fn run_command_passes_the_alert_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut r = rule(
        "wal_too_big",
        AlertMetric::WalSizeMb,
        Threshold::Above(1.0),
        0,
    );
    r.severity = Severity::Critical;
    let t = Transition::Fired {
        rule: r,
        value: 12.5,
    };
    // OUT is given through `env` rather than set_var: the test binary's environment stays
    // untouched while other tests run.
    let argv: Vec<String> = [
        "env".to_string(),
        format!("OUT={}", out.display()),
        "sh".to_string(),
        "-c".to_string(),
        r#"printf "%s %s %s" "$ALERT_NAME" "$ALERT_SEVERITY" "$WAL_NAME" > "$OUT"; printf "%s %s %s" "$ALERT_VALUE" "$ALERT_STATE" "$WAL_PATH" > "$OUT.2""#.to_string(),
    ]
    .to_vec();
    let status = run_command(&argv, &env(&t)).await.unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "wal_too_big critical orders"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.2")).unwrap(),
        "12.5 firing /var/lib/app/orders.wal"
    );
}

#[tokio::test]
async fn run_command_reports_failure_and_rejects_empty_argv() {
    let t = Transition::Resolved {
        rule: rule("r", AlertMetric::WalSizeMb, Threshold::Above(1.0), 0),
        value: 0.0,
    };
    let argv = ["sh", "-c", "echo oops >&2; exit 3"].map(String::from);
    let status = run_command(&argv, &env(&t)).await.unwrap();
    assert_eq!(status.code(), Some(3));
    let err = run_command(&[], &env(&t)).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn run_command_kills_the_process_group_on_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("survived");
    let t = size_fired();
    // The shell's child (sleep) must die with it, or it would write the marker.
    let script = format!("(sleep 1; touch {}) & wait", marker.display());
    let argv = ["sh".to_string(), "-c".to_string(), script];
    let err = run_command_with_timeout(&argv, &env(&t), Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !marker.exists(),
        "a process of the group outlived the timeout"
    );
}

#[test]
fn a_timed_out_command_leaves_nothing_of_its_process_group_behind() {
    use crate::process::testing::*;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sleep.pid");
    let t = size_fired();
    let argv = orphaning_argv(&pidfile);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sleep = sleep_pid_after(&pidfile, |timeout| {
        let err = rt
            .block_on(run_command_with_timeout(&argv, &env(&t), timeout))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    });
    assert_sleep_gone(sleep);
}

#[tokio::test]
async fn a_dropped_command_is_killed_with_its_process_group() {
    use crate::process::testing::*;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sleep.pid");
    let t = size_fired();
    let argv = orphaning_argv(&pidfile);
    let alert_env = env(&t);
    let running = run_command_with_timeout(&argv, &alert_env, Duration::from_secs(600));
    // Until the sleep is started, then drop the future (as a runtime shutting down does).
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::pin!(running);
        loop {
            tokio::select! {
                r = &mut running => panic!("finished: {r:?}"),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    if pidfile.exists() { break }
                }
            }
        }
    })
    .await;
    assert!(started.is_ok(), "the script never started its sleep");
    let sleep = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    tokio::task::spawn_blocking(move || assert_sleep_gone(sleep))
        .await
        .unwrap();
}

/// A rule on the WAL's size that fired: what the command-runner tests hand the runner.
fn size_fired() -> Transition {
    Transition::Fired {
        rule: rule("r", AlertMetric::WalSizeMb, Threshold::Above(1.0), 0),
        value: 2.0,
    }
}
