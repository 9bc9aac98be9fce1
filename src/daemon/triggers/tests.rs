use super::*;

fn now() -> DateTime<Utc> {
    "2025-06-01T12:00:00Z".parse().unwrap()
}

fn off() -> Triggers {
    Triggers {
        max_size_bytes: None,
        max_commits_since_compaction: None,
        min_reclaimable_ratio: None,
        min_free_disk_percent: None,
        schedule: Vec::new(),
        min_reclaimable_bytes: 0,
        min_interval: Duration::ZERO,
    }
}

fn stats(size: u64, reclaimable: u64, commits: u64) -> WalStats {
    WalStats {
        size_bytes: size,
        reclaimable_bytes: reclaimable,
        commit_lines: commits,
        ..WalStats::default()
    }
}

fn ago(secs: i64) -> Option<DateTime<Utc>> {
    Some(now() - chrono::Duration::seconds(secs))
}

fn is_compact(d: &Decision) -> bool {
    matches!(d, Decision::Compact(_))
}

#[test]
fn nothing_enabled_never_compacts() {
    let s = stats(u64::MAX / 2, u64::MAX / 4, 1 << 40);
    assert_eq!(
        decide(&s, &off(), &WalState::default(), None, now()),
        Decision::Idle
    );
}

#[test]
fn size_trigger_is_strictly_greater() {
    let t = Triggers {
        max_size_bytes: Some(1000),
        ..off()
    };
    let st = WalState::default();
    assert_eq!(
        decide(&stats(1000, 500, 0), &t, &st, None, now()),
        Decision::Idle
    );
    assert_eq!(
        decide(&stats(1001, 500, 0), &t, &st, None, now()),
        Decision::Compact(vec![Reason::Size {
            size: 1001,
            max: 1000
        }])
    );
}

#[test]
fn commit_trigger_counts_since_the_base() {
    let t = Triggers {
        max_commits_since_compaction: Some(100),
        ..off()
    };
    let mut st = WalState {
        commit_base: 1000,
        ..WalState::default()
    };
    assert_eq!(
        decide(&stats(10, 5, 1099), &t, &st, None, now()),
        Decision::Idle
    );
    assert_eq!(
        decide(&stats(10, 5, 1100), &t, &st, None, now()),
        Decision::Compact(vec![Reason::Commits {
            since: 100,
            max: 100
        }])
    );
    // A base above the count (the WAL was compacted elsewhere) is not an underflow.
    st.commit_base = 5000;
    assert_eq!(
        decide(&stats(10, 5, 1100), &t, &st, None, now()),
        Decision::Idle
    );
}

#[test]
fn ratio_trigger() {
    let t = Triggers {
        min_reclaimable_ratio: Some(0.5),
        ..off()
    };
    let st = WalState::default();
    assert_eq!(
        decide(&stats(100, 49, 0), &t, &st, None, now()),
        Decision::Idle
    );
    assert!(is_compact(&decide(
        &stats(100, 50, 0),
        &t,
        &st,
        None,
        now()
    )));
    assert_eq!(
        decide(&stats(0, 0, 0), &t, &st, None, now()),
        Decision::Idle
    );
}

#[test]
fn free_disk_trigger_needs_a_measurement() {
    let t = Triggers {
        min_free_disk_percent: Some(10.0),
        ..off()
    };
    let st = WalState::default();
    let mut s = stats(100, 50, 0);
    assert_eq!(decide(&s, &t, &st, None, now()), Decision::Idle);
    s.free_percent = Some(10.0);
    assert_eq!(decide(&s, &t, &st, None, now()), Decision::Idle);
    s.free_percent = Some(9.5);
    assert_eq!(
        decide(&s, &t, &st, None, now()),
        Decision::Compact(vec![Reason::FreeDisk {
            percent: 9.5,
            min: 10.0
        }])
    );
}

#[test]
fn several_reasons_are_all_reported() {
    let t = Triggers {
        max_size_bytes: Some(10),
        min_reclaimable_ratio: Some(0.1),
        ..off()
    };
    match decide(
        &stats(100, 50, 0),
        &t,
        &WalState::default(),
        Some(Request::Alert),
        now(),
    ) {
        Decision::Compact(r) => assert_eq!(r.len(), 3, "{r:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn too_little_reclaimable_blocks_any_trigger() {
    let t = Triggers {
        max_size_bytes: Some(10),
        min_reclaimable_bytes: 65536,
        ..off()
    };
    let st = WalState::default();
    let d = decide(&stats(1 << 20, 65535, 0), &t, &st, None, now());
    assert!(
        matches!(
            d,
            Decision::Blocked {
                reclaimable: 65535,
                min: 65536,
                ..
            }
        ),
        "{d:?}"
    );
    let d = decide(
        &stats(1 << 20, 100, 0),
        &t,
        &st,
        Some(Request::Scheduled),
        now(),
    );
    assert!(matches!(d, Decision::Blocked { .. }), "{d:?}");
    assert!(is_compact(&decide(
        &stats(1 << 20, 65536, 0),
        &t,
        &st,
        None,
        now()
    )));
}

#[test]
fn nothing_reclaimable_blocks_even_without_a_floor() {
    let t = Triggers {
        max_size_bytes: Some(10),
        ..off()
    };
    let d = decide(&stats(1 << 20, 0, 0), &t, &WalState::default(), None, now());
    assert!(
        matches!(d, Decision::Blocked { reclaimable: 0, .. }),
        "{d:?}"
    );
}

#[test]
fn cooldown_applies_to_triggers_and_schedules() {
    let t = Triggers {
        max_size_bytes: Some(10),
        min_interval: Duration::from_secs(300),
        ..off()
    };
    let mut st = WalState::default();
    st.record(LastOutcome::Success, ago(299).unwrap());
    let d = decide(&stats(100, 50, 0), &t, &st, None, now());
    assert_eq!(
        d,
        Decision::Cooldown {
            reasons: vec![Reason::Size { size: 100, max: 10 }],
            until: ago(-1).unwrap()
        }
    );
    let d = decide(&stats(100, 50, 0), &t, &st, Some(Request::Scheduled), now());
    assert!(matches!(d, Decision::Cooldown { .. }), "{d:?}");
    st.last_run = ago(300);
    assert!(is_compact(&decide(
        &stats(100, 50, 0),
        &t,
        &st,
        None,
        now()
    )));
}

#[test]
fn a_skip_waits_at_least_the_retry_delay() {
    let t = Triggers {
        max_size_bytes: Some(10),
        ..off()
    };
    let mut st = WalState::default();
    st.record(LastOutcome::Skipped, ago(5).unwrap());
    assert!(matches!(
        decide(&stats(100, 50, 0), &t, &st, None, now()),
        Decision::Cooldown { .. }
    ));
    st.last_run = ago(SKIP_RETRY.as_secs() as i64);
    assert!(is_compact(&decide(
        &stats(100, 50, 0),
        &t,
        &st,
        None,
        now()
    )));
}

#[test]
fn backoff_doubles_and_caps() {
    assert_eq!(backoff_delay(0), Duration::ZERO);
    assert_eq!(backoff_delay(1), Duration::from_secs(60));
    assert_eq!(backoff_delay(2), Duration::from_secs(120));
    assert_eq!(backoff_delay(6), Duration::from_secs(1920));
    assert_eq!(backoff_delay(7), Duration::from_secs(3600));
    assert_eq!(backoff_delay(40), Duration::from_secs(3600));
}

#[test]
fn failures_back_off_but_schedule_does_not() {
    let t = Triggers {
        max_size_bytes: Some(10),
        ..off()
    };
    let mut st = WalState::default();
    st.record(LastOutcome::Failed, ago(200).unwrap());
    st.record(LastOutcome::Failed, ago(100).unwrap()); // 2 failures: 120 s from the last
    let s = stats(100, 50, 0);
    assert_eq!(
        decide(&s, &t, &st, None, now()),
        Decision::Backoff {
            reasons: vec![Reason::Size { size: 100, max: 10 }],
            until: ago(-20).unwrap()
        }
    );
    assert!(matches!(
        decide(&s, &t, &st, Some(Request::Alert), now()),
        Decision::Backoff { .. }
    ));
    assert!(is_compact(&decide(
        &s,
        &t,
        &st,
        Some(Request::Scheduled),
        now()
    )));
    st.last_run = ago(120);
    assert!(is_compact(&decide(&s, &t, &st, None, now())));
}

#[test]
fn a_request_alone_is_a_reason() {
    assert_eq!(
        decide(
            &stats(10, 100, 0),
            &off(),
            &WalState::default(),
            Some(Request::Scheduled),
            now()
        ),
        Decision::Compact(vec![Reason::Requested(Request::Scheduled)])
    );
}
