//! Files we create in directories we do not alone control. The daemon runs as root; the WAL's
//! directory belongs to the application's user, who could plant a symlink (or a hard link to
//! someone else's file) at any name we are about to use, and have root truncate or overwrite
//! its target (logrotate's CVE-2011-1098). So every file we create or replace there is:
//!
//! - opened relative to a descriptor of its directory, with `O_NOFOLLOW | O_CLOEXEC`;
//! - created with `O_EXCL`: a name that exists is either a leftover of ours (a regular file
//!   with one link, owned by us: removed with `unlinkat`, never followed) or foreign (a
//!   symlink, another owner, more links): refused with a message naming it and its owner;
//! - renamed with `renameat` within that directory descriptor (a rename replaces a planted
//!   link itself, never what it points to).
//!
//! Files that must persist and be reopened (the compaction lock, the writers' lock) are
//! opened without `O_EXCL` and checked after opening (see [`Dir::open_persistent`]).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::parent_dir;

/// Who may own a persistent file we reopen.
#[derive(Debug, Clone, Copy)]
pub enum Owners {
    /// This process's user, or this one (the WAL's owner, who may have run the tool first).
    UsOr(Option<u32>),
    /// Anyone (the writers' lock: created by the application, only ever `flock`ed).
    Anyone,
}

/// An open directory: the anchor of every name below.
#[derive(Debug)]
pub struct Dir {
    fd: File,
    path: PathBuf,
}

/// What is at a name instead of our own file, for messages.
fn describe(meta: &libc::stat) -> String {
    let kind = match meta.st_mode & libc::S_IFMT {
        libc::S_IFLNK => "a symlink",
        libc::S_IFREG if meta.st_nlink > 1 => "a file with other hard links",
        libc::S_IFREG => "a file",
        libc::S_IFDIR => "a directory",
        _ => "a special file",
    };
    format!("{kind} owned by uid {}", meta.st_uid)
}

/// The refusal: `path` holds `what` where our own file should be.
fn foreign(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "refusing {}: {what} is where walcompactd's own file goes (planted?); nothing was written through it. Remove it if it is not needed",
            path.display()
        ),
    )
}

fn cname(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::other("a file name with a NUL byte"))
}

impl Dir {
    /// Opens the directory at `path` (its own symlinks, e.g. `/var/lib`, are followed: the
    /// threat is the names inside it).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("a path with a NUL byte"))?;
        // SAFETY: open(2) on a NUL-terminated path; the descriptor is owned by the File.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { File::from_raw_fd(fd) };
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The directory holding `file` and `file`'s name in it.
    pub fn of(file: &Path) -> io::Result<(Dir, OsString)> {
        let name = file
            .file_name()
            .ok_or_else(|| io::Error::other(format!("{} has no file name", file.display())))?;
        Ok((Dir::open(&parent_dir(file))?, name.to_os_string()))
    }

    /// The path of `name` in this directory, for messages.
    pub fn path_of(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// `fstatat(name, AT_SYMLINK_NOFOLLOW)`; `None` when nothing is there.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<libc::stat>> {
        let c = cname(name)?;
        // SAFETY: a zeroed stat buffer filled by fstatat on our directory descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        match rc {
            0 => Ok(Some(st)),
            _ => match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::NotFound => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Whether what `st` describes is a leftover of ours: a regular file with one link,
    /// owned by this process's user (only we create files as that user here).
    fn is_ours(st: &libc::stat) -> bool {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        st.st_mode & libc::S_IFMT == libc::S_IFREG && st.st_nlink == 1 && st.st_uid == euid
    }

    fn openat(&self, name: &OsStr, flags: libc::c_int, mode: u32) -> io::Result<File> {
        let c = cname(name)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: openat(2) on our directory descriptor and a NUL-terminated name.
        let fd =
            unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    /// Creates `name` new (`O_EXCL`), write-only, with `mode` (before the umask). A leftover
    /// of ours there is removed first; anything else is refused (see the module header).
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        match self.openat(name, flags, mode) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_leftover(name)?;
                self.openat(name, flags, mode)
            }
            other => other,
        }
    }

    /// Removes a leftover of ours at `name` (nothing there is fine); refuses anything else.
    pub fn remove_leftover(&self, name: &OsStr) -> io::Result<()> {
        match self.stat(name)? {
            None => Ok(()),
            Some(st) if Dir::is_ours(&st) => self.unlink(name),
            Some(st) => Err(foreign(&self.path_of(name), &describe(&st))),
        }
    }

    /// [`Dir::remove_leftover`] that also removes a regular file whose inode is in `known`
    /// (one a journal names, whoever owns it); true when something was removed.
    pub fn remove_leftover_known(&self, name: &OsStr, known: &[u64]) -> io::Result<bool> {
        match self.stat(name)? {
            None => Ok(false),
            Some(st)
                if st.st_mode & libc::S_IFMT == libc::S_IFREG && known.contains(&st.st_ino) =>
            {
                self.unlink(name).map(|()| true)
            }
            Some(_) => self.remove_leftover(name).map(|()| true),
        }
    }

    /// Opens (creating it if missing) a file that persists between runs, read-write, never
    /// truncating: it must then be a regular file with one link (never a link to another
    /// file), owned as `owners` allows.
    pub fn open_persistent(&self, name: &OsStr, mode: u32, owners: Owners) -> io::Result<File> {
        let file = match self.openat(name, libc::O_RDWR | libc::O_CREAT, mode) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(foreign(&self.path_of(name), "a symlink"));
            }
            other => other?,
        };
        let m = file.metadata()?;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let owner_ok = match owners {
            Owners::Anyone => true,
            Owners::UsOr(other) => m.uid() == euid || Some(m.uid()) == other,
        };
        if !m.is_file() || m.nlink() != 1 || !owner_ok {
            let kind = match (m.is_file(), m.nlink()) {
                (false, _) => "a special file",
                (true, 1) => "a file",
                (true, _) => "a file with other hard links",
            };
            return Err(foreign(
                &self.path_of(name),
                &format!("{kind} owned by uid {}", m.uid()),
            ));
        }
        Ok(file)
    }

    /// Opens `name` read-only without following a symlink there.
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        match self.openat(name, libc::O_RDONLY, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                Err(foreign(&self.path_of(name), "a symlink"))
            }
            other => other,
        }
    }

    /// `renameat(from, to)` within this directory.
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (f, t) = (cname(from)?, cname(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: renameat(2) on our directory descriptor and NUL-terminated names.
        match unsafe { libc::renameat(fd, f.as_ptr(), fd, t.as_ptr()) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// `linkat(from, to)` within this directory: a second name for `from`'s inode (a symlink at
    /// `from` is linked itself, never followed). Anything at `to`, a planted symlink included,
    /// makes it fail with `AlreadyExists` and is neither followed nor replaced: the no-clobber
    /// way to give a finished temp file its final name.
    pub fn link(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let (f, t) = (cname(from)?, cname(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: linkat(2) on our directory descriptor and NUL-terminated names; flags 0
        // (no AT_SYMLINK_FOLLOW) never follow a symlink at `from`.
        match unsafe { libc::linkat(fd, f.as_ptr(), fd, t.as_ptr(), 0) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// `unlinkat(name)`: removes the name itself, whatever it is (a symlink is not followed).
    pub fn unlink(&self, name: &OsStr) -> io::Result<()> {
        let c = cname(name)?;
        // SAFETY: unlinkat(2) on our directory descriptor and a NUL-terminated name.
        match unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// fsyncs the directory: renames, links and unlinks in it survive a crash.
    pub fn sync(&self) -> io::Result<()> {
        self.fd.sync_all()
    }
}

#[cfg(test)]
mod tests;
