//! The executor: writes a [`Plan`]'s surviving byte ranges, then everything after the
//! scanned prefix verbatim, into a temp file beside the WAL. Bytes are copied, never
//! re-serialized.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::handoff::{Handoff, Publishing};
use super::{PipelineError, Snapshot, Stage};
use crate::analyze::{Want, analyze};
use crate::fsutil::{available_bytes, parent_dir};
use crate::rules::{CorruptLines, Plan};

/// Write buffer for the temp file: big writes, bounded memory.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Read buffer for the sequential copy pass; dropped bytes are skipped inside it.
const READ_BUFFER_BYTES: usize = 1 << 20;
/// Extra free space required beyond the new file's size (filesystem metadata, the journal):
/// 64 KiB covers the journal (< 1 KiB) and block rounding without refusing small filesystems.
pub const SPACE_MARGIN_BYTES: u64 = 64 << 10;

/// Copies the plan's ranges from `src`, then `[plan.scanned_len, end)` verbatim, into `out`.
/// Reads `src` once, sequentially, skipping dropped bytes inside the read buffer: survivors
/// are small and many, and a seek + copy per range costs two syscalls each.
/// Returns the bytes written.
pub fn write_plan<R: Read + Seek, W: Write>(
    src: R,
    plan: &Plan,
    end: u64,
    out: &mut W,
) -> io::Result<u64> {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, src);
    reader.seek(SeekFrom::Start(0))?;
    let mut pos = 0;
    let mut written = 0;
    let tail = plan.scanned_len..end;
    for r in plan.ranges().chain(std::iter::once(tail)) {
        reader.seek_relative(i64::try_from(r.start - pos).map_err(io::Error::other)?)?;
        written += copy_exact(&mut reader, r.end - r.start, out, r.start)?;
        pos = r.end;
    }
    Ok(written)
}

/// Copies exactly `len` bytes from the reader's buffer to `out`.
fn copy_exact<R: BufRead, W: Write>(
    reader: &mut R,
    len: u64,
    out: &mut W,
    start: u64,
) -> io::Result<u64> {
    let mut left = len;
    while left > 0 {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            let msg = format!("WAL shrank while reading bytes {start}..{}", start + len);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        out.write_all(&buf[..n])?;
        reader.consume(n);
        left -= n as u64;
    }
    Ok(len)
}

/// Refuses to start when the new file (and a copied backup) cannot fit.
pub fn precheck_space(wal: &Path, snap: &Snapshot, backup_dir: &Path) -> Result<(), PipelineError> {
    let dir = parent_dir(wal);
    let needed =
        snap.plan.survivor_bytes() + (snap.id.len - snap.plan.scanned_len) + SPACE_MARGIN_BYTES;
    let available =
        available_bytes(&dir).map_err(PipelineError::io(Stage::Compact, "statvfs", &dir))?;
    fail::fail_point!("precheck::no_space", |_| Err(PipelineError::NoSpace {
        stage: Stage::Compact,
        path: dir.clone(),
        needed,
        available: 0
    }));
    if available < needed {
        return Err(PipelineError::NoSpace {
            stage: Stage::Compact,
            path: dir,
            needed,
            available,
        });
    }
    let same_fs = std::fs::metadata(backup_dir)
        .map(|m| std::os::unix::fs::MetadataExt::dev(&m) == snap.id.dev)
        .unwrap_or(true);
    if !same_fs {
        let available = available_bytes(backup_dir).map_err(PipelineError::io(
            Stage::Backup,
            "statvfs",
            backup_dir,
        ))?;
        let needed = snap.id.len + SPACE_MARGIN_BYTES;
        if available < needed {
            return Err(PipelineError::NoSpace {
                stage: Stage::Backup,
                path: backup_dir.into(),
                needed,
                available,
            });
        }
    }
    Ok(())
}

/// Why an in-memory compaction failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactBytesError {
    #[error("line {line} (byte offset {offset}) is corrupt: {reason}")]
    Corrupt {
        line: u64,
        offset: u64,
        reason: String,
    },
    #[error(transparent)]
    Analyze(#[from] crate::analyze::AnalyzeError),
}

/// Compacts a WAL held in memory with the same rules and executor as the file pipeline,
/// refusing corrupt lines: the reference for property tests and benchmarks.
pub fn compact_bytes(input: &[u8]) -> Result<Vec<u8>, CompactBytesError> {
    compact_bytes_with(input, CorruptLines::Refuse).map(|(out, _)| out)
}

/// In-memory compaction with retention `r` (corrupt lines kept): the compacted bytes and the
/// archive's lines (expired transactions' survivors, with their `\n`, in file order), and
/// what expired. The same plan and writer as a run; for tests and the fuzzers.
pub fn compact_bytes_retaining(
    input: &[u8],
    r: &crate::rules::Retention,
) -> Result<(Vec<u8>, Vec<u8>, crate::rules::Expiry), CompactBytesError> {
    let want = Want::index(CorruptLines::Keep).retaining(*r);
    let analysis = analyze(input, want, &mut |_| {})?;
    let plan = analysis.index.into_plan_retaining(r);
    let out = write_in_memory(input, &plan);
    let mut archive = Vec::new();
    for s in plan.archived() {
        archive
            .extend_from_slice(&input[s.offset as usize..(s.offset + u64::from(s.len)) as usize]);
    }
    Ok((out, archive, plan.expiry))
}

/// The plan's survivors of `input`, as a run writes them.
fn write_in_memory(input: &[u8], plan: &Plan) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    write_plan(
        &mut io::Cursor::new(input),
        plan,
        input.len() as u64,
        &mut out,
    )
    .expect("in-memory copy");
    out
}

/// [`compact_bytes`] with corrupt lines per `corrupt_lines`; also returns the lines a
/// quarantine would receive (without their `\n`), in order.
pub fn compact_bytes_with(
    input: &[u8],
    corrupt_lines: CorruptLines,
) -> Result<(Vec<u8>, Vec<Vec<u8>>), CompactBytesError> {
    let analysis = analyze(input, Want::index(corrupt_lines), &mut |_| {})?;
    if let Some(c) = analysis.first_corrupt()
        && corrupt_lines == CorruptLines::Refuse
    {
        return Err(CompactBytesError::Corrupt {
            line: c.line,
            offset: c.offset,
            reason: c.reason.clone(),
        });
    }
    let plan = analysis.index.plan();
    let out = write_in_memory(input, &plan);
    let set_aside = plan
        .set_aside
        .iter()
        .map(|s| {
            let start = s.slot.offset as usize;
            input[start..start + s.slot.len as usize - 1].to_vec()
        })
        .collect();
    Ok((out, set_aside))
}

/// The compacted WAL being written, removed on drop unless [`TempFile::keep`] was called.
#[derive(Debug)]
pub struct TempFile {
    pub path: PathBuf,
    pub len: u64,
    file: File,
    keep: bool,
}

impl TempFile {
    /// The temp has been renamed or handed over: do not delete it on drop.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Writes the plan's survivors and the bytes after the scanned prefix, publishing the
    /// written length to `handoff` (finished either way). Not fsynced: see [`TempFile::sync`].
    pub fn write(
        &mut self,
        src: &File,
        plan: &Plan,
        end: u64,
        handoff: &Handoff,
    ) -> Result<u64, PipelineError> {
        let _unblock = handoff.finish_on_drop();
        let result = fill(src, plan, end, Publishing::new(&mut self.file, handoff));
        handoff.finish(result.is_ok());
        self.len = result.map_err(PipelineError::io(Stage::Compact, "write", &self.path))?;
        Ok(self.len)
    }

    /// The temp file's own descriptor: lease mode appends the last lines through it, and
    /// takes its write lease through it (it must be the file's only descriptor).
    pub(in crate::pipeline) fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// The temp file's inode: the journal records it (see `Journal::temp_ino`).
    pub fn ino(&self) -> Result<u64, PipelineError> {
        let meta =
            self.file
                .metadata()
                .map_err(PipelineError::io(Stage::Compact, "stat", &self.path))?;
        Ok(meta.ino())
    }

    /// The temp file's length as the filesystem reports it.
    pub fn len_on_disk(&self) -> Result<u64, PipelineError> {
        let meta = self.file.metadata();
        Ok(meta
            .map_err(PipelineError::io(Stage::Verify, "stat", &self.path))?
            .len())
    }

    /// fsyncs the temp file. It must return before the temp is renamed over the WAL, or a
    /// crash can leave an empty or partial WAL; it may run while verification re-reads.
    pub fn sync(&self) -> Result<(), PipelineError> {
        crate::io_fault!("compact::before_fsync")
            .and_then(|()| self.file.sync_all())
            .map_err(PipelineError::io(Stage::Compact, "fsync", &self.path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // Only our own inode: after a swap that failed half-way the temp's name may hold
        // what was at the WAL's path (see `swap`), which is never ours to remove.
        let ours = match (self.file.metadata(), fs::symlink_metadata(&self.path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates the temp file the compacted WAL is written to, with the WAL's owner and mode
/// (or the writer may not be able to open it after the swap). Removed again on drop.
pub fn create_temp(temp: &Path, wal_meta: &fs::Metadata) -> Result<TempFile, PipelineError> {
    // O_EXCL by the directory's descriptor: a link planted at the temp's name is refused, a
    // leftover of ours replaced (see `fsutil::safe`).
    let file = crate::fsutil::safe::Dir::of(temp)
        .and_then(|(dir, name)| dir.create_new(&name, 0o600))
        .map_err(PipelineError::io(Stage::Compact, "create", temp))?;
    let guard = TempFile {
        path: temp.to_path_buf(),
        len: 0,
        file,
        keep: false,
    };
    let _ = std::os::unix::fs::fchown(&guard.file, Some(wal_meta.uid()), Some(wal_meta.gid()));
    guard
        .file
        .set_permissions(fs::Permissions::from_mode(wal_meta.mode() & 0o7777))
        .map_err(PipelineError::io(Stage::Compact, "chmod", temp))?;
    Ok(guard)
}

fn fill(src: &File, plan: &Plan, end: u64, sink: Publishing<'_>) -> io::Result<u64> {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, sink);
    fail::fail_point!("compact::write::short", |_| {
        // A short write: part of a line reaches the temp file, then the write fails.
        out.write_all(b"{\"op\": \"PREP")?;
        out.flush()?;
        Err(io::Error::from(io::ErrorKind::WriteZero))
    });
    fail::fail_point!("compact::write::tamper_payload", |_| {
        // A planner or executor bug that changes one payload digit: verification must see it.
        let mut bytes = Vec::new();
        let n = write_plan(src, plan, end, &mut bytes)?;
        tamper_first_prepare_digit(&mut bytes);
        out.write_all(&bytes)?;
        out.flush()?;
        Ok(n)
    });
    let n = write_plan(src, plan, end, &mut out)?;
    if n > 0 {
        // Half of the temp file on disk, then death.
        crate::crash_point!("compact::write::crash");
    }
    fail::fail_point!("compact::write::enospc", |_| Err(
        io::Error::from_raw_os_error(libc::ENOSPC)
    ));
    out.flush()?;
    Ok(n)
}

/// Changes the first digit after the first `PREPARE` (test builds only, see `fill`).
#[cfg(feature = "failpoints")]
fn tamper_first_prepare_digit(bytes: &mut [u8]) {
    let Some(at) = memchr::memmem::find(bytes, b"PREPARE") else {
        return;
    };
    if let Some(d) = bytes[at..].iter_mut().find(|b| b.is_ascii_digit()) {
        *d = if *d == b'9' { b'8' } else { *d + 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_compaction_copies_survivors_and_the_torn_tail() {
        let wal = concat!(
            "{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":1}\n",
            "{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":2}\n",
            "\n",
            "{\"op\":\"COMMIT\",\"tx_id\":\"a\"}\n",
            "{\"op\":\"PREP"
        );
        let out = compact_bytes(wal.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":2}\n{\"op\":\"COMMIT\",\"tx_id\":\"a\"}\n{\"op\":\"PREP"
        );
    }

    #[test]
    fn corrupt_input_is_refused_with_its_line() {
        match compact_bytes(b"{}\n[1]\n") {
            Err(CompactBytesError::Corrupt { line, offset, .. }) => {
                assert_eq!((line, offset), (2, 3))
            }
            other => panic!("{other:?}"),
        }
    }
}
