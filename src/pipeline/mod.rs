//! The compaction pipeline: backup → compact → verify → (quarantine →) swap (→ rollback),
//! one module per stage, sequenced by [`run`]. Knows nothing of the daemon: callers pass a [`Request`] and
//! get a [`Report`] or a [`PipelineError`] naming the stage.
//!
//! At every moment the WAL's path holds a complete WAL that replays to the original state:
//! the original until the rename, the verified compacted file after it. Everything else
//! (temp file, journal) is beside it under names [`journal::recover`] recognizes.

pub mod archive;
pub mod backup;
pub mod compact;
mod error;
pub mod expire;
pub mod guard;
mod handoff;
pub mod journal;
pub mod links;
mod litter;
pub mod lock;
pub mod quarantine;
mod report;
pub mod retain;
pub mod rollback;
mod snapshot;
pub mod swap;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

pub use error::{PipelineError, exit_code};
use guard::Swapped;
pub use guard::{Guard, Lease, LeaseStats, Mode, Online, OnlineStats};
use report::{Clock, report};
pub use report::{Outcome, Report, Stage, StageTime};
pub use snapshot::{Snapshot, open_wal};

use crate::rules::CorruptLines;

/// A post-swap check of the new WAL (the application's own verify hook): `Err` rolls back.
pub type CheckFn<'a> = &'a (dyn Fn(&Path, &Path) -> Result<(), String> + Sync);
/// Progress callback: stage, bytes done, bytes in all.
pub type ProgressFn<'a> = &'a (dyn Fn(Stage, u64, u64) + Sync);

/// What to compact and how.
#[derive(Clone)]
pub struct Request<'a> {
    pub wal: PathBuf,
    /// Where backups go; `None` = the WAL's directory.
    pub backup_dir: Option<PathBuf>,
    /// Who runs it, recorded in the lock file (`walcompactd compact`, `daemon`).
    pub who: String,
    pub check: Option<CheckFn<'a>>,
    pub progress: Option<ProgressFn<'a>>,
    /// Set by the daemon at shutdown: the run stops at the next safe point (before the
    /// backup, before writing, before the swap), leaving the WAL as it was.
    pub cancel: Option<&'a AtomicBool>,
    /// How writers are kept out (offline, or online for protocol writers).
    pub guard: Guard,
    /// What happens to corrupt lines (policy `corrupt_lines`).
    pub corrupt_lines: CorruptLines,
    /// Compact a WAL whose inode has other hard links too (they keep the old file).
    pub allow_hard_links: bool,
    /// Opt-in retention: old finished transactions leave for an archive.
    pub retention: Option<retain::RetentionRequest>,
}

impl Request<'_> {
    /// A request with defaults: backups beside the WAL, no check, no progress.
    pub fn new(wal: impl Into<PathBuf>, who: &str) -> Request<'static> {
        Request {
            wal: wal.into(),
            backup_dir: None,
            who: who.into(),
            check: None,
            progress: None,
            cancel: None,
            guard: Guard::Offline,
            corrupt_lines: CorruptLines::default(),
            allow_hard_links: false,
            retention: None,
        }
    }
}

/// Runs backup → compact → verify → swap (→ rollback) on one WAL. A symlink at the WAL's
/// path is resolved once, here: every stage works on the real file (see [`links`]).
pub fn run(req: &Request) -> Result<Report, PipelineError> {
    links::on_real_file(req, run_resolved)
}

/// The sequencer: each step is a stage module's call; this only orders them.
fn run_resolved(req: &Request) -> Result<Report, PipelineError> {
    let mut clock = Clock::start();
    // Offline: the kernel keeps writers out from before the WAL is read.
    let mut hold = req.guard.hold(&req.wal)?;
    let mut snap = clock.stage(Stage::Analyze, || Snapshot::take(req))?;
    let backup_dir = backup::backup_dir(&req.wal, req.backup_dir.as_deref());
    backup::check_dir(&backup_dir)?;
    if snap.plan.reclaimable_bytes() == 0 && !journal::pending(&req.wal) {
        return Ok(report(req, &snap, &clock, Outcome::Skipped, None, None));
    }
    let _lock = clock.stage(Stage::Lock, || lock::acquire(&req.wal, &req.who))?;
    let recovered = if journal::pending(&req.wal) {
        // Recovery may append to the WAL: never under our own lease, it would block on it.
        drop(hold);
        let recovered = clock.stage(Stage::Recover, || journal::recover(&req.wal))?;
        hold = req.guard.hold(&req.wal)?;
        recovered
    } else {
        clock.stage(Stage::Recover, || journal::recover(&req.wal))?
    };
    if open_wal(&req.wal)?.1 != snap.id {
        // Recovery or another compaction changed the WAL since it was analyzed.
        snap = clock.stage(Stage::Analyze, || Snapshot::take(req))?;
    }
    let recovered = (recovered != journal::Recovered::Nothing).then_some(recovered);
    if snap.plan.reclaimable_bytes() == 0 {
        return Ok(report(
            req,
            &snap,
            &clock,
            Outcome::Skipped,
            None,
            recovered,
        ));
    }
    checkpoint(req, Stage::Backup)?;
    hold.given_up(&req.wal)?;
    if !req.allow_hard_links {
        links::refuse_other_hard_links(&req.wal, &snap.file, &backup_dir)?;
    }
    compact::precheck_space(&req.wal, &snap, &backup_dir)?;
    let backup = clock.stage(Stage::Backup, || {
        backup::create(&req.wal, &snap.file, &backup_dir, chrono::Utc::now())
    })?;
    let mut run = Run::new(req, snap, backup, &backup_dir, clock, hold)?;
    let swapped = run.compact_and_swap()?;
    let Run {
        snap,
        backup,
        clock,
        archive,
        ..
    } = run;
    let mut r = report(
        req,
        &snap,
        &clock,
        Outcome::Success,
        Some(backup),
        recovered,
    );
    r.archive = archive.map(|a| a.path);
    if r.quarantined_lines > 0 {
        r.quarantine = Some(quarantine::quarantine_path(&req.wal, &backup_dir));
    }
    if let Some(o) = swapped.online {
        // Lines appended during the run are in the new WAL too.
        r.bytes_after += o.appended_bytes;
        r.online = Some(o);
    }
    if let Some(l) = swapped.lease {
        r.bytes_after += l.late_bytes;
        r.lease = Some(l);
    }
    Ok(r)
}

/// A run from its backup on: what every later stage needs, in one place instead of long
/// parameter lists. Its journal entry always describes where the run is.
pub(in crate::pipeline) struct Run<'a> {
    pub(in crate::pipeline) req: &'a Request<'a>,
    pub(in crate::pipeline) snap: Snapshot,
    pub(in crate::pipeline) backup: backup::Backup,
    pub(in crate::pipeline) journal: journal::Journal,
    pub(in crate::pipeline) clock: Clock,
    /// What the guard holds for the run (offline: the read lease), until the swap.
    pub(in crate::pipeline) hold: guard::Hold,
    /// Retention: where archives go, and the archive this run wrote.
    archive_dir: PathBuf,
    pub(in crate::pipeline) archive: Option<archive::Archive>,
}

impl<'a> Run<'a> {
    /// Records the run's first journal entry (`writing`), naming its backup, temp file and
    /// quarantine mark, so that recovery can undo all of them.
    fn new(
        req: &'a Request<'a>,
        snap: Snapshot,
        backup: backup::Backup,
        backup_dir: &Path,
        clock: Clock,
        hold: guard::Hold,
    ) -> Result<Run<'a>, PipelineError> {
        let wal = req.wal.as_path();
        let quarantine = match snap.plan.set_aside.is_empty() {
            true => None,
            false => Some(quarantine::Mark::take(quarantine::quarantine_path(
                wal, backup_dir,
            ))?),
        };
        let run = Run {
            journal: journal::Journal::start(
                req.guard.mode(),
                wal,
                snap.id.ino,
                &backup,
                quarantine,
            ),
            req,
            snap,
            backup,
            clock,
            hold,
            archive_dir: req
                .retention
                .as_ref()
                .and_then(|r| r.archive_dir.clone())
                .unwrap_or_else(|| backup_dir.to_path_buf()),
            archive: None,
        };
        if let Err(e) = journal::write(wal, &run.journal) {
            run.undo_unswapped();
            return Err(e);
        }
        Ok(run)
    }

    /// A safe point: stop here if cancelled, or if a writer broke the offline lease.
    fn checkpoint(&self, next: Stage) -> Result<(), PipelineError> {
        checkpoint(self.req, next)?;
        self.hold.given_up(&self.req.wal)
    }

    /// Moves the journal to `phase` (durably, before the step it announces).
    pub(in crate::pipeline) fn journal_phase(
        &mut self,
        phase: journal::Phase,
    ) -> Result<(), PipelineError> {
        journal::advance(&mut self.journal, &self.req.wal, phase)
    }

    /// The stages that change files, each announced by the journal. On failure, a run that
    /// did not swap takes back what it did before the journal is cleared.
    fn compact_and_swap(&mut self) -> Result<Swapped, PipelineError> {
        let result = self.write_verify_swap();
        if let Err(e) = &result {
            let rollback_failed = self.journal.phase == journal::Phase::RollingBack
                && !matches!(e, PipelineError::CheckFailed { .. });
            // A rollback that failed leaves the rejected WAL in place: the journal stays, so
            // the next run or `walcompactd recover` finishes the rollback (and only then
            // takes back quarantine records and keeps the backup it restores from).
            if !rollback_failed {
                self.undo_unswapped();
            }
        }
        result
    }

    /// The WAL is intact (or rolled back): the corrupt lines are still in it, and a run that
    /// never swapped leaves no backup. Both are undone BEFORE the journal naming them is
    /// cleared; the temp was removed by its guard.
    fn undo_unswapped(&self) {
        let wal = self.req.wal.as_path();
        if self.journal.foreign_at_temp() {
            // An exchange back failed: someone else's file is at the temp's name. The journal
            // stays, so recovery puts it back; nothing here may remove it.
            tracing::error!(event = "swap", wal = %wal.display(), temp = %self.journal.temp.display(),
                "the file that replaced the WAL is at the temp's name; `walcompactd recover` puts it back");
            return;
        }
        let undone = self.journal.undo_quarantine(wal, Stage::Quarantine);
        litter::after_failed_run(wal, &self.snap.id, &self.backup.path);
        if undone.is_ok() {
            let _ = journal::clear(wal);
        }
    }

    fn write_verify_swap(&mut self) -> Result<Swapped, PipelineError> {
        let wal = self.req.wal.clone();
        self.checkpoint(Stage::Compact)?;
        let archiving = self.start_archive()?;
        let mut temp = compact::create_temp(&self.journal.temp, &self.snap.meta)?;
        self.journal.temp_ino = Some(temp.ino()?);
        self.write_archive_and_verify(&mut temp, archiving)?;
        // Verification waited for the original's replay state: this does not block.
        self.journal.original_digest = Some(self.snap.replay.get().digest_hex());
        self.quarantine()?;
        self.checkpoint(Stage::Swap)?;
        let swapped = self.req.guard.swap(self, &mut temp)?;
        temp.keep();
        // Close our writable descriptor of what is now the WAL: a rollback in lease mode
        // takes a read lease on it, which our own writer would prevent.
        drop(temp);
        self.check_or_rollback(&swapped)?;
        journal::clear(&wal)?;
        Ok(swapped)
    }

    /// Writes the temp file while verification re-reads it (handed the written length),
    /// then fsyncs it while verification finishes: the writes and the flush wait on the
    /// kernel and the device, verification on the CPU. All must succeed before the rename
    /// (fsync the temp file BEFORE rename, or a crash can leave an empty WAL). A write or
    /// fsync error is reported first. The compact stage times the writing, the verify stage
    /// what is left.
    fn write_and_verify(&mut self, temp: &mut compact::TempFile) -> Result<(), PipelineError> {
        let wal = self.req.wal.as_path();
        let snap = &mut self.snap;
        let clock = &mut self.clock;
        let expected_len = snap.plan.survivor_bytes() + (snap.id.len - snap.plan.scanned_len);
        let handoff = handoff::Handoff::default();
        let (expected, txs) = (&snap.replay, snap.transactions);
        let temp_path = temp.path.clone();
        std::thread::scope(|scope| {
            let verified = scope.spawn(|| {
                verify::verify_temp(&temp_path, wal, expected, expected_len, txs, &handoff)
            });
            let written = clock.stage(Stage::Compact, || {
                temp.write(&snap.file, &snap.plan, snap.id.len, &handoff)
            });
            // Written: the plan's lines are not needed any more.
            snap.plan.release_lines();
            clock.stage(Stage::Verify, || {
                let synced = written
                    .and_then(|n| verify::check_len(wal, n, expected_len))
                    .and_then(|()| temp.sync())
                    .and_then(|()| verify::check_len(wal, temp.len_on_disk()?, expected_len));
                let verified = verified
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                synced.and(verified.map(|_| ()))
            })
        })
    }

    /// Starts the archive of the expired transactions' lines, if any expired, and journals it
    /// (durably) BEFORE its first line is written: a crash from here on leaves a journal that
    /// names it, so recovery removes it unless the swap happened (see [`expire`]).
    fn start_archive(&mut self) -> Result<Option<expire::Pending>, PipelineError> {
        if self.snap.plan.expiry.lines == 0 {
            return Ok(None);
        }
        let (wal, dir) = (self.req.wal.clone(), self.archive_dir.clone());
        let (pending, mark) = expire::create(&wal, &dir, &mut self.snap)?;
        self.journal.archive = Some(mark);
        // On error `pending` is dropped, which removes the partial archive.
        journal::write(&wal, &self.journal)?;
        Ok(Some(pending))
    }

    /// Writes the archive (if the run expires lines) on a thread of its own while the temp is
    /// written and verified: both only read the WAL as analyzed, and with most of the WAL
    /// expiring the archive is the longer of the two. Both must succeed before the swap,
    /// which comes after this returns: the archive fsynced, named, its directory fsynced and
    /// read back; the temp fsynced and verified. An archive error is reported first.
    fn write_archive_and_verify(
        &mut self,
        temp: &mut compact::TempFile,
        archiving: Option<expire::Pending>,
    ) -> Result<(), PipelineError> {
        let Some(pending) = archiving else {
            return self.write_and_verify(temp);
        };
        let (compacted, (archived, took)) = std::thread::scope(|scope| {
            let archiving = scope.spawn(|| {
                let start = std::time::Instant::now();
                (expire::write(pending), report::ms(start))
            });
            let compacted = self.write_and_verify(temp);
            // The temp is complete (or failed) and the archive may still be unfinished: a
            // crash here leaves both, which recovery removes (the journal names them).
            if compacted.is_ok() {
                crate::crash_point!("compact::archive_pending::crash");
            }
            let archived = archiving
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (compacted, archived)
        });
        self.clock.record(Stage::Archive, took);
        self.archive = Some(archived?);
        compacted
    }

    /// Moves the plan's corrupt lines to the quarantine file, if there are any: durable and
    /// checked BEFORE the swap, or a crash after it loses them.
    fn quarantine(&mut self) -> Result<(), PipelineError> {
        let Some(mark) = &self.journal.quarantine else {
            return Ok(());
        };
        let (wal, snap) = (self.req.wal.as_path(), &self.snap);
        self.clock.stage(Stage::Quarantine, || {
            quarantine::append(
                mark,
                wal,
                &snap.file,
                &snap.plan.set_aside,
                &snap.replay.get().set_aside,
                &snap.meta,
            )
        })
    }

    /// Runs the application's check of the swapped WAL; on failure the guard restores the
    /// backup, keeping (online) every line appended since the swap.
    fn check_or_rollback(&mut self, swapped: &Swapped) -> Result<(), PipelineError> {
        let Some(check) = self.req.check else {
            return Ok(());
        };
        let (wal, backup) = (self.req.wal.clone(), self.backup.path.clone());
        let Err(detail) = self.clock.stage(Stage::Check, || check(&wal, &backup)) else {
            return Ok(());
        };
        self.journal.len_at_swap = Some(swapped.len_at_swap);
        // The application said no: roll back even if the journal cannot say so (a full
        // disk); the restore is crash-safe on its own, and the WAL it leaves is the original.
        let journaled = self.journal_phase(journal::Phase::RollingBack);
        let guard = Guard::for_rollback(self.req.guard.mode());
        let restored = self.clock.stage(Stage::Rollback, || {
            guard.restore(&backup, &wal, Stage::Rollback, Some(swapped.len_at_swap))
        });
        restored.map_err(|e| journaled.err().unwrap_or(e))?;
        Err(PipelineError::CheckFailed {
            path: wal,
            backup,
            detail,
        })
    }
}

/// A safe point: stop here if cancellation was requested.
fn checkpoint(req: &Request, next: Stage) -> Result<(), PipelineError> {
    match req.cancel {
        Some(flag) if flag.load(Ordering::SeqCst) => Err(PipelineError::Cancelled {
            path: req.wal.clone(),
            stage: next,
        }),
        _ => Ok(()),
    }
}
