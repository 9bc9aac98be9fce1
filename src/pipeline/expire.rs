//! The archive stage of a run with retention: the expired transactions' surviving lines
//! (original bytes, original order) go to a new archive, which is read back from disk and
//! checked against the plan BEFORE the swap — fsync the archive and its directory before
//! the swap, or a crash after it loses the expired lines. The journal records the archive
//! (its directory and inode) before any line is written: a run that does not swap, or is
//! rolled back, removes it — its lines are still in the WAL, and two copies of the same
//! lines must never be archived. Once journaled, the archive is written on a thread of its
//! own beside compact ∥ verify (see `Run::write_archive_and_verify`); the swap waits for both.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::archive::{self, Archive, ArchiveWriter, frames};
use super::{PipelineError, Snapshot, Stage};
use crate::rules::{ArchivedLines, Expiry, Slot};

/// Largest span of the WAL one frame's lines may lie in (each worker reads its frame's span
/// at once): expired lines are most of a WAL's old part, so a frame's span is rarely more
/// than a few times its lines.
const MAX_SPAN_BYTES: u64 = 2 * frames::FRAME_BYTES as u64;

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
        want,
    } = p;
    // Test builds: hold the archive back so that the compaction beside it finishes first.
    fail::fail_point!("archive::write::delay");
    copy_lines(&mut w, &src, &wal, &lines)?;
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

/// Copies the archived lines from `src` into the archive, a frame at a time: the frames'
/// lines are gathered and compressed on several threads ([`frames::ordered`]), and written
/// and hashed here in order. Each worker reads its frame's lines with one positioned read of
/// the WAL span they lie in: expired lines are scattered among kept ones, and a read per line
/// (or per run of adjacent lines) cost a system call each, hundreds of thousands on a large
/// WAL.
fn copy_lines(
    w: &mut ArchiveWriter,
    src: &File,
    wal: &Path,
    lines: &ArchivedLines,
) -> Result<(), PipelineError> {
    let partial = w.partial_path();
    let pool = frames::Pool::default();
    frames::ordered(
        chunks(lines),
        frames::workers(),
        |worker, chunk| frame_of(worker, &pool, src, wal, &partial, lines, chunk),
        |frame| {
            let frame = frame?;
            w.write_frame(&frame)?;
            pool.give(frame.raw);
            pool.give(frame.zst);
            Ok(())
        },
    )
}

/// The archived lines' indices cut into frames: about [`frames::FRAME_BYTES`] of lines each,
/// and lying within [`MAX_SPAN_BYTES`] of the WAL (the read a frame's lines take), or a
/// single line longer than that.
fn chunks(lines: &ArchivedLines) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut slots = lines.iter().enumerate().peekable();
    std::iter::from_fn(move || {
        let (first, start) = slots.next()?;
        let (mut end, mut bytes) = (first + 1, u64::from(start.len));
        while bytes < frames::FRAME_BYTES as u64 {
            let fits = |(_, s): &(usize, Slot)| {
                s.offset + u64::from(s.len) - start.offset <= MAX_SPAN_BYTES
            };
            let Some((i, s)) = slots.next_if(fits) else {
                break;
            };
            (end, bytes) = (i + 1, bytes + u64::from(s.len));
        }
        Some(first..end)
    })
}

/// Reads archived lines `chunk` from `src` (one read of the span they lie in), checks each
/// is one line with its newline, and compresses them into a frame.
fn frame_of(
    worker: &mut frames::Compressing,
    pool: &frames::Pool,
    src: &File,
    wal: &Path,
    partial: &Path,
    lines: &ArchivedLines,
    chunk: Range<usize>,
) -> Result<frames::Frame, PipelineError> {
    let count = chunk.len();
    let mut slots = lines.range(chunk.clone());
    let first = slots.next().expect("a chunk holds a line");
    let last = lines.range(chunk).last().expect("a chunk holds a line");
    let span_end = last.offset + u64::from(last.len);
    let span_len = (span_end - first.offset) as usize;
    if worker.span.len() < span_len {
        worker.span.resize(span_len, 0);
    }
    let span = &mut worker.span[..span_len];
    crate::io_fault!(error "archive::read")
        .and_then(|()| src.read_exact_at(span, first.offset))
        .map_err(PipelineError::io(Stage::Archive, "read", wal))?;
    let mut raw = pool.take(span_len);
    for s in std::iter::once(first).chain(slots) {
        let at = (s.offset - first.offset) as usize;
        let line = &span[at..at + s.len as usize];
        if line.last() != Some(&b'\n') {
            return Err(not_one_line(partial));
        }
        raw.extend_from_slice(line);
    }
    // Each line ends with a newline; as many newlines as lines: none holds another.
    if memchr::memchr_iter(b'\n', &raw).count() != count {
        return Err(not_one_line(partial));
    }
    worker
        .frame(raw, count as u64, pool)
        .map_err(PipelineError::io(Stage::Archive, "compress", partial))
}

/// A line the plan archives is not one line with its newline: nothing is swapped.
fn not_one_line(partial: &Path) -> PipelineError {
    PipelineError::BadInput {
        path: partial.into(),
        what: "an archived line is not one line ending with a newline".into(),
    }
}
