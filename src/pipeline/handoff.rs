//! How far the compacted file has been written, handed from the writer to verification so
//! it can re-read the file while it is still being written (both are a pass over the
//! file; overlapped, they cost little more than the longer of the two).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::analyze::Source;

#[derive(Default)]
struct State {
    /// Bytes written so far (handed to the kernel: readable through another descriptor).
    written: u64,
    /// The writer finished; nothing more will come.
    done: bool,
    /// The writer failed; readers stop.
    failed: bool,
}

/// The written length of the file being compacted into, shared by its writer and reader.
#[derive(Default)]
pub struct Handoff {
    state: Mutex<State>,
    changed: Condvar,
}

impl Handoff {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }

    /// The writer is done (successfully or not): readers stop waiting.
    pub fn finish(&self, ok: bool) {
        self.update(|s| {
            s.done = true;
            s.failed = !ok;
        });
    }

    /// Marks the writer failed when dropped before [`Handoff::finish`] (a panic), so that
    /// readers never wait for bytes that will not come.
    pub fn finish_on_drop(&self) -> FinishOnDrop<'_> {
        FinishOnDrop(self)
    }

    /// Waits until `end` bytes are written or the writer is done; false if it failed.
    fn wait_for(&self, end: u64) -> bool {
        let mut s = self.lock();
        while s.written < end && !s.done {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        !s.failed
    }
}

/// See [`Handoff::finish_on_drop`].
pub struct FinishOnDrop<'a>(&'a Handoff);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.update(|s| {
            if !s.done {
                s.done = true;
                s.failed = true;
            }
        });
    }
}

/// The writer's side: a writer that publishes every byte it hands to the kernel.
pub struct Publishing<'a> {
    file: &'a mut File,
    handoff: &'a Handoff,
    written: u64,
}

impl<'a> Publishing<'a> {
    pub fn new(file: &'a mut File, handoff: &'a Handoff) -> Publishing<'a> {
        Publishing {
            file,
            handoff,
            written: 0,
        }
    }
}

impl Write for Publishing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        let written = self.written;
        self.handoff.update(|s| s.written = written);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The reader's side: positioned reads that wait for the writer to get past them.
pub struct Growing<'a> {
    pub file: &'a File,
    pub handoff: &'a Handoff,
}

impl Source for Growing<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if !self.handoff.wait_for(offset + buf.len() as u64) {
            return Err(io::Error::other("writing the compacted file failed"));
        }
        // Past what was written when the writer is done: a short read, as at end of file.
        FileExt::read_at(self.file, buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wait_for_the_writer_and_stop_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = File::create(&path).unwrap();
        let reader = File::open(&path).unwrap();
        let handoff = Handoff::default();
        std::thread::scope(|s| {
            let got = s.spawn(|| {
                let mut buf = [0; 4];
                let n = Growing {
                    file: &reader,
                    handoff: &handoff,
                }
                .read_at(&mut buf, 2);
                (n.unwrap(), buf)
            });
            let mut w = Publishing::new(&mut file, &handoff);
            w.write_all(b"ab").unwrap();
            w.write_all(b"cdef").unwrap();
            assert_eq!(got.join().unwrap(), (4, *b"cdef"));
        });
        handoff.finish(false);
        let mut buf = [0; 1];
        let failed = Growing {
            file: &reader,
            handoff: &handoff,
        }
        .read_at(&mut buf, 100);
        assert!(failed.is_err());
    }
}
