//! The operator commands behind the CLI, as library calls returning serializable reports:
//! `status`, `verify`, `backup`, `restore` (from a backup, or `--from-archive`),
//! `prune-backups`, `recover` and `compact --dry-run`; the two restores are in `restore`.
//! `main.rs` only parses arguments, prints these reports and maps errors to exit codes.
//!
//! `status` and `--dry-run` also show what retention would expire when asked
//! ([`status_at`], [`dry_run_at`]): decided by the rules from one clock reading, like a run.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::analyze::{CorruptLine, Want, analyze, analyze_file, explain};
use crate::fsutil::FileId;
use crate::pipeline::retain::RetentionRequest;
use crate::pipeline::{PipelineError, Stage, backup, journal, links, lock, open_wal, verify};
use crate::rules::CorruptLines;
use crate::rules::{Counts, Expiry, Retention, Stamp, TxCounts};
use crate::verify_archive::ArchiveMerge;
use crate::wal::SCAN_BUFFER_BYTES;

mod restore;
pub use restore::{
    ArchiveRestoreReport, RestoreReport, print_archive, restore, restore_from_archive,
};

/// Figures about one WAL, as `walcompactd status` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub wal: PathBuf,
    pub size_bytes: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: f64,
    pub lines: u64,
    pub entries: OpEntries,
    pub blank_lines: u64,
    pub unrecognized_lines: u64,
    pub transactions: TxCounts,
    /// Bytes compaction would remove now: what the rules drop, plus, with retention, what
    /// would expire (`expirable.bytes`), as the daemon's triggers count them.
    pub reclaimable_bytes: u64,
    pub reclaimable_ratio: f64,
    pub torn_tail_bytes: u64,
    pub corrupt_lines: u64,
    pub corrupt: Vec<CorruptLine>,
    /// With retention asked (flags or the WAL's policy): what would expire now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expirable: Option<Expirable>,
}

/// What retention would expire (or, in a dry run, expires): the rules' [`Expiry`] with the
/// horizons and cutoffs it was decided by, every time as RFC 3339 UTC and as seconds since
/// the epoch (the whole seconds the rules compare). A cutoff is `None` when that kind of
/// transaction never expires; `oldest`/`newest` when nothing expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expirable {
    pub expire_after_secs: Option<u64>,
    pub expire_in_flight_after_secs: Option<u64>,
    /// Finished transactions whose final line is older than this expire.
    pub cutoff: Option<String>,
    pub cutoff_secs: Option<Stamp>,
    /// In-flight transactions whose last PREPARE is older than this expire.
    pub in_flight_cutoff: Option<String>,
    pub in_flight_cutoff_secs: Option<Stamp>,
    pub transactions: u64,
    /// Lines that would leave the WAL for the archive (the ones compaction alone keeps).
    pub lines: u64,
    pub bytes: u64,
    /// The oldest and newest deciding timestamp among the expiring transactions.
    pub oldest: Option<String>,
    pub oldest_secs: Option<Stamp>,
    pub newest: Option<String>,
    pub newest_secs: Option<Stamp>,
}

impl Expirable {
    /// `e`, decided under `r`, the cutoffs of `req` at one clock reading.
    pub fn new(req: &RetentionRequest, r: &Retention, e: &Expiry) -> Expirable {
        let utc = |s: Option<Stamp>| s.map(rfc3339);
        Expirable {
            expire_after_secs: req.expire_after_secs,
            expire_in_flight_after_secs: req.expire_in_flight_after_secs,
            cutoff: utc(r.cutoff),
            cutoff_secs: r.cutoff,
            in_flight_cutoff: utc(r.in_flight_cutoff),
            in_flight_cutoff_secs: r.in_flight_cutoff,
            transactions: e.transactions,
            lines: e.lines,
            bytes: e.bytes,
            oldest: utc(e.oldest),
            oldest_secs: e.oldest,
            newest: utc(e.newest),
            newest_secs: e.newest,
        }
    }
}

/// Whole seconds since the epoch as RFC 3339 UTC (`2024-11-28T07:46:40Z`).
pub fn rfc3339(secs: Stamp) -> String {
    DateTime::from_timestamp(i64::from(secs), 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The cutoffs of an optional request at `now` ([`Retention::NONE`] without one).
fn cutoffs(retention: Option<&RetentionRequest>, now: DateTime<Utc>) -> Retention {
    retention.map_or(Retention::NONE, |req| req.at(now))
}

/// Entries per op.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct OpEntries {
    #[serde(rename = "PREPARE")]
    pub prepare: u64,
    #[serde(rename = "COMMIT")]
    pub commit: u64,
    #[serde(rename = "ABORT")]
    pub abort: u64,
}

impl From<Counts> for OpEntries {
    fn from(c: Counts) -> Self {
        OpEntries {
            prepare: c.prepare,
            commit: c.commit,
            abort: c.abort,
        }
    }
}

impl Serialize for CorruptLine {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("CorruptLine", 3)?;
        st.serialize_field("line", &self.line)?;
        st.serialize_field("offset", &self.offset)?;
        st.serialize_field("reason", &self.reason)?;
        st.end()
    }
}

fn reader_for<'a>(file: &'a File, id: &FileId) -> BufReader<std::io::Take<&'a File>> {
    BufReader::with_capacity(SCAN_BUFFER_BYTES, file.take(id.len))
}

/// Opens the WAL and runs pass 1 (the rules' index, no replay) over its current length;
/// the index keeps timestamps when `r` can expire anything.
fn index_wal(
    wal: &Path,
    corrupt_lines: CorruptLines,
    r: Retention,
) -> Result<(FileId, crate::analyze::Analysis), PipelineError> {
    let (file, id) = open_wal(wal)?;
    let want = Want::index(corrupt_lines).retaining(r);
    let an = analyze_file(&file, id.len, want, &mut |_| {})
        .map_err(|e| PipelineError::from_analyze(Stage::Analyze, wal, e))?;
    Ok((id, an))
}

/// Reads the WAL once and reports its figures; reclaimable bytes are what a compaction
/// under `corrupt_lines` would remove. Corrupt lines are reported, not fatal.
pub fn status(wal: &Path, corrupt_lines: CorruptLines) -> Result<Status, PipelineError> {
    status_at(wal, corrupt_lines, None, Utc::now())
}

/// [`status`], and with `retention` what would expire at `now` (counted in the reclaimable
/// bytes too, as the daemon's triggers count it).
pub fn status_at(
    wal: &Path,
    corrupt_lines: CorruptLines,
    retention: Option<&RetentionRequest>,
    now: DateTime<Utc>,
) -> Result<Status, PipelineError> {
    let r = cutoffs(retention, now);
    let (id, an) = index_wal(wal, corrupt_lines, r)?;
    // Walks every transaction: only when asked.
    let expirable = retention.map(|req| Expirable::new(req, &r, &an.index.expirable(&r)));
    let reclaimable = an.index.reclaimable_bytes() + expirable.as_ref().map_or(0, |e| e.bytes);
    Ok(Status {
        wal: wal.into(),
        size_bytes: id.len,
        mtime: id.mtime_ns as f64 / 1e9,
        lines: an.lines,
        entries: an.index.counts().into(),
        blank_lines: an.index.counts().blank,
        unrecognized_lines: an.index.counts().unrecognized,
        transactions: an.index.tx_counts(),
        reclaimable_bytes: reclaimable,
        reclaimable_ratio: crate::rules::reclaimable_ratio(reclaimable, id.len),
        torn_tail_bytes: an.torn_tail_bytes,
        corrupt_lines: an.corrupt_lines,
        corrupt: an.corrupt,
        expirable,
    })
}

/// What `compact --dry-run` reports: what each rule would remove.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub wal: PathBuf,
    pub outcome: &'static str,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub reclaimable_bytes: u64,
    pub lines_before: u64,
    pub lines_after: u64,
    /// Per rule; with retention, the `expired` rule is what would go to the archive.
    pub removed: Vec<RuleRemoval>,
    /// With retention asked: what would expire (as the run's report would say).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expired: Option<Expirable>,
}

/// Lines and bytes one rule removes.
#[derive(Debug, Clone, Serialize)]
pub struct RuleRemoval {
    pub rule: &'static str,
    pub lines: u64,
    pub bytes: u64,
}

/// Plans a compaction and attributes each removed line to its rule; changes nothing.
pub fn dry_run(wal: &Path, corrupt_lines: CorruptLines) -> Result<DryRun, PipelineError> {
    dry_run_at(wal, corrupt_lines, None, Utc::now())
}

/// [`dry_run`] of a run asked to expire per `retention` at `now`: the plan a run would make
/// (expired transactions' lines under the `expired` rule), still changing nothing.
pub fn dry_run_at(
    wal: &Path,
    corrupt_lines: CorruptLines,
    retention: Option<&RetentionRequest>,
    now: DateTime<Utc>,
) -> Result<DryRun, PipelineError> {
    let r = cutoffs(retention, now);
    let (id, an) = index_wal(wal, corrupt_lines, r)?;
    if corrupt_lines == CorruptLines::Refuse {
        verify::refuse_corrupt(wal, &an)?;
    }
    // `explain` reads the index afterwards, so the plan is made from a copy (as `plan()` does).
    let plan = an.index.clone().into_plan_retaining(&r);
    let (file, id2) = open_wal(wal)?;
    if id2 != id {
        return Err(PipelineError::Changed {
            path: wal.into(),
            what: "modified during the dry run".into(),
        });
    }
    let breakdown = explain(reader_for(&file, &id), &an.index, &plan)
        .map_err(|e| PipelineError::from_analyze(Stage::Analyze, wal, e))?;
    Ok(DryRun {
        wal: wal.into(),
        outcome: "dry_run",
        bytes_before: id.len,
        bytes_after: id.len - plan.reclaimable_bytes(),
        reclaimable_bytes: plan.reclaimable_bytes(),
        lines_before: an.index.counts().lines,
        lines_after: plan.survivor_lines,
        removed: breakdown
            .into_iter()
            .map(|(r, (lines, bytes))| RuleRemoval {
                rule: r.as_str(),
                lines,
                bytes,
            })
            .collect(),
        expired: retention.map(|req| Expirable::new(req, &r, &plan.expiry)),
    })
}

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub wal: PathBuf,
    pub digest: String,
    pub lines: u64,
    pub committed: u64,
    pub aborted: u64,
    pub in_flight: u64,
    pub anomalies: u64,
    pub unrecognized: u64,
    pub torn_tail_bytes: u64,
    pub corrupt_lines: u64,
    pub corrupt: Vec<CorruptLine>,
    pub against: Option<Against>,
    /// With `--archive`: the archives merged into the WAL (the figures and the digest above
    /// are then of the merged stream, and `against` of the backup plus the WAL's lines
    /// appended after it). Absent otherwise, so the output is as before.
    #[serde(flatten)]
    pub archive: Option<ArchiveMerge>,
}

/// The comparison with a backup.
#[derive(Debug, Clone, Serialize)]
pub struct Against {
    pub backup: PathBuf,
    pub digest: String,
    pub equal: bool,
}

impl VerifyReport {
    /// Whether the command succeeded. Compared with a backup: equal replay states (corrupt
    /// lines kept in place are part of both) and, with archives, every archive line found in
    /// the backup. Alone: no corrupt line.
    pub fn ok(&self) -> bool {
        match &self.against {
            Some(a) => a.equal && self.archive.as_ref().is_none_or(ArchiveMerge::whole),
            None => self.corrupt_lines == 0,
        }
    }

    /// `verify`'s exit code: 1 when the states differ (or an archive line is not in the
    /// backup), else 3 for corrupt lines found without a comparison, else 0.
    pub fn exit_code(&self) -> i32 {
        match (&self.against, self.corrupt_lines) {
            (Some(_), _) if !self.ok() => crate::pipeline::exit_code::VERIFY_FAILED,
            (None, n) if n > 0 => crate::pipeline::exit_code::CORRUPT,
            _ => crate::pipeline::exit_code::OK,
        }
    }
}

/// What a replay reads: the WAL (a file, `len` bytes of it) or a backup (a stream, since it
/// may be zstd-compressed).
enum ReplayInput<'a> {
    File(&'a File, u64),
    Stream(Box<dyn Read>),
}

/// The replay state `verify` and `restore` compare, corrupt lines kept in place: a file by
/// the parallel pass, a stream by the sequential one (the same state, property-tested).
fn replay(path: &Path, input: ReplayInput<'_>) -> Result<crate::analyze::Analysis, PipelineError> {
    const WANT: Want = Want::replay(CorruptLines::Keep);
    match input {
        ReplayInput::File(file, len) => analyze_file(file, len, WANT, &mut |_| {}),
        ReplayInput::Stream(reader) => {
            let reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, reader);
            analyze(reader, WANT, &mut |_| {})
        }
    }
    .map_err(|e| PipelineError::from_analyze(Stage::Verify, path, e))
}

/// Parses every line and computes the replay digest; with `against`, compares with a backup.
/// With `archives` (which need `against`), the WAL with the archives merged in, in the
/// backup's order, is compared with the backup plus the WAL's lines appended after it (see
/// [`crate::verify_archive`]).
pub fn verify_wal(
    wal: &Path,
    against: Option<&Path>,
    archives: &[PathBuf],
) -> Result<VerifyReport, PipelineError> {
    if !archives.is_empty() {
        let Some(b) = against else {
            return Err(PipelineError::BadInput {
                path: wal.into(),
                what: "--archive needs --against BACKUP: the archives are merged in its order"
                    .into(),
            });
        };
        let r = crate::verify_archive::replay_merged(wal, b, archives)?;
        let bd = r.backup.digest_hex();
        let state = r.merged.replay.as_ref().expect("replay requested");
        let against = Against {
            backup: b.into(),
            equal: bd == state.digest_hex(),
            digest: bd,
        };
        return Ok(verify_report(wal, r.merged, Some(against), Some(r.merge)));
    }
    let (file, id) = open_wal(wal)?;
    let an = replay(wal, ReplayInput::File(&file, id.len))?;
    let digest = an.replay.as_ref().expect("replay requested").digest_hex();
    let against = match against {
        None => None,
        Some(b) => {
            let r = backup::open_reader(b).map_err(PipelineError::io(Stage::Verify, "open", b))?;
            let ban = replay(b, ReplayInput::Stream(r))?;
            let bd = ban.replay.expect("replay requested").digest_hex();
            Some(Against {
                backup: b.into(),
                equal: bd == digest,
                digest: bd,
            })
        }
    };
    Ok(verify_report(wal, an, against, None))
}

/// `verify`'s report on the replay `an` (of the WAL, or of the WAL with its archives).
fn verify_report(
    wal: &Path,
    an: crate::analyze::Analysis,
    against: Option<Against>,
    archive: Option<ArchiveMerge>,
) -> VerifyReport {
    let state = an.replay.expect("replay requested");
    VerifyReport {
        wal: wal.into(),
        digest: state.digest_hex(),
        lines: an.lines,
        committed: state.committed,
        aborted: state.aborted,
        in_flight: state.in_flight,
        anomalies: state.anomalies,
        unrecognized: state.unrecognized,
        torn_tail_bytes: state.torn_tail_bytes,
        corrupt_lines: an.corrupt_lines,
        corrupt: an.corrupt,
        against,
        archive,
    }
}

/// Takes a backup now (hard link or copy), as the pipeline would: of the real file when
/// `wal` is a symlink (a hard link of the path would link the symlink itself).
pub fn backup_now(wal: &Path, backup_dir: Option<&Path>) -> Result<backup::Backup, PipelineError> {
    let wal = &links::resolve_wal(wal)?;
    let (file, _) = open_wal(wal)?;
    let dir = backup::backup_dir(wal, backup_dir);
    backup::check_dir(&dir)?;
    backup::create(wal, &file, &dir, chrono::Utc::now())
}

/// What `prune-backups` did.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub removed: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

/// Applies the retention rule to the WAL's backups, never removing one in `protect` (those
/// still waiting for an off-host copy).
pub fn prune_backups(
    wal: &Path,
    backup_dir: Option<&Path>,
    keep_days: u32,
    keep_last: u32,
    protect: &[&Path],
) -> Result<PruneReport, PipelineError> {
    let wal = &links::resolve_wal(wal)?;
    let dir = backup::backup_dir(wal, backup_dir);
    backup::check_dir(&dir)?;
    // `protect` holds the daemon's absolute paths; the listing's follow `dir` as given
    // (relative on the command line): compare both canonical.
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let protect: Vec<PathBuf> = protect
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    let protect: Vec<&Path> = protect.iter().map(PathBuf::as_path).collect();
    let removed = backup::prune(
        wal,
        &dir,
        keep_days,
        keep_last,
        &protect,
        chrono::Utc::now(),
    )?;
    let kept = backup::list(wal, &dir)
        .map_err(PipelineError::io(Stage::Prune, "list", &dir))?
        .into_iter()
        .map(|b| b.path)
        .collect();
    Ok(PruneReport { removed, kept })
}

/// Finishes or undoes an interrupted compaction of `wal`.
pub fn recover(wal: &Path) -> Result<journal::Recovered, PipelineError> {
    let wal = &links::resolve_wal(wal)?;
    let _lock = lock::acquire(wal, "walcompactd recover")?;
    journal::recover(wal)
}
