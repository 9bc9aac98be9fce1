//! Offline mode: no writer runs while the WAL is compacted. Admission checks `/proc` for
//! processes holding the WAL open; the swap refuses a WAL that changed since it was read.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::super::{PipelineError, Run, Stage, journal, open_wal, swap};
use super::{Admission, Swapped};
use crate::fsutil::FileId;

/// Offline admission: nobody else may hold the WAL open. Without `/proc` the promise cannot
/// be kept, so the run is refused rather than guessed.
pub fn admit(wal: &Path) -> Admission {
    match holders(wal) {
        Holders::Found(pids) => Admission::Refused(format!(
            "offline mode: WAL is held open by pid(s) {pids:?}; not compacting under a running writer"
        )),
        Holders::Unknown(why) => Admission::Refused(format!(
            "offline mode: could not check for processes holding the WAL ({why}); not compacting"
        )),
        Holders::None { uninspected } if uninspected > 0 => Admission::Admitted {
            note: Some(format!(
                "checked /proc for holders; {uninspected} processes could not be inspected (permission)"
            )),
        },
        Holders::None { .. } => Admission::Admitted { note: None },
    }
}

/// Checks the WAL did not change since it was read, journals the swap, renames.
pub(in crate::pipeline) fn swap(run: &mut Run, temp: &Path) -> Result<Swapped, PipelineError> {
    let wal = run.req.wal.as_path();
    // Lets tests change the WAL between verification and the offline swap.
    fail::fail_point!("swap::before_check::delay");
    ensure_unchanged(wal, &run.snap.id)?;
    run.journal_phase(journal::Phase::Swapping)?;
    run.clock
        .stage(Stage::Swap, || swap::swap(temp, wal, &run.snap.id))?;
    Ok(Swapped {
        len_at_swap: run.snap.plan.survivor_bytes() + (run.snap.id.len - run.snap.plan.scanned_len),
        online: None,
    })
}

/// Offline mode has no writers: if the WAL changed since it was read, someone is writing.
fn ensure_unchanged(wal: &Path, id: &FileId) -> Result<(), PipelineError> {
    let (_, now) = open_wal(wal)?;
    if now == *id {
        return Ok(());
    }
    let what = if !now.same_inode(id) {
        "replaced by another file".to_string()
    } else if now.len < id.len {
        format!("truncated from {} to {} bytes", id.len, now.len)
    } else {
        format!("{} bytes appended", now.len.saturating_sub(id.len))
    };
    Err(PipelineError::Changed {
        path: wal.into(),
        what,
    })
}

/// Who else has the WAL open, as far as /proc lets us see.
#[derive(Debug, PartialEq, Eq)]
pub enum Holders {
    /// Nobody else among the processes we could inspect; `uninspected` processes hid their
    /// descriptors from us (another user's, without privilege).
    None { uninspected: usize },
    /// These pids hold it open.
    Found(Vec<u32>),
    /// /proc itself could not be read: we could not check at all.
    Unknown(String),
}

/// Scans `/proc/*/fd` for descriptors on the WAL (by device and inode, so a renamed path
/// still matches), ignoring this process.
pub fn holders(wal: &Path) -> Holders {
    holders_in(Path::new("/proc"), wal, std::process::id())
}

/// [`holders`] with the /proc root and own pid injected, for tests.
pub fn holders_in(proc_root: &Path, wal: &Path, own_pid: u32) -> Holders {
    let target = match fs::metadata(wal) {
        Ok(m) => (m.dev(), m.ino()),
        Err(_) => return Holders::None { uninspected: 0 },
    };
    let entries = match fs::read_dir(proc_root) {
        Ok(e) => e,
        Err(e) => return Holders::Unknown(format!("cannot read {}: {e}", proc_root.display())),
    };
    let mut found = Vec::new();
    let mut uninspected = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own_pid {
            continue;
        }
        match holds(&entry.path().join("fd"), target) {
            Ok(true) => found.push(pid),
            Ok(false) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {} // exited meanwhile
            Err(_) => uninspected += 1,
        }
    }
    if found.is_empty() {
        Holders::None { uninspected }
    } else {
        found.sort_unstable();
        Holders::Found(found)
    }
}

fn holds(fd_dir: &Path, target: (u64, u64)) -> io::Result<bool> {
    for fd in fs::read_dir(fd_dir)?.flatten() {
        // metadata() follows the magic link to the open file itself, even if renamed.
        if let Ok(m) = fs::metadata(fd.path())
            && (m.dev(), m.ino()) == target
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn finds_a_process_holding_the_file_and_not_ourselves() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("wal.log");
        fs::write(&wal, b"x\n").unwrap();
        let _ours = fs::File::open(&wal).unwrap();
        assert!(matches!(holders(&wal), Holders::None { .. }));
        let mut child = Command::new("sleep")
            .arg("30")
            .stdin(fs::File::open(&wal).unwrap())
            .spawn()
            .unwrap();
        let found = holders(&wal);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, Holders::Found(vec![child.id()]));
    }

    #[test]
    fn unreadable_proc_is_reported_not_assumed() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("wal.log");
        fs::write(&wal, b"x\n").unwrap();
        let h = holders_in(&d.path().join("no-proc"), &wal, 1);
        assert!(matches!(h, Holders::Unknown(_)), "{h:?}");
    }
}
