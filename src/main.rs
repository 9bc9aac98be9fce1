//! The `walcompactd` binary: parses arguments, sets up tracing, calls the library, prints a
//! report (human or `--json`) and maps errors to the documented exit codes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod cli;

use clap::{CommandFactory, Parser};
use cli::{Cli, Command, OffsiteCommand};
use serde::Serialize;
use walcompactd::commands;
use walcompactd::daemon;
use walcompactd::offsite;
use walcompactd::output;
use walcompactd::pipeline::{self, PipelineError, Request, exit_code};
use walcompactd::policy::{self, Mode};

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
        Command::Man { dir } => return man(dir.as_deref()),
        Command::Completions { shell } => {
            let out = &mut std::io::stdout();
            return printed(walcompactd::manual::print_completions(
                Cli::command(),
                shell,
                out,
            ));
        }
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

/// `man`: the main page on stdout, or every page written into `dir` (their paths printed).
fn man(dir: Option<&Path>) -> ExitCode {
    let result = match dir {
        None => walcompactd::manual::print_main_page(Cli::command(), &mut std::io::stdout()),
        Some(dir) => walcompactd::manual::write_man_pages(Cli::command(), dir).map(|pages| {
            pages.iter().for_each(|p| println!("{}", p.display()));
        }),
    };
    printed(result)
}

/// The exit code of `man` and `completions`, which only print.
fn printed(result: Result<(), walcompactd::manual::ManualError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `walcompactd man | head`: the reader has all it wanted; not an error.
        Err(walcompactd::manual::ManualError::Stdout(e))
            if e.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("walcompactd: error: {e}");
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
        Command::Run { .. }
        | Command::CheckPolicy { .. }
        | Command::Man { .. }
        | Command::Completions { .. } => unreachable!("handled in main"),
        Command::Recover { wal, json } => {
            let r = commands::recover(&wal)?;
            let report = serde_json::json!({"wal": wal, "recovered": r, "removed": r.removed()});
            print(json, &report, |_| format!("{}: {r}\n", wal.display()));
            Ok(exit_code::OK)
        }
    }
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
