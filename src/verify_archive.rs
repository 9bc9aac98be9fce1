//! `verify WAL --against BACKUP --archive ARCHIVE...`: after retention runs, proves that
//! the WAL and its archives together still replay to the backup's state. A retention run
//! moves old finished transactions' surviving lines out of the WAL into an archive, so the
//! WAL alone no longer replays to the backup's state; this check puts them back, on the fly.
//!
//! The stream replayed is "WAL ∪ archives in the backup's order": the backup's lines are
//! walked in order, and each is emitted when it is the next unconsumed line of the WAL (tried
//! first) or of an archive (each archive is its own cursor, tried in the order given), and
//! skipped otherwise (compaction dropped it). Once the backup is exhausted, the WAL's
//! remaining bytes follow: lines appended by writers after the backup was taken (and a torn
//! tail). That stream's replay digest must equal the replay digest of the backup's complete
//! lines followed by the same remaining WAL bytes, and every archive line must have been
//! found in the backup. Every WAL line and every archive line is in the stream exactly once,
//! so equal digests prove that nothing compaction keeps was lost between the WAL and the
//! archives, and that nothing was added.
//!
//! Archives need not be given in any order, since each keeps its own place: archives of
//! several runs whose lines interleave in the backup verify together. They must all be of
//! runs after the backup was taken (their lines must be in it), so give the backup of the
//! first of them. The matching is greedy, which never makes a wrong stream pass (the digests
//! decide) but can fail a valid one where a WAL line and an archive line are byte-identical
//! (one transaction id both kept and expired, which one run never does). The WAL's rest
//! is taken as appended since the backup: a WAL line changed after the last line it shares
//! with the backup cannot be told from one a writer appended, which is why the report
//! counts those lines ([`ArchiveMerge::appended_lines`]).
//!
//! Memory is bounded: the backup and the WAL are read as streams, each archive is
//! decompressed on its own thread by [`archive::ArchiveReader::read_lines`] and handed over
//! through a bounded channel in batches of whole lines.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use serde::Serialize;

use crate::analyze::{Analysis, Want, analyze};
use crate::pipeline::{PipelineError, Stage, archive, backup, open_wal};
use crate::replay::ReplayState;
use crate::rules::CorruptLines;
use crate::wal::SCAN_BUFFER_BYTES;

/// An archive thread sends its lines in batches of about this many bytes (whole lines).
const BATCH_BYTES: usize = 64 << 10;
/// Batches in flight per archive: with [`BATCH_BYTES`], what bounds an archive's memory.
const BATCHES_IN_FLIGHT: usize = 4;
/// The merged stream is produced in steps of about this many bytes.
const OUT_BYTES: usize = 64 << 10;

/// How much of one archive was found in the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchiveMatch {
    pub archive: PathBuf,
    /// Lines of the archive found in the backup, in order (all of them when it verifies).
    pub lines: u64,
    /// The first line (1-based) not found in the backup after the ones before it; `None`
    /// when every line was.
    pub first_unmatched_line: Option<u64>,
}

/// What merging the archives found (flattened into `verify --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchiveMerge {
    pub archives: Vec<ArchiveMatch>,
    /// Archive lines merged into the WAL's, over all archives.
    pub archived_lines: u64,
    /// Complete lines of the WAL from the first one not found in the backup on: those
    /// appended since the backup was taken, when all is well. Part of both replays, so a
    /// WAL line changed after the last line it shares with the backup passes for an appended
    /// one: with writers stopped since the run, this must be 0.
    pub appended_lines: u64,
}

impl ArchiveMerge {
    /// Every line of every archive was found in the backup.
    pub fn whole(&self) -> bool {
        self.archives
            .iter()
            .all(|a| a.first_unmatched_line.is_none())
    }
}

/// The two replays `verify --archive` compares.
pub struct MergedReplay {
    /// Replay of the WAL with its archives merged in, in the backup's order.
    pub merged: Analysis,
    /// Replay of the backup's complete lines followed by the WAL's remaining bytes.
    pub backup: ReplayState,
    pub merge: ArchiveMerge,
}

/// Replays the WAL with `archives` merged in (in `backup`'s order) and the backup followed
/// by what the WAL holds past it; the caller compares the two. A damaged archive, or one
/// that cannot be read, is an error naming it; an archive line not in the backup is not (it
/// is reported in [`ArchiveMerge::archives`]).
pub fn replay_merged(
    wal: &Path,
    backup_path: &Path,
    archives: &[PathBuf],
) -> Result<MergedReplay, PipelineError> {
    const WANT: Want = Want::replay(CorruptLines::Keep);
    let (file, id) = open_wal(wal)?;
    let open_backup = || {
        backup::open_reader(backup_path).map_err(PipelineError::io(
            Stage::Verify,
            "open",
            backup_path,
        ))
    };
    // Every archive is opened before anything is read: a missing one fails at once.
    let cursors = archives
        .iter()
        .map(|p| ArchiveCursor::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut merge = BufReader::with_capacity(
        SCAN_BUFFER_BYTES,
        Merge {
            backup: Lines::new(open_backup()?),
            backup_path: backup_path.into(),
            backup_bytes: 0,
            wal: Lines::new(Read::take(&file, id.len)),
            wal_path: wal.into(),
            wal_offset: 0,
            archives: cursors,
            out: Vec::with_capacity(OUT_BYTES),
            pos: 0,
            phase: Phase::Backup,
            appended_lines: 0,
            error: None,
        },
    );
    let merged = analyze(&mut merge, WANT, &mut |_| {});
    let m = merge.get_mut();
    if let Some(e) = m.error.take() {
        return Err(e);
    }
    let merged = merged.map_err(|e| PipelineError::from_analyze(Stage::Verify, wal, e))?;
    let report = ArchiveMerge {
        archives: m.archives.iter().map(ArchiveCursor::report).collect(),
        archived_lines: m.archives.iter().map(|a| a.consumed).sum(),
        appended_lines: m.appended_lines,
    };
    // The backup's complete lines (its torn tail, if any, is the WAL's to carry), then the
    // WAL from where the merge stopped matching to the length it had when opened.
    let (backup_bytes, rest) = (m.backup_bytes, m.wal_offset);
    drop(merge);
    let mut wal_rest = &file;
    wal_rest
        .seek(SeekFrom::Start(rest))
        .map_err(PipelineError::io(Stage::Verify, "seek", wal))?;
    let both = open_backup()?
        .take(backup_bytes)
        .chain(wal_rest.take(id.len - rest));
    let b = analyze(
        BufReader::with_capacity(SCAN_BUFFER_BYTES, both),
        WANT,
        &mut |_| {},
    )
    .map_err(|e| PipelineError::from_analyze(Stage::Verify, backup_path, e))?;
    Ok(MergedReplay {
        merged,
        backup: b.replay.expect("replay requested"),
        merge: report,
    })
}

/// Where the merge is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Walking the backup's lines.
    Backup,
    /// The backup is exhausted: the WAL's remaining bytes follow.
    WalRest,
    Done,
}

/// The merged stream as a `Read`, produced as the replay pulls it.
struct Merge<'f> {
    backup: Lines<Box<dyn Read>>,
    backup_path: PathBuf,
    /// Bytes of the backup's complete lines walked so far.
    backup_bytes: u64,
    wal: Lines<io::Take<&'f File>>,
    wal_path: PathBuf,
    /// Offset in the WAL of its next unconsumed line (once the backup is exhausted: where
    /// the WAL's remaining bytes start).
    wal_offset: u64,
    archives: Vec<ArchiveCursor>,
    /// Merged bytes produced and not yet read.
    out: Vec<u8>,
    pos: usize,
    phase: Phase,
    /// Complete lines among the WAL's remaining bytes.
    appended_lines: u64,
    /// The real error behind an `io::Error` handed to the replay, which names only the WAL.
    error: Option<PipelineError>,
}

impl Merge<'_> {
    /// One backup line: emitted from the WAL or an archive, or skipped.
    fn step(&mut self) -> Result<(), PipelineError> {
        let backup_err = |e| PipelineError::io(Stage::Verify, "read", &self.backup_path)(e);
        let Some(line) = self.backup.peek().map_err(backup_err)? else {
            self.phase = Phase::WalRest;
            return Ok(());
        };
        if !line.ends_with(b"\n") {
            // A torn tail: not a line; the WAL carries it (or what it became).
            self.phase = Phase::WalRest;
            return Ok(());
        }
        self.backup_bytes += line.len() as u64;
        let wal_err = |e| PipelineError::io(Stage::Verify, "read", &self.wal_path)(e);
        if self.wal.peek().map_err(wal_err)? == Some(line) {
            self.out.extend_from_slice(line);
            self.wal_offset += line.len() as u64;
            self.wal.advance();
        } else {
            for a in &mut self.archives {
                if a.peek()? == Some(line) {
                    self.out.extend_from_slice(line);
                    a.advance();
                    break;
                }
            }
        }
        self.backup.advance();
        Ok(())
    }

    /// Produces the next piece of the stream into `out`; nothing once it is done.
    fn fill(&mut self) -> Result<(), PipelineError> {
        self.out.clear();
        self.pos = 0;
        while self.out.len() < OUT_BYTES {
            match self.phase {
                Phase::Backup => self.step()?,
                Phase::WalRest => {
                    // Every archive is asked for a line left over: that is what is reported.
                    for a in &mut self.archives {
                        a.peek()?;
                    }
                    // The WAL's line peeked last is the first of its rest.
                    let wal_err = |e| PipelineError::io(Stage::Verify, "read", &self.wal_path)(e);
                    if let Some(l) = self.wal.peek().map_err(wal_err)? {
                        self.out.extend_from_slice(l);
                        self.appended_lines += u64::from(l.ends_with(b"\n"));
                        self.wal.advance();
                    }
                    self.phase = Phase::Done;
                    return Ok(());
                }
                Phase::Done => return Ok(()),
            }
        }
        Ok(())
    }
}

impl Read for Merge<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if self.phase == Phase::Done {
                // The WAL's remaining bytes, straight through.
                let n = self.wal.reader.read(buf)?;
                self.appended_lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
                return Ok(n);
            }
            if let Err(e) = self.fill() {
                let said = io::Error::other(e.to_string());
                self.error = Some(e);
                return Err(said);
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A stream's lines, one looked at before it is taken.
struct Lines<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    /// `line` holds the next line (empty at the end).
    peeked: bool,
}

impl<R: Read> Lines<R> {
    fn new(reader: R) -> Self {
        Lines {
            reader: BufReader::with_capacity(SCAN_BUFFER_BYTES, reader),
            line: Vec::new(),
            peeked: false,
        }
    }

    /// The next line with its `\n` (without one: a torn tail), without taking it.
    fn peek(&mut self) -> io::Result<Option<&[u8]>> {
        if !self.peeked {
            self.line.clear();
            self.reader.read_until(b'\n', &mut self.line)?;
            self.peeked = true;
        }
        Ok((!self.line.is_empty()).then_some(self.line.as_slice()))
    }

    /// Takes the line [`Lines::peek`] returned.
    fn advance(&mut self) {
        self.peeked = false;
    }
}

/// What an archive's thread hands over.
enum Batch {
    /// Whole lines, each with its `\n`.
    Lines(Vec<u8>),
    /// The archive read back whole: nothing follows.
    End,
    Failed(PipelineError),
}

/// Why an archive's thread stopped reading.
enum Stop {
    Failed(PipelineError),
    /// The merge no longer wants lines (it is done or failed).
    Unwanted,
}

impl From<PipelineError> for Stop {
    fn from(e: PipelineError) -> Self {
        Stop::Failed(e)
    }
}

/// One archive's lines, decompressed on a thread, taken one at a time.
struct ArchiveCursor {
    path: PathBuf,
    rx: Option<Receiver<Batch>>,
    thread: Option<JoinHandle<()>>,
    batch: Vec<u8>,
    pos: usize,
    /// End of the line [`ArchiveCursor::peek`] returned, in `batch`.
    line_end: Option<usize>,
    /// Lines taken.
    consumed: u64,
    /// All lines were received: the cursor is at the archive's end once `batch` is used up.
    ended: bool,
}

impl ArchiveCursor {
    /// Opens the archive (never through a symlink) and starts decompressing it.
    fn open(path: &Path) -> Result<ArchiveCursor, PipelineError> {
        let mut reader = archive::ArchiveReader::open(path)?;
        let (tx, rx) = sync_channel(BATCHES_IN_FLIGHT);
        let thread = std::thread::Builder::new()
            .name("verify-archive".into())
            .spawn(move || send_lines(&mut reader, &tx))
            .map_err(PipelineError::io(Stage::Verify, "start a reader for", path))?;
        Ok(ArchiveCursor {
            path: path.into(),
            rx: Some(rx),
            thread: Some(thread),
            batch: Vec::new(),
            pos: 0,
            line_end: None,
            consumed: 0,
            ended: false,
        })
    }

    /// The archive's next line with its `\n`, without taking it; `None` at its end.
    fn peek(&mut self) -> Result<Option<&[u8]>, PipelineError> {
        if let Some(end) = self.line_end {
            return Ok(Some(&self.batch[self.pos..end]));
        }
        while self.pos == self.batch.len() {
            if self.ended {
                return Ok(None);
            }
            let got = self.rx.as_ref().and_then(|rx| rx.recv().ok());
            match got {
                Some(Batch::Lines(b)) => (self.batch, self.pos) = (b, 0),
                Some(Batch::End) => self.ended = true,
                Some(Batch::Failed(e)) => return Err(e),
                None => {
                    return Err(PipelineError::BadInput {
                        path: self.path.clone(),
                        what: "its reader stopped before the archive's end".into(),
                    });
                }
            }
        }
        let rest = &self.batch[self.pos..];
        let len = memchr::memchr(b'\n', rest).expect("batches hold whole lines") + 1;
        let end = self.pos + len;
        self.line_end = Some(end);
        Ok(Some(&self.batch[self.pos..end]))
    }

    /// Takes the line [`ArchiveCursor::peek`] returned.
    fn advance(&mut self) {
        let end = self.line_end.take().expect("peeked before taken");
        self.pos = end;
        self.consumed += 1;
    }

    fn report(&self) -> ArchiveMatch {
        ArchiveMatch {
            archive: self.path.clone(),
            lines: self.consumed,
            first_unmatched_line: self.line_end.map(|_| self.consumed + 1),
        }
    }
}

impl Drop for ArchiveCursor {
    fn drop(&mut self) {
        // Dropping the receiver makes the thread's next send fail: it stops, and is joined.
        drop(self.rx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An archive thread: the archive's lines, in batches, then [`Batch::End`] or the error.
fn send_lines(reader: &mut archive::ArchiveReader, tx: &SyncSender<Batch>) {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    let read = reader.read_lines(|line| {
        batch.extend_from_slice(line);
        if batch.len() >= BATCH_BYTES {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_BYTES));
            tx.send(Batch::Lines(full)).map_err(|_| Stop::Unwanted)?;
        }
        Ok::<(), Stop>(())
    });
    let last = match read {
        Ok(_) if batch.is_empty() => Batch::End,
        Ok(_) => match tx.send(Batch::Lines(batch)) {
            Ok(()) => Batch::End,
            Err(_) => return,
        },
        Err(Stop::Failed(e)) => Batch::Failed(e),
        Err(Stop::Unwanted) => return,
    };
    let _ = tx.send(last);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(s: &str) -> Vec<Vec<u8>> {
        let mut l = Lines::new(s.as_bytes());
        let mut out = Vec::new();
        while let Some(line) = l.peek().unwrap() {
            out.push(line.to_vec());
            l.advance();
        }
        out
    }

    #[test]
    fn lines_keep_their_newline_and_a_torn_tail_has_none() {
        assert_eq!(lines_of("a\nb\nc"), [&b"a\n"[..], b"b\n", b"c"]);
        assert_eq!(lines_of(""), Vec::<Vec<u8>>::new());
        let mut l = Lines::new(&b"x\n"[..]);
        assert_eq!(l.peek().unwrap(), Some(&b"x\n"[..]));
        assert_eq!(
            l.peek().unwrap(),
            Some(&b"x\n"[..]),
            "peeking twice takes nothing"
        );
    }
}
