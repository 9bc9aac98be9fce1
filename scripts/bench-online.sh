#!/usr/bin/env bash
# Online compaction latency: a WAL (default 100M) is compacted with `compact --online` while
# a protocol writer (examples/stress_writer.rs, WalWriter) appends at 20k lines/s. Prints the
# writer's append latency p50/p99/max measured during the compaction, and the compactor's
# writer-lock wait and hold time. Target: max pause <= 10 ms.
#
#   BENCH_SIZE=100M  WAL size (walgen; K/M/G binary)
#   BENCH_RATE=20000 writer lines per second
#   BENCH_DIR=DIR    where the temp dir goes (default /var/tmp: a real disk)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_SIZE=${BENCH_SIZE:-100M}
BENCH_RATE=${BENCH_RATE:-20000}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}

cargo build --release --quiet --bin walcompactd --example walgen --example stress_writer
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/walonline.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$target_dir/release/examples/walgen" --out "$work/wal.log" --size "$BENCH_SIZE" >/dev/null
sync

# The writer runs for 1 s before the compaction and stops a while after it (--duration).
"$target_dir/release/examples/stress_writer" --wal "$work/wal.log" --writer-id bench \
    --count 100000000 --duration 12 --rate "$BENCH_RATE" --latency-out "$work/latency.txt" 2>/dev/null &
writer=$!
sleep 1   # the writer reaches its steady rate before the compaction starts
start_ns=$(date +%s%N)
"$target_dir/release/walcompactd" compact --online --json "$work/wal.log" > "$work/report.json"
end_ns=$(date +%s%N)
wait "$writer"


python3 - "$work/report.json" "$start_ns" "$end_ns" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
online = report.get("online") or {}
print(f"compaction: {report['bytes_before']/1e6:.1f} MB -> {report['bytes_after']/1e6:.1f} MB "
      f"in {report['duration_ms']/1000:.2f} s; appended during it: {online.get('appended_bytes', 0)/1e6:.2f} MB, "
      f"catch-up rounds {online.get('catch_up_rounds')}, bytes under lock {online.get('bytes_under_lock')}")
print(f"writer lock: waited {online.get('lock_wait_ms', 0):.2f} ms, held {online.get('lock_held_ms', 0):.2f} ms (target <= 10 ms)")
PY
if [ -s "$work/latency.txt" ]; then
    python3 - "$work/latency.txt" "$start_ns" "$end_ns" <<'PY'
import sys
start, end = int(sys.argv[2]), int(sys.argv[3])
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
during = sorted(l for t, l in rows if start <= t <= end)
rest = sorted(l for t, l in rows if not start <= t <= end)
q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))]
for name, v in (("during the compaction", during), ("outside it", rest)):
    if v:
        print(f"writer appends {name}: {len(v)}; latency p50 {q(v, .5)} us, p99 {q(v, .99)} us, max {v[-1]/1000:.2f} ms")
PY
else
    echo "writer wrote no latency file (killed before finishing?)"
fi
