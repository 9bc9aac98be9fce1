//! The quarantine stage (`corrupt_lines = "quarantine"`): corrupt lines leave the WAL and are
//! appended to `<stem>_quarantine<ext>` beside the backups, then read back and checked
//! against what the original's replay set aside, all before the swap.
//!
//! Format, per line: a JSON header line
//! `{"quarantined": {"line": N, "offset": O, "bytes": L, "reason": "...", "wal": "...", "at": "..."}}`
//! then the original line's bytes (`L` of them, never re-encoded: a corrupt line may not even
//! be UTF-8) and `\n`. A raw line holds no `\n`, so the file stays line-oriented: headers are
//! the odd lines, originals the even ones.
//!
//! Crash safety: the journal records the file's length before the run appends
//! ([`Mark`]). Until the swap, the WAL still holds every corrupt line, so recovery of a run
//! that did not swap truncates the file back to that length (no line is ever quarantined
//! twice); after the swap the appended records are the only copy, so they stay. The records
//! are fsynced (and a new file's directory too) BEFORE the swap, or a crash after the swap
//! loses the corrupt lines.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{PipelineError, Stage};
use crate::fsutil::fsync_dir;
use crate::replay::{SetAsideHasher, SetAsideLines};
use crate::rules::SetAside;
use crate::wal::decode;

/// The quarantine file's name for `wal` in `dir`, named like its backups:
/// `wal.log` → `wal_quarantine.log`, `wal.jsonl` → `wal_quarantine.jsonl`.
pub fn quarantine_path(wal: &Path, dir: &Path) -> PathBuf {
    let (stem, ext) = super::backup::name_parts(wal);
    dir.join(format!("{stem}_quarantine{ext}"))
}

/// What the journal records before the run appends: where, and the length to go back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    pub path: PathBuf,
    pub len_before: u64,
}

impl Mark {
    /// The file's current length (0 when it does not exist yet).
    pub fn take(path: PathBuf) -> Result<Mark, PipelineError> {
        let len_before = match fs::symlink_metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(PipelineError::io(Stage::Quarantine, "stat", &path)(e)),
        };
        Ok(Mark { path, len_before })
    }

    /// Takes back what a run that did not swap appended: the WAL still holds those lines.
    /// Idempotent, so recovery may repeat it after a crash part-way.
    pub fn undo(&self, stage: Stage) -> Result<(), PipelineError> {
        let io_err = |op| PipelineError::io(stage, op, &self.path);
        let file = match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            // A symlink at our name: `append` refused it too, so nothing of ours is there.
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(()),
            Err(e) => return Err(io_err("open")(e)),
        };
        let len = file.metadata().map_err(io_err("stat"))?.len();
        if len <= self.len_before {
            return Ok(());
        }
        if self.len_before == 0 {
            // The run created it: remove it rather than leave an empty file.
            drop(file);
            fs::remove_file(&self.path).map_err(io_err("remove"))?;
            let dir = crate::fsutil::parent_dir(&self.path);
            return fsync_dir(&dir).map_err(PipelineError::io(stage, "fsync dir", &dir));
        }
        file.set_len(self.len_before).map_err(io_err("truncate"))?;
        file.sync_all().map_err(io_err("fsync"))
    }
}

/// One record's header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// 1-based line number in the WAL it came from.
    pub line: u64,
    /// Byte offset of the line in that WAL.
    pub offset: u64,
    /// Length of the original line, without its `\n`.
    pub bytes: u64,
    /// Why it is corrupt, as `status` says it.
    pub reason: String,
    /// The WAL it came from.
    pub wal: PathBuf,
    /// When it was quarantined (RFC 3339, UTC).
    pub at: String,
}

#[derive(Serialize, Deserialize)]
struct Record {
    quarantined: Header,
}

/// Appends the plan's set-aside lines (read from `src`, the original WAL) to the file of
/// `mark`, fsyncs it, then reads the appended records back from disk: they must hold
/// exactly the lines the original's replay set aside (`expected`). New files get the WAL's
/// owner and mode: they hold the same transaction data.
pub fn append(
    mark: &Mark,
    wal: &Path,
    src: &File,
    lines: &[SetAside],
    expected: &SetAsideLines,
    wal_meta: &fs::Metadata,
) -> Result<(), PipelineError> {
    let path = &mark.path;
    let io_err = |op| PipelineError::io(Stage::Quarantine, op, path);
    let created = !path.exists();
    // Never through a symlink planted at our name: the lines would land in its target.
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err("open (not following a symlink)"))?;
    // Nor through a hard link to someone else's file: ours has one link and is owned by us
    // or by the WAL's owner.
    let m = file.metadata().map_err(io_err("stat"))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !m.is_file() || m.nlink() != 1 || (m.uid() != euid && m.uid() != wal_meta.uid()) {
        return Err(io_err("append to")(io::Error::other(format!(
            "refusing it: a file with {} links owned by uid {} is where the quarantine file goes (planted?); nothing was written",
            m.nlink(),
            m.uid()
        ))));
    }
    if created {
        let _ = std::os::unix::fs::fchown(&file, Some(wal_meta.uid()), Some(wal_meta.gid()));
        file.set_permissions(fs::Permissions::from_mode(wal_meta.mode() & 0o7777))
            .map_err(io_err("chmod"))?;
    }
    crate::io_fault!(error "quarantine::write")
        .and_then(|()| write_records(&mut file, wal, src, lines))
        .map_err(io_err("write"))?;
    crate::crash_point!("quarantine::write::crash");
    file.sync_all().map_err(io_err("fsync"))?;
    if created {
        let dir = crate::fsutil::parent_dir(path);
        fsync_dir(&dir).map_err(PipelineError::io(Stage::Quarantine, "fsync dir", &dir))?;
    }
    crate::crash_point!("quarantine::fsync::crash");
    check(mark, expected)
}

fn write_records(out: &mut File, wal: &Path, src: &File, lines: &[SetAside]) -> io::Result<()> {
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut buf = Vec::new();
    for s in lines {
        let mut line = vec![0; s.slot.len as usize - 1];
        src.read_exact_at(&mut line, s.slot.offset)?;
        let reason = match decode(&line) {
            Err(e) => e.to_string(),
            Ok(_) => "corrupt".to_string(),
        };
        let header = Header {
            line: s.line,
            offset: s.slot.offset,
            bytes: line.len() as u64,
            reason,
            wal: wal.to_path_buf(),
            at: at.clone(),
        };
        serde_json::to_writer(
            &mut buf,
            &Record {
                quarantined: header,
            },
        )?;
        buf.push(b'\n');
        buf.extend_from_slice(&line);
        buf.push(b'\n');
        // One write per record bounds memory for any number of lines.
        out.write_all(&buf)?;
        buf.clear();
    }
    Ok(())
}

/// Reads back what this run appended and compares it with what the replay set aside.
fn check(mark: &Mark, expected: &SetAsideLines) -> Result<(), PipelineError> {
    let failed = |detail: String| PipelineError::VerifyFailed {
        path: mark.path.clone(),
        detail,
    };
    let got = read_records(&mark.path, mark.len_before)
        .map_err(|e| failed(format!("quarantine file unreadable after writing: {e}")))?;
    let got = got.into_iter().fold(SetAsideHasher::default(), |mut h, r| {
        h.add(&r.1);
        h
    });
    let got = got.finish();
    fail::fail_point!("quarantine::check::mismatch", |_| Err(failed(
        "injected quarantine mismatch".into()
    )));
    match got == *expected {
        true => Ok(()),
        false => Err(failed(format!(
            "the quarantine file holds {} lines, the original's replay set aside {} (or their bytes differ)",
            got.lines, expected.lines
        ))),
    }
}

/// The records of a quarantine file from byte `from` on: each header and the original line.
pub fn read_records(path: &Path, from: u64) -> io::Result<Vec<(Header, Vec<u8>)>> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut header = Vec::new();
    loop {
        header.clear();
        if reader.read_until(b'\n', &mut header)? == 0 {
            return Ok(out);
        }
        let record: Record = serde_json::from_slice(header.trim_ascii_end())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line)?;
        if line.pop() != Some(b'\n') || line.len() as u64 != record.quarantined.bytes {
            let msg = format!("record of line {} is truncated", record.quarantined.line);
            return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
        }
        out.push((record.quarantined, line));
    }
}
