//! The WAL as read at the start of a run: an open handle (so later stages read the same
//! inode), its identity, the analysis, the plan and the replay state.

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::Path;

use super::{PipelineError, Request, Stage};
use crate::analyze::{Want, analyze_file_deferred};
use crate::fsutil::FileId;
use crate::replay::PendingReplay;
use crate::rules::{Counts, Plan, Retention};

/// One consistent view of the WAL.
pub struct Snapshot {
    pub file: File,
    pub meta: fs::Metadata,
    pub id: FileId,
    pub plan: Plan,
    /// The original's replay state, finished while the plan is built and written.
    pub replay: PendingReplay,
    pub counts: Counts,
    /// Transactions in the original: the compacted file has as many.
    pub transactions: usize,
    /// Retention: the cutoffs of this run, from the one clock reading it takes
    /// ([`Retention::NONE`] without retention); the plan and the replay both use them.
    pub retention: Retention,
    /// Online mode: ids whose deciding PREPARE the plan drops (see
    /// [`crate::rules::Indexer::txs_with_dropped_last_prepare`]); empty offline.
    pub at_risk: HashSet<String>,
    /// Online and lease modes with retention: ids this run expires.
    pub expiring: HashSet<String>,
}

/// Opens the WAL for reading, refusing what is not a readable regular file. Nothing is created.
pub fn open_wal(wal: &Path) -> Result<(File, FileId), PipelineError> {
    let bad = |what: &str| PipelineError::BadInput {
        path: wal.into(),
        what: what.into(),
    };
    let meta = match fs::metadata(wal) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(bad("WAL not found")),
        Err(e) => return Err(PipelineError::io(Stage::Analyze, "stat", wal)(e)),
    };
    if meta.is_dir() {
        return Err(bad("is a directory, not a WAL file"));
    }
    if !meta.is_file() {
        return Err(bad("is not a regular file"));
    }
    let file = File::open(wal).map_err(PipelineError::io(Stage::Analyze, "open", wal))?;
    let meta = file
        .metadata()
        .map_err(PipelineError::io(Stage::Analyze, "stat", wal))?;
    Ok((file, FileId::of(&meta)))
}

impl Snapshot {
    /// Opens and analyzes the WAL (one streaming pass); corrupt lines follow the request's
    /// policy (`refuse` refuses the WAL here). Online mode also collects the ids the tail
    /// check needs.
    pub fn take(req: &Request) -> Result<Snapshot, PipelineError> {
        let (wal, progress, online) = (req.wal.as_path(), req.progress, req.guard.admits_appends());
        let (file, id) = open_wal(wal)?;
        let meta = file
            .metadata()
            .map_err(PipelineError::io(Stage::Analyze, "stat", wal))?;
        let mut tick = |done| {
            if let Some(p) = progress {
                p(Stage::Analyze, done, id.len)
            }
        };
        let retention = req
            .retention
            .as_ref()
            .map_or(Retention::NONE, |r| r.at(retention_now()));
        let want = Want::both(req.corrupt_lines).retaining(retention);
        let (analysis, replayer) = analyze_file_deferred(&file, id.len, want, &mut tick)
            .map_err(|e| PipelineError::from_analyze(Stage::Analyze, wal, e))?;
        if req.corrupt_lines == crate::rules::CorruptLines::Refuse {
            super::verify::refuse_corrupt(wal, &analysis)?;
        }
        let at_risk = match online {
            true => analysis
                .index
                .txs_with_dropped_last_prepare()
                .map(|i| analysis.ids.get(i).to_owned())
                .collect(),
            false => HashSet::new(),
        };
        // A line appended during the run for a transaction this run expires would have kept
        // it (or be decided by a PREPARE that left for the archive): such a run gives up.
        let expiring = match online {
            true => analysis
                .index
                .expiring(&retention)
                .map(|i| analysis.ids.get(i).to_owned())
                .collect(),
            false => HashSet::new(),
        };
        // Planning needs no ids: they go to the thread finishing the replay, and are freed
        // when it is done.
        let crate::analyze::Analysis { index, ids, .. } = analysis;
        let replay = PendingReplay::spawn(replayer.expect("replay requested"), ids);
        let counts = index.counts();
        let index_transactions = index.transactions();
        let plan = index.into_plan_retaining(&retention);
        // Expired transactions are not in the compacted file (a capacity hint).
        let transactions = index_transactions - plan.expiry.transactions as usize;
        Ok(Snapshot {
            file,
            meta,
            id,
            plan,
            replay,
            counts,
            transactions,
            retention,
            at_risk,
            expiring,
        })
    }
}

/// The clock reading retention decides from. Tests move it with the fail point
/// `retention::now=return(SECONDS)` (a wall clock stepped by NTP or an operator).
fn retention_now() -> chrono::DateTime<chrono::Utc> {
    fail::fail_point!("retention::now", |secs: Option<String>| {
        let secs = secs.and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default()
    });
    chrono::Utc::now()
}
