//! The pass over a file or a slice, decoded by several threads in order.
//!
//! The input is cut into fixed-size chunks. A line belongs to the chunk holding its first
//! byte; the thread decoding a chunk reads past its end to finish the last line. Decoding
//! threads take the next chunk from a shared counter, split it into lines and run the
//! sequential pass's own per-line decoder on each (`pass::decode_line`: UTF-8 and JSON
//! validation, hashing the id and a PREPARE line), sending one compact batch per chunk. The
//! calling thread takes the batches strictly in chunk order (a reorder ring) and feeds each
//! line to the same `Pass::observe_*` methods as the sequential pass (line numbers, interning, the
//! rules' index, the replay), so the result is the one [`analyze`](super::analyze) computes.
//! When the chunk it needs next is not decoded yet, it decodes the next free chunk itself:
//! one decoding thread fewer than CPUs keeps every CPU busy without a third thread
//! competing for two (measured: a compaction ~10% faster on two CPUs than with a consumer
//! that only waits). Batches are recycled through a fixed pool, which also bounds the
//! chunks in flight, so the steady state allocates nothing per line; memory is a few chunks
//! per thread plus, as before, a few words per transaction.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};

use super::pass::{DecodeOpts, Decoded, Pass, TxLine, decode_line, decode_tail};
use super::{Analysis, AnalyzeError, MAX_REPORTED_CORRUPT_LINES, PROGRESS_EVERY_BYTES, Want};
use crate::replay::{NO_PREPARE, PayloadHash, Replayer};
use crate::rules::{NO_STAMP, Stamp};
use crate::wal::Op;
use hashbrown::DefaultHashBuilder;

/// Default chunk size: large enough that a read moves a useful amount, small enough that
/// the chunks in flight stay a few MiB.
pub const DEFAULT_CHUNK_BYTES: usize = 256 << 10;
/// Batches in the pool per decoding thread (the calling thread included): decoded ahead of
/// the consumer or being decoded. 8 measured faster than 2 or 4; 16 no faster.
const BATCHES_QUEUED_PER_THREAD: usize = 8;
/// Bytes per transaction assumed when the count is unknown: a PREPARE and a COMMIT of
/// ~200 bytes each. Tables sized for it up front are not rehashed as they grow; a file
/// with fewer transactions costs at most the table it would have grown to, twice.
const ASSUMED_BYTES_PER_TX: u64 = 400;
/// Up-front sizing stops here (a 1.6 GB file): larger files grow their tables as they go,
/// so a huge file cannot reserve a huge table it may not need.
const MAX_PRESIZED_TXS: u64 = 4 << 20;
/// How much more to read first when a chunk's last line runs past its end; each further
/// read doubles what was read past the end, so a long line costs few reads.
const EXTEND_BYTES: u64 = 4 << 10;

/// Input that supports positioned reads: a file, or bytes in memory.
pub trait Source: Sync {
    /// Reads at `offset` into `buf`, returning the bytes read (0 at end of input).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl Source for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl Source for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= self.len() {
            return Ok(0);
        }
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

/// How the parallel pass splits its work.
#[derive(Clone, Copy, Debug)]
pub struct Parallelism {
    /// Bytes per chunk (at least 1).
    pub chunk_bytes: usize,
    /// Threads that decode, the calling thread included (at least 1; 1 decodes on the
    /// calling thread alone).
    pub threads: usize,
}

impl Default for Parallelism {
    /// [`DEFAULT_CHUNK_BYTES`] and one thread per available CPU (the calling thread and
    /// one fewer spawned).
    fn default() -> Self {
        Parallelism {
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Runs the pass over the first `len` bytes of `file`, decoding in parallel.
pub fn analyze_file(
    file: &File,
    len: u64,
    want: Want,
    progress: &mut dyn FnMut(u64),
) -> Result<Analysis, AnalyzeError> {
    analyze_source(file, len, want, Parallelism::default(), progress)
}

/// The pass over the first `len` bytes of `source`, known to hold `txs` transactions
/// (verification knows the original's count): its tables are sized once instead of growing.
pub fn analyze_source_expecting<S: Source + ?Sized>(
    source: &S,
    len: u64,
    want: Want,
    txs: usize,
) -> Result<Analysis, AnalyzeError> {
    let pass = run(source, len, want, Parallelism::default(), txs, &mut |_| {})?;
    Ok(pass.finish(len))
}

/// [`analyze_file`] that leaves the replay unfinished: [`Replayer::finish`] needs only the
/// replayer and the ids, so the caller can finish it on another thread while it plans.
/// The analysis has no replay state; the replayer is `None` unless `want.replay`.
pub fn analyze_file_deferred(
    file: &File,
    len: u64,
    want: Want,
    progress: &mut dyn FnMut(u64),
) -> Result<(Analysis, Option<Replayer>), AnalyzeError> {
    let pass = run(file, len, want, Parallelism::default(), 0, progress)?;
    Ok(pass.finish_deferred(len))
}

/// Runs the pass over the first `len` bytes of `source` with explicit parallelism.
/// The result equals [`analyze`](super::analyze) over the same bytes.
pub fn analyze_source<S: Source + ?Sized>(
    source: &S,
    len: u64,
    want: Want,
    par: Parallelism,
    progress: &mut dyn FnMut(u64),
) -> Result<Analysis, AnalyzeError> {
    let pass = run(source, len, want, par, 0, progress)?;
    Ok(pass.finish(len))
}

fn run<S: Source + ?Sized>(
    source: &S,
    len: u64,
    want: Want,
    par: Parallelism,
    txs: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Pass, AnalyzeError> {
    let chunk = par.chunk_bytes.max(1) as u64;
    let chunks = len.div_ceil(chunk);
    let threads = (par.threads.max(1) as u64).min(chunks.max(1)) as usize;
    let expected = match txs {
        0 => (len / ASSUMED_BYTES_PER_TX).min(MAX_PRESIZED_TXS) as usize,
        n => n,
    };
    let mut pass = Pass::with_capacity(want, expected);
    if chunks == 0 {
        return Ok(pass);
    }
    // Every decoded batch not yet consumed holds one of `window` tokens (the batches
    // themselves), taken before its chunk number: fewer than `window` chunks are taken and
    // not consumed, so chunk `k` has slot `k % window` of the reorder ring to itself.
    let window = threads * BATCHES_QUEUED_PER_THREAD;
    let (free, free_rx) = mpsc::sync_channel(window);
    let shared = Shared {
        next: AtomicU64::new(0),
        chunks,
        free: Mutex::new(free_rx),
    };
    let new_decoder = |ids| Decoder {
        want,
        len,
        chunk,
        buf: Vec::new(),
        described: 0,
        ids,
    };
    let (out, decoded) = mpsc::channel::<(u64, Msg)>();
    std::thread::scope(|scope| {
        // Owned here, so returning early (an error) drops it and frees waiting decoders.
        let free = free;
        for _ in 0..window {
            free.send(Batch::default()).expect("the receiver is alive");
        }
        for _ in 1..threads {
            let (decoder, out, shared) = (new_decoder(pass.ids.hasher()), out.clone(), &shared);
            scope.spawn(move || decoder.run(source, shared, out));
        }
        drop(out);
        // The consuming thread decodes too, whenever the chunk it needs next is not ready.
        let mut helper = new_decoder(pass.ids.hasher());
        let mut ring: Vec<Option<Msg>> = (0..window).map(|_| None).collect();
        let mut next_progress = PROGRESS_EVERY_BYTES;
        for k in 0..chunks {
            let slot = (k % window as u64) as usize;
            while ring[slot].is_none() {
                if let Some((j, msg)) = helper.help(source, &shared) {
                    ring[(j % window as u64) as usize] = Some(msg);
                    continue;
                }
                let (j, msg) = decoded
                    .recv()
                    .expect("decoders send every chunk they take, or an error");
                ring[(j % window as u64) as usize] = Some(msg);
            }
            while let Ok((j, msg)) = decoded.try_recv() {
                ring[(j % window as u64) as usize] = Some(msg);
            }
            let mut batch = ring[slot].take().expect("just filled")?;
            consume(&mut pass, &mut batch)?;
            if batch.end >= next_progress {
                progress(batch.end);
                next_progress = batch.end + PROGRESS_EVERY_BYTES;
            }
            let _ = free.send(batch);
        }
        Ok(pass)
    })
}

/// What the decoding threads share: the next chunk to take, and the free batches.
struct Shared {
    next: AtomicU64,
    chunks: u64,
    free: Mutex<Receiver<Batch>>,
}

/// What a decoder learned about one line.
#[derive(Clone, Copy)]
enum RecKind {
    Blank,
    Unrecognized,
    Tx(Op),
    Corrupt,
}

/// One line of a batch; `a..b` is a span of the batch's `ids` (Tx) or `bytes`
/// (Unrecognized and Corrupt, with replay); for a described corrupt line, `reason` indexes
/// `reasons`.
#[derive(Clone, Copy)]
struct Rec {
    offset: u64,
    /// The line's bytes without the `\n`.
    len: u64,
    kind: RecKind,
    a: usize,
    b: usize,
    reason: usize,
    /// [`payload_hash`] of a PREPARE line when replaying.
    hash: PayloadHash,
    /// The interner's hash of the tx_id.
    id_hash: u64,
    /// The line's whole-second `timestamp` (retention).
    stamp: Stamp,
}

/// The decoded lines that start in one chunk.
#[derive(Default)]
struct Batch {
    recs: Vec<Rec>,
    ids: Vec<u8>,
    bytes: Vec<u8>,
    reasons: Vec<String>,
    /// The torn tail, if it starts in this chunk: its length and (with replay) hash.
    tail: Option<(u64, [u8; 32])>,
    /// Offset just past the chunk.
    end: u64,
}

impl Batch {
    fn clear(&mut self) {
        self.recs.clear();
        self.ids.clear();
        self.bytes.clear();
        self.reasons.clear();
        self.tail = None;
        self.end = 0;
    }
}

type Msg = Result<Batch, AnalyzeError>;

/// One decoder thread's state.
struct Decoder {
    want: Want,
    len: u64,
    chunk: u64,
    /// The current chunk's bytes, from one byte before it (to see whether a line starts at
    /// its first byte) to the end of its last line.
    buf: Vec<u8>,
    /// Corrupt lines this decoder described: the first few of the whole input are among
    /// the first few of the decoder that saw them, so later ones need no description.
    described: usize,
    /// The interner's hasher: ids are hashed here, off the consumer's thread.
    ids: DefaultHashBuilder,
}

impl Decoder {
    /// Takes a free batch, then the next chunk, decodes that chunk into the batch and sends
    /// it, until the chunks run out, a chunk fails or the consumer is gone.
    fn run<S: Source + ?Sized>(mut self, source: &S, shared: &Shared, out: Sender<(u64, Msg)>) {
        loop {
            let batch = match shared.free.lock() {
                Ok(free) => free.recv(),
                Err(_) => return,
            };
            let Ok(batch) = batch else { return };
            let Some(done) = self.take_and_decode(source, shared, batch) else {
                return;
            };
            let failed = done.1.is_err();
            if out.send(done).is_err() || failed {
                return;
            }
        }
    }

    /// The consumer's turn at decoding: the next chunk, if one is left and a batch is free.
    fn help<S: Source + ?Sized>(&mut self, source: &S, shared: &Shared) -> Option<(u64, Msg)> {
        let batch = shared.free.try_lock().ok()?.try_recv().ok()?;
        self.take_and_decode(source, shared, batch)
    }

    /// Takes the next chunk number and decodes it into `batch`; `None` when none is left.
    fn take_and_decode<S: Source + ?Sized>(
        &mut self,
        source: &S,
        shared: &Shared,
        mut batch: Batch,
    ) -> Option<(u64, Msg)> {
        let k = shared.next.fetch_add(1, Ordering::Relaxed);
        if k >= shared.chunks {
            return None;
        }
        batch.clear();
        let msg = self.chunk(source, k, &mut batch).map(|()| batch);
        Some((k, msg))
    }

    /// Decodes every line that starts in chunk `k` into `batch`.
    fn chunk<S: Source + ?Sized>(
        &mut self,
        source: &S,
        k: u64,
        batch: &mut Batch,
    ) -> Result<(), AnalyzeError> {
        let start = k * self.chunk;
        let end = (start + self.chunk).min(self.len);
        batch.end = end;
        let base = start.saturating_sub(1);
        let mut filled = 0;
        fill(source, &mut self.buf, &mut filled, base, end)?;
        let mut p = if start == 0 {
            0
        } else {
            match memchr::memchr(b'\n', &self.buf[..filled]) {
                Some(i) => i + 1,
                // No line starts in this chunk.
                None => return Ok(()),
            }
        };
        let stop = (end - base) as usize;
        while p < stop {
            let mut from = p;
            let newline = loop {
                if let Some(i) = memchr::memchr(b'\n', &self.buf[from..filled]) {
                    break Some(from + i);
                }
                let have = base + filled as u64;
                if have >= self.len {
                    break None;
                }
                from = filled;
                let more = (have + EXTEND_BYTES.max(have - end)).min(self.len);
                fill(source, &mut self.buf, &mut filled, have, more)?;
            };
            let offset = base + p as u64;
            match newline {
                Some(nl) => {
                    line(
                        self.want,
                        &self.ids,
                        &mut self.described,
                        offset,
                        &self.buf[p..nl],
                        batch,
                    );
                    p = nl + 1;
                }
                None => {
                    batch.tail = Some(decode_tail(self.want, &self.buf[p..filled]));
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Reads bytes `from..to` of `source` into `buf` after its first `*filled` bytes. `buf`
/// only grows (zeroed once), so a recycled buffer is not cleared again for every chunk.
fn fill<S: Source + ?Sized>(
    source: &S,
    buf: &mut Vec<u8>,
    filled: &mut usize,
    from: u64,
    to: u64,
) -> Result<(), AnalyzeError> {
    let end = *filled + (to - from) as usize;
    if buf.len() < end {
        buf.resize(end, 0);
    }
    while *filled < end {
        let offset = to - (end - *filled) as u64;
        match source.read_at(&mut buf[*filled..end], offset) {
            Ok(0) => {
                return Err(AnalyzeError::Io {
                    offset,
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while being read",
                    ),
                });
            }
            Ok(n) => *filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(AnalyzeError::Io { offset, source }),
        }
    }
    Ok(())
}

/// Decodes one complete line ([`decode_line`]) and stores it in `batch` for the consumer.
#[inline]
fn line(
    want: Want,
    ids: &DefaultHashBuilder,
    described: &mut usize,
    offset: u64,
    bytes: &[u8],
    batch: &mut Batch,
) {
    let opts = DecodeOpts {
        payload: want.replay,
        describe: *described < MAX_REPORTED_CORRUPT_LINES,
    };
    let mut rec = Rec {
        offset,
        len: bytes.len() as u64,
        kind: RecKind::Blank,
        a: 0,
        b: 0,
        reason: usize::MAX,
        hash: NO_PREPARE,
        id_hash: 0,
        stamp: NO_STAMP,
    };
    let verbatim = |rec: &mut Rec, batch: &mut Batch| {
        if want.replay {
            rec.a = batch.bytes.len();
            batch.bytes.extend_from_slice(bytes);
            rec.b = batch.bytes.len();
        }
    };
    match decode_line(bytes, ids, opts) {
        Decoded::Blank => {}
        Decoded::Unrecognized => {
            rec.kind = RecKind::Unrecognized;
            verbatim(&mut rec, batch);
        }
        Decoded::Tx { tx_id, line } => {
            rec.kind = RecKind::Tx(line.op);
            rec.stamp = line.stamp;
            rec.a = batch.ids.len();
            batch.ids.extend_from_slice(&tx_id);
            rec.b = batch.ids.len();
            rec.id_hash = line.id_hash;
            rec.hash = line.payload;
        }
        Decoded::Corrupt { reason } => {
            rec.kind = RecKind::Corrupt;
            verbatim(&mut rec, batch);
            if let Some(reason) = reason {
                *described += 1;
                rec.reason = batch.reasons.len();
                batch.reasons.push(reason);
            }
        }
    }
    batch.recs.push(rec);
}

/// Feeds each line of a batch, in order, to the [`Pass`] method of its kind, then the torn
/// tail.
fn consume(pass: &mut Pass, batch: &mut Batch) -> Result<(), AnalyzeError> {
    for rec in &batch.recs {
        let (offset, len, span) = (rec.offset, rec.len as usize, rec.a..rec.b);
        match rec.kind {
            RecKind::Blank => pass.observe_blank(offset, len),
            RecKind::Unrecognized => pass.observe_unrecognized(offset, len, &batch.bytes[span]),
            RecKind::Tx(op) => {
                let id = &batch.ids[span];
                let line = TxLine {
                    op,
                    id_hash: rec.id_hash,
                    payload: rec.hash,
                    stamp: rec.stamp,
                };
                pass.observe_tx(offset, len, id, line)
            }
            RecKind::Corrupt => {
                let reason = batch.reasons.get_mut(rec.reason).map(std::mem::take);
                pass.observe_corrupt(offset, len, &batch.bytes[span], reason)
            }
        }?;
    }
    if let Some(tail) = batch.tail {
        pass.torn_tail(tail);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
