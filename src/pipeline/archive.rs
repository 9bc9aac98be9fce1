//! Archives of expired transactions (opt-in retention): the lines an expiring run removes
//! from the WAL (each expired transaction's deciding PREPARE and final line, original bytes,
//! original order) are written here BEFORE the swap, so they leave the WAL without leaving
//! the disk, and `walcompactd restore WAL --from-archive ARCHIVE` can append them back.
//!
//! Naming, like backups: `wal.log` → `wal_archive_YYYYmmdd_HHMMSS.log.zst` (UTC), `_N` before
//! the extension on collision, beside the backups. Format: zstd (level [`frames::ZSTD_LEVEL`])
//! of the lines exactly as they were in the WAL, each ending with `\n`; nothing added. It is
//! written as independent frames of about [`frames::FRAME_BYTES`] of lines each, which any
//! zstd reader takes as one stream (see [`frames`]). The file has
//! the WAL's owner, group and mode (never wider): it holds the same transaction data.
//!
//! Crash safety: an archive is written under `<name>.partial` (a name that never parses as an
//! archive), fsynced, and only then given its name by a no-clobber `linkat`, then its
//! directory is fsynced: a crash never leaves a truncated file under an archive's name. A
//! writer dropped before [`ArchiveWriter::finish`] removes its partial. A run that writes an
//! archive and then does not swap must [`remove`] it: the WAL still holds those lines, and a
//! restore of the archive would append them twice.
//!
//! Every name is created, linked and removed through the directory's descriptor without
//! following links ([`crate::fsutil::safe`]): the directory may belong to the application's
//! user, who could plant a symlink at the next archive's name.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use serde::Serialize;
use xxhash_rust::xxh3::Xxh3;

use super::backup::{COMPRESSED_EXT, name_parts};
use super::{PipelineError, Stage};
use crate::fsutil::safe::Dir;

pub(super) mod frames;
mod reader;
pub use reader::{ArchiveReader, read_back, read_lines};

/// Timestamp format inside archive names (the backups' one).
const STAMP_FORMAT: &str = "%Y%m%d_%H%M%S";
/// Collision suffixes tried before giving up (more than one archive a second per WAL is odd).
const MAX_COLLISION_SUFFIX: u32 = 1000;
/// Seed of the XXH3-64 hash over the archive's uncompressed bytes.
pub const HASH_SEED: u64 = 0;
/// Suffix of an archive while it is written: never parsed as an archive.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// The archive file name for `wal` at `now`, with collision number `n` (0 = none):
/// `wal.log` → `wal_archive_20261130_120000.log.zst`, `wal_archive_20261130_120000_2.log.zst`.
pub fn archive_name(wal: &Path, now: DateTime<Utc>, n: u32) -> String {
    let (stem, ext) = name_parts(wal);
    let stamp = now.format(STAMP_FORMAT);
    match n {
        0 => format!("{stem}_archive_{stamp}{ext}.{COMPRESSED_EXT}"),
        n => format!("{stem}_archive_{stamp}_{n}{ext}.{COMPRESSED_EXT}"),
    }
}

/// When the archive named `name` of `wal` was written; `None` for any other name (a
/// `.partial`, a backup, another WAL's archive).
pub fn parse_archive_name(wal: &Path, name: &str) -> Option<DateTime<Utc>> {
    parse(wal, name).map(|(t, _)| t)
}

/// Time and collision number of an archive's name.
fn parse(wal: &Path, name: &str) -> Option<(DateTime<Utc>, u32)> {
    let (stem, ext) = name_parts(wal);
    let rest = name
        .strip_suffix(&format!(".{COMPRESSED_EXT}"))?
        .strip_prefix(&format!("{stem}_archive_"))?
        .strip_suffix(ext.as_str())?;
    let stamp = rest.get(..15)?;
    let n = match &rest[15..] {
        "" => 0,
        suffix => {
            let digits = suffix.strip_prefix('_')?;
            // `archive_name` never writes `_0` or leading zeros: such a name is not ours.
            if digits.is_empty() || digits.starts_with('0') {
                return None;
            }
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok()?
        }
    };
    let t = NaiveDateTime::parse_from_str(stamp, STAMP_FORMAT).ok()?;
    Some((Utc.from_utc_datetime(&t), n))
}

/// An archive as written (by [`ArchiveWriter::finish`]) or as read back from disk
/// ([`read_back`]): the pipeline checks the two are equal before it swaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Archive {
    pub path: PathBuf,
    pub lines: u64,
    /// Uncompressed bytes: the lines with their newlines.
    pub bytes: u64,
    /// XXH3-64 (seed [`HASH_SEED`]) of the uncompressed bytes.
    pub hash: u64,
    /// The file's size on disk.
    pub compressed_bytes: u64,
}

/// Writes one new archive: lines in, [`ArchiveWriter::finish`] names it durably. Dropped
/// unfinished (or [`ArchiveWriter::discard`]ed), it removes its partial file. Callers hold
/// the WAL's compaction lock: another writer of the same second would reuse the partial name.
pub struct ArchiveWriter {
    dir: Dir,
    wal: PathBuf,
    now: DateTime<Utc>,
    /// The collision number the partial was named for; [`ArchiveWriter::finish`] starts there.
    n: u32,
    partial: OsString,
    /// The partial file, until [`ArchiveWriter::finish`] closes it.
    file: Option<File>,
    /// Lines gathered by [`ArchiveWriter::write_line`] for the next frame (one call into zstd
    /// per line cost more than the compression itself), and how many.
    pending: Vec<u8>,
    pending_lines: u64,
    /// Frames written so far (an archive holds at least one, if empty).
    frames: u64,
    /// The WAL's owner, group and permission bits, given to the archive when it is finished.
    owner: (u32, u32),
    mode: u32,
    lines: u64,
    bytes: u64,
    hash: Xxh3,
    /// The partial has its final name (or was removed): nothing for `Drop` to do.
    claimed: bool,
}

impl ArchiveWriter {
    /// Creates `<archive name>.partial` in `dir` for the first archive name of `wal` at `now`
    /// that is free: a name taken by anything (an earlier archive, a planted symlink) is
    /// skipped, and so is a partial name held by something not ours; nothing is written
    /// through either. `wal_meta` gives the archive its owner and mode.
    pub fn create(
        wal: &Path,
        dir: &Path,
        now: DateTime<Utc>,
        wal_meta: &fs::Metadata,
    ) -> Result<ArchiveWriter, PipelineError> {
        let d = Dir::open(dir).map_err(PipelineError::io(Stage::Archive, "open directory", dir))?;
        for n in 0..MAX_COLLISION_SUFFIX {
            let name = OsString::from(archive_name(wal, now, n));
            let taken = d.stat(&name).map_err(PipelineError::io(
                Stage::Archive,
                "stat",
                d.path_of(&name),
            ))?;
            if taken.is_some() {
                continue;
            }
            let mut partial = name;
            partial.push(PARTIAL_SUFFIX);
            // A leftover of ours (a crash in the same second) is replaced; anything else at
            // the partial name is refused by `create_new`, never written through: next name.
            let file = match d.create_new(&partial, 0o600) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    tracing::warn!(event = "archive", reason = %e, "archive name skipped");
                    continue;
                }
                Err(e) => {
                    let path = d.path_of(&partial);
                    return Err(PipelineError::io(Stage::Archive, "create", path)(e));
                }
            };
            let w = ArchiveWriter {
                dir: d,
                wal: wal.to_path_buf(),
                now,
                n,
                partial,
                file: Some(file),
                pending: Vec::new(),
                pending_lines: 0,
                frames: 0,
                owner: (wal_meta.uid(), wal_meta.gid()),
                mode: wal_meta.mode() & 0o777,
                lines: 0,
                bytes: 0,
                hash: Xxh3::with_seed(HASH_SEED),
                claimed: false,
            };
            return Ok(w);
        }
        Err(PipelineError::BadInput {
            path: dir.into(),
            what: "too many archives with the same timestamp".into(),
        })
    }

    /// The archive's inode: the run's journal records it before any line is written, so
    /// recovery can find the archive of a run that did not swap, whatever its final name.
    pub fn ino(&self) -> Result<u64, PipelineError> {
        let file = self.file.as_ref().expect("not finished");
        let meta = file.metadata().map_err(PipelineError::io(
            Stage::Archive,
            "stat",
            self.partial_path(),
        ))?;
        Ok(std::os::unix::fs::MetadataExt::ino(&meta))
    }

    /// The partial file's path, for messages.
    pub fn partial_path(&self) -> PathBuf {
        self.dir.path_of(&self.partial)
    }

    /// Appends one line, which must end with its `\n` and hold no other.
    pub fn write_line(&mut self, line_with_newline: &[u8]) -> Result<(), PipelineError> {
        let line = line_with_newline;
        let one_line = match line.split_last() {
            Some((b'\n', rest)) => memchr::memchr(b'\n', rest).is_none(),
            _ => false,
        };
        if !one_line {
            return Err(PipelineError::BadInput {
                path: self.partial_path(),
                what: format!(
                    "archive line {} is not one line ending with a newline; nothing written",
                    self.lines + 1
                ),
            });
        }
        self.pending.extend_from_slice(line);
        self.pending_lines += 1;
        if self.pending.len() >= frames::FRAME_BYTES {
            self.hand_over()?;
        }
        Ok(())
    }

    /// Lines written so far.
    pub fn lines(&self) -> u64 {
        self.lines + self.pending_lines
    }

    /// Appends one frame compressed elsewhere ([`frames::Compressing`], on another thread), after
    /// the lines written so far: its lines count, and are hashed, in the order of the calls.
    pub fn write_frame(&mut self, frame: &frames::Frame) -> Result<(), PipelineError> {
        self.hand_over()?;
        // The stream hash over the frame's lines at once: the same digest as line by line.
        self.hash.update(&frame.raw);
        self.lines += frame.lines;
        self.bytes += frame.raw.len() as u64;
        self.frames += 1;
        let file = self
            .file
            .as_mut()
            .expect("an unfinished writer has its file");
        file.write_all(&frame.zst)
            .map_err(|e| PipelineError::io(Stage::Archive, "write", self.partial_path())(e))
    }

    /// Compresses the lines gathered by [`ArchiveWriter::write_line`], if any, into a frame.
    fn hand_over(&mut self) -> Result<(), PipelineError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.pending);
        let lines = std::mem::take(&mut self.pending_lines);
        let frame = frames::Compressing::default()
            .frame(raw, lines, &frames::Pool::default())
            .map_err(PipelineError::io(
                Stage::Archive,
                "compress",
                self.partial_path(),
            ))?;
        self.write_frame(&frame)
    }

    /// Writes the last frame, gives the file the WAL's owner and mode, fsyncs it, claims the
    /// first free archive name and fsyncs the directory.
    pub fn finish(mut self) -> Result<Archive, PipelineError> {
        self.hand_over()?;
        if self.frames == 0 {
            // An empty archive is still a zstd stream: one empty frame.
            let empty = frames::Compressing::default()
                .frame(Vec::new(), 0, &frames::Pool::default())
                .map_err(PipelineError::io(
                    Stage::Archive,
                    "compress",
                    self.partial_path(),
                ))?;
            self.write_frame(&empty)?;
        }
        let partial_path = self.partial_path();
        let io_err = |op| PipelineError::io(Stage::Archive, op, &partial_path);
        let file = self.file.take().expect("an unfinished writer has its file");
        // The WAL's owner and mode, never wider, set on the descriptor. Only now: while it
        // was written, the partial was this process's alone (0600), and a crash left a
        // leftover `create_new` and `remove_leftovers` recognize as ours.
        let _ = std::os::unix::fs::fchown(&file, Some(self.owner.0), Some(self.owner.1));
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(self.mode))
            .map_err(io_err("chmod"))?;
        // fsync BEFORE the archive takes its name, or a crash can leave a truncated file
        // under an archive's name, which a restore would append as if complete.
        crate::io_fault!("archive::fsync")
            .and_then(|()| file.sync_all())
            .map_err(io_err("fsync"))?;
        let compressed_bytes = file.metadata().map_err(io_err("stat"))?.len();
        drop(file);
        let name = self.claim()?;
        let path = self.dir.path_of(&name);
        // fsync the archive (above) and its directory BEFORE the swap, or a crash loses the
        // expired lines: the swap would survive and the archive's name might not. If the
        // directory cannot be fsynced the name is removed again: the caller will not swap.
        if let Err(e) = crate::io_fault!("archive::fsync_dir").and_then(|()| self.dir.sync()) {
            let _ = self.dir.unlink(&name);
            return Err(PipelineError::io(
                Stage::Archive,
                "fsync directory of",
                path,
            )(e));
        }
        Ok(Archive {
            path,
            lines: self.lines,
            bytes: self.bytes,
            hash: self.hash.digest(),
            compressed_bytes,
        })
    }

    /// Gives the complete partial its final name, never replacing anything: a hard link
    /// (fails on any existing name, a planted symlink included; the next name is tried),
    /// else, on filesystems without hard links, a rename after a check (the compaction lock
    /// keeps our other runs away; `renameat` replaces a name planted meanwhile, never its
    /// target).
    fn claim(&mut self) -> Result<OsString, PipelineError> {
        for n in self.n..MAX_COLLISION_SUFFIX {
            let name = OsString::from(archive_name(&self.wal, self.now, n));
            let claimed = crate::io_fault!("archive::claim")
                .and_then(|()| match self.dir.link(&self.partial, &name) {
                    Ok(()) => {
                        // The archive has its name; a partial name left behind is only space.
                        let _ = self.dir.unlink(&self.partial);
                        Ok(true)
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                    Err(e) if link_unsupported(&e) => match self.dir.stat(&name)? {
                        Some(_) => Ok(false),
                        None => self.dir.rename(&self.partial, &name).map(|()| true),
                    },
                    Err(e) => Err(e),
                })
                .map_err(PipelineError::io(
                    Stage::Archive,
                    "name",
                    self.dir.path_of(&name),
                ))?;
            if claimed {
                self.claimed = true;
                return Ok(name);
            }
        }
        Err(PipelineError::BadInput {
            path: self.partial_path(),
            what: "too many archives with the same timestamp".into(),
        })
    }

    /// Gives up the archive: its partial file is removed (as when the writer is dropped).
    pub fn discard(self) {
        drop(self)
    }
}

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        if self.claimed {
            return;
        }
        drop(self.file.take());
        match self.dir.unlink(&self.partial) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                tracing::warn!(event = "archive", partial = %self.partial_path().display(),
                    reason = %e, "could not remove an unfinished archive");
            }
            _ => {}
        }
    }
}

/// Filesystems without hard links fall back to a rename (as backup copies do).
fn link_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPERM) | Some(libc::ENOTSUP) | Some(libc::EMLINK)
    )
}

/// An archive found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchiveFile {
    pub path: PathBuf,
    pub taken_at: DateTime<Utc>,
    /// Size on disk (compressed).
    pub bytes: u64,
}

/// Archives of `wal` in `dir`, oldest first. Only regular files owned by this process's
/// user or the WAL's count: a symlink or another user's file named like an archive is not
/// listed, so it is never taken for the newest archive nor removed.
pub fn list(wal: &Path, dir: &Path) -> io::Result<Vec<ArchiveFile>> {
    let wal_owner = fs::metadata(wal).ok().map(|m| m.uid());
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((taken_at, n)) = parse(wal, &name) else {
            continue;
        };
        // `DirEntry::metadata` does not follow a symlink.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_file() || !(meta.uid() == euid || Some(meta.uid()) == wal_owner) {
            continue;
        }
        let file = ArchiveFile {
            path: entry.path(),
            taken_at,
            bytes: meta.len(),
        };
        found.push((n, file));
    }
    found.sort_by(|(na, a), (nb, b)| (a.taken_at, na, &a.path).cmp(&(b.taken_at, nb, &b.path)));
    Ok(found.into_iter().map(|(_, f)| f).collect())
}

/// Which archives to delete: older than `keep_days` (0 = keep for ever), never the newest.
/// Pure, so the retention rule is testable without files.
pub fn select_prunable(
    archives: &[ArchiveFile],
    keep_days: u32,
    now: DateTime<Utc>,
) -> Vec<PathBuf> {
    if keep_days == 0 {
        return Vec::new();
    }
    let cutoff = now - chrono::Duration::days(i64::from(keep_days));
    let Some((_newest, older)) = archives.split_last() else {
        return Vec::new();
    };
    older
        .iter()
        .filter(|a| a.taken_at < cutoff)
        .map(|a| a.path.clone())
        .collect()
}

/// Removes the archives of `wal` in `dir` older than `keep_days` (0 = none), never the
/// newest, never one in `protect` (still waiting for an off-host copy); returns those
/// removed. Each is removed by name (`unlinkat`), only if it is still a regular file, then
/// the directory is fsynced.
pub fn prune(
    wal: &Path,
    dir: &Path,
    keep_days: u32,
    protect: &[&Path],
    now: DateTime<Utc>,
) -> Result<Vec<PathBuf>, PipelineError> {
    let archives = list(wal, dir).map_err(PipelineError::io(Stage::Prune, "list", dir))?;
    let mut doomed = select_prunable(&archives, keep_days, now);
    doomed.retain(|p| !protect.contains(&p.as_path()));
    if doomed.is_empty() {
        return Ok(doomed);
    }
    let d = Dir::open(dir).map_err(PipelineError::io(Stage::Prune, "open directory", dir))?;
    let mut removed = Vec::new();
    for p in doomed {
        let name = p.file_name().expect("listed entries have names");
        if unlink_regular(&d, name).map_err(PipelineError::io(Stage::Prune, "remove", &p))? {
            removed.push(p);
        }
    }
    d.sync()
        .map_err(PipelineError::io(Stage::Prune, "fsync directory", dir))?;
    Ok(removed)
}

/// Removes one archive (a run that wrote it did not swap: the WAL still holds its lines),
/// durably. Only a regular file is removed, by name; nothing there is fine.
pub fn remove(archive: &Path) -> Result<(), PipelineError> {
    let io_err = |op| PipelineError::io(Stage::Archive, op, archive);
    let (dir, name) = Dir::of(archive).map_err(io_err("open directory of"))?;
    if unlink_regular(&dir, &name).map_err(io_err("remove"))? {
        dir.sync().map_err(io_err("fsync directory of"))?;
    }
    Ok(())
}

/// Removes the partial archives of `wal` in `dir` a crash left behind (ours only: anything
/// else at such a name is left, with a warning). Call it under the compaction lock: a run in
/// progress is writing its partial.
pub fn remove_leftovers(wal: &Path, dir: &Path) -> Result<Vec<PathBuf>, PipelineError> {
    let d = Dir::open(dir).map_err(PipelineError::io(Stage::Archive, "open directory", dir))?;
    let entries = fs::read_dir(dir).map_err(PipelineError::io(Stage::Archive, "list", dir))?;
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(PipelineError::io(Stage::Archive, "list", dir))?;
        let name = entry.file_name();
        let is_partial = name
            .to_string_lossy()
            .strip_suffix(PARTIAL_SUFFIX)
            .is_some_and(|n| parse(wal, n).is_some());
        if !is_partial {
            continue;
        }
        match d.remove_leftover(&name) {
            Ok(()) => removed.push(d.path_of(&name)),
            Err(e) => tracing::warn!(event = "archive", reason = %e, "partial archive left"),
        }
    }
    if !removed.is_empty() {
        d.sync()
            .map_err(PipelineError::io(Stage::Archive, "fsync directory", dir))?;
    }
    Ok(removed)
}

/// `unlinkat(name)` if `name` is (still) a regular file; true when removed.
fn unlink_regular(dir: &Dir, name: &OsStr) -> io::Result<bool> {
    match dir.stat(name)? {
        Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => dir.unlink(name).map(|()| true),
        // Gone, or replaced by something else since it was listed: not ours to remove.
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests;
