//! walcompactd: keeps append-only two-phase-commit WALs small without losing a committed
//! transaction.
//!
//! Modules, in data-flow order:
//! - [`wal`]: reading a WAL — line scanning (offsets, torn tail), decoding `op`/`tx_id`/`data`,
//!   interning transaction ids. Never writes.
//! - [`rules`]: the compaction rules as a pure index → [`rules::Plan`] of surviving byte ranges.
//! - [`replay`]: the replay state and its SHA-256 digest, computed independently of the rules.
//! - [`analyze`]: one streaming pass feeding the scanner's lines to the rules and the replay.

pub mod analyze;
pub mod commands;
pub mod fsutil;
pub mod output;
pub mod pipeline;
pub mod replay;
pub mod rules;
pub mod wal;
