//! An archive is a run of independent zstd frames of about [`FRAME_BYTES`] of lines each, so
//! that frames are compressed, and decompressed again for the read-back check, on several
//! threads at once, while the file is written and hashed in order. To any other reader the
//! frames are one zstd stream (`zstd -d`, [`zstd::Decoder`]).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use xxhash_rust::xxh3::Xxh3;

use super::HASH_SEED;

/// Lines per frame: a frame is the unit of parallel work and of memory (each worker holds
/// one frame's lines and its compressed form). Each frame starts with no history: at 2 MiB
/// the archive of the 100 MB benchmark WAL is 3% larger than as one stream, at 512 KiB 22%.
pub const FRAME_BYTES: usize = 2 << 20;
/// A frame of ours is never larger than this compressed (one frame's bound, with room for a
/// line longer than a frame); the reader splits frames up to this size off the file and
/// decompresses anything else (older archives were one frame) as a stream.
const MAX_FRAME_ZST_BYTES: usize = 4 * FRAME_BYTES;
/// Largest decompressed frame the reader takes whole (a frame header's claim is not trusted
/// beyond it; larger ones are decompressed as a stream).
const MAX_FRAME_RAW_BYTES: u64 = 16 * FRAME_BYTES as u64;
/// zstd level -3 (a "fast" level): the archive is written while the run holds the WAL's
/// compaction lock, before the swap, and read back before it. On the 100 MB benchmark WAL's
/// 68 MB of expired lines, against level 1: compression ~1.5x and decompression ~1.4x as
/// fast (the archive stage ~25 ms shorter, ~25 ms less CPU), for an archive of 21 MB instead
/// of 11 MB (fast levels store literals uncompressed).
pub const ZSTD_LEVEL: i32 = -3;

/// Threads that compress or decompress frames: the cores there are, up to 4.
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// Buffers given back once used, to be filled again: a frame's buffers are over the
/// allocator's mmap threshold (1 MiB, `main.rs`), and fresh ones were mapped and faulted in
/// for every frame (a sixth of the archive stage's time). At most a few per worker circulate.
#[derive(Default)]
pub struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    /// An empty buffer, with room for `bytes`.
    pub fn take(&self, bytes: usize) -> Vec<u8> {
        let mut buf = self.lock().pop().unwrap_or_default();
        buf.reserve(bytes);
        buf
    }

    pub fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        self.lock().push(buf);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One frame: its lines (each with its `\n`), how many, and their zstd frame.
pub struct Frame {
    pub raw: Vec<u8>,
    pub lines: u64,
    pub zst: Vec<u8>,
}

/// A compressing worker's own state, kept from frame to frame: a zstd context (made once: its
/// tables cost more to set up than a small frame to compress) and a read buffer.
#[derive(Default)]
pub struct Compressing {
    cctx: Option<zstd::bulk::Compressor<'static>>,
    /// What the caller reads a frame's lines into.
    pub span: Vec<u8>,
}

impl Compressing {
    /// Compresses `raw` (`lines` whole lines) into one frame, its size in its header, in a
    /// buffer from `pool`.
    pub fn frame(&mut self, raw: Vec<u8>, lines: u64, pool: &Pool) -> io::Result<Frame> {
        let cctx = match &mut self.cctx {
            Some(c) => c,
            none => none.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
        };
        let mut zst = pool.take(zstd::zstd_safe::compress_bound(raw.len()));
        cctx.compress_to_buffer(&raw, &mut zst)?;
        Ok(Frame { raw, lines, zst })
    }
}

/// A decompressing worker's zstd context, kept from frame to frame.
#[derive(Default)]
pub struct Decompressing {
    dctx: Option<zstd::bulk::Decompressor<'static>>,
}

impl Decompressing {
    /// Decompresses one frame split off by [`Splitter`]; `None` for a frame without its size
    /// in its header or larger than [`MAX_FRAME_RAW_BYTES`] (not one of ours: the caller
    /// reads the archive as a stream).
    pub fn frame(&mut self, zst: &[u8], pool: &Pool) -> Option<io::Result<Vec<u8>>> {
        let size = match zstd::zstd_safe::get_frame_content_size(zst) {
            Ok(Some(n)) if n <= MAX_FRAME_RAW_BYTES => n as usize,
            _ => return None,
        };
        let dctx = match &mut self.dctx {
            Some(d) => d,
            none => match zstd::bulk::Decompressor::new() {
                Ok(d) => none.insert(d),
                Err(e) => return Some(Err(e)),
            },
        };
        let mut raw = pool.take(size);
        let raw = dctx
            .decompress_to_buffer(zst, &mut raw)
            .and_then(|n| match n == size {
                true => Ok(raw),
                false => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a frame decompressed to another size than its header says",
                )),
            });
        Some(raw)
    }
}

/// Runs `work` on each input on `workers` threads (each with a state of its own, from
/// `Default`, kept from input to input) and hands the outputs to `consume` in the inputs'
/// order. Input `i` goes to worker `i % workers`, and an input is only handed to a
/// worker whose previous output was consumed: at most one input and one output per worker
/// are held at a time. `consume`'s first error stops the run (and is returned).
pub fn ordered<I: Send, O: Send, S: Default, E>(
    inputs: impl IntoIterator<Item = I>,
    workers: usize,
    work: impl Fn(&mut S, I) -> O + Sync,
    mut consume: impl FnMut(O) -> Result<(), E>,
) -> Result<(), E> {
    let workers = workers.max(1);
    std::thread::scope(|scope| {
        let (mut to, mut from): (Vec<SyncSender<I>>, Vec<Receiver<O>>) = (vec![], vec![]);
        for _ in 0..workers {
            let (in_tx, in_rx) = sync_channel::<I>(1);
            let (out_tx, out_rx) = sync_channel::<O>(1);
            let work = &work;
            scope.spawn(move || {
                let mut state = S::default();
                for input in in_rx {
                    if out_tx.send(work(&mut state, input)).is_err() {
                        break;
                    }
                }
            });
            to.push(in_tx);
            from.push(out_rx);
        }
        let take = |i: usize| from[i % workers].recv().expect("a frame worker panicked");
        let (mut sent, mut taken) = (0, 0);
        for input in inputs {
            if sent - taken == workers {
                consume(take(taken))?;
                taken += 1;
            }
            // The worker's previous output was consumed: its queue is empty.
            to[sent % workers]
                .send(input)
                .expect("a frame worker panicked");
            sent += 1;
        }
        drop(to);
        while taken < sent {
            consume(take(taken))?;
            taken += 1;
        }
        Ok(())
    })
}

/// Lines, bytes and hash of an archive's decompressed bytes, taken a piece at a time.
pub struct Tally {
    pub lines: u64,
    pub bytes: u64,
    pub hash: Xxh3,
    /// Bytes since the last newline: a finished archive ends with one.
    pub open_line: u64,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            lines: 0,
            bytes: 0,
            hash: Xxh3::with_seed(HASH_SEED),
            open_line: 0,
        }
    }

    pub fn add(&mut self, chunk: &[u8]) {
        self.hash.update(chunk);
        self.bytes += chunk.len() as u64;
        self.lines += memchr::memchr_iter(b'\n', chunk).count() as u64;
        self.open_line = match memchr::memrchr(b'\n', chunk) {
            Some(at) => (chunk.len() - at - 1) as u64,
            None => self.open_line + chunk.len() as u64,
        };
    }
}

/// Splits `file` (`len` bytes) into its frames, each read once, in order. It stops early,
/// with [`Splitter::unsplit`] set, at anything it does not split off whole: a frame larger
/// than [`MAX_FRAME_ZST_BYTES`], a damaged or cut one; the caller then reads the file as a
/// stream, which also names the damage.
pub struct Splitter<'a> {
    file: &'a File,
    /// Where the frames split off are copied to.
    pool: &'a Pool,
    len: u64,
    /// File bytes read so far; `buf[start..]` holds the unsplit end of them.
    read: u64,
    buf: Vec<u8>,
    start: usize,
    pub unsplit: bool,
}

impl<'a> Splitter<'a> {
    pub fn new(file: &'a File, len: u64, pool: &'a Pool) -> Splitter<'a> {
        Splitter {
            file,
            pool,
            len,
            read: 0,
            buf: Vec::new(),
            start: 0,
            unsplit: false,
        }
    }

    /// Reads up to a frame's worth more; false at the end of the file or on an error.
    fn fill(&mut self) -> bool {
        let want = (self.len - self.read).min(MAX_FRAME_ZST_BYTES as u64) as usize;
        if want == 0 {
            return false;
        }
        // The split frames leave the buffer's front: the rest moves there (a frame at most).
        self.buf.drain(..self.start);
        self.start = 0;
        let at = self.buf.len();
        self.buf.resize(at + want, 0);
        match self.file.read_exact_at(&mut self.buf[at..], self.read) {
            Ok(()) => {
                self.read += want as u64;
                true
            }
            Err(_) => false,
        }
    }
}

impl Iterator for Splitter<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            let unsplit = &self.buf[self.start..];
            if unsplit.is_empty() && self.read == self.len {
                return None;
            }
            if let Ok(n) = zstd::zstd_safe::find_frame_compressed_size(unsplit) {
                self.start += n;
                let mut frame = self.pool.take(n);
                frame.extend_from_slice(&unsplit[..n]);
                return Some(frame);
            }
            if unsplit.len() >= MAX_FRAME_ZST_BYTES || !self.fill() {
                self.unsplit = true;
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_come_in_the_inputs_order_and_an_error_stops_the_run() {
        let mut seen = Vec::new();
        let done = ordered(
            0..1000u32,
            3,
            |calls: &mut u32, i| {
                *calls += 1;
                // Uneven work, so that workers finish out of order.
                std::thread::sleep(std::time::Duration::from_micros(u64::from(i % 7) * 20));
                i * 2
            },
            |o| {
                seen.push(o);
                Ok::<(), ()>(())
            },
        );
        assert_eq!(done, Ok(()));
        assert_eq!(seen, (0..1000).map(|i| i * 2).collect::<Vec<_>>());
        let mut taken = 0;
        let stopped = ordered(
            0..1000u32,
            2,
            |_: &mut (), i| i,
            |o| {
                taken += 1;
                if o == 10 { Err(o) } else { Ok(()) }
            },
        );
        assert_eq!((stopped, taken), (Err(10), 11));
    }
}
