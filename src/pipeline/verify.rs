//! Verification: replay a file from disk and compare replay digests. A compacted WAL only
//! replaces the original after its own bytes, re-read from disk, replay to the same state.

use std::fs::File;
use std::path::Path;

use super::handoff::{Growing, Handoff};
use super::{PipelineError, Stage};
use crate::analyze::{Analysis, Want, analyze_source_expecting};
use crate::replay::{PendingReplay, ReplayState};

/// Verification replays the compacted file with its corrupt lines in place: see [`verify_temp`].
const REPLAY_ONLY: Want = Want::replay(crate::rules::CorruptLines::Keep);

/// Errors out on the first corrupt line, naming it (`corrupt_lines = "refuse"`).
pub fn refuse_corrupt(path: &Path, analysis: &Analysis) -> Result<(), PipelineError> {
    match analysis.first_corrupt() {
        None => Ok(()),
        Some(c) => Err(PipelineError::Corrupt {
            path: path.to_path_buf(),
            line: c.line,
            offset: c.offset,
            reason: c.reason.clone(),
            more: analysis.corrupt_lines - 1,
        }),
    }
}

/// Re-reads the temp file from disk, while `handoff` says how far it is written, and checks
/// its replay digest. It holds the original's `txs` transactions, which sizes the pass's
/// tables. The caller checks the written length once the writer is done.
pub fn verify_temp(
    temp: &Path,
    wal: &Path,
    expected: &PendingReplay,
    expected_len: u64,
    txs: usize,
    handoff: &Handoff,
) -> Result<ReplayState, PipelineError> {
    crate::crash_point!("verify::read::crash");
    let failed = |detail: String| PipelineError::VerifyFailed {
        path: wal.to_path_buf(),
        detail,
    };
    fail::fail_point!("verify::digest::mismatch", |_| Err(failed(
        "injected digest mismatch".into()
    )));
    let file = File::open(temp).map_err(PipelineError::io(Stage::Verify, "open", temp))?;
    let source = Growing {
        file: &file,
        handoff,
    };
    // Corrupt lines in the compacted file are part of its state, whatever the policy: kept
    // ones match the original's, and one the plan should have quarantined makes a mismatch.
    let analysis = analyze_source_expecting(&source, expected_len, REPLAY_ONLY, txs)
        .map_err(|e| PipelineError::from_analyze(Stage::Verify, temp, e))?;
    let got = analysis.replay.expect("replay requested");
    let expected = expected.get();
    if got.digest != expected.digest {
        return Err(failed(format!(
            "replay digest differs: original {expected}, compacted {got}"
        )));
    }
    Ok(got)
}

/// The compacted file must be exactly as long as the plan says, as written and on disk.
pub(super) fn check_len(wal: &Path, len: u64, expected: u64) -> Result<(), PipelineError> {
    match len == expected {
        true => Ok(()),
        false => Err(PipelineError::VerifyFailed {
            path: wal.to_path_buf(),
            detail: format!("the compacted file has {len} bytes, the plan expects {expected}"),
        }),
    }
}
