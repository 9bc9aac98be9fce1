//! What parsing needs from the outside world, captured once so `parse` stays pure.
//!
//! Relative paths resolve against the daemon's working directory, the state
//! directory defaults come from environment variables, and "does this schedule
//! ever fire" needs a clock. `ParseEnv::from_process` reads all three; tests
//! build a `ParseEnv` by hand.

use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use chrono::{DateTime, Utc};

/// Last-resort state directory when neither systemd nor XDG nor `$HOME` say otherwise.
pub const SYSTEM_STATE_DIR: &str = "/var/lib/walcompactd";

/// Directory name appended to `$XDG_STATE_HOME` or `$HOME/.local/state`.
const STATE_SUBDIR: &str = "walcompactd";

/// The inputs to `parse` that do not come from the policy text.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseEnv {
    /// Relative paths in the policy resolve against this (the daemon's working directory).
    pub base_dir: PathBuf,
    /// `$STATE_DIRECTORY`, set by systemd's `StateDirectory=` (may list several, `:`-separated).
    pub state_directory: Option<OsString>,
    /// `$XDG_STATE_HOME`; ignored unless absolute, as the XDG spec requires.
    pub xdg_state_home: Option<OsString>,
    /// `$HOME`.
    pub home: Option<OsString>,
    /// "Now", for rejecting schedules that will never fire again.
    pub now: DateTime<Utc>,
}

impl ParseEnv {
    /// Captures the working directory, the relevant environment variables and the clock.
    pub fn from_process() -> io::Result<Self> {
        Ok(ParseEnv {
            base_dir: std::env::current_dir()?,
            state_directory: std::env::var_os("STATE_DIRECTORY"),
            xdg_state_home: std::env::var_os("XDG_STATE_HOME"),
            home: std::env::var_os("HOME"),
            now: Utc::now(),
        })
    }

    /// An environment with no variables set, for tests and tools that only check syntax.
    pub fn bare(base_dir: impl Into<PathBuf>, now: DateTime<Utc>) -> Self {
        ParseEnv {
            base_dir: base_dir.into(),
            state_directory: None,
            xdg_state_home: None,
            home: None,
            now,
        }
    }

    /// The state directory used when `daemon.state_dir` is absent or empty:
    /// `$STATE_DIRECTORY` (first entry), else `$XDG_STATE_HOME/walcompactd`,
    /// else `$HOME/.local/state/walcompactd`, else `/var/lib/walcompactd`.
    pub fn default_state_dir(&self) -> PathBuf {
        if let Some(first) = non_empty(&self.state_directory).and_then(first_entry) {
            return self.resolve(Path::new(&first));
        }
        if let Some(xdg) = non_empty(&self.xdg_state_home).filter(|p| Path::new(p).is_absolute()) {
            return normalize(&Path::new(xdg).join(STATE_SUBDIR));
        }
        if let Some(home) = non_empty(&self.home) {
            return normalize(&Path::new(home).join(".local/state").join(STATE_SUBDIR));
        }
        PathBuf::from(SYSTEM_STATE_DIR)
    }

    /// `path` made absolute against `base_dir` and normalized lexically.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        normalize(&self.base_dir.join(path))
    }
}

fn non_empty(value: &Option<OsString>) -> Option<&OsString> {
    value.as_ref().filter(|v| !v.is_empty())
}

/// systemd joins several state directories with `:`; ours is the first.
fn first_entry(list: &OsString) -> Option<String> {
    let text = list.to_string_lossy();
    text.split(':').find(|s| !s.is_empty()).map(str::to_string)
}

/// Removes `.` and resolves `..` without touching the filesystem (the file may
/// not exist yet), so two spellings of one path compare equal.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            // `..` cancels a name, is a no-op at the root, and is kept in a relative prefix.
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(component),
            },
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> ParseEnv {
        ParseEnv::bare("/srv/app", DateTime::UNIX_EPOCH)
    }

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
        assert_eq!(
            normalize(Path::new("../a/../../b")),
            PathBuf::from("../../b")
        );
    }

    #[test]
    fn resolve_joins_relative_paths_only() {
        assert_eq!(
            env().resolve(Path::new("./w/wal.log")),
            PathBuf::from("/srv/app/w/wal.log")
        );
        assert_eq!(env().resolve(Path::new("/tmp/x")), PathBuf::from("/tmp/x"));
    }

    #[test]
    fn state_dir_prefers_systemd_then_xdg_then_home() {
        let mut env = env();
        assert_eq!(env.default_state_dir(), PathBuf::from(SYSTEM_STATE_DIR));
        env.home = Some("/home/u".into());
        assert_eq!(
            env.default_state_dir(),
            PathBuf::from("/home/u/.local/state/walcompactd")
        );
        env.xdg_state_home = Some("relative/ignored".into());
        assert_eq!(
            env.default_state_dir(),
            PathBuf::from("/home/u/.local/state/walcompactd")
        );
        env.xdg_state_home = Some("/xdg".into());
        assert_eq!(env.default_state_dir(), PathBuf::from("/xdg/walcompactd"));
        env.state_directory = Some("/var/lib/w:/var/lib/other".into());
        assert_eq!(env.default_state_dir(), PathBuf::from("/var/lib/w"));
    }
}
