//! The properties both fuzz targets check, shared verbatim by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, through `walcompactd_fuzz::checks`) and the proptest
//! equivalent that runs in CI (`tests/fuzz_prop.rs`, through `#[path]`). A violated
//! property panics with the input in the message.

use walcompactd::analyze::{Want, analyze};
use walcompactd::pipeline::compact::{CompactBytesError, compact_bytes};
use walcompactd::policy::{ParseEnv, PolicyError, parse};

/// Runs the scanner, decoder, rules and replay over `data` as one WAL.
///
/// - The analysis never panics and never fails on in-memory input.
/// - Every byte is accounted for: complete lines plus the torn tail.
/// - A WAL with a corrupt line is refused by compaction, naming the same line.
/// - Otherwise compaction succeeds, replays to the same digest, removes exactly the
///   reclaimable bytes, keeps the torn tail last, and is idempotent.
pub fn scanner(data: &[u8]) {
    let an = analyze(data, both(), &mut |_| {})
        .unwrap_or_else(|e| panic!("analyze failed on in-memory input: {e}; input {data:?}"));
    assert_eq!(an.total_len(), data.len() as u64, "bytes unaccounted for");
    let newlines = data.iter().filter(|&&b| b == b'\n').count() as u64;
    assert_eq!(an.lines, newlines, "one complete line per \\n");
    let tail_start = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    assert_eq!(an.torn_tail_bytes, (data.len() - tail_start) as u64);
    assert!(an.corrupt.len() as u64 <= an.corrupt_lines);
    let replay = an.replay.as_ref().expect("replay was wanted");
    match (compact_bytes(data), an.first_corrupt()) {
        (Err(CompactBytesError::Corrupt { line, offset, .. }), Some(c)) => {
            assert_eq!((line, offset), (c.line, c.offset), "input {data:?}");
        }
        (Ok(out), None) => {
            assert_eq!(
                (data.len() - out.len()) as u64,
                an.index.reclaimable_bytes(),
                "compaction removed other than the reclaimable bytes; input {data:?}"
            );
            assert!(out.ends_with(&data[tail_start..]), "torn tail not last");
            let after = analyze(&out[..], both(), &mut |_| {}).expect("analyze output");
            assert!(
                after.first_corrupt().is_none(),
                "compaction made a corrupt line"
            );
            assert_eq!(
                after.replay.as_ref().expect("replay").digest,
                replay.digest,
                "replay digest changed; input {data:?} output {out:?}"
            );
            let again = compact_bytes(&out).expect("compacting the output");
            assert_eq!(again, out, "not idempotent; input {data:?}");
        }
        (result, corrupt) => {
            panic!("compact_bytes {result:?} disagrees with analyze {corrupt:?}; input {data:?}")
        }
    }
}

/// Parses `data` (if UTF-8) as a policy.
///
/// - Parsing never panics; an error lists at least one problem, each with a message.
/// - A valid policy renders (`to_toml`) to text that parses back to an equal policy.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = env();
    match parse(text, "fuzz", &env) {
        Ok(policy) => {
            let rendered = policy.to_toml();
            let again = parse(&rendered, "rendered", &env).unwrap_or_else(|e| {
                panic!("rendered policy does not parse: {e}\ninput:\n{text}\nrendered:\n{rendered}")
            });
            assert_eq!(
                again, policy,
                "round trip changed the policy\ninput:\n{text}\nrendered:\n{rendered}"
            );
        }
        Err(PolicyError::Invalid { origin, errors }) => {
            assert_eq!(origin, "fuzz");
            assert!(!errors.is_empty(), "Invalid without errors; input:\n{text}");
            for e in &errors {
                assert!(!e.message.is_empty(), "empty message for {:?}", e.key);
            }
        }
        Err(other) => panic!("parse is pure but returned {other}; input:\n{text}"),
    }
}

fn both() -> Want {
    Want::both(walcompactd::rules::CorruptLines::Keep)
}

/// A fixed environment: parsing stays deterministic, so a failure reproduces.
fn env() -> ParseEnv {
    let now = "2025-06-01T12:00:00Z".parse().expect("constant timestamp");
    ParseEnv::bare("/srv/fuzz", now)
}
