//! Offline mode: no writer runs while the WAL is compacted, and the kernel enforces it. The
//! run holds a read lease on the WAL from before it reads it to the swap ([`Watch`]): a
//! writer's `open` breaks it, a watcher thread lets it go within a millisecond (the writer
//! goes on, barely delayed) and the run gives up at its next safe point, leaving the WAL
//! as the writer made it. The swap is the leased exchange (see [`super::late`]), so even a
//! writer that opens during the swap loses nothing. `/proc` names who holds the WAL open.
//!
//! Where no lease can be had (a network or FUSE filesystem, no permission), the run falls
//! back to what it did before leases: `/proc` at admission and a WAL unchanged at the swap.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::super::compact::TempFile;
use super::super::{PipelineError, Run, Stage, journal, open_wal, swap};
use super::late::{self, Exchange};
use super::lease::Plain;
use super::{Admission, Hold, Swapped};
use crate::fsutil::FileId;
use crate::lease::{LeaseError, ReadLease, check_filesystem};

/// How often the watcher asks whether a writer is breaking the lease: the writer waits at
/// most about this long.
const WATCH_POLL: Duration = Duration::from_millis(1);
/// How long offline mode retries its lease before calling the WAL held open: a descriptor
/// can be open for writing for a moment without any writer (a fork between `fork` and
/// `exec` holds its parent's descriptors).
const LEASE_WAIT: Duration = Duration::from_millis(200);
/// The offline swap's lease is already held; this bounds only the merge of a writer that
/// opened during the swap itself.
const SWAP_LEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Offline admission: nobody else may hold the WAL open. A trial lease says so where leases
/// work; `/proc` names who. Without either the promise cannot be kept: refused.
pub fn admit(wal: &Path) -> Admission {
    match trial_lease(wal) {
        Ok(true) => return Admission::Admitted { note: None },
        Ok(false) => {
            return Admission::Refused(format!(
                "offline mode: a writer has the WAL open ({}); not compacting under a running writer",
                holders_note(wal)
            ));
        }
        Err(_) => {}
    }
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

/// A lease taken and let go at once: `Ok(false)` if a writer has the WAL open.
fn trial_lease(wal: &Path) -> Result<bool, LeaseError> {
    check_filesystem(wal)?;
    match ReadLease::take(wal, None, LEASE_WAIT) {
        Ok(_) => Ok(true),
        Err(LeaseError::Busy { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Who holds the WAL open, for messages.
fn holders_note(wal: &Path) -> String {
    match holders(wal) {
        Holders::Found(pids) => format!("pid(s) {pids:?}"),
        _ => "no process visible in /proc".into(),
    }
}

/// The run's hold: the read lease for the whole run, or (no leases here) nothing, logged.
pub(in crate::pipeline) fn hold(wal: &Path) -> Result<Hold, PipelineError> {
    match Watch::start(wal) {
        Ok(watch) => Ok(Hold::Offline(watch)),
        Err(e) if e.is_busy() => Err(PipelineError::lease(wal, e)),
        Err(e) => {
            tracing::warn!(event = "lease", wal = %wal.display(), reason = %e,
                "offline mode without a lease: relying on /proc and on the WAL being unchanged at the swap");
            Ok(Hold::Nothing)
        }
    }
}

/// The error of a run whose lease a writer broke.
pub(super) fn writer_opened(wal: &Path) -> PipelineError {
    PipelineError::Changed {
        path: wal.into(),
        what: "a writer opened it during the run; the lease was let go at once so it could go on"
            .into(),
    }
}

/// The offline run's read lease, watched by a thread that lets it go as soon as a writer's
/// open breaks it. Dropping the watch releases the lease.
pub struct Watch {
    stop: Arc<AtomicBool>,
    given_up: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<ReadLease>>>,
}

impl Watch {
    /// Takes the lease (a writer with the WAL open: [`LeaseError::HeldOpen`]) and starts watching.
    pub fn start(wal: &Path) -> Result<Watch, LeaseError> {
        check_filesystem(wal)?;
        let lease = match ReadLease::take(wal, None, LEASE_WAIT) {
            Err(LeaseError::Busy { .. }) => Err(LeaseError::HeldOpen {
                path: wal.into(),
                holders: holders_note(wal),
            }),
            other => other,
        }?;
        let (stop, given_up) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = std::thread::Builder::new()
            .name("offline-lease".into())
            .spawn({
                let (stop, given_up) = (Arc::clone(&stop), Arc::clone(&given_up));
                move || watch(lease, &stop, &given_up)
            })
            .map_err(|source| LeaseError::Io {
                op: "start the lease watcher for",
                path: wal.into(),
                source,
            })?;
        Ok(Watch {
            stop,
            given_up,
            thread: Some(thread),
        })
    }

    /// True once a writer broke the lease (it was let go).
    pub fn given_up(&self) -> bool {
        self.given_up.load(Ordering::SeqCst)
    }

    /// Stops watching: the lease, still held, unless a writer broke it.
    fn stop(mut self) -> Option<ReadLease> {
        self.join()
    }

    fn join(&mut self) -> Option<ReadLease> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take()?.join().ok().flatten()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.join());
    }
}

/// The watcher: polls the lease; a break lets it go at once.
fn watch(lease: ReadLease, stop: &AtomicBool, given_up: &AtomicBool) -> Option<ReadLease> {
    while !stop.load(Ordering::SeqCst) {
        if !matches!(lease.broken(), Ok(false)) {
            drop(lease);
            given_up.store(true, Ordering::SeqCst);
            return None;
        }
        std::thread::sleep(WATCH_POLL);
    }
    Some(lease)
}

/// The swap: under the run's lease, the leased exchange (a writer that opens meanwhile
/// appends to the old inode and is merged); without one, a last check and a rename.
pub(in crate::pipeline) fn swap(
    run: &mut Run,
    temp: &mut TempFile,
) -> Result<Swapped, PipelineError> {
    let wal = run.req.wal.clone();
    // Lets tests change the WAL between verification and the offline swap.
    fail::fail_point!("swap::before_check::delay");
    let Hold::Offline(watch) = std::mem::replace(&mut run.hold, Hold::Nothing) else {
        return unleased_swap(run, &temp.path);
    };
    let lease = watch.stop().ok_or_else(|| writer_opened(&wal))?;
    let m = lease
        .file()
        .metadata()
        .map_err(PipelineError::io(Stage::Swap, "stat", &wal))?;
    if FileId::of(&m) != run.snap.id {
        // Not what was read (a truncation through O_TRUNC, which does not break a lease).
        ensure_unchanged(&wal, &run.snap.id)?;
    }
    run.journal_phase(journal::Phase::Swapping)?;
    let temp_path = temp.path.clone();
    let x = Exchange {
        wal: &wal,
        new_path: &temp_path,
        old: run.snap.id,
        copied: run.snap.id.len,
        timeout: SWAP_LEASE_TIMEOUT,
        stage: Stage::Swap,
    };
    let mut sink = Plain {
        path: &temp_path,
        file: temp.file_mut(),
    };
    let leased = match run
        .clock
        .stage(Stage::Swap, || late::exchange(&x, Some(lease), &mut sink))
    {
        Err(PipelineError::Lease {
            source: LeaseError::NoExchange { .. },
            ..
        }) => {
            // Nothing was swapped and the lease is gone: the swap without one, as before leases.
            return unleased_swap(run, &temp_path);
        }
        leased => leased?,
    };
    Ok(Swapped {
        len_at_swap: leased.new_len_at_swap + leased.late_bytes,
        online: None,
        lease: Some(leased),
    })
}

/// Without a lease: the WAL must be unchanged since it was read; then a plain swap.
fn unleased_swap(run: &mut Run, temp: &Path) -> Result<Swapped, PipelineError> {
    let wal = run.req.wal.as_path();
    ensure_unchanged(wal, &run.snap.id)?;
    run.journal_phase(journal::Phase::Swapping)?;
    run.clock
        .stage(Stage::Swap, || swap::swap(temp, wal, &run.snap.id))?;
    Ok(Swapped {
        len_at_swap: run.snap.plan.survivor_bytes() + (run.snap.id.len - run.snap.plan.scanned_len),
        online: None,
        lease: None,
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
