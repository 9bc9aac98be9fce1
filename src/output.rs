//! Human-readable renderings of the command reports (the `--json` forms are their serde
//! serializations). Kept in the library so the binary stays a thin shell.

use std::fmt::Write as _;

use crate::commands::{
    ArchiveRestoreReport, DryRun, Expirable, PruneReport, RestoreReport, Status, VerifyReport,
};
use crate::pipeline::Report;

fn pct(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

fn rfc3339(secs: f64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// `walcompactd status`.
pub fn status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "wal            {}", s.wal.display());
    let _ = writeln!(
        o,
        "size           {} bytes (modified {})",
        s.size_bytes,
        rfc3339(s.mtime)
    );
    let _ = writeln!(
        o,
        "lines          {} (blank {}, unrecognized {}, corrupt {})",
        s.lines, s.blank_lines, s.unrecognized_lines, s.corrupt_lines
    );
    let _ = writeln!(
        o,
        "entries        PREPARE {}  COMMIT {}  ABORT {}",
        s.entries.prepare, s.entries.commit, s.entries.abort
    );
    let t = &s.transactions;
    let _ = writeln!(
        o,
        "transactions   committed {}  aborted {}  in flight {}  anomalies {}",
        t.committed, t.aborted, t.in_flight, t.anomalies
    );
    let _ = writeln!(
        o,
        "reclaimable    {} bytes ({}){}",
        s.reclaimable_bytes,
        pct(s.reclaimable_ratio),
        match &s.expirable {
            Some(e) if e.bytes > 0 => format!(", {} of them expirable", e.bytes),
            _ => String::new(),
        }
    );
    if let Some(e) = &s.expirable {
        expiry(&mut o, "expirable     ", e);
    }
    let _ = writeln!(o, "torn tail      {} bytes", s.torn_tail_bytes);
    corrupt_lines(&mut o, &s.corrupt, s.corrupt_lines);
    o
}

/// What retention would expire: counts, the oldest and newest deciding timestamps, and the
/// cutoffs they were compared with (each as RFC 3339 UTC and seconds).
fn expiry(o: &mut String, label: &str, e: &Expirable) {
    let at = |t: &Option<String>, secs: Option<u32>| match (t, secs) {
        (Some(t), Some(s)) => format!("{t} ({s})"),
        _ => "-".to_string(),
    };
    let _ = writeln!(
        o,
        "{label} {} transactions, {} lines, {} bytes",
        e.transactions, e.lines, e.bytes
    );
    if e.transactions > 0 {
        let _ = writeln!(
            o,
            "               oldest {}, newest {}",
            at(&e.oldest, e.oldest_secs),
            at(&e.newest, e.newest_secs)
        );
    }
    let horizon = |h: Option<u64>, t: &Option<String>, secs| match h {
        Some(h) if h > 0 => format!("older than {h} s, before {}", at(t, secs)),
        _ => "never".to_string(),
    };
    let _ = writeln!(
        o,
        "               finished: {}; in flight: {}",
        horizon(e.expire_after_secs, &e.cutoff, e.cutoff_secs),
        horizon(
            e.expire_in_flight_after_secs,
            &e.in_flight_cutoff,
            e.in_flight_cutoff_secs
        )
    );
}

fn corrupt_lines(o: &mut String, list: &[crate::analyze::CorruptLine], total: u64) {
    for c in list {
        let _ = writeln!(
            o,
            "corrupt        line {} (byte offset {}): {}",
            c.line, c.offset, c.reason
        );
    }
    if total > list.len() as u64 {
        let _ = writeln!(
            o,
            "corrupt        ... and {} more",
            total - list.len() as u64
        );
    }
}

/// `walcompactd compact` after a run.
pub fn compact(r: &Report) -> String {
    let mut o = String::new();
    match r.outcome {
        crate::pipeline::Outcome::Skipped => {
            let _ = writeln!(
                o,
                "{}: nothing to reclaim; nothing changed",
                r.wal.display()
            );
        }
        _ => {
            let _ = writeln!(
                o,
                "{}: compacted {} -> {} bytes (reclaimed {}), {} -> {} lines",
                r.wal.display(),
                r.bytes_before,
                r.bytes_after,
                r.reclaimed_bytes,
                r.lines_before,
                r.lines_after
            );
            if r.compacted != r.wal {
                let _ = writeln!(
                    o,
                    "compacted: {} (the symlink's target)",
                    r.compacted.display()
                );
            }
            if let Some(b) = &r.backup {
                let how = if r.backup_linked == Some(true) {
                    "hard link"
                } else {
                    "copy"
                };
                let _ = writeln!(o, "backup: {} ({how})", b.display());
            }
            let _ = writeln!(o, "verified: replay digest sha256:{}", r.digest);
        }
    }
    match (&r.quarantine, r.corrupt_lines) {
        (Some(q), _) => {
            let _ = writeln!(
                o,
                "quarantined: {} corrupt lines -> {}",
                r.quarantined_lines,
                q.display()
            );
        }
        (None, 0) => {}
        (None, n) => {
            let _ = writeln!(
                o,
                "corrupt lines: {n} ({}; see `walcompactd status`)",
                match r.corrupt_lines_policy {
                    crate::rules::CorruptLines::Keep => "kept in place",
                    _ => "left in place",
                }
            );
        }
    }
    if let Some(e) = &r.expired {
        let _ = writeln!(
            o,
            "expired: {} transactions, {} lines, {} bytes{}",
            e.transactions,
            e.lines,
            e.bytes,
            r.archive
                .as_ref()
                .map(|a| format!(" -> {}", a.display()))
                .unwrap_or_default()
        );
    }
    if let Some(rec) = &r.recovered {
        let _ = writeln!(o, "recovered an interrupted run first: {rec}");
    }
    o
}

/// `walcompactd compact --dry-run`.
pub fn dry_run(d: &DryRun) -> String {
    let mut o = String::new();
    if d.reclaimable_bytes == 0 {
        let _ = writeln!(
            o,
            "{}: nothing to reclaim ({} bytes, {} lines)",
            d.wal.display(),
            d.bytes_before,
            d.lines_before
        );
        if let Some(e) = &d.expired {
            expiry(&mut o, "would expire  ", e);
        }
        return o;
    }
    let _ = writeln!(
        o,
        "{}: would compact {} -> {} bytes ({} reclaimable), {} -> {} lines",
        d.wal.display(),
        d.bytes_before,
        d.bytes_after,
        d.reclaimable_bytes,
        d.lines_before,
        d.lines_after
    );
    for r in &d.removed {
        let _ = writeln!(
            o,
            "  {:<30} {:>10} lines {:>14} bytes",
            r.rule, r.lines, r.bytes
        );
    }
    if let Some(e) = &d.expired {
        expiry(&mut o, "would expire  ", e);
    }
    let _ = writeln!(o, "dry run: nothing changed");
    o
}

/// `walcompactd verify`.
pub fn verify(v: &VerifyReport) -> String {
    let mut o = String::new();
    let what = match &v.archive {
        None => v.wal.display().to_string(),
        Some(m) => format!(
            "{} with {} archive lines merged in the backup's order ({} WAL lines appended since the backup)",
            v.wal.display(),
            m.archived_lines,
            m.appended_lines
        ),
    };
    let _ = writeln!(
        o,
        "{what}: {} lines, {} committed, {} aborted, {} in flight, {} anomalies, {} unrecognized, torn tail {} bytes",
        v.lines,
        v.committed,
        v.aborted,
        v.in_flight,
        v.anomalies,
        v.unrecognized,
        v.torn_tail_bytes
    );
    corrupt_lines(&mut o, &v.corrupt, v.corrupt_lines);
    let kept = if v.corrupt_lines > 0 {
        " (corrupt lines kept in place are part of it)"
    } else {
        ""
    };
    let _ = writeln!(o, "replay digest sha256:{}{kept}", v.digest);
    if let Some(a) = &v.against {
        let verdict = if a.equal {
            "same replay state"
        } else {
            "DIFFERENT replay state"
        };
        let _ = writeln!(
            o,
            "against {}: sha256:{} — {verdict}",
            a.backup.display(),
            a.digest
        );
    }
    for m in v.archive.iter().flat_map(|m| &m.archives) {
        let _ = match m.first_unmatched_line {
            None => writeln!(
                o,
                "archive {}: {} lines, all in the backup",
                m.archive.display(),
                m.lines
            ),
            Some(l) => writeln!(
                o,
                "archive {}: line {l} is NOT in the backup (after the {} before it): not this backup's archive, or changed",
                m.archive.display(),
                m.lines
            ),
        };
    }
    o
}

/// `walcompactd restore`.
pub fn restore(r: &RestoreReport) -> String {
    let mut o = String::new();
    if let Some(p) = &r.previous_backup {
        let _ = writeln!(o, "backed up the current WAL to {}", p.display());
    }
    let _ = writeln!(
        o,
        "restored {} from {} (replay digest sha256:{})",
        r.wal.display(),
        r.restored_from.display(),
        r.digest
    );
    o
}

/// `walcompactd restore --from-archive`.
pub fn archive_restore(r: &ArchiveRestoreReport) -> String {
    format!(
        "backed up the current WAL to {}\nappended {} lines ({} bytes) from {} to {}\n",
        r.previous_backup.display(),
        r.lines,
        r.bytes,
        r.archive.display(),
        r.wal.display()
    )
}

/// `walcompactd prune-backups`.
pub fn prune(p: &PruneReport) -> String {
    let mut o = String::new();
    for r in &p.removed {
        let _ = writeln!(o, "removed {}", r.display());
    }
    let _ = writeln!(o, "{} removed, {} kept", p.removed.len(), p.kept.len());
    o
}
