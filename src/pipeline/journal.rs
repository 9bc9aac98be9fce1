//! The intent journal: a small file written (atomically) before each step that can leave
//! the WAL's directory half-changed, so the next run or `walcompactd recover` can finish or
//! undo it. Recovery runs only under the compaction lock.
//!
//! Phases and what recovery does:
//! - `writing`: the temp file may be partial; the WAL is untouched → remove the temp, then
//!   the run's backup (it never swapped, so the backup is litter; see `litter.rs`).
//! - `swapping`: the temp was verified and is being renamed over the WAL. If the temp still
//!   exists the rename did not happen → remove it, then the run's backup. Otherwise the
//!   rename happened → fsync the directory so it sticks, and keep the backup.
//! - `rolling_back`: the swapped WAL failed a check and the original is being restored from
//!   the backup. If the WAL does not begin with the backup's bytes, restore it again.
//!
//! A run that quarantines corrupt lines records the quarantine file's length first: a run
//! that did not swap (writing, swapping with the temp still there, rolled back) leaves those
//! lines in the WAL, so recovery truncates the quarantine file back to it; a swapped run's
//! records stay (see [`super::quarantine`]).
//!
//! A leased exchange (lease mode, its restore, offline under a lease) also leaves a late
//! record while it runs (see [`super::guard::late`]): recovery merges what writers appended
//! to the old inode after the swap first, before anything else here removes that inode.
//!
//! Without a journal, recovery removes leftover temp files (only this tool creates them).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::guard::{Guard, Mode};
use super::{PipelineError, Stage};
use crate::fsutil::{atomic_write_then, fsync_dir, parent_dir, sibling};

/// The journal names files and inodes, no payload; still ours alone.
const JOURNAL_MODE: u32 = 0o600;
/// Suffix of the journal file.
pub const JOURNAL_SUFFIX: &str = ".compact.journal";
/// Suffix of the compacted WAL while it is written and verified.
pub const TEMP_SUFFIX: &str = ".compact.tmp";
/// Suffix of a copy of a backup on its way back to the WAL's path.
pub const ROLLBACK_SUFFIX: &str = ".rollback.tmp";

/// Where the run was when it wrote the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Writing,
    Swapping,
    RollingBack,
}

/// The journal's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub phase: Phase,
    /// How the run keeps writers out: recovery restores through the same guard. Absent in
    /// journals of versions that did not record it (see [`Journal::mode`]).
    #[serde(default)]
    pub mode: Option<Mode>,
    pub temp: PathBuf,
    pub backup: Option<PathBuf>,
    /// Replay digest of the WAL before compaction, from the swap on (it is still being
    /// computed while the temp is written): for people reading the journal; recovery
    /// decides by bytes, so a digest from another version never misleads it.
    #[serde(default)]
    pub original_digest: Option<String>,
    pub pid: u32,
    /// Length of the new WAL at the swap, from the rollback on: online, bytes after it were
    /// appended by writers since and are kept when the backup is restored.
    #[serde(default)]
    pub len_at_swap: Option<u64>,
    /// The quarantine file this run appends to, and its length before.
    #[serde(default)]
    pub quarantine: Option<super::quarantine::Mark>,
    /// The temp file's inode, from the swap on: the WAL's path holding it is what says the
    /// rename happened, even after the temp's guard removed a temp that never was renamed.
    #[serde(default)]
    pub temp_ino: Option<u64>,
    /// The inode compacted (the WAL as read): after an exchange the temp's name holds it;
    /// anything else there is a file someone else put at the WAL's path, to be put back.
    #[serde(default)]
    pub wal_ino: Option<u64>,
    /// Retention: the archive this run writes, recorded before its first line. A run that
    /// leaves the original WAL (did not swap, or rolled back) removes it.
    #[serde(default)]
    pub archive: Option<super::expire::ArchiveMark>,
}

impl Journal {
    /// The first entry of a run (`writing`): its mode, temp file, backup and quarantine mark.
    pub fn start(
        mode: Mode,
        wal: &Path,
        wal_ino: u64,
        backup: &super::backup::Backup,
        quarantine: Option<super::quarantine::Mark>,
    ) -> Journal {
        Journal {
            wal_ino: Some(wal_ino),
            phase: Phase::Writing,
            mode: Some(mode),
            temp: sibling(wal, TEMP_SUFFIX),
            backup: Some(backup.path.clone()),
            original_digest: None,
            pid: std::process::id(),
            len_at_swap: None,
            quarantine,
            temp_ino: None,
            archive: None,
        }
    }

    /// The run's mode. A journal from a version that did not record it was online exactly
    /// when it recorded a rollback's `len_at_swap` (only online rollbacks did).
    pub fn mode(&self) -> Mode {
        match (self.mode, self.len_at_swap) {
            (Some(mode), _) => mode,
            (None, Some(_)) => Mode::Online,
            (None, None) => Mode::Offline,
        }
    }

    /// Whether the WAL at `wal` is still (or again) the original: the run's temp was not
    /// renamed over it, or a rollback put the original back. Call when the run is over.
    pub fn left_the_original(&self, wal: &Path) -> bool {
        match (self.phase, self.temp_ino) {
            (Phase::Writing | Phase::RollingBack, _) => true,
            // A WAL that cannot be examined is not assumed to be the original: its
            // quarantine records stay (a duplicate rather than a loss).
            (Phase::Swapping, Some(ino)) => {
                fs::metadata(wal).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) != ino)
            }
            // rename() is atomic: the temp still being there means it never happened.
            (Phase::Swapping, None) => self.temp.exists(),
        }
    }

    /// True when the exchange brought out a file that is neither the WAL compacted nor our
    /// temp: someone else's file, which must go back to the WAL's path, never be removed.
    pub fn foreign_at_temp(&self) -> bool {
        let (Some(wal_ino), Some(temp_ino)) = (self.wal_ino, self.temp_ino) else {
            return false;
        };
        fs::symlink_metadata(&self.temp).is_ok_and(|m| {
            let ino = std::os::unix::fs::MetadataExt::ino(&m);
            ino != wal_ino && ino != temp_ino
        })
    }

    /// Takes back the quarantine records and the archive of a run that left the original
    /// at `wal`: their lines are all still in it.
    pub fn undo_quarantine(&self, wal: &Path, stage: Stage) -> Result<(), PipelineError> {
        if !self.left_the_original(wal) {
            return Ok(());
        }
        if let Some(mark) = &self.archive {
            mark.discard(wal)?;
        }
        match &self.quarantine {
            Some(mark) => mark.undo(stage),
            None => Ok(()),
        }
    }
}

/// What recovery found and did. Serialized (JSON) as the variant's name; `Display` adds
/// the removed files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    Nothing,
    /// Temp files with no journal were removed.
    RemovedLeftovers(Vec<PathBuf>),
    /// An interrupted write was undone; the WAL is the original.
    DiscardedTemp,
    /// An interrupted swap had happened; it is now durable.
    CompletedSwap,
    /// An interrupted rollback was finished; the WAL is the original again.
    FinishedRollback,
    /// An interrupted swap had exchanged out a file someone else put at the WAL's path; it
    /// is back at the path and the compacted file was discarded.
    PutBackReplacedWal,
    /// A leased exchange was interrupted after the swap: lines writers appended to the old
    /// WAL were merged into the new one.
    MergedLateLines,
}

impl Recovered {
    /// The variant's name, as JSON output and logs give it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Recovered::Nothing => "Nothing",
            Recovered::RemovedLeftovers(_) => "RemovedLeftovers",
            Recovered::DiscardedTemp => "DiscardedTemp",
            Recovered::CompletedSwap => "CompletedSwap",
            Recovered::FinishedRollback => "FinishedRollback",
            Recovered::PutBackReplacedWal => "PutBackReplacedWal",
            Recovered::MergedLateLines => "MergedLateLines",
        }
    }

    /// The leftover files removed, if that is what recovery did.
    pub fn removed(&self) -> &[PathBuf] {
        match self {
            Recovered::RemovedLeftovers(v) => v,
            _ => &[],
        }
    }
}

impl Serialize for Recovered {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.as_str())?;
        let removed: Vec<String> = self
            .removed()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        match removed.is_empty() {
            true => Ok(()),
            false => write!(f, " ({})", removed.join(", ")),
        }
    }
}

/// The journal's path for `wal`.
pub fn journal_path(wal: &Path) -> PathBuf {
    sibling(wal, JOURNAL_SUFFIX)
}

/// Records `journal` durably before the step it describes.
pub fn write(wal: &Path, journal: &Journal) -> Result<(), PipelineError> {
    let path = journal_path(wal);
    let bytes = serde_json::to_vec_pretty(journal).expect("journal serializes");
    let before_rename = || crate::crash_point!("journal::rename::crash");
    crate::io_fault!("journal::write")
        .and_then(|()| atomic_write_then(&path, &bytes, JOURNAL_MODE, before_rename))
        .map_err(PipelineError::io(Stage::Journal, "write", &path))
}

/// Moves `journal` to `phase` durably; the entry in memory changes only once the one on
/// disk did, so the two never disagree about where the run is.
pub fn advance(journal: &mut Journal, wal: &Path, phase: Phase) -> Result<(), PipelineError> {
    let mut next = journal.clone();
    next.phase = phase;
    write(wal, &next)?;
    *journal = next;
    Ok(())
}

/// Removes the journal once the run is finished (fsyncs the directory).
pub fn clear(wal: &Path) -> Result<(), PipelineError> {
    let path = journal_path(wal);
    match fs::remove_file(&path) {
        Ok(()) => fsync_dir(&parent_dir(wal)).map_err(PipelineError::io(
            Stage::Journal,
            "fsync dir of",
            &path,
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PipelineError::io(Stage::Journal, "remove", &path)(e)),
    }
}

fn read(wal: &Path) -> Result<Option<Journal>, PipelineError> {
    let path = journal_path(wal);
    // Not through a symlink planted at its name: its target is nobody's journal.
    let read = crate::fsutil::safe::Dir::of(&path).and_then(|(dir, name)| {
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut dir.open_read(&name)?, &mut bytes).map(|_| bytes)
    });
    match read {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            PipelineError::BadInput {
                path: path.clone(),
                what: format!("unreadable journal ({e}); inspect it, then remove it to continue"),
            }
        })?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PipelineError::io(Stage::Recover, "read", &path)(e)),
    }
}

/// Whether an interrupted run left something to recover (a journal, or a late record).
pub fn pending(wal: &Path) -> bool {
    journal_path(wal).exists() || super::guard::late::record_path(wal).exists()
}

/// Finishes or undoes an interrupted run. Call only while holding the compaction lock.
pub fn recover(wal: &Path) -> Result<Recovered, PipelineError> {
    // Lines writers appended to the old inode after a leased exchange are merged first:
    // the old inode is at a name recovery otherwise removes as litter.
    let late = super::guard::late::recover(wal)?;
    let Some(journal) = read(wal)? else {
        if let Some(inos) = late {
            // A restore's exchange (it keeps no journal): the merge was the whole recovery.
            remove_leftovers(wal, &inos)?;
            return Ok(Recovered::MergedLateLines);
        }
        return remove_leftovers(wal, &[]).map(|v| {
            if v.is_empty() {
                Recovered::Nothing
            } else {
                Recovered::RemovedLeftovers(v)
            }
        });
    };
    // The files the journal (and a late record) name are ours to remove even when not
    // ours by owner: after an exchange the temp's name holds the WAL's old inode.
    let known: Vec<u64> = [journal.wal_ino, journal.temp_ino]
        .into_iter()
        .flatten()
        .chain(late.unwrap_or_default())
        .collect();
    // Quarantine records are taken back while the journal still says why: before the temp
    // is removed (its existence is what says the swap did not happen), after a rollback.
    let done = match journal.phase {
        Phase::Writing => {
            journal.undo_quarantine(wal, Stage::Recover)?;
            remove_if_exists(&journal.temp, &known)?;
            discard_backup(wal, &journal)?;
            Recovered::DiscardedTemp
        }
        Phase::Swapping => recover_swap(wal, &journal, &known)?,
        Phase::RollingBack => {
            let done = recover_rollback(wal, &journal)?;
            journal.undo_quarantine(wal, Stage::Recover)?;
            done
        }
    };
    remove_leftovers(wal, &known)?;
    clear(wal)?;
    Ok(done)
}

fn recover_swap(wal: &Path, journal: &Journal, known: &[u64]) -> Result<Recovered, PipelineError> {
    if journal.foreign_at_temp() {
        // Interrupted between an exchange that brought out someone else's file and the
        // exchange back: put it back, then our compacted file (now at the temp) goes. The
        // quarantine records and the backup stay: the original is no longer at the path.
        super::swap::exchange_back(&journal.temp, wal)?;
        remove_if_exists(&journal.temp, known)?;
        return Ok(Recovered::PutBackReplacedWal);
    }
    if journal.left_the_original(wal) {
        // rename() is atomic: the temp still there (or, once its inode is journaled, the
        // WAL's path not holding it) means the WAL was never replaced.
        journal.undo_quarantine(wal, Stage::Recover)?;
        remove_if_exists(&journal.temp, known)?;
        discard_backup(wal, journal)?;
        return Ok(Recovered::DiscardedTemp);
    }
    fsync_dir(&parent_dir(wal)).map_err(PipelineError::io(Stage::Recover, "fsync dir of", wal))?;
    Ok(Recovered::CompletedSwap)
}

/// The interrupted run never swapped: its backup is litter. Removed before the journal is
/// cleared (the journal is what names it), and only if that loses no byte.
fn discard_backup(wal: &Path, journal: &Journal) -> Result<(), PipelineError> {
    if let Some(backup) = &journal.backup {
        super::litter::discard_unswapped(wal, backup, Stage::Recover)?;
    }
    Ok(())
}

fn recover_rollback(wal: &Path, journal: &Journal) -> Result<Recovered, PipelineError> {
    let backup = journal
        .backup
        .as_deref()
        .ok_or_else(|| PipelineError::BadInput {
            path: journal_path(wal),
            what: "rolling back without a backup path".into(),
        })?;
    // Compare bytes, not replay digests: the compacted WAL replays to the same state as the
    // backup by construction, yet the application's check rejected it.
    if starts_with(wal, backup).map_err(PipelineError::io(
        Stage::Recover,
        "compare with backup",
        wal,
    ))? {
        return Ok(Recovered::FinishedRollback);
    }
    let mode = journal.mode();
    if mode == Mode::Online && journal.len_at_swap.is_none() {
        // Restoring without it would drop what writers appended since the swap.
        return Err(PipelineError::BadInput {
            path: journal_path(wal),
            what: "an online rollback without the WAL's length at the swap; inspect the journal, then remove it to continue".into(),
        });
    }
    // Writers may be appending (online): the guard restores under their lock, keeping their lines.
    Guard::for_rollback(mode).restore(backup, wal, Stage::Recover, journal.len_at_swap)?;
    Ok(Recovered::FinishedRollback)
}

/// True if the file at `path` begins with every byte of `prefix`.
pub(crate) fn starts_with(path: &Path, prefix: &Path) -> io::Result<bool> {
    let mut a = io::BufReader::new(fs::File::open(path)?);
    let mut b = io::BufReader::new(fs::File::open(prefix)?);
    loop {
        let want = io::BufRead::fill_buf(&mut b)?;
        if want.is_empty() {
            return Ok(true);
        }
        let have = io::BufRead::fill_buf(&mut a)?;
        let n = want.len().min(have.len());
        if n == 0 || want[..n] != have[..n] {
            return Ok(false);
        }
        io::BufRead::consume(&mut a, n);
        io::BufRead::consume(&mut b, n);
    }
}

/// Temp files this tool may leave behind for `wal`.
pub fn leftover_paths(wal: &Path) -> Vec<PathBuf> {
    [
        TEMP_SUFFIX,
        ROLLBACK_SUFFIX,
        ".compact.journal.tmp",
        ".compact.late.tmp",
    ]
    .iter()
    .map(|s| sibling(wal, s))
    .collect()
}

/// Removes the temp files an interrupted run left (ours, or inodes `known` from its journal);
/// anything else at those names is refused, never removed or followed.
fn remove_leftovers(wal: &Path, known: &[u64]) -> Result<Vec<PathBuf>, PipelineError> {
    let mut removed = Vec::new();
    for p in leftover_paths(wal) {
        if remove_if_exists(&p, known)? {
            removed.push(p);
        }
    }
    if !removed.is_empty() {
        fsync_dir(&parent_dir(wal)).map_err(PipelineError::io(
            Stage::Recover,
            "fsync dir of",
            wal,
        ))?;
    }
    Ok(removed)
}

fn remove_if_exists(p: &Path, known: &[u64]) -> Result<bool, PipelineError> {
    crate::fsutil::safe::Dir::of(p)
        .and_then(|(dir, name)| dir.remove_leftover_known(&name, known))
        .map_err(PipelineError::io(Stage::Recover, "remove", p))
}
