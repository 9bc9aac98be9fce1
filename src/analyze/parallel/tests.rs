//! The parallel pass equals the sequential one for every chunk size and thread count, and
//! a read error anywhere ends it.

use super::*;
use crate::analyze::analyze;

fn both(input: &[u8], chunk: usize, threads: usize) {
    let want = Want::both(crate::rules::CorruptLines::Keep);
    let seq = analyze(input, want, &mut |_| {}).unwrap();
    let par = analyze_source(
        input,
        input.len() as u64,
        want,
        Parallelism {
            chunk_bytes: chunk,
            threads,
        },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(seq.replay, par.replay, "chunk {chunk}");
    assert_eq!(seq.index.plan(), par.index.plan(), "chunk {chunk}");
    assert_eq!(seq.corrupt, par.corrupt, "chunk {chunk}");
    assert_eq!(
        (
            seq.lines,
            seq.scanned_len,
            seq.torn_tail_bytes,
            seq.corrupt_lines
        ),
        (
            par.lines,
            par.scanned_len,
            par.torn_tail_bytes,
            par.corrupt_lines
        ),
        "chunk {chunk}"
    );
}

/// A source that fails past `at` bytes, as a disk error would.
struct FailsAt<'a> {
    bytes: &'a [u8],
    at: u64,
}

impl Source for FailsAt<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset + buf.len() as u64 > self.at {
            return Err(io::Error::other("injected read error"));
        }
        self.bytes.read_at(buf, offset)
    }
}

/// A read error in any chunk ends the pass with that error, whoever decodes the chunk,
/// and no thread is left waiting (the test would hang).
#[test]
fn a_read_error_ends_the_pass_for_every_split() {
    let line = "{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":{\"v\":1}}\n";
    let input = line.repeat(200);
    let want = Want::both(crate::rules::CorruptLines::Keep);
    for at in [0, 1, 500, 4000, input.len() as u64 - 1] {
        for (chunk, threads) in [(64, 1), (64, 2), (100, 3), (7, 4)] {
            let source = FailsAt {
                bytes: input.as_bytes(),
                at,
            };
            let par = Parallelism {
                chunk_bytes: chunk,
                threads,
            };
            let got = analyze_source(&source, input.len() as u64, want, par, &mut |_| {});
            assert!(
                matches!(got, Err(AnalyzeError::Io { .. })),
                "at {at}, chunk {chunk}, threads {threads}"
            );
        }
    }
}

#[test]
fn equals_the_sequential_pass_for_every_chunk_size() {
    let input = concat!(
        "{\"op\":\"PREPARE\",\"tx_id\":\"a\",\"data\":{\"v\":1}}\n",
        "\n",
        "{\"op\":\"COMMIT\",\"tx_id\":\"a\"}\r\n",
        "garbage\n",
        "{\"op\":\"CHECKPOINT\"}\n",
        "{\"op\":\"PREPARE\",\"tx_id\":\"b\"}\n",
        "{\"op\":\"ABORT\",\"tx_id\":\"b\"}\n",
        "{\"op\":\"PREPARE\",\"tx_id\":\"c\",\"data\":[1]}\n",
        "{\"op\":\"PREP"
    )
    .as_bytes();
    for chunk in 1..=input.len() + 1 {
        for threads in 1..=3 {
            both(input, chunk, threads);
            both(&input[..input.len() - 12], chunk, threads);
        }
    }
    let many_corrupt: String = (0..50)
        .map(|i| format!("{{\"op\":\"COMMIT\",\"tx_id\":\"a\"}}\n[{i}]\n"))
        .collect();
    for chunk in [1, 7, 30, 64, 1000] {
        both(many_corrupt.as_bytes(), chunk, 3);
    }
    both(b"", 4, 2);
    both(b"\n", 1, 2);
}
