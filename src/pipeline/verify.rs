//! Verification: replay a file from disk and compare replay digests. A compacted WAL only
//! replaces the original after its own bytes, re-read from disk, replay to the same state.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::{PipelineError, Stage};
use crate::analyze::{Analysis, Want, analyze, analyze_file, analyze_file_expecting};
use crate::replay::ReplayState;
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
    replay_file(path, stage, 0)
}

/// [`replay_path`] of a file expected to hold `txs` transactions (0: unknown).
fn replay_file(
    path: &Path,
    stage: Stage,
    txs: usize,
) -> Result<(ReplayState, Analysis), PipelineError> {
    let file = File::open(path).map_err(PipelineError::io(stage, "open", path))?;
    let len = file
        .metadata()
        .map_err(PipelineError::io(stage, "stat", path))?
        .len();
    let analysis = match txs {
        0 => analyze_file(&file, len, REPLAY_ONLY, &mut |_| {}),
        n => analyze_file_expecting(&file, len, REPLAY_ONLY, n),
    }
    .map_err(|e| PipelineError::from_analyze(stage, path, e))?;
    refuse_corrupt(path, &analysis)?;
    let state = analysis.replay.clone().expect("replay requested");
    Ok((state, analysis))
}

const REPLAY_ONLY: Want = Want {
    index: false,
    replay: true,
};

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

/// Re-reads the temp file from disk and checks its length and replay digest. It holds the
/// original's `txs` transactions, which sizes the pass's tables.
pub fn verify_temp(
    temp: &Path,
    wal: &Path,
    expected: &ReplayState,
    expected_len: u64,
    txs: usize,
) -> Result<ReplayState, PipelineError> {
    crate::crash_point!("verify::read::crash");
    fail::fail_point!("verify::digest::mismatch", |_| Err(
        PipelineError::VerifyFailed {
            path: wal.to_path_buf(),
            detail: "injected digest mismatch".into(),
        }
    ));
    let len = std::fs::metadata(temp)
        .map_err(PipelineError::io(Stage::Verify, "stat", temp))?
        .len();
    if len != expected_len {
        return Err(PipelineError::VerifyFailed {
            path: wal.to_path_buf(),
            detail: format!("compacted file is {len} bytes on disk, {expected_len} were written"),
        });
    }
    let (got, _) = replay_file(temp, Stage::Verify, txs).map_err(|e| match e {
        PipelineError::Corrupt { line, reason, .. } => PipelineError::VerifyFailed {
            path: wal.to_path_buf(),
            detail: format!("compacted file line {line} is corrupt: {reason}"),
        },
        other => other,
    })?;
    if got.digest != expected.digest {
        return Err(PipelineError::VerifyFailed {
            path: wal.to_path_buf(),
            detail: format!("replay digest differs: original {expected}, compacted {got}"),
        });
    }
    Ok(got)
}
