//! Criterion benches for the hot paths: the line scanner + decoder (pass 1), the planner,
//! the replay digest and the in-memory executor. `scripts/bench.sh` measures the whole
//! command against a durable copy of the same file.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walcompactd::analyze::{Want, analyze};
use walcompactd::pipeline::compact::compact_bytes;

/// Size of the synthetic WAL: large enough to leave the CPU caches, small enough for CI.
const BENCH_WAL_BYTES: usize = 16 << 20;

/// A deterministic WAL shaped like the benchmark mix: ~200-byte payloads, retries,
/// aborts, duplicate finals, interleaved transactions.
fn synthetic_wal(bytes: usize) -> Vec<u8> {
    let memo = "x".repeat(150);
    let mut out = String::with_capacity(bytes + 1024);
    let mut i: u64 = 0;
    while out.len() < bytes {
        let tx = format!("tx_{i:09}");
        let prepare = |n: u64| {
            format!(
                "{{\"op\": \"PREPARE\", \"tx_id\": \"{tx}\", \"data\": {{\"account\": \"acc_{n}\", \"amount\": {n}, \"memo\": \"{memo}\"}}, \"timestamp\": 1732780000.{n}}}\n"
            )
        };
        out += &prepare(i);
        if i.is_multiple_of(5) {
            out += &prepare(i + 1);
        }
        match i % 10 {
            0 => {
                out += &format!(
                    "{{\"op\": \"ABORT\", \"tx_id\": \"{tx}\", \"reason\": \"timeout\"}}\n"
                )
            }
            7 => {
                out += &format!(
                    "{{\"op\": \"COMMIT\", \"tx_id\": \"{tx}\"}}\n{{\"op\": \"COMMIT\", \"tx_id\": \"{tx}\"}}\n"
                )
            }
            9 => {}
            _ => {
                out += &format!(
                    "{{\"op\": \"COMMIT\", \"tx_id\": \"{tx}\", \"timestamp\": 1732780001.0}}\n"
                )
            }
        }
        i += 1;
    }
    out.into_bytes()
}

fn benches(c: &mut Criterion) {
    let wal = synthetic_wal(BENCH_WAL_BYTES);
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Bytes(wal.len() as u64));
    g.sample_size(10);
    g.bench_function("scan_index", |b| {
        b.iter(|| {
            analyze(
                black_box(&wal[..]),
                Want::index(walcompactd::rules::CorruptLines::Keep),
                &mut |_| {},
            )
            .unwrap()
        })
    });
    g.bench_function("scan_replay", |b| {
        b.iter(|| {
            analyze(
                black_box(&wal[..]),
                Want::replay(walcompactd::rules::CorruptLines::Keep),
                &mut |_| {},
            )
            .unwrap()
        })
    });
    let an = analyze(
        &wal[..],
        Want::index(walcompactd::rules::CorruptLines::Keep),
        &mut |_| {},
    )
    .unwrap();
    g.bench_function("plan", |b| b.iter(|| black_box(an.index.plan())));
    g.bench_function("compact_in_memory", |b| {
        b.iter(|| compact_bytes(black_box(&wal)).unwrap())
    });
    g.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
