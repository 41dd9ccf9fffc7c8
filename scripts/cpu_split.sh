#!/usr/bin/env bash
# Where a pgbench workload's CPU goes: runs pgbench against a running cluster and reports,
# per transaction, the CPU time (user + system, from /proc) of each class of process: the
# database's backends, each PostgreSQL auxiliary process (the audit writer, walwriter,
# checkpointer, ...), pgbench itself, and kernel threads; and the whole machine's busy time.
# A figure for docs/BENCHMARKS.md, not an assertion. The first second and the last two of the
# run are left out (connections opening and closing); SECONDS must be at least 6.
#   PORT=5432 DB=app CLIENTS=4 PGOPTIONS="-c pg_entitlements.audit=off" \
#       bash scripts/cpu_split.sh workload.sql [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg_env.sh
SCRIPT=$1
SECS=${2:-10}
: "${PORT:?PORT of the running cluster}" "${DB:=app}" "${CLIENTS:=4}"
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
"$PG_BIN/pgbench" -n -M prepared -h 127.0.0.1 -p "$PORT" -U postgres -c "$CLIENTS" -j 2 -T "$SECS" \
    -f "$SCRIPT" "$DB" >"$OUT" 2>&1 &
bench=$!
# CPU ticks by class: "class<TAB>ticks" per process.
snapshot() {
    for p in /proc/[0-9]*; do
        cmd=$(head -c 80 "$p/cmdline" 2>/dev/null | tr '\0' ' ') || continue
        [ -n "$cmd" ] || cmd="[kernel]"
        ticks=$(awk '{ print $14 + $15 }' "$p/stat" 2>/dev/null) || continue
        case "$cmd" in
            "postgres: postgres $DB "*) class="backends" ;;
            "postgres: "*) class=$(echo "$cmd" | sed 's/^postgres: //; s/ *$//') ;;
            *pgbench*) class="pgbench" ;;
            "[kernel]") class="kernel threads" ;;
            *) class="other" ;;
        esac
        printf '%s\t%s\n' "$class" "$ticks"
    done
}
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
# A snapshot takes a moment (it reads every process): the window is measured from the middle
# of one to the middle of the other, and ends well before pgbench does.
sleep 1
s0=$(date +%s.%N); before=$(snapshot); busy0=$(busy); e0=$(date +%s.%N)
sleep $((SECS - 4))
s1=$(date +%s.%N); after=$(snapshot); busy1=$(busy); e1=$(date +%s.%N)
wait "$bench"
tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$OUT" | head -1)
window=$(python3 -c "print(($s1 + $e1) / 2 - ($s0 + $e0) / 2)")
python3 - "$tps" "$window" "$busy0" "$busy1" "$(getconf CLK_TCK)" <<PY
import sys, collections
tps, secs, b0, b1, hz = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
def load(text):
    d = collections.Counter()
    for line in text.strip().splitlines():
        k, v = line.rsplit("\t", 1)
        d[k] += float(v)
    return d
before, after = load("""$before"""), load("""$after""")
n = tps * secs
us = lambda ticks: ticks / hz * 1e6 / n
print(f"{tps:.0f} transactions/s; CPU per transaction: machine busy {us(b1 - b0):.1f} µs")
for k in sorted(after, key=lambda k: -(after[k] - before.get(k, 0))):
    d = after[k] - before.get(k, 0)
    if d > 0:
        print(f"  {k}: {us(d):.2f} µs")
PY
