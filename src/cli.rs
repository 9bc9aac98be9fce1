//! The command line as clap defines it: `main.rs` dispatches it, `walcompactd man` and
//! `walcompactd completions` render it (through `walcompactd::manual`), so the pages and
//! completions never drift from `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use walcompactd::pipeline::retain::RetentionRequest;
use walcompactd::policy::Mode;
use walcompactd::rules::CorruptLines;

/// `--version`: the release and the commit it was built from (`build.rs`; "unknown" when
/// built outside git). The man pages carry the release only.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("WALCOMPACTD_GIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "walcompactd",
    version = VERSION,
    about = "Keeps append-only 2PC write-ahead logs small without losing a committed transaction",
    after_help = "Environment:\n  WALCOMPACTD_INSECURE_POLICY=1  `run` and `check-policy` skip the policy trust check \
        (owners and modes of the policy file and of its hooks' and alert commands' executables) \
        and warn instead"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Figures about a WAL: size, lines, entries, transactions, reclaimable bytes; when the
    /// WAL is in the policy, also the daemon's state, backups, decision and alerts.
    ///
    /// With --expire-after or --expire-in-flight-after (else the WAL's [wal.retention] in the
    /// policy), also what retention would expire now; its bytes count as reclaimable.
    Status {
        wal: PathBuf,
        #[arg(long)]
        json: bool,
        /// Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Backup → compact → verify → swap; rolls back on failure.
    Compact {
        wal: PathBuf,
        /// Report what each rule would remove; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// Where the backup goes (default: the WAL's directory; the real file's for a symlink).
        #[arg(long)]
        backup_dir: Option<PathBuf>,
        /// How writers are kept out: offline (none runs; a kernel lease makes the run give up
        /// if one opens the WAL), lease (writers that open the WAL per append and take no
        /// lock, like the Diotec360 application, keep appending) or online (writers that
        /// follow docs/PROTOCOL.md keep appending).
        #[arg(long, value_name = "MODE", value_parser = parse_mode, conflicts_with = "online")]
        mode: Option<Mode>,
        /// The same as --mode online.
        #[arg(long)]
        online: bool,
        /// Online and lease: give up (exit 5, nothing changed) if writers hold the lock (or
        /// keep the WAL open) this long (default 2000).
        #[arg(long)]
        lock_timeout_ms: Option<u64>,
        /// Corrupt complete lines: keep them in place, move them to <stem>_quarantine<ext>
        /// beside the backups, or refuse the WAL (exit 3).
        #[arg(long, value_name = "MODE", default_value_t = CorruptLines::Keep)]
        corrupt_lines: CorruptLines,
        /// Compact even if the WAL has other hard links (they keep naming the old file).
        #[arg(long)]
        allow_hard_links: bool,
        #[command(flatten)]
        expiry: ExpiryArgs,
        /// Where the archive of expired transactions goes (default: the backup directory).
        #[arg(long, value_name = "DIR", requires = "retention")]
        archive_dir: Option<PathBuf>,
    },
    /// Integrity check: parse every line, print the replay digest; with --against, compare.
    Verify {
        wal: PathBuf,
        /// A backup (or any WAL) that must replay to the same state.
        #[arg(long)]
        against: Option<PathBuf>,
        /// An archive of a retention run after BACKUP was taken (repeatable, any order): the
        /// WAL with the archives' lines merged in, in the backup's order, must replay to the
        /// backup's state (lines appended to the WAL since count on both sides), and every
        /// archive line must be in the backup; else exit 1.
        #[arg(long = "archive", value_name = "ARCHIVE", requires = "against")]
        archives: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Back up the WAL now (hard link when possible, else a durable copy).
    Backup {
        wal: PathBuf,
        #[arg(long)]
        backup_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Replace the WAL with a backup, after backing up the current WAL; or, with
    /// --from-archive, append an archive's expired lines to the (stopped) WAL.
    ///
    /// BACKUP (or ARCHIVE) may be an object URL (s3://bucket/key, as `offsite list` shows):
    /// it is downloaded beside the backups, refused unless its bytes hash to the SHA-256
    /// stored with it at upload, then used as usual.
    Restore {
        wal: PathBuf,
        #[arg(required_unless_present = "from_archive")]
        backup: Option<PathBuf>,
        /// With an s3:// BACKUP or ARCHIVE: the policy whose [wal.offsite] gives the endpoint
        /// (default: /etc/walcompactd/policy.toml if it exists, else the environment's).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Append this archive's lines, in order, to the WAL instead, after backing up the
        /// WAL (a copy). Offline only: refused (exit 4) if any process has the WAL open, or
        /// if the WAL ends without a newline (a torn tail).
        #[arg(long, value_name = "ARCHIVE", conflicts_with = "backup")]
        from_archive: Option<PathBuf>,
        /// With --from-archive: write the archive's lines to stdout, exactly; change nothing.
        #[arg(long, requires = "from_archive", conflicts_with_all = ["backup", "json", "backup_dir"])]
        print: bool,
        #[arg(long)]
        backup_dir: Option<PathBuf>,
        /// How writers are kept out while the backup is put back: offline (none runs), lease
        /// (a kernel lease holds writers back for the swap; late lines are kept) or online
        /// (the writers' lock of docs/PROTOCOL.md is held for the rename).
        #[arg(long, value_name = "MODE", value_parser = parse_mode, default_value = "offline",
            conflicts_with = "from_archive")]
        mode: Mode,
        /// Online and lease: give up (exit 5, nothing changed) if writers hold the lock (or
        /// keep the WAL open) this long.
        #[arg(long, conflicts_with = "from_archive")]
        lock_timeout_ms: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Delete backups older than --keep-days, always keeping the newest --keep-last, and
    /// never one still waiting for its off-host copy (the WAL's [wal.offsite] queue).
    PruneBackups {
        wal: PathBuf,
        #[arg(long)]
        keep_days: u32,
        #[arg(long)]
        keep_last: u32,
        #[arg(long)]
        backup_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Run the daemon: watch the policy's WALs and compact them when a trigger holds.
    ///
    /// Refuses (exit 2) a policy that `check-policy` refuses, including one it cannot trust;
    /// a reload that fails either way keeps the running policy.
    Run {
        /// Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Validate a policy and print the effective policy; exit 2 listing every error.
    ///
    /// Hooks and alert commands run as the daemon's user, usually root. So when run as root,
    /// or on a policy file another user owns, the policy file and the executables of its
    /// commands, and every directory above them, must be owned by root or this user and not
    /// be writable by group or others (a sticky directory such as /tmp excepted); else exit 2
    /// naming each file, its mode or owner. WALCOMPACTD_INSECURE_POLICY=1 skips this check
    /// with a warning.
    CheckPolicy {
        /// Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in).
        path: Option<PathBuf>,
    },
    /// Off-host copies of backups and archives (the WAL's [wal.offsite] in the policy).
    Offsite {
        #[command(subcommand)]
        command: OffsiteCommand,
    },
    /// Finish or undo a compaction interrupted by a crash, and remove leftover temp files.
    Recover {
        wal: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the manual page walcompactd(1) (`walcompactd man | man -l -`); with --dir, write
    /// it and one page per subcommand there (walcompactd-status.1, ...), as the package ships.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print the shell completion script for SHELL (installed by the package for bash, zsh
    /// and fish), e.g. `walcompactd completions bash > /etc/bash_completion.d/walcompactd`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// `walcompactd offsite ...`; each finds WAL in the policy by its path.
#[derive(Subcommand)]
pub(crate) enum OffsiteCommand {
    /// What is where: local backups and archives with their copy's status, and the objects
    /// on the server with sizes and digests.
    List {
        wal: PathBuf,
        #[arg(long)]
        json: bool,
        /// Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// Upload every pending backup and archive now, whatever its retry backoff; exit 4 if
    /// any upload failed (the file stays pending).
    Push {
        wal: PathBuf,
        #[arg(long)]
        json: bool,
        /// Policy file (default: /etc/walcompactd/policy.toml if it exists, else built-in).
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

/// Opt-in retention on the command line: transactions older than a horizon leave the WAL
/// for an archive (`compact`), or are shown as expirable (`status`, `compact --dry-run`).
#[derive(Args, Debug, Clone, Default)]
#[group(id = "retention", multiple = true)]
pub(crate) struct ExpiryArgs {
    /// Expire committed and aborted transactions whose last COMMIT/ABORT `timestamp` is
    /// older than SECS seconds (at least 1).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) expire_after: Option<u64>,
    /// Expire in-flight transactions whose last PREPARE `timestamp` is older than SECS
    /// seconds (0 = never); may be used without --expire-after.
    #[arg(long, value_name = "SECS")]
    pub(crate) expire_in_flight_after: Option<u64>,
}

impl ExpiryArgs {
    /// The request, when either horizon was given.
    pub(crate) fn request(&self, archive_dir: Option<PathBuf>) -> Option<RetentionRequest> {
        if self.expire_after.is_none() && self.expire_in_flight_after.is_none() {
            return None;
        }
        Some(RetentionRequest {
            expire_after_secs: self.expire_after,
            expire_in_flight_after_secs: self.expire_in_flight_after,
            archive_dir,
        })
    }
}

/// `--mode` as the policy spells it.
fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
        .map_err(|()| format!("expected one of {}", Mode::expected()))
}
