//! A writer process for the online stress test and benchmark: appends transactions through
//! `walcompactd::writer::WalWriter` (the lock protocol), with retries, duplicate COMMITs and
//! ABORTs so that concurrent compactions have something to reclaim.
//!
//! `stress_writer --wal PATH --writer-id ID --count N [--mirror AUDIT] [--rate LINES_PER_SEC]
//!  [--latency-out FILE] [--duration SECS]` — `--latency-out` writes `<unix ns> <latency µs>`
//!  per append.

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use walcompactd::writer::{Durability, WalWriter};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    wal: std::path::PathBuf,
    #[arg(long)]
    writer_id: String,
    /// Transactions to write.
    #[arg(long)]
    count: u64,
    /// Audit copy of every line, appended under the same lock.
    #[arg(long)]
    mirror: Option<std::path::PathBuf>,
    /// Pace appends to this many lines per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Write `<unix time ns> <latency µs>` per append to this file.
    #[arg(long)]
    latency_out: Option<std::path::PathBuf>,
    /// Stop after this many seconds even if `--count` is not reached.
    #[arg(long)]
    duration: Option<f64>,
}

/// The lines of transaction `n`: every 3rd is retried, every 5th aborted, every 7th has a
/// duplicate COMMIT.
fn transaction(id: &str, n: u64) -> Vec<serde_json::Value> {
    let tx = format!("{id}-{n}");
    let prepare = |attempt: u64| json!({"op": "PREPARE", "tx_id": tx, "data": {"writer": id, "seq": n, "attempt": attempt}});
    let mut lines = vec![prepare(0)];
    if n.is_multiple_of(3) {
        lines.push(prepare(1));
    }
    if n.is_multiple_of(5) {
        lines.push(json!({"op": "ABORT", "tx_id": tx, "reason": "stress"}));
    } else {
        lines.push(json!({"op": "COMMIT", "tx_id": tx}));
        if n.is_multiple_of(7) {
            lines.push(json!({"op": "COMMIT", "tx_id": tx}));
        }
    }
    lines
}

fn main() {
    let args = Args::parse();
    let mut w = WalWriter::open(&args.wal, Durability::None).expect("open WAL");
    if let Some(m) = &args.mirror {
        w.mirror_to(m).expect("open mirror");
    }
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut lines = 0u64;
    let stop = args.duration.map(|d| start + Duration::from_secs_f64(d));
    for n in 0..args.count {
        if stop.is_some_and(|s| Instant::now() >= s) {
            break;
        }
        for line in transaction(&args.writer_id, n) {
            if let Some(rate) = args.rate {
                let due = start + Duration::from_secs_f64(lines as f64 / rate);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let t = Instant::now();
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            if let Err(e) = w.append_json(&line) {
                // Never retried: a failed audit-mirror write leaves the line in the WAL.
                let state = match e.is_retry_safe() {
                    true => "not appended",
                    false => "the line is in the WAL",
                };
                panic!("append ({state}): {e}");
            }
            latencies.push((wall.as_nanos(), t.elapsed().as_micros() as u64));
            lines += 1;
        }
    }
    if let Some(path) = &args.latency_out {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("latency file"));
        for (at, l) in latencies {
            writeln!(f, "{at} {l}").expect("write latency");
        }
    }
    eprintln!("stress_writer: {} wrote {lines} lines", args.writer_id);
}
