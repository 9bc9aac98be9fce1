//! Linux file leases, the kernel mechanism lease mode stands on (`fcntl(F_SETLEASE)`): while we
//! hold a read lease on the WAL's inode, every `open` of it for writing blocks in the kernel
//! until we release it. Only the facts and the system calls live here; what a run does with
//! a lease is the pipeline's business. Measured facts: `shared/notes/linux-leases.md`.
//!
//! - The lease descriptor is read-only: our own writable descriptor (or a shared writable
//!   mmap) on the file prevents the lease, and while we hold it our own `open` for writing
//!   blocks on it like anyone's, so never open a leased file for writing.
//! - A break is signalled (SIGIO by default, whose default action kills the process): every
//!   lease descriptor gets [`BREAK_SIGNAL`], a real-time signal this process ignores, and a
//!   break is seen by polling [`ReadLease::broken`] (tokio merges signals anyway).
//! - `fs.lease-break-time` is how long the kernel lets a blocked writer wait for us; 0 means
//!   writers would hang as long as we hold the lease, so lease mode refuses it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// `F_SETSIG`, which `libc` does not export for linux-gnu.
const F_SETSIG: libc::c_int = 10;
/// Where `fs.lease-break-time` is read.
const LEASE_BREAK_TIME_PATH: &str = "/proc/sys/fs/lease-break-time";
/// How often a lease refused with `EAGAIN` (a writer has the file open) is asked for again:
/// measured under writers that open per append, a lease came after 1.3 ms median.
pub const LEASE_RETRY: Duration = Duration::from_micros(200);

/// The signal a lease break raises here: ignored, since breaks are found by polling.
pub fn break_signal() -> libc::c_int {
    libc::SIGRTMIN() + BREAK_SIGNAL_OFFSET
}
/// [`break_signal`] is `SIGRTMIN + 3`: glibc keeps the first two for threads, and the third
/// is left free for anything else that wants one.
const BREAK_SIGNAL_OFFSET: libc::c_int = 3;
/// Documentation name for [`break_signal`].
pub const BREAK_SIGNAL: &str = "SIGRTMIN+3";

/// Why a lease cannot be had, each with what to do.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "{path}: this filesystem ({fs}) does not support file leases for local writers; use offline mode with the writer stopped, or online mode for protocol writers"
    )]
    UnsupportedFilesystem { path: PathBuf, fs: &'static str },
    #[error(
        "{path}: leases are not available here (EINVAL: not a regular file, fs.leases-enable = 0, or the filesystem has none)"
    )]
    Unavailable { path: PathBuf },
    #[error(
        "{path}: not allowed to take a lease (EACCES): run as the file's owner or with CAP_LEASE (the systemd unit must keep it)"
    )]
    NotPermitted { path: PathBuf },
    #[error(
        "{path}: writers kept the WAL open for more than {waited_ms} ms, so no lease could be taken; retry later"
    )]
    Busy { path: PathBuf, waited_ms: u64 },
    #[error(
        "{path}: writers have the WAL open ({holders}); offline mode does not compact under a running writer: stop it, or use --mode lease"
    )]
    HeldOpen { path: PathBuf, holders: String },
    #[error(
        "{path}: this filesystem has no RENAME_EXCHANGE, which lease mode needs to keep the old WAL for late writers; use offline mode with the writer stopped"
    )]
    NoExchange { path: PathBuf },
    #[error(
        "fs.lease-break-time is 0: writers blocked by a lease would wait as long as it is held; set it above 0 (e.g. 45)"
    )]
    NoBreakTime,
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl LeaseError {
    /// A writer had the WAL open: the run is worth retrying later, nothing is wrong.
    pub fn is_busy(&self) -> bool {
        matches!(self, LeaseError::Busy { .. } | LeaseError::HeldOpen { .. })
    }
}

/// Filesystems whose leases do not see every writer (network, FUSE): `statfs` magic numbers.
const UNSUPPORTED_FILESYSTEMS: [(libc::c_long, &str); 8] = [
    (0x6969, "nfs"),
    (0x517B, "smb"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x6573_5546, "fuse"),
    (0x00C3_6400, "ceph"),
    (0x0102_1997, "9p"),
    (0x5346_414F, "afs"),
];

/// Refuses a filesystem where a lease would not keep every writer out (writes by another
/// NFS client or through a FUSE server are invisible to local leases).
pub fn check_filesystem(path: &Path) -> Result<(), LeaseError> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| LeaseError::Io {
        op: "statfs",
        path: path.into(),
        source: e.into(),
    })?;
    let magic = st.filesystem_type().0 as libc::c_long;
    match UNSUPPORTED_FILESYSTEMS.iter().find(|(m, _)| *m == magic) {
        Some((_, fs)) => Err(LeaseError::UnsupportedFilesystem {
            path: path.into(),
            fs,
        }),
        None => Ok(()),
    }
}

/// `fs.lease-break-time` in seconds; [`LeaseError::NoBreakTime`] when it is 0.
pub fn lease_break_time() -> Result<Duration, LeaseError> {
    let path = Path::new(LEASE_BREAK_TIME_PATH);
    let io_err = |source| LeaseError::Io {
        op: "read",
        path: path.into(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io_err)?;
    let secs: u64 = text
        .trim()
        .parse()
        .map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    match secs {
        0 => Err(LeaseError::NoBreakTime),
        s => Ok(Duration::from_secs(s)),
    }
}

/// Sets [`break_signal`] to be ignored, once per process, before any lease is taken: a break
/// must never kill the process (SIGIO's default action would).
fn ignore_break_signal() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: SIG_IGN for a real-time signal nothing else in this process uses.
        unsafe { libc::signal(break_signal(), libc::SIG_IGN) };
    });
}

/// A read lease on one inode, released on drop. Writers opening the file meanwhile block in
/// the kernel (for at most `fs.lease-break-time`).
#[derive(Debug)]
pub struct ReadLease {
    file: File,
    path: PathBuf,
}

impl ReadLease {
    /// Takes a read lease on the file at `path` at once: `Ok(None)` when a writer has it open
    /// (`EAGAIN`). `inode`, if given, is the (device, inode) the path must name.
    pub fn try_take(
        path: &Path,
        inode: Option<(u64, u64)>,
    ) -> Result<Option<ReadLease>, LeaseError> {
        ignore_break_signal();
        let io_err = |op| {
            move |source| LeaseError::Io {
                op,
                path: path.into(),
                source,
            }
        };
        // Read-only, or the lease is refused: our own writable descriptor counts.
        let file = OpenOptions::new()
            .read(true)
            // O_NONBLOCK: opening a FIFO must not wait for its writer (it then gets EINVAL).
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(io_err("open"))?;
        if let Some(want) = inode {
            let m = file.metadata().map_err(io_err("stat"))?;
            if (m.dev(), m.ino()) != want {
                return Err(io_err("open")(io::Error::other(
                    "the path names another file than the one expected",
                )));
            }
        }
        Ok(ReadLease::try_on(file, path)?.ok())
    }

    /// Takes a read lease through `file` (read-only), an already open descriptor: the way
    /// to take it again on an inode that is no longer at its path. `Err(file)` inside when a
    /// writer has it open (`EAGAIN`), to try again later.
    pub fn try_on(file: File, path: &Path) -> Result<Result<ReadLease, File>, LeaseError> {
        ignore_break_signal();
        match set_lease(&file, libc::F_RDLCK, path)? {
            true => Ok(Ok(ReadLease {
                file,
                path: path.into(),
            })),
            false => Ok(Err(file)),
        }
    }

    /// [`ReadLease::try_take`], retried every [`LEASE_RETRY`] until `timeout`.
    pub fn take(
        path: &Path,
        inode: Option<(u64, u64)>,
        timeout: Duration,
    ) -> Result<ReadLease, LeaseError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(lease) = ReadLease::try_take(path, inode)? {
                return Ok(lease);
            }
            if Instant::now() >= deadline {
                return Err(LeaseError::Busy {
                    path: path.into(),
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            std::thread::sleep(LEASE_RETRY);
        }
    }

    /// True once a writer's `open` is breaking the lease (it is blocked until we release).
    pub fn broken(&self) -> Result<bool, LeaseError> {
        // SAFETY: F_GETLEASE on a descriptor we own.
        let kind = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETLEASE) };
        match kind {
            k if k == libc::F_RDLCK => Ok(false),
            k if k >= 0 => Ok(true),
            _ => Err(LeaseError::Io {
                op: "fcntl(F_GETLEASE)",
                path: self.path.clone(),
                source: io::Error::last_os_error(),
            }),
        }
    }

    /// The leased file, read-only (positioned reads of what writers appended before).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Releases the lease: blocked writers go on.
    pub fn release(self) {
        drop(self)
    }

    /// Releases the lease and hands back its descriptor, to take the lease again later.
    pub fn unlock(self) -> File {
        let this = std::mem::ManuallyDrop::new(self);
        unlock(&this.file);
        // SAFETY: `this` is never dropped; each field is read out exactly once.
        let (file, _path) = unsafe { (std::ptr::read(&this.file), std::ptr::read(&this.path)) };
        file
    }
}

/// A write lease, taken through a descriptor of the file's only open file (the caller's
/// writable one): while held, every other `open` of the inode, read-only included, blocks.
/// Lease mode holds one on the compacted file from before the swap until the late lines
/// are merged into it. Released on drop.
#[derive(Debug)]
pub struct WriteLease {
    /// A duplicate of the caller's descriptor: the lease is on the open file they share.
    file: File,
}

impl WriteLease {
    /// Takes the write lease through `file`; `Ok(None)` when someone else has the file open.
    pub fn try_take(file: &File, path: &Path) -> Result<Option<WriteLease>, LeaseError> {
        ignore_break_signal();
        let file = file.try_clone().map_err(|source| LeaseError::Io {
            op: "dup",
            path: path.into(),
            source,
        })?;
        Ok(set_lease(&file, libc::F_WRLCK, path)?.then_some(WriteLease { file }))
    }
}

impl Drop for WriteLease {
    fn drop(&mut self) {
        unlock(&self.file);
    }
}

/// `F_SETSIG` then `F_SETLEASE kind` on `file`: `Ok(false)` on `EAGAIN` (the file is open
/// in a way that conflicts), the reason otherwise.
fn set_lease(file: &File, kind: libc::c_int, path: &Path) -> Result<bool, LeaseError> {
    // Lets tests run where leases are unavailable (EINVAL), as on NFS or with leases off.
    fail::fail_point!("lease::unavailable", |_| Err(LeaseError::Unavailable {
        path: path.into()
    }));
    let fd = file.as_raw_fd();
    let io_err = |op| {
        move |source| LeaseError::Io {
            op,
            path: path.into(),
            source,
        }
    };
    // SAFETY: fcntl on a descriptor the caller owns; F_SETSIG takes a signal number.
    if unsafe { libc::fcntl(fd, F_SETSIG, break_signal()) } != 0 {
        return Err(io_err("fcntl(F_SETSIG)")(io::Error::last_os_error()));
    }
    // SAFETY: as above; F_SETLEASE takes a lease type.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, kind) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) => Ok(false),
        Some(libc::EACCES) => Err(LeaseError::NotPermitted { path: path.into() }),
        Some(libc::EINVAL) => Err(LeaseError::Unavailable { path: path.into() }),
        _ => Err(io_err("fcntl(F_SETLEASE)")(e)),
    }
}

fn unlock(file: &File) {
    // SAFETY: F_SETLEASE F_UNLCK on a descriptor we own; closing it would release too.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
}

impl Drop for ReadLease {
    fn drop(&mut self) {
        unlock(&self.file);
    }
}

#[cfg(test)]
mod tests;
