#!/usr/bin/env bash
# Benchmarks `walcompactd compact` against a plain durable copy of the same WAL,
# measured in the same run on the same disk, so the ratio means something on
# any machine.
#
# Usage: scripts/bench.sh
#   BENCH_SIZE=1G   WAL size for walgen (default 100M; K/M/G are binary)
#   BENCH_REPS=3    repetitions of each command (median is reported)
#   BENCH_DIR=DIR   where the temp dir goes (default $TMPDIR or /var/tmp);
#                   must be a real disk, not tmpfs, or fsync costs nothing
#   WALCOMPACTD=BIN binary to benchmark (default: the release build)
#
# Exits non-zero only when a command fails; missed targets are reported.
set -euo pipefail
cd "$(dirname "$0")/.."

BENCH_SIZE=${BENCH_SIZE:-100M}
BENCH_REPS=${BENCH_REPS:-3}
# Compact may cost at most this many durable copies of the same WAL.
TARGET_RATIO=3.0
# Peak RSS targets (MiB): 25 at 100 MiB, 128 at 1 GiB; sizes up to this
# many bytes use the 100 MiB target, larger ones the 1 GiB target.
SMALL_WAL_MAX_BYTES=$((128 * 1024 * 1024))
TARGET_RSS_SMALL_MIB=25
TARGET_RSS_LARGE_MIB=128

target_dir=${CARGO_TARGET_DIR:-$PWD/target}
walgen=$target_dir/release/examples/walgen
walcompactd=${WALCOMPACTD:-$target_dir/release/walcompactd}

echo "== building (release)"
cargo build --release --example walgen
cargo build --release --bin walcompactd

work=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/var/tmp}}/walbench.XXXXXX")
trap 'rm -rf "$work"' EXIT
results=$work/results.jsonl

# measure.py RESULTS KIND -- CMD...: runs CMD once and appends one JSON line
# with its wall time, peak RSS and last stdout line to RESULTS. A fresh python per
# command keeps RUSAGE_CHILDREN (a running maximum) to that command alone.
# Linux charges a child the parent's peak RSS at fork+exec, so no result can
# be below the helper's own; that floor is measured (`true`) and printed.
cat >"$work/measure.py" <<'PY'
import json, resource, subprocess, sys, time
results, kind, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
assert sep == "--" and cmd, "usage: measure.py RESULTS KIND -- CMD..."
start = time.monotonic()
proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
wall = time.monotonic() - start
rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
lines = [l for l in proc.stdout.splitlines() if l.strip()]
with open(results, "a") as f:
    f.write(json.dumps({"kind": kind, "rc": proc.returncode, "wall_s": wall,
                        "rss_kib": rss_kib, "last_stdout": lines[-1] if lines else ""}) + "\n")
sys.exit(proc.returncode)
PY
# -I -S: no site packages or user paths, which keeps the helper (the floor) small.
measure() {
    python3 -I -S "$work/measure.py" "$results" "$@"
}

echo "== generating a $BENCH_SIZE WAL (default mix, torn tail) in $work"
"$walgen" --out "$work/wal.log" --size "$BENCH_SIZE" --torn-tail
sync "$work/wal.log"

failed=0
measure floor -- true
# The retention case: a horizon that leaves the newest 10% of the WAL's (virtual-clock)
# transactions: the cutoff (whole seconds) from its first and last timestamps; each run's
# --expire-after is taken against the clock just before it (see expire_after_now).
cutoff=$(python3 - "$work/wal.log" <<'PY'
import json, sys
def stamps(lines):
    for l in lines:
        try:
            t = json.loads(l).get("timestamp")
        except ValueError:
            continue
        if isinstance(t, (int, float)):
            yield t
lines = [l for l in open(sys.argv[1], "rb") if l.endswith(b"\n")]
first, last = next(stamps(lines)), next(stamps(reversed(lines)))
print(int(first + 0.9 * (last - first)))
PY
)
# The WAL's history spans seconds (walgen's virtual clock), and --expire-after is relative to
# now: a value computed once moved the cutoff a second per second of the benchmark, so later
# runs expired nearly everything instead of 90%.
# Taken in the first half of a second, so that the run's own clock reading (whole seconds)
# falls in the same second and every run expires the same transactions.
expire_after_now() {
    while ((10#$(date +%N) >= 500000000)); do sleep 0.05; done
    echo $(($(date +%s) - cutoff))
}
# Copy and compact alternate, so both see the same machine: on a shared VM the speed
# drifts over seconds, and running all copies first would bias the ratio.
for rep in $(seq 1 "$BENCH_REPS"); do
    echo "== run $rep/$BENCH_REPS: durable copy"
    rm -f "$work/copy.log"
    # shellcheck disable=SC2016 # $1/$2 belong to the inner sh
    measure copy -- sh -c 'cat "$1" > "$2" && sync "$2"' sh "$work/wal.log" "$work/copy.log" ||
        failed=1
    rm -f "$work/copy.log"
    echo "== run $rep/$BENCH_REPS: compact"
    rm -rf "$work/fresh.log" "$work/backup"
    mkdir "$work/backup"
    # Outside the timed region, and flushed, so compact does not pay for it.
    cp "$work/wal.log" "$work/fresh.log"
    sync "$work/fresh.log"
    if ! measure compact -- "$walcompactd" compact "$work/fresh.log" \
        --backup-dir "$work/backup" --json; then
        echo "compact failed (run $rep); not repeating it" >&2
        failed=1
        break
    fi
    rm -rf "$work/fresh.log" "$work/backup"
    mkdir "$work/backup"
    cp "$work/wal.log" "$work/fresh.log"
    sync "$work/fresh.log"
    expire_after=$(expire_after_now)
    echo "== run $rep/$BENCH_REPS: compact with retention (--expire-after $expire_after)"
    if ! measure retention -- "$walcompactd" compact "$work/fresh.log" \
        --backup-dir "$work/backup" --expire-after "$expire_after" --json; then
        echo "compact with retention failed (run $rep)" >&2
        failed=1
        break
    fi
done

wal_bytes=$(stat -c %s "$work/wal.log")
python3 - "$results" "$BENCH_SIZE" "$wal_bytes" "$TARGET_RATIO" \
    "$SMALL_WAL_MAX_BYTES" "$TARGET_RSS_SMALL_MIB" "$TARGET_RSS_LARGE_MIB" <<'PY' || failed=1
import json, statistics, sys
path, size, wal_bytes, target_ratio, small_max, rss_small, rss_large = sys.argv[1:]
wal_bytes, target_ratio = int(wal_bytes), float(target_ratio)
target_rss = int(rss_small) if wal_bytes <= int(small_max) else int(rss_large)
runs = [json.loads(l) for l in open(path)]

def json_line(text):
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False

# compact promises a JSON line (--json); exiting 0 without one is a failure.
for r in runs:
    if r["kind"] == "compact" and r["rc"] == 0 and not json_line(r["last_stdout"]):
        r["rc"] = "0 but no JSON line on stdout"
floor_mib = max(r["rss_kib"] for r in runs if r["kind"] == "floor") / 1024
KINDS = ("copy", "compact", "retention")
ok = {k: [r for r in runs if r["kind"] == k and r["rc"] == 0] for k in KINDS}
bad = {k: [r for r in runs if r["kind"] == k and r["rc"] != 0] for k in KINDS}

def median_s(kind):
    return statistics.median(r["wall_s"] for r in ok[kind]) if ok[kind] else None

def verdict(good):
    return "met" if good else "MISSED"

print()
print(f"WAL {size} = {wal_bytes} bytes ({wal_bytes / 2**20:.1f} MiB)")
print(f"RSS floor (the measuring helper itself): {floor_mib:.1f} MiB; a value at it means 'at most'")
print(f"{'command':<14}{'median s':>10}{'peak RSS MiB':>14}  runs (s)")
for kind in KINDS:
    if ok[kind]:
        rss = max(r["rss_kib"] for r in ok[kind]) / 1024
        times = " ".join(f"{r['wall_s']:.3f}" for r in ok[kind])
        print(f"{kind:<14}{median_s(kind):>10.3f}{rss:>14.1f}  {times}")
    else:
        rcs = "; ".join(sorted({str(r["rc"]) for r in bad[kind]})) or "not run"
        print(f"{kind:<14}{'FAILED':>10}{'-':>14}  exit status {rcs}")
copy_s, compact_s = median_s("copy"), median_s("compact")
if copy_s and compact_s:
    ratio = compact_s / copy_s
    print(f"ratio compact/copy: {ratio:.2f} (target <= {target_ratio}) {verdict(ratio <= target_ratio)}")
    rss = max(r["rss_kib"] for r in ok["compact"]) / 1024
    print(f"compact peak RSS: {rss:.1f} MiB (target <= {target_rss} MiB) {verdict(rss <= target_rss)}")
    print(f"compact output: {ok['compact'][-1]['last_stdout']}")
else:
    print("ratio compact/copy: n/a (a command failed)")
# Retention: 90% of the transactions older than the horizon must leave a WAL of at most 15%
# of its size, in at most 1.2x the time of a plain compaction of it.
retention_s = median_s("retention")
if retention_s and compact_s:
    r = json.loads(ok["retention"][-1]["last_stdout"])
    left = r["bytes_after"] / r["bytes_before"]
    slower = retention_s / compact_s
    expired = (r.get("expired") or {}).get("transactions", 0)
    print(f"retention: {expired} transactions expired; WAL {r['bytes_before']} -> {r['bytes_after']} bytes "
          f"({100 * left:.1f}%, target <= 15%) {verdict(left <= 0.15)}")
    # Each run's horizon is its own clock reading (whole seconds): what it left, per run.
    runs_left = [json.loads(x["last_stdout"]) for x in ok["retention"]]
    print("retention runs left (%): " + " ".join(
        f"{100 * x['bytes_after'] / x['bytes_before']:.1f}" for x in runs_left))
    print(f"retention/plain compaction time: {slower:.2f} (target <= 1.2) {verdict(slower <= 1.2)}")
elif bad["retention"]:
    print("retention: FAILED")
sys.exit(1 if bad["copy"] or bad["compact"] or bad["retention"] else 0)
PY
exit "$failed"
