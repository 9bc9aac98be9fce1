//! The `walcompactd` binary: parses arguments, sets up tracing, calls the library, prints a
//! report (human or `--json`) and maps errors to the documented exit codes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use walcompactd::commands;
use walcompactd::daemon;
use walcompactd::offsite;
use walcompactd::output;
use walcompactd::pipeline::retain::RetentionRequest;
use walcompactd::pipeline::{self, PipelineError, Request, exit_code};
use walcompactd::policy::{self, Mode};
use walcompactd::rules::CorruptLines;

#[derive(Parser)]
#[command(
    name = "walcompactd",
    version,
    about = "Keeps append-only 2PC write-ahead logs small without losing a committed transaction",
    after_help = "Environment:\n  WALCOMPACTD_INSECURE_POLICY=1  `run` and `check-policy` skip the policy trust check \
        (owners and modes of the policy file and of its hooks' and alert commands' executables) \
        and warn instead"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

/// `walcompactd offsite ...`; each finds WAL in the policy by its path.
#[derive(Subcommand)]
enum OffsiteCommand {
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
struct ExpiryArgs {
    /// Expire committed and aborted transactions whose last COMMIT/ABORT `timestamp` is
    /// older than SECS seconds (at least 1).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    expire_after: Option<u64>,
    /// Expire in-flight transactions whose last PREPARE `timestamp` is older than SECS
    /// seconds (0 = never); may be used without --expire-after.
    #[arg(long, value_name = "SECS")]
    expire_in_flight_after: Option<u64>,
}

impl ExpiryArgs {
    /// The request, when either horizon was given.
    fn request(&self, archive_dir: Option<PathBuf>) -> Option<RetentionRequest> {
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

/// Allocations from this size on get their own mappings (glibc's default is 128 KiB).
const MMAP_THRESHOLD_BYTES: i32 = 1 << 20;

/// Fixes glibc's mmap threshold. By default it rises (up to 32 MiB) each time a large
/// block is freed; the per-transaction vectors then grow inside the heap, where every
/// doubling copies and leaves the old block resident: +50 % peak RSS on a 1 GB WAL. Fixed,
/// they stay mappings that grow with mremap and return to the system when freed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    // Fault injection for the crash suite: FAILPOINTS="name=action;..." (failpoints builds only).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { policy } => return run_daemon(policy.as_deref()),
        Command::CheckPolicy { path } => return check_policy(path.as_deref()),
        _ => {}
    }
    init_cli_tracing();
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("walcompactd: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Loads the policy, sets up logging from it, and runs the daemon until SIGTERM/SIGINT.
fn run_daemon(path: Option<&Path>) -> ExitCode {
    let (policy, source, trust) = match policy::load_trusted(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("walcompactd: {e}");
            return ExitCode::from(exit_code::USAGE as u8);
        }
    };
    match start_daemon(path, policy, source, trust) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walcompactd: error: {e:#}");
            ExitCode::from(exit_code::IO as u8)
        }
    }
}

fn start_daemon(
    path: Option<&Path>,
    policy: policy::Policy,
    source: policy::PolicySource,
    trust: policy::Trust,
) -> anyhow::Result<()> {
    let log = daemon::logging::init(&policy.daemon)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opts = daemon::Options {
        policy_path: path.map(Path::to_path_buf),
        policy,
        source,
        trust,
        log,
    };
    let result = rt.block_on(daemon::run(opts));
    // A pipeline still running past the grace period is abandoned; its journal recovers it.
    rt.shutdown_timeout(DAEMON_EXIT_GRACE);
    Ok(result?)
}

/// After the daemon's own bounded shutdown, how long blocking work may still delay exit.
const DAEMON_EXIT_GRACE: Duration = Duration::from_secs(5);

/// `check-policy`: the effective policy as TOML plus notes; every error (invalid or not
/// trusted) with its key path.
fn check_policy(path: Option<&Path>) -> ExitCode {
    match policy::load_trusted(path) {
        Ok((p, source, trust)) => {
            if trust == policy::Trust::Skipped {
                eprintln!("walcompactd: warning: {}", policy::trust::INSECURE_WARNING);
            }
            println!("# source: {source}");
            print!("{}", p.to_toml());
            for note in p.notes() {
                println!("# note: {note}");
            }
            ExitCode::SUCCESS
        }
        Err(e @ (policy::PolicyError::Invalid { .. } | policy::PolicyError::Untrusted { .. })) => {
            eprintln!("{e}");
            ExitCode::from(exit_code::USAGE as u8)
        }
        Err(e) => {
            eprintln!("walcompactd: {e}");
            ExitCode::from(exit_code::IO as u8)
        }
    }
}

/// Commands log warnings to stderr; stdout carries only the report.
fn init_cli_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn print<T: Serialize>(json: bool, report: &T, human: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("reports serialize")
        );
    } else {
        print!("{}", human(report));
    }
}

fn dispatch(command: Command) -> Result<i32, PipelineError> {
    match command {
        Command::Status {
            wal,
            json,
            policy,
            expiry,
        } => {
            let loaded = match policy::load(policy.as_deref()) {
                Ok(loaded) => Some(loaded),
                Err(e) if policy.is_some() => {
                    eprintln!("walcompactd: {e}");
                    return Ok(exit_code::USAGE);
                }
                Err(e) => {
                    tracing::warn!("default policy not used: {e}");
                    None
                }
            };
            let policy = loaded.as_ref().map(|(p, s)| (p, s));
            let retention = expiry.request(None);
            let s = daemon::report::status_with_policy(&wal, policy, retention.as_ref())?;
            print(json, &s, daemon::report::render);
            Ok(if s.status.corrupt_lines > 0 {
                exit_code::CORRUPT
            } else {
                exit_code::OK
            })
        }
        Command::Compact {
            wal,
            dry_run: true,
            json,
            corrupt_lines,
            expiry,
            ..
        } => {
            let retention = expiry.request(None);
            let now = chrono::Utc::now();
            print(
                json,
                &commands::dry_run_at(&wal, corrupt_lines, retention.as_ref(), now)?,
                output::dry_run,
            );
            Ok(exit_code::OK)
        }
        Command::Compact {
            wal,
            json,
            backup_dir,
            mode,
            online,
            lock_timeout_ms,
            corrupt_lines,
            allow_hard_links,
            expiry,
            archive_dir,
            ..
        } => {
            let mode = mode.unwrap_or(if online { Mode::Online } else { Mode::Offline });
            let Some(guard) = guard_of(mode, lock_timeout_ms) else {
                eprintln!(
                    "walcompactd: --lock-timeout-ms applies to --mode online and --mode lease only"
                );
                return Ok(exit_code::USAGE);
            };
            let mut req = Request::new(wal, "walcompactd compact");
            req.backup_dir = backup_dir;
            req.guard = guard;
            req.allow_hard_links = allow_hard_links;
            req.corrupt_lines = corrupt_lines;
            req.retention = expiry.request(archive_dir);
            compact(req, json)
        }
        Command::Verify {
            wal,
            against,
            archives,
            json,
        } => {
            let v = commands::verify_wal(&wal, against.as_deref(), &archives)?;
            print(json, &v, output::verify);
            Ok(v.exit_code())
        }
        Command::Backup {
            wal,
            backup_dir,
            json,
        } => {
            let b = commands::backup_now(&wal, backup_dir.as_deref())?;
            let report = serde_json::json!({"wal": wal, "backup": b.path, "linked": b.linked});
            print(json, &report, |_| {
                format!(
                    "backup: {} ({})\n",
                    b.path.display(),
                    if b.linked { "hard link" } else { "copy" }
                )
            });
            Ok(exit_code::OK)
        }
        Command::Restore {
            wal,
            backup,
            from_archive,
            print: print_only,
            backup_dir,
            mode,
            lock_timeout_ms,
            json,
            policy,
        } => {
            // An archive named by its URL is downloaded and checked first (kept until done).
            let fetched = match from_archive.as_deref().and_then(Path::to_str) {
                Some(url) if offsite::cli::is_object_url(url) => {
                    match offsite::cli::fetch_for(
                        &wal,
                        url,
                        backup_dir.as_deref(),
                        policy.as_deref(),
                    ) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            eprintln!("walcompactd: error: {e}");
                            return Ok(e.exit_code());
                        }
                    }
                }
                _ => None,
            };
            let from_archive = match &fetched {
                Some(f) => Some(f.path().to_path_buf()),
                None => from_archive,
            };
            match (backup, from_archive) {
                (_, Some(archive)) if print_only => {
                    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                    commands::print_archive(&archive, &mut out)?;
                    Ok(exit_code::OK)
                }
                (_, Some(archive)) => {
                    let r = commands::restore_from_archive(&wal, &archive, backup_dir.as_deref())?;
                    print(json, &r, output::archive_restore);
                    Ok(exit_code::OK)
                }
                (Some(backup), None) => {
                    let Some(guard) = guard_of(mode, lock_timeout_ms) else {
                        eprintln!(
                            "walcompactd: --lock-timeout-ms applies to --mode online and --mode lease only"
                        );
                        return Ok(exit_code::USAGE);
                    };
                    if let Some(url) = backup.to_str().filter(|t| offsite::cli::is_object_url(t)) {
                        let dir = backup_dir.as_deref();
                        return Ok(
                            match offsite::cli::restore_from_url(
                                &wal,
                                url,
                                dir,
                                policy.as_deref(),
                                guard,
                            ) {
                                Ok(r) => {
                                    print(json, &r, output::restore);
                                    exit_code::OK
                                }
                                Err(e) => {
                                    eprintln!("walcompactd: error: {e}");
                                    e.exit_code()
                                }
                            },
                        );
                    }
                    print(
                        json,
                        &commands::restore(&wal, &backup, backup_dir.as_deref(), guard)?,
                        output::restore,
                    );
                    Ok(exit_code::OK)
                }
                (None, None) => {
                    eprintln!("walcompactd: restore needs BACKUP or --from-archive ARCHIVE");
                    Ok(exit_code::USAGE)
                }
            }
        }
        Command::PruneBackups {
            wal,
            keep_days,
            keep_last,
            backup_dir,
            json,
            policy,
        } => {
            let pending = match offsite::cli::pending_for(&wal, policy.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("walcompactd: error: {e}; nothing pruned");
                    return Ok(e.exit_code());
                }
            };
            let protect: Vec<&Path> = pending.iter().map(PathBuf::as_path).collect();
            let dir = backup_dir.as_deref();
            let r = commands::prune_backups(&wal, dir, keep_days, keep_last, &protect)?;
            print(json, &r, output::prune);
            Ok(exit_code::OK)
        }
        Command::Offsite { command } => Ok(offsite_command(command)),
        Command::Run { .. } | Command::CheckPolicy { .. } => unreachable!("handled in main"),
        Command::Recover { wal, json } => {
            let r = commands::recover(&wal)?;
            let report = serde_json::json!({"wal": wal, "recovered": r, "removed": r.removed()});
            print(json, &report, |_| format!("{}: {r}\n", wal.display()));
            Ok(exit_code::OK)
        }
    }
}

/// `--mode` as the policy spells it.
fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
        .map_err(|()| format!("expected one of {}", Mode::expected()))
}

/// The guard of `mode`; `None` when a lock timeout is given for a mode that takes no lock.
fn guard_of(mode: Mode, lock_timeout_ms: Option<u64>) -> Option<pipeline::Guard> {
    if mode == Mode::Offline && lock_timeout_ms.is_some() {
        return None;
    }
    let timeout = Duration::from_millis(lock_timeout_ms.unwrap_or(DEFAULT_LOCK_TIMEOUT_MS));
    Some(pipeline::Guard::new(mode, timeout))
}

/// Online mode's wait for the writers' lock when `--lock-timeout-ms` is not given: the
/// policy's default.
const DEFAULT_LOCK_TIMEOUT_MS: u64 = 2_000;

fn compact(req: Request<'static>, json: bool) -> Result<i32, PipelineError> {
    let bar = progress_bar();
    let progress = |_: pipeline::Stage, done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let mut req: Request = req;
    req.progress = Some(&progress);
    let result = pipeline::run(&req);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    print(json, &result?, output::compact);
    Ok(exit_code::OK)
}

/// A byte progress bar on stderr, only when a person is watching it.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} analyzing {bytes}/{total_bytes} {wide_bar} {eta}",
    )
    .ok()?;
    bar.set_style(style);
    Some(bar)
}

/// `offsite list` and `offsite push`: the WAL's entry in the policy, then the command.
fn offsite_command(command: OffsiteCommand) -> i32 {
    let (wal, json, path, is_push) = match command {
        OffsiteCommand::List { wal, json, policy } => (wal, json, policy, false),
        OffsiteCommand::Push { wal, json, policy } => (wal, json, policy, true),
    };
    let ran = offsite::cli::lookup(&wal, path.as_deref()).and_then(|(w, state_dir)| {
        if is_push {
            let r = offsite::cli::push(&w, &state_dir)?;
            print(json, &r, offsite::cli::render_push);
            Ok(if r.failures() > 0 {
                exit_code::IO
            } else {
                exit_code::OK
            })
        } else {
            let l = offsite::cli::list(&w, &state_dir)?;
            print(json, &l, offsite::cli::render_listing);
            Ok(exit_code::OK)
        }
    });
    ran.unwrap_or_else(|e| {
        eprintln!("walcompactd: error: {e}");
        e.exit_code()
    })
}
