#!/usr/bin/env bash
# The churn benchmark of docs/BENCHMARKS.md ("Cache under billing churn"): 10,000 workspaces on
# pro, CLIENTS pgbench clients checking `has_entitlement` for Zipf-distributed workspaces
# (random_zipfian(1, 10000, 1.1)), alone ("no churn") and beside one more client that runs
# `sync_billing_state` for random workspaces at WRITES_PER_SECOND (pgbench -R) ("churn").
# Both in the same run on the same cluster, interleaved round by round so background load hits
# them alike, at default durability (fsync = on, synchronous_commit = on). Reports throughput
# and the cache hit rate of each. Installs a release build first. PG_ROOT selects a private
# PostgreSQL copy (setup.sh).
#   CLIENTS=4 WRITES_PER_SECOND=20 SECONDS_PER_RUN=15 ROUNDS=4 bash scripts/bench_churn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/pg_env.sh  # PG_CONFIG (or PG_ROOT) selects the PostgreSQL
PY=$PWD/.run/venv/bin/python  # made by scripts/setup.sh
[ -x "$PY" ] || bash scripts/setup.sh
CLIENTS=${CLIENTS:-4}
THREADS=${THREADS:-2}
WRITES_PER_SECOND=${WRITES_PER_SECOND:-20}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
ROUNDS=${ROUNDS:-4}
DIR=$PWD/.run/bench-churn
PORT=${BENCH_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

if [ "${SKIP_INSTALL:-}" != 1 ]; then
    bash scripts/install.sh --release >/dev/null  # atomically: never over a running library
fi
trap 'bash scripts/cluster.sh stop "$DIR"' EXIT
# Default durability, stated explicitly (cluster.sh relaxes it only for the test suite).
bash scripts/cluster.sh start "$DIR" "$PORT" \
    "max_connections = 50" "shared_buffers = 128MB" "fsync = on" "synchronous_commit = on"
psql() { "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE app"
# Workspace n is md5(n)::uuid: random-looking ids, computed alike by every script.
psql -d app <<'SQL'
CREATE EXTENSION pg_entitlements;
SELECT count(entitlements.sync_billing_state(md5(n::text)::uuid, 'pro', 'active'))
  FROM generate_series(1, 10000) AS n;
SQL
durability=$(psql -d app -c "SELECT current_setting('fsync') || '/' || current_setting('synchronous_commit')")

W=$(mktemp -d)
trap 'bash scripts/cluster.sh stop "$DIR"; rm -rf "$W"' EXIT
cat > "$W/check.sql" <<'SQL'
\set n random_zipfian(1, 10000, 1.1)
SELECT entitlements.has_entitlement(md5(:n::text)::uuid, 'ccp-05');
SQL
cat > "$W/churn.sql" <<'SQL'
\set n random(1, 10000)
SELECT entitlements.sync_billing_state(md5(:n::text)::uuid, 'pro', 'active');
SQL
pgbench() { "$PG_BIN/pgbench" -n -M prepared -h 127.0.0.1 -p "$PORT" -U postgres "$@" app; }
tps() { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$1" | head -1; }
counters() { psql -d app -c "SELECT hits || ' ' || misses FROM entitlements.cache_statistics()"; }

# Warm the cache and the backends' plans.
pgbench -c "$CLIENTS" -j "$THREADS" -T 5 -f "$W/check.sql" >/dev/null

declare -A TPS HITS MISSES WRITES
for kind in nochurn churn; do TPS[$kind]=""; HITS[$kind]=0; MISSES[$kind]=0; WRITES[$kind]=0; done
# The order alternates round by round (no churn first in odd rounds, churn first in even
# ones), so a machine that slows down or speeds up over the run favours neither workload.
for round in $(seq 1 "$ROUNDS"); do
    order="nochurn churn"
    if [ $((round % 2)) = 0 ]; then order="churn nochurn"; fi
    for kind in $order; do
        read -r h0 m0 <<<"$(counters)"
        if [ "$kind" = churn ]; then
            pgbench -c 1 -j 1 -T "$SECONDS_PER_RUN" -R "$WRITES_PER_SECOND" -f "$W/churn.sql" >"$W/writer.out" 2>&1 &
            writer=$!
        fi
        pgbench -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -f "$W/check.sql" >"$W/readers.out" 2>&1
        if [ "$kind" = churn ]; then
            wait "$writer"
            WRITES[$kind]=$(( WRITES[$kind] + $(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$W/writer.out") ))
        fi
        read -r h1 m1 <<<"$(counters)"
        HITS[$kind]=$(( HITS[$kind] + h1 - h0 )); MISSES[$kind]=$(( MISSES[$kind] + m1 - m0 ))
        TPS[$kind]="${TPS[$kind]} $(tps "$W/readers.out")"
        echo "[bench] round $round $kind: $(tps "$W/readers.out") checks/s, hits $((h1 - h0)), misses $((m1 - m0))"
    done
done

report=$("$PY" - "${TPS[nochurn]}" "${TPS[churn]}" "${HITS[nochurn]}" "${MISSES[nochurn]}" "${HITS[churn]}" "${MISSES[churn]}" \
    "${WRITES[churn]}" "$CLIENTS" "$WRITES_PER_SECOND" "$SECONDS_PER_RUN" "$ROUNDS" "$durability" <<'PY'
import statistics, sys
sys.path.insert(0, "scripts")
from benchlib import machine, write_section
nochurn = [float(x) for x in sys.argv[1].split()]
churn = [float(x) for x in sys.argv[2].split()]
hn, mn, hc, mc, writes = map(int, sys.argv[3:8])
clients, rate, secs, rounds, durability = sys.argv[8:13]
rate_n, rate_c = hn / max(hn + mn, 1), hc / max(hc + mc, 1)
med_n, med_c = statistics.median(nochurn), statistics.median(churn)
body = f"""
## Cache under billing churn

Command: `make bench` (or `scripts/bench.sh churn`), which runs `scripts/bench_churn.sh` against a
release build on a fresh cluster at default durability (fsync/synchronous_commit: {durability}).
Machine: {machine()}, shared with other work. 10,000 workspaces on `pro`; {clients} pgbench clients
(`-M prepared`) run `SELECT entitlements.has_entitlement(<workspace>, 'ccp-05')` with workspaces
drawn by `random_zipfian(1, 10000, 1.1)`; "churn" adds one client running
`entitlements.sync_billing_state(<random workspace>, 'pro', 'active')` at {rate} writes/s
(`pgbench -R {rate}`). {rounds} rounds of {secs} s each, the two workloads interleaved, in alternating order.

| workload | checks/s (median of rounds) | rounds | cache hit rate |
|---|---|---|---|
| no churn | {med_n:,.0f} | {', '.join(f'{x:,.0f}' for x in nochurn)} | {100 * rate_n:.3f}% ({hn:,} hits, {mn:,} misses) |
| churn ({writes:,} writes committed) | {med_c:,.0f} | {', '.join(f'{x:,.0f}' for x in churn)} | {100 * rate_c:.3f}% ({hc:,} hits, {mc:,} misses) |

- With churn, throughput is {med_c / med_n:.2f}x the no-churn run (goal: at least 0.95x,
  {'met' if med_c / med_n >= 0.95 else '**not met**'}) and the hit rate {100 * rate_c:.2f}% (goal: at least 99%,
  {'met' if rate_c >= 0.99 else '**not met**'}). A write invalidates the entries of its own
  workspace (and of the few that share its invalidation bucket), not the whole cache.
"""
write_section("churn", body)
print(body)
PY
)
echo "$report"
