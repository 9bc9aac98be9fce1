//! The daemon's trigger decisions when the wall clock jumps (NTP step, VM resume, an
//! operator's `date -s`). `triggers::decide` takes "now" from the wall clock and compares it
//! with `last_run` from the persisted state file, so a jump can put the last run in the
//! future (backward jump) or far in the past (forward jump). The system clock cannot be
//! changed here, so these drive the pure `decide` with simulated clocks, the way the
//! supervisor loop does: decide, run on `Compact`, record the outcome at "now".
//!
//! Required behaviour: no panic; no permanent (or clock-catch-up-long) block after a backward
//! jump; no compaction storm after either jump; the configured cooldown still holds for a
//! small backward step.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use walcompactd::daemon::state::{LastOutcome, WalState};
use walcompactd::daemon::stats::WalStats;
use walcompactd::daemon::triggers::{Decision, Request, backoff_delay, decide};
use walcompactd::policy::Triggers;

const MIN_INTERVAL: Duration = Duration::from_secs(300);

fn t0() -> DateTime<Utc> {
    "2025-06-01T12:00:00Z".parse().unwrap()
}

/// A size trigger that always holds, with plenty reclaimable, and a cooldown.
fn triggers(min_interval: Duration) -> Triggers {
    Triggers {
        max_size_bytes: Some(1000),
        max_commits_since_compaction: None,
        min_reclaimable_ratio: None,
        min_free_disk_percent: None,
        schedule: Vec::new(),
        min_reclaimable_bytes: 1,
        min_interval,
    }
}

fn busy_wal() -> WalStats {
    WalStats {
        size_bytes: 1 << 20,
        reclaimable_bytes: 1 << 19,
        ..WalStats::default()
    }
}

fn after(outcome: LastOutcome, at: DateTime<Utc>, failures: u32) -> WalState {
    WalState {
        last_run: Some(at),
        last_outcome: Some(outcome),
        consecutive_failures: failures,
        ..WalState::default()
    }
}

/// How long from `now` the decision holds the trigger back (zero when it compacts).
fn held_for(d: &Decision, now: DateTime<Utc>) -> TimeDelta {
    match d {
        Decision::Compact(_) => TimeDelta::zero(),
        Decision::Cooldown { until, .. } | Decision::Backoff { until, .. } => *until - now,
        other => panic!("triggers hold and bytes are reclaimable, got {other:?}"),
    }
}

fn secs(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap()
}

/// The supervisor loop over a simulated wall clock: every `step`, decide; on `Compact`,
/// record `outcome` at "now". `jump(i)` is added to the clock after step `i`.
/// Returns the step index and clock reading of each compaction.
fn simulate(
    t: &Triggers,
    outcome: LastOutcome,
    steps: u32,
    step: TimeDelta,
    jump: impl Fn(u32) -> TimeDelta,
) -> Vec<(u32, DateTime<Utc>)> {
    let mut state = WalState::default();
    let mut now = t0();
    let mut runs = Vec::new();
    for i in 0..steps {
        if let Decision::Compact(_) = decide(&busy_wal(), t, &state, None, now) {
            state.record(outcome, now);
            runs.push((i, now));
        }
        now = now + step + jump(i);
    }
    runs
}

#[test]
fn backward_jump_after_a_success_does_not_block_until_the_clock_catches_up() {
    let t = triggers(MIN_INTERVAL);
    for back in [
        TimeDelta::hours(1),
        TimeDelta::days(1),
        TimeDelta::days(365 * 30),
    ] {
        // The last run is recorded at t0; the clock then steps back by `back`.
        let state = after(LastOutcome::Success, t0(), 0);
        let now = t0() - back;
        let held = held_for(&decide(&busy_wal(), &t, &state, None, now), now);
        assert!(
            held <= secs(MIN_INTERVAL) * 2,
            "a {back} backward jump holds compaction back for {held}"
        );
    }
}

#[test]
fn small_backward_step_keeps_the_cooldown() {
    // NTP stepping back 2 s right after a compaction must not allow an immediate re-run.
    let t = triggers(MIN_INTERVAL);
    let state = after(LastOutcome::Success, t0(), 0);
    let now = t0() - TimeDelta::seconds(2);
    let d = decide(&busy_wal(), &t, &state, None, now);
    assert!(matches!(d, Decision::Cooldown { .. }), "{d:?}");
    assert!(held_for(&d, now) <= secs(MIN_INTERVAL) * 2);
}

#[test]
fn backward_jump_during_backoff_is_bounded_by_the_backoff() {
    let t = triggers(Duration::ZERO);
    for failures in [1, 5, 30, u32::MAX] {
        let state = after(LastOutcome::Failed, t0(), failures);
        let cap = secs(backoff_delay(failures));
        for back in [TimeDelta::seconds(1), TimeDelta::days(2)] {
            let now = t0() - back;
            let held = held_for(&decide(&busy_wal(), &t, &state, None, now), now);
            assert!(
                held <= cap * 2,
                "{failures} failures, {back} back: held {held} (backoff {cap})"
            );
        }
    }
}

#[test]
fn forward_jump_compacts_once_then_cools_down() {
    let t = triggers(MIN_INTERVAL);
    for outcome in [
        LastOutcome::Success,
        LastOutcome::Failed,
        LastOutcome::Skipped,
    ] {
        let state = after(outcome, t0(), 7);
        let later = t0() + TimeDelta::days(365 * 50);
        let d = decide(&busy_wal(), &t, &state, None, later);
        assert!(matches!(d, Decision::Compact(_)), "{outcome:?}: {d:?}");
        let mut state = state;
        state.record(LastOutcome::Success, later);
        let next = later + TimeDelta::seconds(1);
        let d = decide(&busy_wal(), &t, &state, None, next);
        assert!(matches!(d, Decision::Cooldown { .. }), "{outcome:?}: {d:?}");
    }
}

#[test]
fn timestamps_at_the_ends_of_the_range_do_not_panic() {
    let far_future: DateTime<Utc> = "9999-12-31T23:59:59Z".parse().unwrap();
    let t = triggers(Duration::from_secs(3600));
    for (last, now) in [
        (far_future, t0()),
        (t0(), far_future),
        (DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC),
        (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC),
        (DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MAX_UTC),
    ] {
        for outcome in [
            LastOutcome::Success,
            LastOutcome::Failed,
            LastOutcome::Skipped,
        ] {
            let state = after(outcome, last, 3);
            for request in [None, Some(Request::Scheduled), Some(Request::Alert)] {
                let _ = decide(&busy_wal(), &t, &state, request, now);
            }
        }
    }
}

/// `min_interval_secs` has no upper bound in the policy; a huge cooldown must hold (not
/// panic on `last_run + interval` overflowing, nor be silently dropped).
#[test]
fn a_huge_cooldown_holds_without_panicking() {
    for secs in [10_000_000_000_000, i64::MAX as u64] {
        let t = triggers(Duration::from_secs(secs));
        let state = after(LastOutcome::Success, t0(), 0);
        let now = t0() + TimeDelta::seconds(1);
        let d = decide(&busy_wal(), &t, &state, None, now);
        assert!(matches!(d, Decision::Cooldown { .. }), "{secs} s: {d:?}");
    }
}

/// Two simulated hours stepping 1 s, with a jump in the middle: the number of runs stays
/// what the cooldown allows (no storm), and runs resume soon after the jump (no block).
#[test]
fn simulated_supervisor_across_jumps_neither_storms_nor_stalls() {
    let t = triggers(MIN_INTERVAL);
    let steps = 7200;
    let step = TimeDelta::seconds(1);
    let undisturbed = simulate(&t, LastOutcome::Success, steps, step, |_| TimeDelta::zero());
    let expected = undisturbed.len();
    assert_eq!(expected, 24, "7200 s / 300 s cooldown");
    for jump in [
        -TimeDelta::seconds(5),
        -TimeDelta::hours(3),
        -TimeDelta::days(400),
        TimeDelta::hours(3),
        TimeDelta::days(400),
    ] {
        for outcome in [
            LastOutcome::Success,
            LastOutcome::Failed,
            LastOutcome::Skipped,
        ] {
            let runs = simulate(&t, outcome, steps, step, |i| {
                if i == steps / 2 {
                    jump
                } else {
                    TimeDelta::zero()
                }
            });
            // Failed runs back off (1, 2, 4 ... min), so fewer; never more than cooldown allows + 1.
            assert!(
                runs.len() <= expected + 1,
                "{jump} {outcome:?}: {} runs, undisturbed {expected}",
                runs.len()
            );
            let jumped_at = t0() + step * (steps as i32 / 2 + 1) + jump;
            let first_after = runs.iter().find(|(i, _)| *i > steps / 2);
            let limit = match outcome {
                LastOutcome::Failed => TimeDelta::hours(2),
                _ => secs(MIN_INTERVAL) * 2,
            };
            let ok = first_after.is_some_and(|(_, r)| *r - jumped_at <= limit);
            assert!(
                ok,
                "{jump} {outcome:?}: no run within {limit} of the jump; runs {runs:?}"
            );
        }
    }
}
