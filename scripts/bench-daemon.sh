#!/usr/bin/env bash
# Measures the daemon's steady-state cost while a writer appends to a watched WAL:
# % of one core (utime+stime from /proc/PID/stat over the wall time) and peak RSS
# (VmHWM), against the targets below.
#
# Usage: scripts/bench-daemon.sh
#   BENCH_RATE=20000      lines per second appended (one write() per line)
#   BENCH_DURATION=30     seconds of appending
#   BENCH_INITIAL=10M     size of the WAL before appending starts
#   BENCH_DIR=DIR         where the temp dir goes (default $TMPDIR or /var/tmp)
#
# The policy's thresholds are set high so that only watching is measured (a compaction
# is a separate, benchmarked cost: scripts/bench.sh). Exits non-zero only on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_RATE=${BENCH_RATE:-20000}
BENCH_DURATION=${BENCH_DURATION:-30}
BENCH_INITIAL=${BENCH_INITIAL:-10M}
# Targets: the daemon must stay invisible next to the writer.
TARGET_CPU_PERCENT=2
TARGET_RSS_MIB=64

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
walgen=$target_dir/release/examples/walgen
walcompactd=${WALCOMPACTD:-$target_dir/release/walcompactd}
echo "== building (release)"
cargo build --release --example walgen --bin walcompactd

work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/walbench-daemon.XXXXXX")
daemon_pid=""
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

"$walgen" --out "$work/wal.log" --size "$BENCH_INITIAL"
cat >"$work/policy.toml" <<TOML
[daemon]
state_dir = "state"
metrics_listen = ""
[[wal]]
name = "bench"
path = "wal.log"
[wal.triggers]
max_size_mb = 100000
TOML

(cd "$work" && exec "$walcompactd" run --policy policy.toml >"$work/daemon.log" 2>&1) &
daemon_pid=$!
for _ in $(seq 1 100); do grep -q '"event":"ready"' "$work/daemon.log" 2>/dev/null && break; sleep 0.1; done
grep -q '"event":"ready"' "$work/daemon.log" || { echo "daemon did not start"; cat "$work/daemon.log"; exit 1; }
sleep 1 # let the initial scan finish; it is not steady state

clk=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$daemon_pid/stat"; }
start_ticks=$(cpu_ticks)
start_ns=$(date +%s%N)
echo "== appending $BENCH_RATE lines/s for $BENCH_DURATION s"
"$walgen" --out "$work/wal.log" --append --rate "$BENCH_RATE" --duration "$BENCH_DURATION" >/dev/null
sleep 1 # the daemon catches up on the last events
end_ticks=$(cpu_ticks)
end_ns=$(date +%s%N)
hwm_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$daemon_pid/status")
rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$daemon_pid/status")
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=""

awk -v t=$((end_ticks - start_ticks)) -v clk="$clk" -v ns=$((end_ns - start_ns)) \
    -v hwm="$hwm_kib" -v rss="$rss_kib" -v tc="$TARGET_CPU_PERCENT" -v tr="$TARGET_RSS_MIB" \
    -v size="$(stat -c %s "$work/wal.log")" 'BEGIN {
    cpu = 100 * (t / clk) / (ns / 1e9)
    printf "daemon CPU: %.2f%% of one core (target <= %d%%) %s\n", cpu, tc, (cpu <= tc ? "OK" : "MISSED")
    printf "daemon peak RSS (VmHWM): %.1f MiB, RSS at end %.1f MiB (target <= %d MiB) %s\n",
        hwm / 1024, rss / 1024, tr, (hwm / 1024 <= tr ? "OK" : "MISSED")
    printf "WAL size at end: %.1f MB\n", size / 1e6
}'
if grep -q '"level":"ERROR"' "$work/daemon.log"; then
    echo "daemon logged errors:"; grep '"level":"ERROR"' "$work/daemon.log"; exit 1
fi
