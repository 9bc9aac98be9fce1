//! The archive stage of a run with retention: the expired transactions' surviving lines
//! (original bytes, original order) go to a new archive, which is read back from disk and
//! checked against the plan BEFORE the swap — fsync the archive and its directory before
//! the swap, or a crash after it loses the expired lines. The journal records the archive
//! (its directory and inode) before any line is written: a run that does not swap, or is
//! rolled back, removes it — its lines are still in the WAL, and two copies of the same
//! lines must never be archived. Once journaled, the archive is written on a thread of its
//! own beside compact ∥ verify (see `Run::write_archive_and_verify`); the swap waits for both.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::archive::{self, Archive, ArchiveWriter};
use super::{PipelineError, Snapshot, Stage};
use crate::rules::{ArchivedLines, Expiry};

/// Bytes of the WAL read at a time while copying archived lines.
const READ_WINDOW_BYTES: usize = 4 << 20;

/// What the journal records of a run's archive: where, and which inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveMark {
    pub dir: PathBuf,
    pub ino: u64,
}

impl ArchiveMark {
    /// Removes the run's archive (and its partial), found by inode: the run did not swap,
    /// so every line in it is still in the WAL. Idempotent.
    pub fn discard(&self, wal: &Path) -> Result<(), PipelineError> {
        use std::os::unix::fs::MetadataExt;
        archive::remove_leftovers(wal, &self.dir)?;
        let ours = archive::list(wal, &self.dir)
            .map_err(PipelineError::io(Stage::Archive, "list", &self.dir))?
            .into_iter()
            .find(|a| std::fs::symlink_metadata(&a.path).is_ok_and(|m| m.ino() == self.ino));
        match ours {
            Some(a) => archive::remove(&a.path),
            None => Ok(()),
        }
    }
}

/// A run's archive, started and journaled, with everything writing it needs, owned: it is
/// written on a thread of its own while the survivors are (see [`write`]).
pub(super) struct Pending {
    w: ArchiveWriter,
    /// The WAL as analyzed, a descriptor of its own (reads are positioned).
    src: File,
    wal: PathBuf,
    lines: ArchivedLines,
    /// The end of the lines the plan covers: no archived line reaches past it.
    scanned_len: u64,
    want: Expiry,
}

/// Starts the run's archive in `dir`, taking the archived lines out of the plan; the caller
/// journals [`ArchiveMark`] before [`write`].
pub(super) fn create(
    wal: &Path,
    dir: &Path,
    snap: &mut Snapshot,
) -> Result<(Pending, ArchiveMark), PipelineError> {
    let w = ArchiveWriter::create(wal, dir, chrono::Utc::now(), &snap.meta)?;
    let mark = ArchiveMark {
        dir: dir.to_path_buf(),
        ino: w.ino()?,
    };
    let src = snap.file.try_clone().map_err(PipelineError::io(
        Stage::Archive,
        "duplicate descriptor of",
        wal,
    ))?;
    let pending = Pending {
        w,
        src,
        wal: wal.to_path_buf(),
        lines: snap.plan.take_archived(),
        scanned_len: snap.plan.scanned_len,
        want: snap.plan.expiry,
    };
    Ok((pending, mark))
}

/// Writes the archived lines from the WAL as read, finishes the archive durably, then reads
/// it back from disk: it must hold exactly the lines the plan expired (count, bytes, and the
/// hash of what was written). Any difference: no swap.
pub(super) fn write(p: Pending) -> Result<Archive, PipelineError> {
    let Pending {
        mut w,
        src,
        wal,
        lines,
        scanned_len,
        want,
    } = p;
    // Test builds: hold the archive back so that the compaction beside it finishes first.
    fail::fail_point!("archive::write::delay");
    copy_lines(&mut w, &src, &wal, &lines, scanned_len)?;
    drop(lines);
    crate::crash_point!("archive::write::crash");
    let written = w.finish()?;
    crate::crash_point!("archive::finish::crash");
    let back = archive::read_back(&written.path)?;
    if back.lines != want.lines || back.bytes != want.bytes || back.hash != written.hash {
        return Err(PipelineError::VerifyFailed {
            path: wal,
            detail: format!(
                "the archive {} read back holds {} lines, {} bytes (hash {:016x}); the plan expired {} lines, {} bytes (hash {:016x})",
                back.path.display(),
                back.lines,
                back.bytes,
                back.hash,
                want.lines,
                want.bytes,
                written.hash
            ),
        });
    }
    Ok(written)
}

/// Copies each archived line from `src` through a window read a few megabytes at a time:
/// expired lines are scattered among kept ones, and a read per line (or per run of adjacent
/// lines) cost a system call each, hundreds of thousands on a large WAL.
fn copy_lines(
    w: &mut ArchiveWriter,
    src: &File,
    wal: &Path,
    lines: &ArchivedLines,
    scanned_len: u64,
) -> Result<(), PipelineError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut window = 0..0u64;
    for line in lines.iter() {
        let end = line.offset + u64::from(line.len);
        if line.offset < window.start || end > window.end {
            let len = (READ_WINDOW_BYTES as u64)
                .max(u64::from(line.len))
                .min(scanned_len - line.offset);
            buf.resize(len as usize, 0);
            crate::io_fault!(error "archive::read")
                .and_then(|()| src.read_exact_at(&mut buf, line.offset))
                .map_err(PipelineError::io(Stage::Archive, "read", wal))?;
            window = line.offset..line.offset + len;
        }
        let at = (line.offset - window.start) as usize;
        w.write_line(&buf[at..at + line.len as usize])?;
    }
    Ok(())
}
