//! `walgen`: a deterministic generator of two-phase-commit JSON-lines WALs.
//!
//! It writes what the Python 2PC layer writes (`json.dumps` separators `", "`
//! and `": "`, float timestamps printed in shortest round-trip form), with a
//! tunable amount of the redundancy that `walcompactd` exists to remove, so
//! benchmarks and tests can use WALs of any size without shipping any.
//!
//! Examples:
//!
//! ```text
//! cargo run --release --example walgen -- --out /tmp/w.log --size 100M --torn-tail
//! cargo run --release --example walgen -- --out /tmp/w.log --append --rate 20000 --duration 30
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use rand::distr::Alphanumeric;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::ser::Formatter;

/// Capacity of the file-mode write buffer: large enough that write() calls
/// stop mattering, small enough to stay cache friendly.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Append-mode pacing tick: sleeping per line cannot hit 20k lines/s, so lines
/// that fall due within one tick are written back to back.
const APPEND_TICK: Duration = Duration::from_millis(1);

/// First timestamp of a file-mode WAL, fixed so the same seed gives the same bytes.
const VIRTUAL_EPOCH_SECS: f64 = 1_732_780_000.0;

/// Largest gap between two file-mode timestamps; ~50 µs on average is a busy 2PC layer.
const VIRTUAL_MAX_STEP_SECS: f64 = 100e-6;

/// Random text that memos are sliced from: generating it once keeps the
/// generator fast while memos stay as incompressible as real free text.
const MEMO_FILLER_BYTES: usize = 64 * 1024;

/// Number of distinct accounts a payload can name.
const ACCOUNTS: u32 = 100_000;

/// Why an aborted transaction was aborted; the writer records a short reason.
const ABORT_REASONS: [&str; 4] = [
    "participant voted NO",
    "timeout waiting for votes",
    "lock conflict",
    "coordinator shutdown",
];

/// Ops the compactor does not know; real WALs gain such lines when the writer
/// is upgraded before the compactor.
const UNRECOGNIZED_OPS: [&str; 2] = ["CHECKPOINT", "HEARTBEAT"];

/// Generates a seeded two-phase-commit JSON-lines WAL for tests and benchmarks.
///
/// Fractions (--retry, --abort, ...) are per transaction. A transaction that
/// is in flight, aborted or committed is chosen once (--in-flight and --abort
/// must add up to at most 1); the other features are independent coin flips.
/// The last line printed on stdout is a JSON summary of what was written.
#[derive(Parser, Debug)]
#[command(name = "walgen", version, about, long_about)]
struct Args {
    /// File to write; truncated first unless --append is given.
    #[arg(long)]
    out: PathBuf,

    /// Size to reach, e.g. 64K, 100M, 1G. K, M and G are binary (KiB = 1024,
    /// MiB = 1048576, GiB); a plain number is bytes. Transactions open at that
    /// point are still finished, so the file ends a few KiB larger. Ignored
    /// with --append.
    #[arg(long, default_value = "100M", value_parser = parse_bytes)]
    size: u64,

    /// Seed of the pseudo-random stream: the same seed and flags give the same
    /// file, byte for byte (timestamps excepted with --append).
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Bytes of a PREPARE's serialized `data` object; its memo is padded to
    /// reach exactly this size (never less than the object without memo, ~60).
    #[arg(long, default_value_t = 200)]
    payload: usize,

    /// Fraction of transactions with retries: 1 or 2 extra PREPAREs before the final one.
    #[arg(long, default_value_t = 0.2, value_parser = parse_fraction)]
    retry: f64,

    /// Fraction of transactions that end in ABORT instead of COMMIT.
    #[arg(long, default_value_t = 0.1, value_parser = parse_fraction)]
    abort: f64,

    /// Fraction of finished transactions whose COMMIT/ABORT is written twice (a status update).
    #[arg(long, default_value_t = 0.1, value_parser = parse_fraction)]
    dup_final: f64,

    /// Fraction of transactions never finished: 1 PREPARE, or 2 for half of them.
    #[arg(long, default_value_t = 0.01, value_parser = parse_fraction)]
    in_flight: f64,

    /// Fraction of finished transactions with a PREPARE after their COMMIT/ABORT.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    anomaly: f64,

    /// Fraction of transactions followed at some point by a blank line.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    blank: f64,

    /// Fraction of transactions followed at some point by a JSON line with an
    /// unknown op (CHECKPOINT, HEARTBEAT) and no tx_id.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    unrecognized: f64,

    /// Transactions open at once; each line comes from one of them picked at
    /// random, so PREPAREs and COMMITs of different transactions interleave.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: u32,

    /// End the file with half a PREPARE line and no newline, as a writer
    /// killed mid-write leaves it.
    #[arg(long)]
    torn_tail: bool,

    /// Append to --out (O_APPEND, one write() per line) at --rate lines per
    /// second for --duration seconds instead of writing --size at once;
    /// timestamps then come from the wall clock.
    #[arg(long, requires_all = ["rate", "duration"])]
    append: bool,

    /// Lines per second to append (with --append).
    #[arg(long, requires = "append", value_parser = parse_positive)]
    rate: Option<f64>,

    /// Seconds to keep appending (with --append).
    #[arg(long, requires = "append", value_parser = parse_positive)]
    duration: Option<f64>,

    /// fdatasync the file after every N appended lines (with --append), as a
    /// durable writer does.
    #[arg(long, requires = "append", value_parser = clap::value_parser!(u64).range(1..))]
    fsync_every: Option<u64>,
}

/// Parses `--size`, treating K/M/G as binary units as the help text promises.
fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(text)
        .map_err(|e| e.to_string())
}

/// Parses a per-transaction fraction, which must lie in [0, 1].
fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not a fraction between 0 and 1"))
    }
}

/// Parses a rate or duration, which must be finite and above zero.
fn parse_positive(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("{value} must be a positive number"))
    }
}

/// `json.dumps` default layout: `", "` between members and `": "` after keys,
/// so the generated bytes match what the Python writer produces.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// Serializes `value` the way the Python writer would, appending to `out`.
fn write_python_json<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    let mut ser = serde_json::Serializer::with_formatter(out, PythonFormatter);
    value
        .serialize(&mut ser)
        .expect("serializing into a Vec cannot fail");
}

/// The `data` object of a PREPARE.
#[derive(Serialize)]
struct Payload<'a> {
    account: &'a str,
    amount: f64,
    memo: &'a str,
}

/// One WAL line; absent fields are left out, as the writer leaves them out.
#[derive(Serialize)]
struct Record<'a> {
    op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tx_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Payload<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lsn: Option<u64>,
    timestamp: f64,
}

/// How a transaction ends, chosen when it is planned.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Commit,
    Abort(&'static str),
    InFlight,
}

/// One line a transaction still has to emit.
#[derive(Clone, Copy)]
enum Step {
    Prepare,
    Final,
    Blank,
    Unrecognized,
}

/// A planned transaction: its identity, payload and the lines it has left.
struct Tx {
    tx_id: String,
    account: String,
    amount: f64,
    memo_start: usize,
    memo_len: usize,
    outcome: Outcome,
    /// Remaining steps in reverse order, so the next one is `pop()`ed.
    steps: Vec<Step>,
    /// Whether a line was written: only then does it count as a transaction.
    started: bool,
}

/// The per-transaction fractions from the command line.
struct Mix {
    retry: f64,
    abort: f64,
    dup_final: f64,
    in_flight: f64,
    anomaly: f64,
    blank: f64,
    unrecognized: f64,
}

/// Where timestamps come from: a seeded virtual clock keeps file mode
/// reproducible; append mode feeds a live daemon, which wants real time.
enum Clock {
    Virtual(f64),
    Wall,
}

/// Counters for the stdout summary.
#[derive(Default, Serialize)]
struct Summary {
    lines: u64,
    bytes: u64,
    transactions: u64,
    committed: u64,
    aborted: u64,
    in_flight: u64,
    torn_tail_bytes: u64,
    elapsed_s: f64,
}

/// The interleaving engine: a window of open transactions, one line at a time.
struct Generator {
    rng: ChaCha8Rng,
    mix: Mix,
    payload: usize,
    filler: Vec<u8>,
    window: Vec<Tx>,
    concurrency: usize,
    accepting: bool,
    next_tx: u64,
    next_lsn: u64,
    clock: Clock,
    summary: Summary,
}

impl Generator {
    /// Seeds everything from `--seed`, filler text included, so output is reproducible.
    fn new(args: &Args, clock: Clock) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let filler_len = MEMO_FILLER_BYTES.max(2 * args.payload);
        let filler: Vec<u8> = (&mut rng)
            .sample_iter(Alphanumeric)
            .take(filler_len)
            .collect();
        Generator {
            rng,
            mix: Mix {
                retry: args.retry,
                abort: args.abort,
                dup_final: args.dup_final,
                in_flight: args.in_flight,
                anomaly: args.anomaly,
                blank: args.blank,
                unrecognized: args.unrecognized,
            },
            payload: args.payload,
            filler,
            window: Vec::with_capacity(args.concurrency as usize),
            concurrency: args.concurrency as usize,
            accepting: true,
            next_tx: 1,
            next_lsn: 1,
            clock,
            summary: Summary::default(),
        }
    }

    /// Stops opening transactions; the open ones still run to their end.
    fn drain(&mut self) {
        self.accepting = false;
    }

    /// Renders the next line into `line` (cleared first), or returns false
    /// once the window is empty after `drain`.
    fn next_line(&mut self, line: &mut Vec<u8>) -> bool {
        while self.accepting && self.window.len() < self.concurrency {
            let tx = self.plan();
            self.window.push(tx);
        }
        if self.window.is_empty() {
            return false;
        }
        let index = self.rng.random_range(0..self.window.len());
        let step = self.window[index]
            .steps
            .pop()
            .expect("open transactions have steps");
        if !self.window[index].started {
            self.window[index].started = true;
            self.summary.transactions += 1;
        }
        line.clear();
        self.render(index, step, line);
        self.summary.lines += 1;
        self.summary.bytes += line.len() as u64;
        if self.window[index].steps.is_empty() {
            let done = self.window.swap_remove(index);
            self.count_outcome(done.outcome);
        }
        true
    }

    /// Counts transactions still open when appending stops as in flight.
    fn finish(&mut self) -> &Summary {
        let open = self.window.iter().filter(|tx| tx.started).count();
        self.summary.in_flight += open as u64;
        self.window.clear();
        &self.summary
    }

    /// Counts a transaction once it has written its last line.
    fn count_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Commit => self.summary.committed += 1,
            Outcome::Abort(_) => self.summary.aborted += 1,
            Outcome::InFlight => self.summary.in_flight += 1,
        }
    }

    /// Decides everything about a new transaction up front.
    fn plan(&mut self) -> Tx {
        let id = self.next_tx;
        self.next_tx += 1;
        let outcome = self.pick_outcome();
        let steps = self.plan_steps(outcome);
        let account = format!("acct_{:05}", self.rng.random_range(0..ACCOUNTS));
        let amount = f64::from(self.rng.random_range(1..10_000_000u32)) / 100.0;
        let memo_len = self.memo_len(&account, amount);
        let memo_start = self.rng.random_range(0..=self.filler.len() - memo_len);
        Tx {
            tx_id: format!("tx_{id:06}"),
            account,
            amount,
            memo_start,
            memo_len,
            outcome,
            steps,
            started: false,
        }
    }

    /// One draw decides in flight / abort / commit, so their fractions add up as given.
    fn pick_outcome(&mut self) -> Outcome {
        let draw: f64 = self.rng.random();
        if draw < self.mix.in_flight {
            Outcome::InFlight
        } else if draw < self.mix.in_flight + self.mix.abort {
            let reason = ABORT_REASONS[self.rng.random_range(0..ABORT_REASONS.len())];
            Outcome::Abort(reason)
        } else {
            Outcome::Commit
        }
    }

    /// The transaction's lines in emission order, returned reversed for `pop()`.
    fn plan_steps(&mut self, outcome: Outcome) -> Vec<Step> {
        let mut steps = vec![Step::Prepare];
        if outcome == Outcome::InFlight {
            if self.rng.random_bool(0.5) {
                steps.push(Step::Prepare);
            }
        } else {
            if self.rng.random_bool(self.mix.retry) {
                let retries = self.rng.random_range(1..=2);
                steps.extend(std::iter::repeat_n(Step::Prepare, retries));
            }
            steps.push(Step::Final);
            if self.rng.random_bool(self.mix.dup_final) {
                steps.push(Step::Final);
            }
            if self.rng.random_bool(self.mix.anomaly) {
                steps.push(Step::Prepare);
            }
        }
        self.maybe_insert(&mut steps, self.mix.blank, Step::Blank);
        self.maybe_insert(&mut steps, self.mix.unrecognized, Step::Unrecognized);
        steps.reverse();
        steps
    }

    /// Inserts a noise line anywhere after the first PREPARE, so a
    /// transaction's first line always names it.
    fn maybe_insert(&mut self, steps: &mut Vec<Step>, fraction: f64, step: Step) {
        if self.rng.random_bool(fraction) {
            let at = self.rng.random_range(1..=steps.len());
            steps.insert(at, step);
        }
    }

    /// Memo length that pads the serialized payload to exactly `--payload` bytes.
    fn memo_len(&self, account: &str, amount: f64) -> usize {
        let mut probe = Vec::with_capacity(64);
        write_python_json(
            &mut probe,
            &Payload {
                account,
                amount,
                memo: "",
            },
        );
        self.payload.saturating_sub(probe.len())
    }

    /// Next timestamp: strictly increasing in file mode, like a real clock.
    fn timestamp(&mut self) -> f64 {
        match &mut self.clock {
            Clock::Virtual(now) => {
                *now += self.rng.random_range(0.0..VIRTUAL_MAX_STEP_SECS);
                *now
            }
            Clock::Wall => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }
    }

    /// Appends the JSON text of `step` for transaction `index`, newline included.
    fn render(&mut self, index: usize, step: Step, line: &mut Vec<u8>) {
        let timestamp = self.timestamp();
        let tx = &self.window[index];
        let mut record = Record {
            op: "PREPARE",
            tx_id: Some(&tx.tx_id),
            data: None,
            reason: None,
            lsn: None,
            timestamp,
        };
        match step {
            Step::Blank => {}
            Step::Prepare => record.data = Some(payload_of(tx, &self.filler)),
            Step::Final => match tx.outcome {
                Outcome::Abort(reason) => {
                    record.op = "ABORT";
                    record.reason = Some(reason);
                }
                _ => record.op = "COMMIT",
            },
            Step::Unrecognized => {
                record.op = UNRECOGNIZED_OPS[self.next_lsn as usize % UNRECOGNIZED_OPS.len()];
                record.tx_id = None;
                record.lsn = Some(self.next_lsn);
                self.next_lsn += 1;
            }
        }
        if !matches!(step, Step::Blank) {
            write_python_json(line, &record);
        }
        line.push(b'\n');
    }

    /// A complete PREPARE line for a transaction that never gets to finish
    /// it, used for the torn tail.
    fn torn_line(&mut self) -> Vec<u8> {
        let tx = self.plan();
        self.window.push(tx);
        let mut line = Vec::new();
        self.render(self.window.len() - 1, Step::Prepare, &mut line);
        self.window.pop();
        line
    }
}

/// Borrows a transaction's payload; the memo is a slice of the shared filler.
fn payload_of<'a>(tx: &'a Tx, filler: &'a [u8]) -> Payload<'a> {
    let memo = &filler[tx.memo_start..tx.memo_start + tx.memo_len];
    Payload {
        account: &tx.account,
        amount: tx.amount,
        memo: std::str::from_utf8(memo).expect("filler is alphanumeric ASCII"),
    }
}

/// Writes `--size` bytes of WAL at once through a large buffer.
fn write_file(args: &Args, generator: &mut Generator) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, File::create(&args.out)?);
    let mut line = Vec::with_capacity(args.payload + 256);
    while generator.summary.bytes < args.size && generator.next_line(&mut line) {
        out.write_all(&line)?;
    }
    generator.drain();
    while generator.next_line(&mut line) {
        out.write_all(&line)?;
    }
    if args.torn_tail {
        write_torn_tail(&mut out, generator)?;
    }
    out.flush()
}

/// Appends lines at `--rate` for `--duration`, one write() per line so a
/// reader never sees two lines land together that a real writer wrote apart.
fn append_paced(args: &Args, generator: &mut Generator) -> io::Result<()> {
    let rate = args.rate.expect("clap requires --rate with --append");
    let duration = Duration::from_secs_f64(args.duration.expect("clap requires --duration"));
    let mut out = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&args.out)?;
    let mut line = Vec::with_capacity(args.payload + 256);
    let start = Instant::now();
    let mut tick: u32 = 0;
    loop {
        let elapsed = start.elapsed().min(duration);
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while generator.summary.lines < due && generator.next_line(&mut line) {
            out.write_all(&line)?;
            maybe_sync(&out, args.fsync_every, generator.summary.lines)?;
        }
        if elapsed >= duration {
            break;
        }
        tick += 1;
        sleep_until(start + APPEND_TICK * tick);
    }
    if args.torn_tail {
        write_torn_tail(&mut out, generator)?;
    }
    Ok(())
}

/// fdatasync after every `every` lines, mimicking a writer that syncs in batches.
fn maybe_sync(out: &File, every: Option<u64>, lines: u64) -> io::Result<()> {
    match every {
        Some(n) if lines.is_multiple_of(n) => out.sync_data(),
        _ => Ok(()),
    }
}

/// Sleeps to an absolute deadline, so pacing does not drift with oversleeps.
fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Writes the first half of a PREPARE line, without its newline.
fn write_torn_tail(out: &mut impl Write, generator: &mut Generator) -> io::Result<()> {
    let line = generator.torn_line();
    let torn = &line[..line.len() / 2];
    out.write_all(torn)?;
    generator.summary.bytes += torn.len() as u64;
    generator.summary.torn_tail_bytes = torn.len() as u64;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.in_flight + args.abort > 1.0 {
        Args::command()
            .error(
                ErrorKind::ArgumentConflict,
                "--in-flight plus --abort must be at most 1",
            )
            .exit();
    }
    let started = Instant::now();
    let mut generator;
    if args.append {
        generator = Generator::new(&args, Clock::Wall);
        append_paced(&args, &mut generator)?;
    } else {
        generator = Generator::new(&args, Clock::Virtual(VIRTUAL_EPOCH_SECS));
        write_file(&args, &mut generator)?;
    }
    generator.summary.elapsed_s = started.elapsed().as_secs_f64();
    println!("{}", serde_json::to_string(generator.finish())?);
    Ok(())
}
