//! The writer side of the online-compaction lock protocol (specified in `docs/PROTOCOL.md`).
//!
//! Online compaction replaces the WAL by renaming a new file over its path while writers keep
//! appending. That is only safe if every writer, for every append:
//!
//! 1. holds `flock(LOCK_EX)` on `<wal>.lock` (never renamed, never deleted);
//! 2. compares its open handle's `(st_dev, st_ino)` with `stat(<wal>)` and reopens the path
//!    (`O_WRONLY|O_APPEND|O_CREAT`) if they differ or the path is missing;
//! 3. writes the whole line, `\n` included, in one `write` (looping only on a short write);
//! 4. fsyncs if its durability policy says so;
//! 5. releases the lock.
//!
//! The compactor takes the same lock only for its final tail copy and rename, so a writer
//! waits at most for "copy what was appended since the last catch-up + fsync + rename".
//!
//! [`WalWriter`] is the reference implementation in Rust; `examples/protocol_writer.py` is
//! the same protocol in Python. A writer that skips the lock or never reopens is NOT safe in
//! online mode: its appends after a swap land in the old inode (the backup) and are lost
//! from the live WAL. Such writers must use offline mode.

use std::borrow::Cow;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fsutil::sibling;

/// Suffix of the writers' protocol lock file: `wal.log` → `wal.log.lock`. Distinct from the
/// compactors' single-flight `<wal>.compact.lock`, which writers never touch.
pub const LOCK_SUFFIX: &str = ".lock";

/// Default permission bits for a WAL (and its lock file) created by a writer, before umask.
pub const DEFAULT_MODE: u32 = 0o644;

/// The protocol lock file for `wal`, shared by writers and the online compactor so both sides
/// agree on one path.
pub fn lock_path(wal: &Path) -> PathBuf {
    sibling(wal, LOCK_SUFFIX)
}

/// When an append is made durable. Whatever the choice, the fsync happens under the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// No fsync: the line survives a process crash (it is in the page cache) but maybe not a
    /// power loss. Fastest; the lock is held only for the write.
    #[default]
    None,
    /// `fdatasync` after every append: when `append` returns, the line is on disk.
    Fsync,
    /// `fdatasync` after every n-th append (0 is treated as 1): bounds the loss on power
    /// failure to n-1 lines while amortizing the sync cost.
    FsyncEvery(u32),
}

/// The step of the protocol that failed, so an error says what was being attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Opening (creating if missing) `<wal>.lock`.
    OpenLockFile,
    /// `flock(LOCK_EX)` on the lock file.
    Lock,
    /// `flock(LOCK_UN)` on the lock file. In [`WalWriter::append`] it comes after the
    /// append succeeded: the line is in the WAL, so the append must not be retried.
    Unlock,
    /// `stat(<wal>)` or `fstat` of the open handle.
    Stat,
    /// The first open of the WAL in [`WalWriter::open`].
    Open,
    /// Reopening the WAL after a swap or after it went missing.
    Reopen,
    /// `fdatasync` of the WAL, after the line was written: the line is in the WAL (maybe
    /// not durably), so the append must not be retried.
    Fsync,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::OpenLockFile => "open lock file",
            Operation::Lock => "lock",
            Operation::Unlock => "unlock",
            Operation::Stat => "stat",
            Operation::Open => "open",
            Operation::Reopen => "reopen",
            Operation::Fsync => "fsync",
        })
    }
}

/// Why an append (or opening the writer) failed.
#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    /// A filesystem call of the protocol failed; `path` is the file it was applied to.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: Operation,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The `write` failed. If `written > 0` the WAL now ends with a torn fragment of this line
    /// (e.g. the disk filled up mid-line); the writer does not truncate it, because an online
    /// compactor may already have copied those bytes during a lock-free catch-up. The append
    /// did NOT happen; see docs/PROTOCOL.md, "Failed writes".
    #[error("write {}: {source} ({written} of {len} bytes written)", path.display())]
    Write {
        path: PathBuf,
        written: usize,
        len: usize,
        #[source]
        source: io::Error,
    },
    /// The line contains `\n` before its end: it would become two WAL lines, neither valid.
    #[error("line contains a newline at byte {at} (only a final newline is allowed)")]
    EmbeddedNewline { at: usize },
    /// An empty line is a corrupt WAL line to every reader, so it is refused.
    #[error("empty line")]
    EmptyLine,
    /// `append_json` could not serialize the value.
    #[error("serialize: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The line is in the WAL; do not retry. The whole line reached the WAL (and was synced
    /// if the durability policy says so), then appending it to the audit mirror
    /// ([`WalWriter::mirror_to`]) failed. Appending it again would put it in the WAL twice; the
    /// mirror now lacks the line (or ends with a torn part of it) and no longer matches the WAL.
    #[error(
        "appended to {} but not to its mirror {}: {source} (the line is in the WAL; do not retry)",
        wal.display(),
        mirror.display()
    )]
    AppendedButMirrorFailed {
        wal: PathBuf,
        mirror: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl WriterError {
    /// Whether appending the same line again after this error cannot put it in the WAL twice
    /// or glue it onto a fragment: true when the failed call wrote nothing to the WAL.
    ///
    /// False when the line is already in the WAL ([`WriterError::AppendedButMirrorFailed`];
    /// a failed `fsync` or unlock, which come after the write) and when a failed write left a
    /// torn fragment (`written > 0`: the next line would be glued to it, see
    /// `docs/PROTOCOL.md`, "Failed writes"). A caller that retries on errors must check this,
    /// or an error after a successful write makes it append the line twice.
    pub fn is_retry_safe(&self) -> bool {
        match self {
            WriterError::Io { op, .. } => !matches!(op, Operation::Fsync | Operation::Unlock),
            WriterError::Write { written, .. } => *written == 0,
            WriterError::EmbeddedNewline { .. }
            | WriterError::EmptyLine
            | WriterError::Serialize(_) => true,
            WriterError::AppendedButMirrorFailed { .. } => false,
        }
    }
}

/// What one append cost, for latency benchmarks and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendStats {
    /// Time spent waiting for `LOCK_EX` (contention with other writers or a compactor's swap).
    pub waited: Duration,
    /// Time the lock was held: stat, maybe reopen, write, maybe fsync.
    pub held: Duration,
    /// Whether the WAL was reopened because its inode changed or the path was missing.
    pub reopened: bool,
    /// Byte offset of the line's start in the WAL the path named at the time of the write.
    pub offset: u64,
    /// Bytes written, the final `\n` included.
    pub bytes: usize,
    /// Whether this append ended with an fdatasync.
    pub synced: bool,
}

/// An appender to one WAL that follows the online-compaction lock protocol, so the daemon may
/// compact the WAL in online mode while this writer runs.
///
/// One `WalWriter` per thread of writing (it needs `&mut self`); several writers, in this or
/// other processes, may share a WAL: `flock` locks belong to the open file description, so
/// each `WalWriter` excludes every other one, even within one process.
///
/// ```no_run
/// use walcompactd::writer::{Durability, WalWriter};
///
/// let mut w = WalWriter::open("/data/wal.log", Durability::Fsync)?;
/// let stats = w.append(br#"{"op": "PREPARE", "tx_id": "t1", "data": {}}"#)?;
/// w.append_json(&serde_json::json!({"op": "COMMIT", "tx_id": "t1"}))?;
/// println!("waited {:?}, held {:?}", stats.waited, stats.held);
/// # Ok::<(), walcompactd::writer::WriterError>(())
/// ```
#[derive(Debug)]
pub struct WalWriter {
    path: PathBuf,
    lock_path: PathBuf,
    lock: File,
    wal: File,
    /// `(st_dev, st_ino)` of `wal`, compared with `stat(path)` under the lock.
    ident: (u64, u64),
    durability: Durability,
    mode: u32,
    unsynced: u32,
    /// An audit copy and its path: every line also appended there under the same lock hold.
    mirror: Option<(PathBuf, File)>,
}

impl WalWriter {
    /// Opens (creating if missing) the lock file and the WAL, with [`DEFAULT_MODE`].
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<WalWriter, WriterError> {
        Self::open_with_mode(path, durability, DEFAULT_MODE)
    }

    /// Like [`WalWriter::open`], with the permission bits (before umask) used whenever this
    /// writer creates the WAL or its lock file.
    pub fn open_with_mode(
        path: impl AsRef<Path>,
        durability: Durability,
        mode: u32,
    ) -> Result<WalWriter, WriterError> {
        let path = path.as_ref().to_path_buf();
        let lock_path = lock_path(&path);
        // Read-only is enough for flock, and lets a writer use a lock file another user
        // created. std refuses `create` without write access, hence the raw O_CREAT.
        let lock = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CREAT)
            .mode(mode)
            .open(&lock_path)
            .map_err(io_err(Operation::OpenLockFile, &lock_path))?;
        // Open the WAL under the lock too: creating it must not race a compactor's rename
        // (harmless today since we re-check before every write, but the rule stays simple:
        // every touch of the WAL path by a writer happens under the lock).
        lock.lock().map_err(io_err(Operation::Lock, &lock_path))?;
        let opened = open_wal(&path, mode).map_err(io_err(Operation::Open, &path));
        let unlocked = lock.unlock().map_err(io_err(Operation::Unlock, &lock_path));
        let (wal, ident, _len) = opened?;
        unlocked?;
        Ok(WalWriter {
            path,
            lock_path,
            lock,
            wal,
            ident,
            durability,
            mode,
            unsynced: 0,
            mirror: None,
        })
    }

    /// The WAL path this writer appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The protocol lock file (`<wal>.lock`).
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// The durability policy given at open.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Appends one line (a final `\n` is added if missing) following the protocol: lock,
    /// reopen if the WAL was swapped, one write, optional fsync, unlock.
    ///
    /// Refuses a line with an embedded newline or an empty line before touching any file.
    pub fn append(&mut self, line: &[u8]) -> Result<AppendStats, WriterError> {
        let line = checked_line(line)?;
        let start = Instant::now();
        self.lock
            .lock()
            .map_err(io_err(Operation::Lock, &self.lock_path))?;
        let locked_at = Instant::now();
        let result = self.append_locked(&line);
        // Release even when the append failed: a writer stuck holding the lock would stall
        // every other writer and make every compaction time out.
        let unlocked = self
            .lock
            .unlock()
            .map_err(io_err(Operation::Unlock, &self.lock_path));
        let held = locked_at.elapsed();
        let (reopened, offset, synced) = result?;
        unlocked?;
        Ok(AppendStats {
            waited: locked_at - start,
            held,
            reopened,
            offset,
            bytes: line.len(),
            synced,
        })
    }

    /// Also appends every line to `path` (created if missing), under the same lock hold, so
    /// the audit file has exactly the WAL's order of appends — the uncompacted stream, for
    /// auditing or for checking a compactor against it.
    ///
    /// The WAL comes first: a line is written to the mirror only after it is in the WAL, so a
    /// failed mirror write is [`WriterError::AppendedButMirrorFailed`] (do not retry it).
    pub fn mirror_to(&mut self, path: impl AsRef<Path>) -> Result<(), WriterError> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(self.mode)
            .open(path)
            .map_err(io_err(Operation::Open, path))?;
        self.mirror = Some((path.to_path_buf(), file));
        Ok(())
    }

    /// Serializes `value` as compact JSON (which never contains a raw newline) and appends it.
    pub fn append_json<T: Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<AppendStats, WriterError> {
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        self.append(&line)
    }

    /// The part of the protocol done under `LOCK_EX`. Returns (reopened, offset, synced).
    fn append_locked(&mut self, line: &[u8]) -> Result<(bool, u64, bool), WriterError> {
        // Check the inode UNDER the lock: a compactor renames only while holding it, so what
        // we see here stays true until we unlock. Checked before taking the lock, a swap
        // between the check and the write would send the line to the old inode (the backup)
        // and lose it from the live WAL.
        let current = match fs::metadata(&self.path) {
            Ok(m) => Some(((m.dev(), m.ino()), m.len())),
            // Missing path (a restore or an operator moved it away): recreate it, still
            // under the lock, rather than append to a file nobody will read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(Operation::Stat, &self.path)(e)),
        };
        let (reopened, offset) = match current {
            Some((ident, len)) if ident == self.ident => (false, len),
            _ => {
                let (wal, ident, len) = open_wal(&self.path, self.mode)
                    .map_err(io_err(Operation::Reopen, &self.path))?;
                // Dropping the old handle closes it; the lock is on a different file, so
                // this does not release it.
                self.wal = wal;
                self.ident = ident;
                (true, len)
            }
        };
        // The whole line in one write (O_APPEND makes it land at the end, atomically with
        // respect to the offset). write_all loops only on a short write, still under the lock,
        // so no other protocol writer can interleave bytes into the line.
        let mut written = 0;
        while written < line.len() {
            match self.wal.write(&line[written..]) {
                Ok(0) => {
                    return Err(self.write_error(
                        written,
                        line.len(),
                        io::ErrorKind::WriteZero.into(),
                    ));
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.write_error(written, line.len(), e)),
            }
        }
        // From here on the line is in the WAL: a failure must not read as "nothing appended".
        // A failed mirror write still lets the WAL be synced per its policy, then is reported.
        let mirrored = match self.mirror.as_mut() {
            Some((mirror, file)) => {
                file.write_all(line)
                    .map_err(|source| WriterError::AppendedButMirrorFailed {
                        wal: self.path.clone(),
                        mirror: mirror.clone(),
                        source,
                    })
            }
            None => Ok(()),
        };
        // fsync before unlocking: the line is durable before any compactor can copy it, and
        // the sync covers the inode the path names, not one swapped away after we unlock.
        let synced = match self.durability {
            Durability::None => false,
            Durability::Fsync => true,
            Durability::FsyncEvery(n) => {
                self.unsynced += 1;
                self.unsynced >= n.max(1)
            }
        };
        if synced {
            self.wal
                .sync_data()
                .map_err(io_err(Operation::Fsync, &self.path))?;
            self.unsynced = 0;
        }
        mirrored?;
        Ok((reopened, offset, synced))
    }

    fn write_error(&self, written: usize, len: usize, source: io::Error) -> WriterError {
        WriterError::Write {
            path: self.path.clone(),
            written,
            len,
            source,
        }
    }
}

/// Opens `path` for appending, creating it with `mode` if missing; returns the handle, its
/// `(dev, ino)` and its length (the offset the next append lands at, under the lock).
fn open_wal(path: &Path, mode: u32) -> io::Result<(File, (u64, u64), u64)> {
    // O_WRONLY|O_APPEND|O_CREAT: every write goes to the current end, whoever else appends.
    let wal = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .open(path)?;
    // fstat the handle we opened, not the path: the identity must be that of the file our
    // writes go to.
    let meta = wal.metadata()?;
    Ok((wal, (meta.dev(), meta.ino()), meta.len()))
}

/// Validates a line and returns it with exactly one final `\n`.
fn checked_line(line: &[u8]) -> Result<Cow<'_, [u8]>, WriterError> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    if body.is_empty() {
        return Err(WriterError::EmptyLine);
    }
    if let Some(at) = body.iter().position(|&b| b == b'\n') {
        return Err(WriterError::EmbeddedNewline { at });
    }
    Ok(if body.len() == line.len() {
        let mut v = Vec::with_capacity(line.len() + 1);
        v.extend_from_slice(line);
        v.push(b'\n');
        Cow::Owned(v)
    } else {
        Cow::Borrowed(line)
    })
}

fn io_err(op: Operation, path: &Path) -> impl FnOnce(io::Error) -> WriterError + '_ {
    move |source| WriterError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
