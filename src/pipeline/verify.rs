//! Verification: replay a file from disk and compare replay digests. A compacted WAL only
//! replaces the original after its own bytes, re-read from disk, replay to the same state.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::handoff::{Growing, Handoff};
use super::{PipelineError, Stage};
use crate::analyze::{Analysis, Want, analyze, analyze_file, analyze_source_expecting};
use crate::replay::{PendingReplay, ReplayState};
use crate::wal::SCAN_BUFFER_BYTES;

/// Replays any reader, refusing corrupt content. Returns the state and the full analysis.
pub fn replay_reader<R: Read>(
    reader: R,
    path: &Path,
    stage: Stage,
) -> Result<(ReplayState, Analysis), PipelineError> {
    let reader = BufReader::with_capacity(SCAN_BUFFER_BYTES, reader);
    let analysis = analyze(reader, REPLAY_ONLY, &mut |_| {})
        .map_err(|e| PipelineError::from_analyze(stage, path, e))?;
    refuse_corrupt(path, &analysis)?;
    let state = analysis.replay.clone().expect("replay requested");
    Ok((state, analysis))
}

/// Replays the file at `path` (a WAL or an uncompressed backup).
pub fn replay_path(path: &Path, stage: Stage) -> Result<(ReplayState, Analysis), PipelineError> {
    let file = File::open(path).map_err(PipelineError::io(stage, "open", path))?;
    let len = file
        .metadata()
        .map_err(PipelineError::io(stage, "stat", path))?
        .len();
    let analysis = analyze_file(&file, len, REPLAY_ONLY, &mut |_| {})
        .map_err(|e| PipelineError::from_analyze(stage, path, e))?;
    refuse_corrupt(path, &analysis)?;
    let state = analysis.replay.clone().expect("replay requested");
    Ok((state, analysis))
}

const REPLAY_ONLY: Want = Want::replay(crate::rules::CorruptLines::Keep);

/// Errors out on the first corrupt line, naming it.
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
    fail::fail_point!("verify::digest::mismatch", |_| Err(
        PipelineError::VerifyFailed {
            path: wal.to_path_buf(),
            detail: "injected digest mismatch".into(),
        }
    ));
    let failed = |detail: String| PipelineError::VerifyFailed {
        path: wal.to_path_buf(),
        detail,
    };
    let file = File::open(temp).map_err(PipelineError::io(Stage::Verify, "open", temp))?;
    let source = Growing {
        file: &file,
        handoff,
    };
    let analysis = analyze_source_expecting(&source, expected_len, REPLAY_ONLY, txs)
        .map_err(|e| PipelineError::from_analyze(Stage::Verify, temp, e))?;
    if let Some(c) = analysis.first_corrupt() {
        return Err(failed(format!(
            "compacted file line {} is corrupt: {}",
            c.line, c.reason
        )));
    }
    let got = analysis.replay.expect("replay requested");
    let expected = expected.get();
    if got.digest != expected.digest {
        return Err(failed(format!(
            "replay digest differs: original {expected}, compacted {got}"
        )));
    }
    Ok(got)
}
