//! walcompactd: keeps append-only two-phase-commit WALs small without losing a committed
//! transaction.
//!
//! Modules, in data-flow order:
//! - [`policy`]: the TOML policy — serde schema (`deny_unknown_fields`), validation with key
//!   paths (every error collected), the embedded default. Reads the policy file, nothing else.
//! - [`wal`]: reading a WAL — line scanning (offsets, torn tail), decoding `op`/`tx_id` (or
//!   finding a line corrupt), interning transaction ids. Never writes.
//! - [`rules`]: the compaction rules as a pure index (16 bytes per transaction) →
//!   [`rules::Plan`] of surviving lines; corrupt lines per [`rules::CorruptLines`] (kept in
//!   place, or set aside in the plan for quarantine).
//! - [`replay`]: the replay state and its SHA-256 digest, computed independently of the rules
//!   (it shares nothing with their index; a verification pass builds none). A PREPARE's
//!   payload is its whole line.
//! - [`analyze`]: one streaming pass feeding the scanner's lines to the rules and the replay.
//! - [`pipeline`]: backup → compact → verify → (quarantine →) swap (→ rollback), the journal
//!   and the lock; a symlinked WAL resolved to its real file, other hard links refused; one
//!   module per stage, sequenced by `pipeline::run`.
//! - [`commands`]: the operator commands (status, verify, backup, restore, ...) as library calls.
//! - [`output`]: human-readable renderings of the commands' reports.
//! - [`daemon`]: `walcompactd run` — supervisors per WAL (watcher hints, incremental stats,
//!   pure trigger decisions, single-flight jobs), hot policy reload, cron, systemd notify;
//!   `daemon::observe` evaluates alert rules and writes the metrics textfile, and
//!   `daemon::report` is `status --policy` (the daemon's view of one WAL).
//! - [`metrics`]: the Prometheus exporter (HTTP listener, textfile) and the typed functions that
//!   publish per-WAL figures, run outcomes and alert states.
//! - [`alerts`]: pure alert evaluation (pending → firing → resolved, once per edge) and the
//!   edge actions: logging and running the rule's command.
//! - [`process`]: the one runner of external commands (hooks, alert commands): own process
//!   group killed whole on timeout, bounded stderr capture.
//! - [`fsutil`]: durable-filesystem helpers (fsync dir, atomic write, free space, file identity).
//! - [`writer`]: the writer side of the online-compaction lock protocol (`docs/PROTOCOL.md`):
//!   [`writer::WalWriter`] appends under `<wal>.lock` and reopens after a swap.

/// A fault-injection point that kills the process on the spot with SIGKILL (no destructors,
/// no cleanup: exactly `kill -9`) when enabled with `FAILPOINTS="<name>=return"`. Compiles to
/// nothing without the `failpoints` feature. Names follow `stage::op::crash`.
#[macro_export]
macro_rules! crash_point {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        if fail::eval($name, |_| ()).is_some() {
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }};
}

pub mod alerts;
pub mod analyze;
pub mod commands;
pub mod daemon;
pub mod fsutil;
pub mod metrics;
pub mod output;
pub mod pipeline;
pub mod policy;
pub mod process;
pub mod replay;
pub mod rules;
pub mod wal;
pub mod writer;
