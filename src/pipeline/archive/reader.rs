//! Reading an archive back: decompressed from its start, line by line for restores and
//! `verify --archive`, or counted and hashed whole for the check before a swap.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use super::frames::{self, Tally};
use super::{Archive, HASH_SEED};
use crate::fsutil::safe::Dir;
use crate::pipeline::{PipelineError, Stage};

/// Read buffer for decompressed lines.
const READ_BUFFER_BYTES: usize = 1 << 16;
/// Decompressed bytes the read-back check takes at a time: large enough that the per-read
/// cost vanishes, small enough to stay in the cache while it is counted and hashed.
const CHECK_BUFFER_BYTES: usize = 1 << 18;

/// An archive opened for reading, never through a symlink; every read is of that one inode.
#[derive(Debug)]
pub struct ArchiveReader {
    file: File,
    path: PathBuf,
}

impl ArchiveReader {
    /// Opens the archive at `path` (a symlink there is refused, not followed).
    pub fn open(path: &Path) -> Result<ArchiveReader, PipelineError> {
        let io_err = |op| PipelineError::io(Stage::Archive, op, path);
        let file = Dir::of(path)
            .and_then(|(dir, name)| dir.open_read(&name))
            .map_err(io_err("open (not following a symlink)"))?;
        if !file.metadata().map_err(io_err("stat"))?.is_file() {
            return Err(PipelineError::BadInput {
                path: path.into(),
                what: "not a regular file, so not an archive".into(),
            });
        }
        Ok(ArchiveReader {
            file,
            path: path.into(),
        })
    }

    /// Decompresses the whole archive from its start, calling `f` with each line (its `\n`
    /// included), and counts and hashes what it read. An archive that does not end with a
    /// newline is damaged (a finished one always does): an error after the last whole line.
    pub fn read_lines<E: From<PipelineError>>(
        &mut self,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Archive, E> {
        let path = self.path.clone();
        let io_err = |op| PipelineError::io(Stage::Archive, op, &path);
        let (dec, compressed_bytes) = self.decoder()?;
        let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, dec);
        let (mut lines, mut bytes, mut hash) = (0u64, 0u64, Xxh3::with_seed(HASH_SEED));
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(io_err("decompress"))?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                return Err(self.unterminated(n as u64, lines).into());
            }
            lines += 1;
            bytes += n as u64;
            hash.update(&line);
            f(&line)?;
        }
        Ok(Archive {
            path,
            lines,
            bytes,
            hash: hash.digest(),
            compressed_bytes,
        })
    }

    /// Decompresses the whole archive from its start and counts, measures and hashes it
    /// (the same [`Archive`] as [`ArchiveReader::read_lines`]), a buffer at a time: the check
    /// before a swap needs no line on its own, and splitting 100 MB into lines cost about
    /// as much as decompressing it. The frames of an archive written in frames (see
    /// [`frames`]) are decompressed on several threads; anything else as one stream.
    pub fn summarize(&mut self) -> Result<Archive, PipelineError> {
        match self.summarize_frames()? {
            Some(archive) => Ok(archive),
            None => self.summarize_stream(),
        }
    }

    /// [`ArchiveReader::summarize`] frame by frame, in parallel; `None` if the archive is not
    /// all frames this reader splits off (the stream then decides, and names any damage).
    fn summarize_frames(&mut self) -> Result<Option<Archive>, PipelineError> {
        let io_err = |op| PipelineError::io(Stage::Archive, op, &self.path);
        let compressed_bytes = self.file.metadata().map_err(io_err("stat"))?.len();
        let pool = frames::Pool::default();
        let mut split = frames::Splitter::new(&self.file, compressed_bytes, &pool);
        let mut tally = Tally::new();
        let mut whole = true;
        let decompressed = frames::ordered(
            &mut split,
            frames::workers(),
            |dctx: &mut frames::Decompressing, zst| {
                let raw = dctx.frame(&zst, &pool);
                pool.give(zst);
                raw
            },
            |raw| match raw {
                Some(raw) => raw.map(|raw| {
                    tally.add(&raw);
                    pool.give(raw);
                }),
                None => {
                    whole = false;
                    Err(std::io::Error::other("not split"))
                }
            },
        );
        if split.unsplit || !whole {
            return Ok(None);
        }
        decompressed.map_err(io_err("decompress"))?;
        self.tallied(tally, compressed_bytes).map(Some)
    }

    /// [`ArchiveReader::summarize`] as one stream.
    fn summarize_stream(&mut self) -> Result<Archive, PipelineError> {
        let path = self.path.clone();
        let (mut dec, compressed_bytes) = self.decoder()?;
        let mut buf = vec![0; CHECK_BUFFER_BYTES];
        let mut tally = Tally::new();
        loop {
            let n = match dec.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(PipelineError::io(Stage::Archive, "decompress", &path)(e)),
            };
            tally.add(&buf[..n]);
        }
        self.tallied(tally, compressed_bytes)
    }

    /// The archive the tally describes; an error if its last line has no newline.
    fn tallied(&self, tally: Tally, compressed_bytes: u64) -> Result<Archive, PipelineError> {
        if tally.open_line > 0 {
            return Err(self.unterminated(tally.open_line, tally.lines));
        }
        Ok(Archive {
            path: self.path.clone(),
            lines: tally.lines,
            bytes: tally.bytes,
            hash: tally.hash.digest(),
            compressed_bytes,
        })
    }

    /// A decoder from the archive's start, and the archive's size on disk.
    fn decoder(&self) -> Result<(zstd::Decoder<'static, BufReader<&File>>, u64), PipelineError> {
        let io_err = |op| PipelineError::io(Stage::Archive, op, &self.path);
        (&self.file)
            .seek(SeekFrom::Start(0))
            .map_err(io_err("seek"))?;
        let compressed_bytes = self.file.metadata().map_err(io_err("stat"))?.len();
        let dec = zstd::Decoder::new(&self.file).map_err(io_err("decompress"))?;
        Ok((dec, compressed_bytes))
    }

    /// `len` bytes after line `lines` with no newline: a finished archive always ends with one.
    fn unterminated(&self, len: u64, lines: u64) -> PipelineError {
        PipelineError::BadInput {
            path: self.path.clone(),
            what: format!(
                "{len} bytes without a newline after line {lines}: damaged, or not an archive walcompactd finished"
            ),
        }
    }
}

/// Reads the archive at `path` back from disk (decompressed): its lines, bytes and hash, to
/// compare with what [`super::ArchiveWriter::finish`] reported it wrote.
pub fn read_back(path: &Path) -> Result<Archive, PipelineError> {
    ArchiveReader::open(path)?.summarize()
}

/// Streams the archive's lines (each with its `\n`), in order, to `f`.
pub fn read_lines<E: From<PipelineError>>(
    path: &Path,
    f: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<Archive, E> {
    ArchiveReader::open(path)?.read_lines(f)
}
