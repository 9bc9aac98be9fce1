//! walcompactd: keeps append-only two-phase-commit WALs small without losing a committed
//! transaction.
//!
//! Modules, in data-flow order:
//! - [`policy`]: the TOML policy — serde schema (`deny_unknown_fields`), validation with key
//!   paths (every error collected), the embedded default (retention off); `policy::trust` refuses a policy
//!   whose commands would run as root when others could change it. Reads the policy file and
//!   the metadata of it, its commands' executables and their directories, nothing else.
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
//! - [`commands`]: the operator commands (status, verify, backup, restore, ...) as library calls;
//!   [`verify_archive`] is `verify --archive` (the WAL and its archives merged in a backup's
//!   order, replayed against it).
//! - [`output`]: human-readable renderings of the commands' reports.
//! - [`manual`]: man pages and shell completions generated from the command-line definitions.
//! - [`daemon`]: `walcompactd run` — supervisors per WAL (watcher hints, incremental stats,
//!   pure trigger decisions, single-flight jobs), hot policy reload, cron, systemd notify;
//!   `daemon::observe` evaluates alert rules and writes the metrics textfile, and
//!   `daemon::report` is `status --policy` (the daemon's view of one WAL).
//! - [`offsite`]: off-host copies (`[wal.offsite]`): each new backup and archive uploaded to
//!   S3-compatible storage with its SHA-256, confirmed, queued with backoff across restarts;
//!   `daemon::offsite` is the daemon's uploader task, `offsite::cli` the operator's commands.
//! - [`metrics`]: the Prometheus exporter (HTTP listener, textfile) and the typed functions that
//!   publish per-WAL figures, run outcomes and alert states.
//! - [`alerts`]: pure alert evaluation (pending → firing → resolved, once per edge) and the
//!   edge actions: logging and running the rule's command.
//! - [`process`]: the one runner of external commands (hooks, alert commands): own process
//!   group killed whole on timeout, bounded stderr capture.
//! - [`fsutil`]: durable-filesystem helpers (fsync dir, atomic write, free space, file identity).
//! - [`lease`]: Linux file leases (read and write leases, take, poll for a break, release)
//!   and the checks lease mode needs (filesystem, `fs.lease-break-time`); the kernel facts, no
//!   pipeline knowledge. `pipeline::guard::late` is what a run does with them.
//! - [`writer`]: the writer side of the online-compaction lock protocol (`docs/PROTOCOL.md`):
//!   [`writer::WalWriter`] appends under `<wal>.lock` and reopens after a swap.

/// A fault-injection point that kills the process on the spot with SIGKILL (no destructors,
/// no cleanup: exactly `kill -9`) when enabled with `FAILPOINTS="<name>=return"`. Compiles to
/// nothing without the `failpoints` feature. Names follow `stage::op::crash`.
#[macro_export]
macro_rules! crash_point {
    ($name:expr) => {{
        #[cfg(feature = "failpoints")]
        if fail::eval($name, |_| ()).is_some() {
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }};
}

/// The fault-injection point in front of a real I/O call, as an `io::Result<()>` to chain
/// the call after: `io_fault!("swap::before_rename").and_then(|()| fs::rename(..)).map_err(..)`.
/// An injected error then goes through the real call's own `map_err`, so it reports the same
/// stage, operation and path as a real failure there, stated once.
///
/// `io_fault!("stage::op")` is two points: `stage::op::crash` kills the process as
/// [`crash_point!`] does, then `stage::op::error` makes it an injected `io::Error` (each with
/// `FAILPOINTS="<name>=return"`). `io_fault!(error "stage::op")` is only `stage::op::error`,
/// for a step whose crash point is elsewhere or absent. Without the `failpoints` feature it is
/// `Ok(())`: nothing is evaluated and nothing is compiled in.
#[macro_export]
macro_rules! io_fault {
    (error $name:literal) => {{
        #[cfg(feature = "failpoints")]
        let injected: ::std::io::Result<()> =
            match fail::eval(concat!($name, "::error"), |_| ()) {
                Some(()) => Err(::std::io::Error::other(concat!(
                    "injected fault ",
                    $name,
                    "::error"
                ))),
                None => Ok(()),
            };
        #[cfg(not(feature = "failpoints"))]
        let injected: ::std::io::Result<()> = Ok(());
        injected
    }};
    ($name:literal) => {{
        $crate::crash_point!(concat!($name, "::crash"));
        $crate::io_fault!(error $name)
    }};
}

pub mod alerts;
pub mod analyze;
pub mod commands;
pub mod daemon;
pub mod fsutil;
pub mod lease;
pub mod manual;
pub mod metrics;
pub mod offsite;
pub mod output;
pub mod pipeline;
pub mod policy;
pub mod process;
pub mod replay;
pub mod rules;
pub mod verify_archive;
pub mod wal;
pub mod writer;
