//! Retention: which finished (and, if asked, abandoned) transactions are old enough to leave
//! the WAL for an archive. Decided from line metadata alone — the numeric `timestamp` of a
//! transaction's lines — against cutoffs computed once per run from one clock reading.
//!
//! - A finished transaction (its last final line F is COMMIT or ABORT) expires when F has a
//!   timestamp older than the cutoff and no line of it follows F (a PREPARE after F, an
//!   anomaly, keeps the whole transaction).
//! - With an in-flight horizon, an in-flight transaction expires when its last PREPARE is
//!   older than that cutoff.
//! - A line without a numeric timestamp, or with one in the future, never makes anything
//!   expire; unrecognized and corrupt lines never expire.
//!
//! Timestamps are kept as whole seconds ([`Stamp`], the floor) and cutoffs are whole seconds,
//! so "older than the cutoff" is exact: for a whole `c`, `t < c` exactly when `floor(t) < c`.

use serde::Serialize;

/// A line's `timestamp` in whole seconds since the epoch (the floor), or [`NO_STAMP`].
/// Four bytes per line kept per transaction: the rules hold two per transaction.
pub type Stamp = u32;
/// No numeric timestamp, or one too far in the future to keep (from 2106 on): never expires.
pub const NO_STAMP: Stamp = u32::MAX;

/// The stamp of a numeric `timestamp` (seconds, integer or float). Negative times are the
/// epoch; non-finite ones and those at or past [`NO_STAMP`] seconds never expire.
pub fn stamp_of(seconds: f64) -> Stamp {
    if !seconds.is_finite() {
        return NO_STAMP;
    }
    let floor = seconds.floor();
    if floor < 0.0 {
        0
    } else if floor >= f64::from(NO_STAMP) {
        NO_STAMP
    } else {
        floor as Stamp
    }
}

/// The cutoffs of one run. The default expires nothing (retention off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Retention {
    /// Finished transactions whose final line is older than this (whole seconds) expire.
    pub cutoff: Option<Stamp>,
    /// In-flight transactions whose last PREPARE is older than this expire.
    pub in_flight_cutoff: Option<Stamp>,
}

impl Retention {
    /// Retention off: nothing expires.
    pub const NONE: Retention = Retention {
        cutoff: None,
        in_flight_cutoff: None,
    };

    /// The cutoffs `now − horizon` from one reading of the clock (`now`, whole seconds since
    /// the epoch); a horizon of `None` (or 0 for in-flight) expires nothing of that kind.
    pub fn at(
        now: i64,
        expire_after: Option<u64>,
        expire_in_flight_after: Option<u64>,
    ) -> Retention {
        let cut = |h: u64| -> Stamp {
            let c = now.saturating_sub(i64::try_from(h).unwrap_or(i64::MAX));
            c.clamp(0, i64::from(NO_STAMP - 1)) as Stamp
        };
        Retention {
            cutoff: expire_after.map(cut),
            in_flight_cutoff: expire_in_flight_after.filter(|&h| h > 0).map(cut),
        }
    }

    /// Whether anything can expire at all.
    pub fn is_enabled(&self) -> bool {
        self.cutoff.is_some() || self.in_flight_cutoff.is_some()
    }

    /// A finished transaction whose final line has `final_stamp`, with nothing after it.
    pub fn expires_finished(&self, final_stamp: Stamp) -> bool {
        older(final_stamp, self.cutoff)
    }

    /// An in-flight transaction whose last PREPARE has `prepare_stamp`.
    pub fn expires_in_flight(&self, prepare_stamp: Stamp) -> bool {
        older(prepare_stamp, self.in_flight_cutoff)
    }
}

fn older(stamp: Stamp, cutoff: Option<Stamp>) -> bool {
    matches!(cutoff, Some(c) if stamp != NO_STAMP && stamp < c)
}

/// What expiring would remove (or removed): `status`, `--dry-run`, the run's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Expiry {
    pub transactions: u64,
    /// Lines that leave the WAL for the archive (the ones compaction alone would keep).
    pub lines: u64,
    pub bytes: u64,
    /// Oldest and newest deciding timestamp (whole seconds) among the expiring transactions.
    pub oldest: Option<Stamp>,
    pub newest: Option<Stamp>,
}

impl Expiry {
    /// Counts one expiring transaction decided at `stamp`, whose kept lines are `lines`
    /// lines of `bytes` bytes.
    pub fn add(&mut self, stamp: Stamp, lines: u64, bytes: u64) {
        self.transactions += 1;
        self.lines += lines;
        self.bytes += bytes;
        self.oldest = Some(self.oldest.map_or(stamp, |o| o.min(stamp)));
        self.newest = Some(self.newest.map_or(stamp, |n| n.max(stamp)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_floors_and_odd_values_never_expire() {
        assert_eq!(stamp_of(1_732_780_000.999), 1_732_780_000);
        assert_eq!(stamp_of(1_732_780_000.0), 1_732_780_000);
        assert_eq!(stamp_of(-5.5), 0);
        assert_eq!(stamp_of(5e9), NO_STAMP);
        assert_eq!(stamp_of(f64::NAN), NO_STAMP);
    }

    #[test]
    fn older_than_the_cutoff_is_strict_and_exact_at_whole_seconds() {
        let r = Retention::at(1000, Some(100), None);
        assert_eq!(r.cutoff, Some(900));
        assert!(r.expires_finished(stamp_of(899.999)));
        assert!(!r.expires_finished(stamp_of(900.0)));
        assert!(!r.expires_finished(NO_STAMP));
        assert!(!r.expires_in_flight(0), "no in-flight horizon");
    }

    #[test]
    fn zero_in_flight_horizon_is_never_and_absent_retention_expires_nothing() {
        let r = Retention::at(1000, None, Some(0));
        assert!(!r.is_enabled());
        assert!(!Retention::default().expires_finished(0));
        let r = Retention::at(1000, None, Some(10));
        assert!(r.expires_in_flight(989) && !r.expires_in_flight(990));
    }

    #[test]
    fn a_clock_before_the_horizon_expires_nothing_old_enough() {
        let r = Retention::at(50, Some(100), None);
        assert_eq!(r.cutoff, Some(0));
        assert!(!r.expires_finished(0));
    }
}
