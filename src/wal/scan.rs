//! Splitting a WAL into lines with their byte offsets, and finding the torn tail.
//!
//! A line ends at `\n` (a `\r` before it belongs to the line). Bytes after the last `\n` are
//! the torn tail: a write still in progress or cut by a crash, never interpreted.

use std::io::{self, BufRead};

/// Read buffer for scanning: large enough that a syscall moves a useful amount, small enough
/// to keep memory independent of the WAL's size.
pub const SCAN_BUFFER_BYTES: usize = 1 << 20;

/// One complete line, borrowed from the scanner's buffer.
#[derive(Debug)]
pub struct RawLine<'b> {
    /// 1-based line number, as editors and error messages count.
    pub number: u64,
    /// Byte offset of the line's first byte in the file.
    pub offset: u64,
    /// The line's bytes without the terminating `\n`.
    pub bytes: &'b [u8],
}

impl RawLine<'_> {
    /// Length on disk including the `\n`.
    pub fn len_on_disk(&self) -> u64 {
        self.bytes.len() as u64 + 1
    }
}

/// What the scanner yields.
#[derive(Debug)]
pub enum Item<'b> {
    Line(RawLine<'b>),
    /// Bytes after the last `\n`, at EOF.
    TornTail {
        offset: u64,
        bytes: &'b [u8],
    },
}

impl Item<'_> {
    /// Offset just past the item: where the next one starts.
    pub fn end(&self) -> u64 {
        match self {
            Item::Line(line) => line.offset + line.len_on_disk(),
            Item::TornTail { offset, bytes } => offset + bytes.len() as u64,
        }
    }
}

/// A streaming line scanner over any `BufRead`; memory is one line at a time.
pub struct LineScanner<R> {
    reader: R,
    buf: Vec<u8>,
    offset: u64,
    number: u64,
}

impl<R: BufRead> LineScanner<R> {
    /// Scans from the start of `reader`, which is offset 0, line 1.
    pub fn new(reader: R) -> Self {
        Self::resume(reader, 0, 0)
    }

    /// Scans a reader positioned at `offset`, after `lines_before` complete lines: used to
    /// read only what was appended since the last scan.
    pub fn resume(reader: R, offset: u64, lines_before: u64) -> Self {
        LineScanner {
            reader,
            buf: Vec::with_capacity(4096),
            offset,
            number: lines_before,
        }
    }

    /// Offset just past the last item returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next line or the torn tail; `None` at EOF.
    pub fn next_item(&mut self) -> io::Result<Option<Item<'_>>> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        let offset = self.offset;
        self.offset += n as u64;
        if self.buf.last() == Some(&b'\n') {
            self.number += 1;
            let bytes = &self.buf[..n - 1];
            Ok(Some(Item::Line(RawLine {
                number: self.number,
                offset,
                bytes,
            })))
        } else {
            Ok(Some(Item::TornTail {
                offset,
                bytes: &self.buf,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(input: &[u8]) -> Vec<(String, u64, u64, Vec<u8>)> {
        let mut s = LineScanner::new(input);
        let mut out = Vec::new();
        while let Some(item) = s.next_item().unwrap() {
            out.push(match item {
                Item::Line(l) => ("line".into(), l.number, l.offset, l.bytes.to_vec()),
                Item::TornTail { offset, bytes } => ("tail".into(), 0, offset, bytes.to_vec()),
            });
        }
        out
    }

    #[test]
    fn splits_lines_with_offsets_and_keeps_cr() {
        let got = items(b"ab\r\n\ncd\nxy");
        assert_eq!(got[0], ("line".into(), 1, 0, b"ab\r".to_vec()));
        assert_eq!(got[1], ("line".into(), 2, 4, b"".to_vec()));
        assert_eq!(got[2], ("line".into(), 3, 5, b"cd".to_vec()));
        assert_eq!(got[3], ("tail".into(), 0, 8, b"xy".to_vec()));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn no_torn_tail_when_file_ends_with_newline() {
        assert_eq!(items(b"a\n").len(), 1);
        assert!(items(b"").is_empty());
    }

    #[test]
    fn resume_counts_from_the_given_position() {
        let mut s = LineScanner::resume(&b"x\n"[..], 10, 4);
        match s.next_item().unwrap().unwrap() {
            Item::Line(l) => assert_eq!((l.number, l.offset), (5, 10)),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.offset(), 12);
    }
}
