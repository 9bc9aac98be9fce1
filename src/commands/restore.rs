//! `restore`: a backup back in place of the WAL (crash-safely, after backing up the current
//! one), and `restore --from-archive`: archived transactions appended in order to a stopped
//! WAL, or printed.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::{ReplayInput, SCAN_BUFFER_BYTES, backup_now, replay};
use crate::pipeline::{Guard, PipelineError, Stage, archive, backup, journal, links, lock};

/// What `restore` did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub wal: PathBuf,
    pub restored_from: PathBuf,
    /// The WAL as it was before the restore, backed up first.
    pub previous_backup: Option<PathBuf>,
    pub digest: String,
}

/// Replaces the WAL with a backup's content, crash-safely, after backing up the current WAL;
/// `guard` keeps writers out while it does (online: under the writers' lock).
pub fn restore(
    wal: &Path,
    from: &Path,
    backup_dir: Option<&Path>,
    guard: Guard,
) -> Result<RestoreReport, PipelineError> {
    let reader = backup::open_reader(from).map_err(PipelineError::io(
        Stage::Rollback,
        "open backup",
        from,
    ))?;
    let an = replay(from, ReplayInput::Stream(reader))?;
    // The restored bytes replace the real file, never a symlink in front of it.
    let given = wal;
    let wal = &links::resolve_wal(wal)?;
    let _lock = lock::acquire(wal, "walcompactd restore")?;
    journal::recover(wal)?;
    let previous_backup = match wal.exists() {
        true => Some(backup_now(wal, backup_dir)?.path),
        false => None,
    };
    // Writers are kept out by the guard (online: the writers' lock) while the copy is renamed.
    guard.restore(from, wal, Stage::Rollback, None)?;
    Ok(RestoreReport {
        wal: given.into(),
        restored_from: from.into(),
        previous_backup,
        digest: an.replay.expect("replay requested").digest_hex(),
    })
}

/// What `restore --from-archive` did.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveRestoreReport {
    pub wal: PathBuf,
    pub archive: PathBuf,
    /// Lines appended to the WAL, and their bytes (uncompressed).
    pub lines: u64,
    pub bytes: u64,
    /// The WAL as it was before the lines were appended: a copy, backed up first.
    pub previous_backup: PathBuf,
}

/// How long `restore --from-archive` retries its trial lease before calling the WAL held
/// open: a fork in progress holds its parent's descriptors for a moment (as offline mode).
const STOPPED_LEASE_WAIT: Duration = Duration::from_millis(200);

/// Appends an archive's lines, in order, to the WAL, which must be stopped (offline): no
/// other process may have it open. Nothing changes unless the whole archive reads back
/// whole, no process holds the WAL and the WAL ends with a newline; then the WAL is copied
/// to a backup first, the lines are appended (`O_APPEND | O_NOFOLLOW`) and fsynced.
pub fn restore_from_archive(
    wal: &Path,
    archive: &Path,
    backup_dir: Option<&Path>,
) -> Result<ArchiveRestoreReport, PipelineError> {
    // The whole archive is read before anything changes: a damaged one changes nothing.
    let mut reader = archive::ArchiveReader::open(archive)?;
    let expected = reader.read_lines(|_| Ok::<(), PipelineError>(()))?;
    // The lines go to the real file, never through a symlink in front of it.
    let given = wal;
    let wal = &links::resolve_wal(wal)?;
    let _lock = lock::acquire(wal, "walcompactd restore")?;
    ensure_stopped(wal)?;
    journal::recover(wal)?;
    let io_err = |op| PipelineError::io(Stage::Archive, op, wal);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(wal)
        .map_err(io_err("open for appending (not following a symlink)"))?;
    let len = file.metadata().map_err(io_err("stat"))?.len();
    ensure_ends_with_newline(wal, &file, len)?;
    // Back up BEFORE appending, so the WAL as it was can be put back with `restore WAL
    // BACKUP`. A copy: a hard link would be the same inode and take the appended lines too.
    let dir = backup::backup_dir(wal, backup_dir);
    backup::check_dir(&dir)?;
    let previous_backup = backup::create_copy(wal, &file, &dir, chrono::Utc::now())?.path;
    if file.metadata().map_err(io_err("stat"))?.len() != len {
        return Err(PipelineError::BadInput {
            path: wal.into(),
            what: format!(
                "appended to while it was backed up (a writer is running); nothing appended (a backup copy was made: {})",
                previous_backup.display()
            ),
        });
    }
    let mut out = std::io::BufWriter::with_capacity(SCAN_BUFFER_BYTES, &file);
    let appended = reader.read_lines(|line| out.write_all(line).map_err(io_err("append to")))?;
    out.flush().map_err(io_err("append to"))?;
    drop(out);
    // fsync before saying it is done: until then the lines are only in the page cache. A
    // crash before it can leave part of the archive appended (its last line torn); the
    // backup above holds the WAL as it was.
    file.sync_all().map_err(io_err("fsync"))?;
    if (appended.lines, appended.bytes, appended.hash)
        != (expected.lines, expected.bytes, expected.hash)
    {
        return Err(PipelineError::BadInput {
            path: archive.into(),
            what: format!(
                "changed while it was restored ({} lines checked, {} appended); the WAL as it was is in {}",
                expected.lines,
                appended.lines,
                previous_backup.display()
            ),
        });
    }
    Ok(ArchiveRestoreReport {
        wal: given.into(),
        archive: archive.into(),
        lines: appended.lines,
        bytes: appended.bytes,
        previous_backup,
    })
}

/// Offline only: refuses (exit 4) when another process has the WAL open. `/proc` names
/// holders (readers too); a trial read lease also sees writers `/proc` hides from us
/// (another user's processes, other PID namespaces). Either check working is enough; with
/// neither, it refuses rather than guess.
fn ensure_stopped(wal: &Path) -> Result<(), PipelineError> {
    use crate::lease::{ReadLease, check_filesystem};
    use crate::pipeline::guard::offline::{Holders, holders};
    let held = |who: String| PipelineError::BadInput {
        path: wal.into(),
        what: format!(
            "{who} has the WAL open; restore --from-archive appends only to a stopped WAL (offline): stop the writer and retry. Nothing was changed"
        ),
    };
    let proc_unreadable = match holders(wal) {
        Holders::Found(pids) => return Err(held(format!("pid(s) {pids:?}"))),
        Holders::None { .. } => None,
        Holders::Unknown(why) => Some(why),
    };
    let lease = check_filesystem(wal).and_then(|()| ReadLease::take(wal, None, STOPPED_LEASE_WAIT));
    match (lease, proc_unreadable) {
        // Released here: our own open for appending would block on it like a writer's.
        (Ok(_lease), _) => Ok(()),
        (Err(e), _) if e.is_busy() => Err(held("a writer (not visible in /proc)".into())),
        (Err(e), None) => {
            tracing::warn!(event = "lease", wal = %wal.display(), reason = %e,
                "no lease on the WAL: relying on /proc to see that no process has it open");
            Ok(())
        }
        (Err(e), Some(why)) => Err(PipelineError::BadInput {
            path: wal.into(),
            what: format!(
                "could not check that no process has the WAL open (lease: {e}; /proc: {why}); nothing was changed"
            ),
        }),
    }
}

/// Refuses a WAL whose last line has no newline (a torn tail): the archive's first line
/// would be appended onto it, merging two lines into one corrupt line.
fn ensure_ends_with_newline(wal: &Path, file: &File, len: u64) -> Result<(), PipelineError> {
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8];
    file.read_exact_at(&mut last, len - 1)
        .map_err(PipelineError::io(Stage::Archive, "read", wal))?;
    if last[0] == b'\n' {
        return Ok(());
    }
    Err(PipelineError::BadInput {
        path: wal.into(),
        what: "ends without a newline (a torn tail: an incomplete last line, see `walcompactd status`); appending would merge the archive's first line into it, so nothing was changed".into(),
    })
}

/// `restore --from-archive --print`: writes the archive's lines, decompressed, exactly, to
/// `out`; nothing at all if the archive does not read back whole first.
pub fn print_archive(
    archive: &Path,
    out: &mut dyn Write,
) -> Result<archive::Archive, PipelineError> {
    let mut reader = archive::ArchiveReader::open(archive)?;
    reader.read_lines(|_| Ok::<(), PipelineError>(()))?;
    let printed = reader.read_lines(|line| {
        out.write_all(line)
            .map_err(PipelineError::io(Stage::Archive, "print", archive))
    })?;
    out.flush()
        .map_err(PipelineError::io(Stage::Archive, "print", archive))?;
    Ok(printed)
}
