#!/usr/bin/env bash
# Lease-mode latency: a WAL (default 100M) is compacted with `compact --mode lease` while the
# Diotec360 application's writer (tests/fixtures/diotec360_wal.py run: Python, open(wal, 'a'),
# write one line, flush, fsync, close per append, no lock) commits at full speed.
#
# First the writer runs alone for BENCH_BASELINE_SECS: its worst and p99 append latency
# without compaction. Then, per rep, on a freshly generated WAL: the writer runs, the
# compaction starts after ~1 s, the writer goes on ~1 s after it ends. Prints the compaction
# (MB before -> after, duration), the report's lease figures (lease_wait_ms, lease_held_ms,
# writers_paused_ms, late_bytes) and online figures (catch_up_rounds, appended_bytes), and
# the writer's append latency during the compaction (appends overlapping it, by timestamp)
# vs outside it and vs the baseline. Then `diotec360_wal.py check`: every line the writers
# wrote is in the compacted WAL once, in order, byte for byte.
# Targets: lease_held_ms <= 10 ms; the writer's worst append during the compaction <= its
# worst without compaction + 10 ms. PASS/FAIL lines are printed; the exit status is 0 either
# way (a benchmark, not a test) unless the script itself fails.
#
#   BENCH_SIZE=100M          WAL size (walgen; K/M/G binary)
#   BENCH_BASELINE_SECS=5    how long the writer runs alone for the baseline
#   BENCH_REPS=1             compactions under the writer, each on a new WAL
#   BENCH_DIR=DIR            where the temp dir goes (default /var/tmp: a real disk, which
#                            must support leases: a local filesystem we own files on)
set -euo pipefail
cd "$(dirname "$0")/.."
BENCH_SIZE=${BENCH_SIZE:-100M}
BENCH_BASELINE_SECS=${BENCH_BASELINE_SECS:-5}
BENCH_REPS=${BENCH_REPS:-1}
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
fixture=tests/fixtures/diotec360_wal.py
target_ms=10

cargo build --release --quiet --bin walcompactd --example walgen
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/wallease.XXXXXX")
writer=
cleanup() {
    # A writer still running (the script failed mid-rep) is stopped through its stop file.
    if [ -n "$writer" ]; then
        touch "$work/stop"
        wait "$writer" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# generate DIR: a fresh WAL at DIR/wal.log (walgen's defaults: retries, aborts, duplicate
# finals, so there is something to reclaim), flushed to disk so the writeback is not measured.
generate() {
    mkdir -p "$1"
    "$target_dir/release/examples/walgen" --out "$1/wal.log" --size "$BENCH_SIZE" >/dev/null
    sync
}

# start_writer DIR NAME: the application's writer on DIR/wal.log in the background ($writer),
# until $work/stop exists; its summary goes to DIR/NAME.json, its lines to DIR/NAME.record,
# its per-append timestamps and latencies to DIR/NAME.lat.
start_writer() {
    rm -f "$work/stop"
    python3 "$fixture" run "$1" "$1/state" --writer "$2" --stop-file "$work/stop" \
        --record "$1/$2.record" --latency-out "$1/$2.lat" > "$1/$2.json" &
    writer=$!
}

stop_writer() {
    touch "$work/stop"
    wait "$writer"
    writer=
}

echo "lease-mode bench: WAL $BENCH_SIZE, baseline ${BENCH_BASELINE_SECS} s, $BENCH_REPS rep(s), in $work"

# Baseline: the writer alone, on a WAL of the benchmark's size (rep 1's, compacted later).
generate "$work/rep1"
start_writer "$work/rep1" base
sleep "$BENCH_BASELINE_SECS"
stop_writer
cp "$work/rep1/base.json" "$work/base.json"   # rep 2 removes rep1
python3 - "$work/base.json" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))
print(f"baseline (writer alone): {w['commits']} commits, {w['appends']} appends; "
      f"append latency p99 {w['p99_append_ms']:.2f} ms, worst {w['worst_append_ms']:.2f} ms")
PY

for rep in $(seq 1 "$BENCH_REPS"); do
    dir=$work/rep$rep
    [ "$rep" = 1 ] || { rm -rf "$work/rep$((rep - 1))"; generate "$dir"; }
    echo "--- rep $rep/$BENCH_REPS"
    start_writer "$dir" "lease$rep"
    sleep 1   # the writer is at full speed before the compaction starts
    start_ns=$(date +%s%N)
    rc=0
    "$target_dir/release/walcompactd" compact --mode lease --json "$dir/wal.log" \
        > "$dir/report.json" 2> "$dir/compact.err" || rc=$?
    end_ns=$(date +%s%N)
    sleep 1   # and goes on after it
    stop_writer
    if [ "$rc" != 0 ]; then
        echo "compaction FAILED (exit $rc):"
        tail -n 5 "$dir/compact.err"
    fi

    python3 - "$dir/report.json" "$work/base.json" "$dir/lease$rep.json" "$dir/lease$rep.lat" \
        "$start_ns" "$end_ns" "$target_ms" <<'PY'
import json, sys
report_path, base_path, writer_path, lat_path = sys.argv[1:5]
start, end, target = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
try:
    report = json.load(open(report_path))
except (OSError, ValueError):
    report = {}
base, writer = json.load(open(base_path)), json.load(open(writer_path))

lease, online = report.get("lease") or {}, report.get("online") or {}
if "bytes_after" in report:
    print(f"compaction: {report['bytes_before']/1e6:.1f} MB -> {report['bytes_after']/1e6:.1f} MB "
          f"in {report['duration_ms']/1000:.2f} s ({report['outcome']}); "
          f"catch-up rounds {online.get('catch_up_rounds')}, "
          f"appended during it {online.get('appended_bytes', 0)/1e6:.3f} MB")
    print(f"lease: wait {lease.get('lease_wait_ms', 0):.2f} ms, held {lease.get('lease_held_ms', 0):.2f} ms, "
          f"writers paused {lease.get('writers_paused_ms', 0):.2f} ms, "
          f"bytes under lease {lease.get('bytes_under_lease')}, late bytes {lease.get('late_bytes')}")
else:
    print(f"compaction: no report ({report.get('outcome', 'no JSON')})")
print(f"compaction window (process start to exit): {(end - start)/1e6:.1f} ms")

# An append is "during" the compaction when its interval overlaps the window: one that
# began before the lease and was held up by it counts.
rows = [tuple(map(int, l.split())) for l in open(lat_path)]
during = sorted(l for t, l in rows if t <= end and t + l >= start)
rest = sorted(l for t, l in rows if not (t <= end and t + l >= start))
q = lambda v, p: v[min(len(v) - 1, int(p * len(v)))] / 1e6
for name, v in (("during the compaction", during), ("outside it", rest)):
    if v:
        print(f"writer appends {name}: {len(v)}; latency p50 {q(v, .5):.2f} ms, "
              f"p99 {q(v, .99):.2f} ms, worst {v[-1]/1e6:.2f} ms")
    else:
        print(f"writer appends {name}: none")
print(f"writer overall: {writer['commits']} commits, {writer['appends']} appends; "
      f"p99 {writer['p99_append_ms']:.2f} ms, worst {writer['worst_append_ms']:.2f} ms")

worst_during = during[-1] / 1e6 if during else float("nan")
extra = worst_during - base["worst_append_ms"]
print(f"worst append: {base['worst_append_ms']:.2f} ms without compaction (baseline), "
      f"{worst_during:.2f} ms during it: {extra:+.2f} ms")
if during:
    # Where it fell: the lease is taken at the end of the run (the swap is its last stage),
    # so a worst append far from the end was slowed by the compaction's I/O, not the lease.
    t, l = max(((t, l) for t, l in rows if t <= end and t + l >= start), key=lambda r: r[1])
    print(f"  it began {(t - start)/1e6:.0f} ms into the window and ended "
          f"{(end - t - l)/1e6:.0f} ms before its end; worst outside the window in this rep: "
          f"{rest[-1]/1e6 if rest else float('nan'):.2f} ms")
held = lease.get("lease_held_ms")
ok = held is not None and held <= target
print(f"{'PASS' if ok else 'FAIL'}: lease held {held if held is None else f'{held:.2f}'} ms "
      f"(target <= {target:g} ms)")
ok = during and extra <= target
print(f"{'PASS' if ok else 'FAIL'}: writer's worst append during the compaction minus its worst "
      f"without it: {extra:+.2f} ms (target <= +{target:g} ms)")
PY

    # Every line the writers appended to this WAL is in it, once, in order.
    records=("$dir/lease$rep.record")
    [ "$rep" = 1 ] && records=("$dir/base.record" "${records[@]}")
    verdict=$(python3 "$fixture" check "$dir/wal.log" "${records[@]}") || true
    python3 - "$verdict" <<'PY'
import json, sys
try:
    v = json.loads(sys.argv[1])
except ValueError:
    print(f"check: FAIL (no verdict: {sys.argv[1]!r})")
    sys.exit()
lines = ", ".join(f"{w} {n}" for w, n in v["lines"].items())
print(f"check: {'ok' if v['ok'] else 'FAIL'}: writers' lines in the WAL: {lines}")
for p in v["problems"]:
    print(f"  {p}")
PY
done
