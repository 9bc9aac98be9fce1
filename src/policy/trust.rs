//! Whether a policy may be trusted with the daemon's privileges.
//!
//! The policy names commands (hooks, alert commands) that the daemon runs as itself, usually
//! root: whoever can change the policy file, or a command's executable, or replace either
//! through a directory above it, runs code as root. So, like logrotate, cron and sshd's
//! `StrictModes`, the daemon refuses files that anyone but root (or its own user) could
//! change: every entry on the way to the policy file and to each command's executable must
//! be owned by root or the daemon's euid, and none may be writable by group or others,
//! except a sticky directory (`/tmp`), where only an entry's owner can replace it.
//!
//! `check` is the rule, pure over a [`Fs`] of metadata lookups (unit-tested with a fake
//! filesystem); `verify` runs it against the real filesystem and process.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::{KeyError, Policy, PolicyError, PolicySource};

/// Set to `1` to skip every check (a warning is logged instead).
pub const INSECURE_ENV: &str = "WALCOMPACTD_INSECURE_POLICY";

/// What the daemon and `check-policy` say when [`INSECURE_ENV`] is used.
pub const INSECURE_WARNING: &str = "WALCOMPACTD_INSECURE_POLICY=1: the owners and modes of the \
    policy file and of its hooks' and alert commands' executables are not checked; anyone who \
    can change them can run commands as this daemon's user";

/// execvp's search path when `PATH` is unset (glibc's `confstr(_CS_PATH)`).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// Symlinks followed in one path before giving up, like the kernel's `ELOOP`.
const MAX_SYMLINKS: usize = 40;

/// Group- and other-write bits.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// The sticky bit: in such a directory only an entry's owner may remove or rename it.
const STICKY: u32 = 0o1000;
/// Any execute bit: execvp skips a file with none and searches on.
const ANY_EXEC: u32 = 0o111;

/// What a path names, as far as trust goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The metadata the rule looks at (of the entry itself, symlinks not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Owner.
    pub uid: u32,
    /// Permission bits with setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
}

/// The lookups the rule needs; the real filesystem is [`RealFs`], tests use a fake.
pub trait Fs {
    /// `lstat(2)`.
    fn lstat(&self, path: &Path) -> io::Result<Meta>;
    /// `readlink(2)`.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
}

/// The real filesystem.
pub struct RealFs;

impl Fs for RealFs {
    fn lstat(&self, path: &Path) -> io::Result<Meta> {
        let m = std::fs::symlink_metadata(path)?;
        let t = m.file_type();
        let kind = if t.is_file() {
            Kind::File
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        };
        Ok(Meta {
            kind,
            uid: m.uid(),
            mode: m.mode() & 0o7777,
        })
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(path)
    }
}

/// What the rule needs from the process, captured once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustEnv {
    /// The daemon's effective uid: root and it are the trusted owners.
    pub euid: u32,
    /// Relative paths (policy file, `./hook`, `PATH` entries) resolve against this.
    pub base_dir: PathBuf,
    /// `$PATH`, searched for a command without a `/` as execvp does.
    pub path: Option<OsString>,
    /// [`INSECURE_ENV`] is `1`.
    pub insecure: bool,
}

impl TrustEnv {
    /// The euid, working directory, `PATH` and [`INSECURE_ENV`] of this process.
    pub fn from_process() -> io::Result<Self> {
        Ok(TrustEnv {
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
            base_dir: std::env::current_dir()?,
            path: std::env::var_os("PATH"),
            insecure: std::env::var_os(INSECURE_ENV).is_some_and(|v| v == "1"),
        })
    }
}

/// How a policy passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Every file checked, every one trusted.
    Checked,
    /// Not root, and the policy is the daemon user's own (its file, or the embedded
    /// default): its commands can do nothing its author could not do already.
    NotNeeded,
    /// [`INSECURE_ENV`] was set: nothing checked. Callers warn with [`INSECURE_WARNING`].
    Skipped,
}

/// Checks the policy file (for `PolicySource::File`) and every hook's and alert command's
/// executable. Skipped (`Trust::NotNeeded`) when the daemon is not root and the policy is
/// its own user's; otherwise every problem is returned with its key path (empty for the
/// policy file, `wal[0].hooks.pre_compact[0]`, `alert[1].command[0]` for commands).
pub fn check<F: Fs + ?Sized>(
    policy: &Policy,
    source: &PolicySource,
    env: &TrustEnv,
    fs: &F,
) -> Result<Trust, Vec<KeyError>> {
    if env.insecure {
        return Ok(Trust::Skipped);
    }
    let mut errors = Vec::new();
    match source {
        PolicySource::Embedded if env.euid != 0 => return Ok(Trust::NotNeeded),
        PolicySource::Embedded => {}
        PolicySource::File(path) => {
            let consequence = format!("refusing a policy whose hooks run as {}", who(env.euid));
            match walk(fs, &env.base_dir.join(path)) {
                Ok(Walk {
                    passed,
                    target: Some(file),
                }) => {
                    if env.euid != 0 && file.1.uid == env.euid {
                        return Ok(Trust::NotNeeded);
                    }
                    for (p, meta) in passed.iter().chain([&file]) {
                        if let Some(flaw) = flaw(p, *meta, env.euid, &consequence) {
                            // Errors are prefixed by the origin: the policy file's own
                            // path is not repeated when it is spelled the same.
                            let message = if p == path {
                                flaw
                            } else {
                                format!("{}: {flaw}", p.display())
                            };
                            errors.push(KeyError::new("", message));
                        }
                    }
                }
                Ok(Walk { target: None, .. }) => errors.push(KeyError::new(
                    "",
                    "cannot check the policy file's owner and mode: it is gone",
                )),
                Err(e) => errors.push(KeyError::new(
                    "",
                    format!("cannot check the policy file's owner and mode: {e}"),
                )),
            }
        }
    }
    for (key, program) in commands(policy) {
        for message in check_command(fs, env, program) {
            errors.push(KeyError::new(key.clone(), message));
        }
    }
    if errors.is_empty() {
        Ok(Trust::Checked)
    } else {
        Err(errors)
    }
}

/// [`check`] against the real filesystem and this process; problems are
/// `PolicyError::Untrusted`, labelled with the policy's origin.
pub fn verify(policy: &Policy, source: &PolicySource) -> Result<Trust, PolicyError> {
    let env = TrustEnv::from_process().map_err(|source| PolicyError::WorkingDir { source })?;
    check(policy, source, &env, &RealFs).map_err(|errors| PolicyError::Untrusted {
        origin: source.to_string(),
        errors,
    })
}

/// Every command the policy can run, as (key path of its `argv[0]`, `argv[0]`).
fn commands(policy: &Policy) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    for (i, w) in policy.wals.iter().enumerate() {
        let hooks = [
            ("pre_compact", &w.hooks.pre_compact),
            ("post_compact", &w.hooks.post_compact),
            ("verify", &w.hooks.verify),
        ];
        for (name, argv) in hooks {
            if let Some(program) = argv.first() {
                out.push((format!("wal[{i}].hooks.{name}[0]"), program.as_str()));
            }
        }
    }
    for (i, a) in policy.alerts.iter().enumerate() {
        if let Some(program) = a.command.first() {
            out.push((format!("alert[{i}].command[0]"), program.as_str()));
        }
    }
    out
}

/// The problems with running `program`: found as execvp would (a path with a `/` as is,
/// else the first executable file in `PATH`); every directory searched on the way (a name
/// planted in an earlier `PATH` directory would win) and the executable itself are judged.
/// A command not found is left to the runner, which reports it when it runs.
fn check_command<F: Fs + ?Sized>(fs: &F, env: &TrustEnv, program: &str) -> Vec<String> {
    let consequence = format!("refusing to run it as {}", who(env.euid));
    let explicit = program.contains('/');
    let candidates = if explicit {
        vec![env.base_dir.join(program)]
    } else {
        search_path(env)
            .into_iter()
            .map(|dir| dir.join(program))
            .collect()
    };
    let mut messages = Vec::new();
    let mut judged: Vec<PathBuf> = Vec::new();
    let mut judge = |path: &Path, meta: Meta, messages: &mut Vec<String>| {
        if judged.iter().any(|p| p == path) {
            return;
        }
        judged.push(path.to_path_buf());
        if let Some(flaw) = flaw(path, meta, env.euid, &consequence) {
            messages.push(format!("{}: {flaw}", path.display()));
        }
    };
    for candidate in candidates {
        match walk(fs, &candidate) {
            Ok(w) => {
                for (path, meta) in &w.passed {
                    judge(path, *meta, &mut messages);
                }
                match w.target {
                    Some((path, meta)) if explicit || is_executable(meta) => {
                        judge(&path, meta, &mut messages);
                        break;
                    }
                    _ => {}
                }
            }
            Err(e) => {
                messages.push(format!("cannot check {}: {e}", candidate.display()));
                break;
            }
        }
    }
    messages
}

/// What execvp would run: a regular file with an execute bit.
fn is_executable(meta: Meta) -> bool {
    meta.kind == Kind::File && meta.mode & ANY_EXEC != 0
}

/// `PATH`'s directories in order; an empty entry is the working directory, as for execvp.
fn search_path(env: &TrustEnv) -> Vec<PathBuf> {
    let path = env.path.clone().unwrap_or_else(|| DEFAULT_PATH.into());
    path.as_bytes()
        .split(|b| *b == b':')
        .map(|dir| env.base_dir.join(std::ffi::OsStr::from_bytes(dir)))
        .collect()
}

/// "root" or "uid N", for messages.
fn who(euid: u32) -> String {
    if euid == 0 {
        "root".to_string()
    } else {
        format!("uid {euid}")
    }
}

/// Why `path` cannot be trusted, if it cannot: `"{flaws}; {consequence} ({fix})"`.
/// Symlinks are judged by owner only (their mode means nothing; replacing one takes write
/// access to its directory, which is judged on its own).
fn flaw(path: &Path, meta: Meta, euid: u32, consequence: &str) -> Option<String> {
    let mut flaws = Vec::new();
    let mut fixes = Vec::new();
    if meta.uid != 0 && meta.uid != euid {
        let trusted = if euid == 0 {
            "root".to_string()
        } else {
            format!("root or uid {euid}")
        };
        flaws.push(format!("owned by uid {}, not {trusted}", meta.uid));
        fixes.push(format!("chown root {}", path.display()));
    }
    let writable = meta.mode & GROUP_OTHER_WRITE != 0;
    let sticky_dir = meta.kind == Kind::Dir && meta.mode & STICKY != 0;
    if meta.kind != Kind::Symlink && writable && !sticky_dir {
        let sticky = if meta.kind == Kind::Dir {
            " without the sticky bit"
        } else {
            ""
        };
        flaws.push(format!(
            "mode {:04o} is writable by group or others{sticky}",
            meta.mode
        ));
        fixes.push(format!("chmod go-w {}", path.display()));
    }
    if flaws.is_empty() {
        return None;
    }
    Some(format!(
        "{}; {consequence} ({})",
        flaws.join(", "),
        fixes.join("; ")
    ))
}

/// How a path resolved, with everything the kernel went through on the way.
#[derive(Debug, Default)]
struct Walk {
    /// Each directory a name was looked up in (once, in order) and each symlink followed.
    passed: Vec<(PathBuf, Meta)>,
    /// The canonical path and metadata of what the path names; `None` when it does not
    /// exist (or cannot be reached: execvp searches on then).
    target: Option<(PathBuf, Meta)>,
}

/// Resolves the absolute `path` component by component, as the kernel does (symlinks
/// followed, `..` taken from the directory actually reached), recording every directory and
/// symlink passed: resolving to a canonical path alone would miss a trusted-looking target
/// reached through a symlink that lives in a writable directory.
fn walk<F: Fs + ?Sized>(fs: &F, path: &Path) -> io::Result<Walk> {
    let root = PathBuf::from("/");
    let mut pending: VecDeque<OsString> = parts(path).into();
    let mut current = root.clone();
    let mut meta = fs.lstat(&root)?;
    let mut walk = Walk::default();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == "." {
            continue;
        }
        if meta.kind != Kind::Dir {
            return Ok(walk); // ENOTDIR: not found
        }
        if part == ".." {
            current.pop();
            meta = fs.lstat(&current)?;
            continue;
        }
        if !walk.passed.iter().any(|(p, _)| *p == current) {
            walk.passed.push((current.clone(), meta));
        }
        let next = current.join(&part);
        let next_meta = match fs.lstat(&next) {
            Ok(m) => m,
            Err(e) if searches_on(&e) => return Ok(walk),
            Err(e) => return Err(e),
        };
        if next_meta.kind == Kind::Symlink {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            walk.passed.push((next.clone(), next_meta));
            let target = fs.read_link(&next)?;
            if target.is_absolute() {
                current = root.clone();
                meta = fs.lstat(&root)?;
            }
            for p in parts(&target).into_iter().rev() {
                pending.push_front(p);
            }
            continue;
        }
        current = next;
        meta = next_meta;
    }
    walk.target = Some((current, meta));
    Ok(walk)
}

/// The names of `path` (`.` and `..` kept), without the root.
fn parts(path: &Path) -> Vec<OsString> {
    path.components()
        .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
        .map(|c| c.as_os_str().to_owned())
        .collect()
}

/// Errors after which execvp searches on (and a path simply is not there).
fn searches_on(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::PermissionDenied
    )
}

#[cfg(test)]
mod tests;
