#!/usr/bin/env bash
# The usage-limit benchmark of docs/BENCHMARKS.md ("Usage limits"): `entitlements.consume`
# beside a bare conditional UPDATE of one counter row (the least any atomic counter costs),
# on one hot workspace and spread over 10,000, with CLIENTS pgbench clients at default
# durability (fsync = on, synchronous_commit = on); the common two-statement pattern (SELECT
# used, then UPDATE) with its overshoot; and the in-server cost of has_entitlement on a metered
# feature beside a boolean one. Figures, not assertions. PG_ROOT selects a private PostgreSQL
# copy (setup.sh); SKIP_INSTALL=1 uses the installed build.
#   CLIENTS=8 SECONDS_PER_RUN=8 ROUNDS=6 bash scripts/bench_limits.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/pg_env.sh  # PG_CONFIG (or PG_ROOT) selects the PostgreSQL
PY=$PWD/.run/venv/bin/python  # made by scripts/setup.sh
[ -x "$PY" ] || bash scripts/setup.sh
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
OVERSHOOT_LIMIT=${OVERSHOOT_LIMIT:-500}
DIR=$PWD/.run/bench-limits
PORT=${BENCH_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

if [ "${SKIP_INSTALL:-}" != 1 ]; then
    bash scripts/install.sh --release >/dev/null
fi
W=$(mktemp -d)
trap 'bash scripts/cluster.sh stop "$DIR"; rm -rf "$W"' EXIT
# Default durability, stated explicitly (cluster.sh relaxes it only for the test suite).
bash scripts/cluster.sh start "$DIR" "$PORT" "max_connections = 50" "shared_buffers = 128MB" \
    "fsync = on" "synchronous_commit = on" "pg_entitlements.audit = 'off'"
psql() { "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE app"
# Workspace n is md5(n)::uuid; counter row n of the bare table stands for the same workspace.
psql -d app <<'SQL'
CREATE EXTENSION pg_entitlements;
INSERT INTO entitlements.features (feature, min_tier, description, kind, reset_period)
VALUES ('api_calls', 'free', 'API calls', 'metered', 'never');
SELECT entitlements.set_feature_limit('api_calls', 'free', 1000000000000);
-- The baseline's counters are keyed like consume's, by the workspace's uuid, and both
-- workloads are given the same id computed the same way (md5 of the pgbench variable): the
-- difference between them is what consume does, not how the benchmark makes its arguments.
CREATE TABLE counters (id uuid PRIMARY KEY, used bigint NOT NULL DEFAULT 0);
INSERT INTO counters (id) SELECT md5(n::text)::uuid FROM generate_series(0, 10000) AS n;
INSERT INTO counters (id) VALUES (md5('20001')::uuid), (md5('20002')::uuid);  -- overshoot runs
SQL
durability=$(psql -d app -c "SELECT current_setting('fsync') || '/' || current_setting('synchronous_commit')")

cat > "$W/consume_hot.sql" <<'SQL'
SELECT allowed FROM entitlements.consume(md5('0')::uuid, 'api_calls');
SQL
cat > "$W/bare_hot.sql" <<'SQL'
UPDATE counters SET used = used + 1 WHERE id = md5('0')::uuid AND used < 1000000000000;
SQL
cat > "$W/consume_spread.sql" <<'SQL'
\set n random(1, 10000)
SELECT allowed FROM entitlements.consume(md5(:n::text)::uuid, 'api_calls');
SQL
cat > "$W/bare_spread.sql" <<'SQL'
\set n random(1, 10000)
UPDATE counters SET used = used + 1 WHERE id = md5(:n::text)::uuid AND used < 1000000000000;
SQL
# The common pattern: read, decide in the app, then write (two statements, no lock between).
cat > "$W/two_step_hot.sql" <<SQL
SELECT used < :limit AS room FROM counters WHERE id = md5(:id::text)::uuid \gset
\if :room
UPDATE counters SET used = used + 1 WHERE id = md5(:id::text)::uuid;
\endif
SQL
pgbench() { "$PG_BIN/pgbench" -n -M prepared -h 127.0.0.1 -p "$PORT" -U postgres "$@" app; }
tps() { sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$1" | head -1; }

# Warm plans and caches: every workspace's counter row exists and its rules are in the
# decision cache before the first round, so that each round measures the steady state.
psql -d app -c "SELECT count(*) FROM generate_series(0, 10000) AS n,
                     LATERAL entitlements.consume(md5(n::text)::uuid, 'api_calls') AS c" >/dev/null
pgbench -c "$CLIENTS" -j "$THREADS" -T 3 -f "$W/consume_spread.sql" >/dev/null
# The workloads interleaved round by round (ROUNDS), so background load on this shared
# machine hits them alike. The table shows each workload's median over the rounds; the goal is
# judged on the median of the per-round ratios (consume beside the bare UPDATE run right after
# it, or right before it in even rounds: on this shared machine the order of two runs can
# favour one of them, so the order alternates and ROUNDS should be even), which one disturbed
# round cannot swing. The cluster runs with the audit off, so that
# neither side stores an audit row; consume_spread_audited is the spread workload with every
# consume recorded in the audit trail (pg_entitlements.audit = all).
ROUNDS=${ROUNDS:-6}
declare -A TPS ROUND_TPS
for round in $(seq "$ROUNDS"); do
    order="consume_hot bare_hot consume_spread bare_spread consume_spread_audited"
    if [ $((round % 2)) = 0 ]; then order="bare_hot consume_hot bare_spread consume_spread consume_spread_audited"; fi
    for run in $order; do
        script=$run options=""
        if [ "$run" = consume_spread_audited ]; then script=consume_spread options="-c pg_entitlements.audit=all"; fi
        PGOPTIONS="$options" pgbench -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -f "$W/$script.sql" >"$W/$run.out" 2>&1
        t=$(tps "$W/$run.out")
        ROUND_TPS[$run]="${ROUND_TPS[$run]:-} $t"
        echo "[bench] round $round $run: $t tps"
    done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for run in "${!ROUND_TPS[@]}"; do TPS[$run]=$(echo "${ROUND_TPS[$run]}" | median); done
pgbench -c "$CLIENTS" -j "$THREADS" -T "$SECONDS_PER_RUN" -D id=0 -D limit=1000000000000 \
    -f "$W/two_step_hot.sql" >"$W/two_step.out" 2>&1
TPS[two_step_hot]=$(tps "$W/two_step.out")
echo "[bench] two_step_hot: ${TPS[two_step_hot]} tps"

# Overshoot: a fresh counter with a limit of OVERSHOOT_LIMIT, CLIENTS clients each trying
# 2 x OVERSHOOT_LIMIT / CLIENTS times (twice the limit in all).
per_client=$(( 2 * OVERSHOOT_LIMIT / CLIENTS ))
psql -d app -c "SELECT entitlements.set_limit_override(md5('overshoot')::uuid, 'api_calls', $OVERSHOOT_LIMIT)" >/dev/null
cat > "$W/consume_limit.sql" <<'SQL'
SELECT allowed FROM entitlements.consume(md5('overshoot')::uuid, 'api_calls');
SQL
pgbench -c "$CLIENTS" -j "$THREADS" -t "$per_client" -f "$W/consume_limit.sql" >/dev/null 2>&1
consume_used=$(psql -d app -c "SELECT used FROM entitlements.usage(md5('overshoot')::uuid, 'api_calls')")
psql -d app -c "UPDATE counters SET used = 0 WHERE id IN (md5('20001')::uuid, md5('20002')::uuid)"
cat > "$W/bare_limit.sql" <<SQL
UPDATE counters SET used = used + 1 WHERE id = md5('20001')::uuid AND used < $OVERSHOOT_LIMIT;
SQL
pgbench -c "$CLIENTS" -j "$THREADS" -t "$per_client" -f "$W/bare_limit.sql" >/dev/null 2>&1
bare_used=$(psql -d app -c "SELECT used FROM counters WHERE id = md5('20001')::uuid")
pgbench -c "$CLIENTS" -j "$THREADS" -t "$per_client" -D id=20002 -D limit="$OVERSHOOT_LIMIT" \
    -f "$W/two_step_hot.sql" >/dev/null 2>&1
two_step_used=$(psql -d app -c "SELECT used FROM counters WHERE id = md5('20002')::uuid")
echo "[bench] used after $((per_client * CLIENTS)) attempts at a limit of $OVERSHOOT_LIMIT: consume $consume_used, bare $bare_used, two-step $two_step_used"

# In-server per-call cost of has_entitlement: a metered feature beside a boolean one.
# The workspace is computed from g (the same one every row), so the call is made for every row
# rather than once as a constant filter; both figures include that md5.
percall() {
    psql -d app -c "SELECT entitlements.consume(md5('percall0')::uuid, 'api_calls', 5)" >/dev/null
    psql -d app -c "
        SELECT round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / 20000, 2)
          FROM (SELECT clock_timestamp() AS t0) s,
               LATERAL (SELECT count(*) FROM generate_series(1, 20000) g
                         WHERE entitlements.has_entitlement(md5('percall' || (g * 0)::text)::uuid, '$1')) c"
}
percall ccp-01 >/dev/null  # warm
boolean_us=$(percall ccp-01)
metered_us=$(percall api_calls)
echo "[bench] has_entitlement per call: boolean $boolean_us us, metered $metered_us us"

"$PY" - "$CLIENTS" "$SECONDS_PER_RUN" "$durability" "${TPS[consume_hot]}" "${TPS[bare_hot]}" \
    "${TPS[consume_spread]}" "${TPS[bare_spread]}" "${TPS[two_step_hot]}" "$OVERSHOOT_LIMIT" \
    "$((per_client * CLIENTS))" "$consume_used" "$bare_used" "$two_step_used" "$boolean_us" "$metered_us" \
    "${TPS[consume_spread_audited]}" "$ROUNDS" "${ROUND_TPS[consume_hot]}" "${ROUND_TPS[bare_hot]}" \
    "${ROUND_TPS[consume_spread]}" "${ROUND_TPS[bare_spread]}" <<'PY'
import statistics, sys
(clients, secs, durability, ch, bh, cs, bs, two, limit, attempts, cu, bu, tu, bus, mus, csa, rounds,
 rch, rbh, rcs, rbs) = sys.argv[1:]
per_round = lambda a, b: [float(x) / float(y) for x, y in zip(a.split(), b.split())]
hot_rounds, spread_rounds = per_round(rch, rbh), per_round(rcs, rbs)
f = lambda x: f"{float(x):,.0f}"
hot, spread = statistics.median(hot_rounds), statistics.median(spread_rounds)
show = lambda rs: ", ".join(f"{r:.2f}" for r in rs)
met = lambda r: "met" if r >= 0.8 else "**not met**"
print(f"""
| workload ({clients} clients, {rounds} interleaved rounds of {secs} s, fsync/synchronous_commit {durability}) | transactions/s (median of rounds) | vs bare UPDATE |
|---|---|---|
| `consume`, one hot workspace | {f(ch)} | {float(ch)/float(bh):.2f}x |
| bare `UPDATE counters SET used = used + 1 WHERE id = $1 AND used < $2`, one row | {f(bh)} | 1.00x |
| `consume`, 10,000 workspaces | {f(cs)} | {float(cs)/float(bs):.2f}x |
| bare UPDATE, 10,000 rows | {f(bs)} | 1.00x |
| `consume`, 10,000 workspaces, every call audited | {f(csa)} | {float(csa)/float(bs):.2f}x |
| two statements (`SELECT used`, then `UPDATE`), one hot row | {f(two)} | {float(two)/float(bh):.2f}x |

Overshoot, {attempts} attempts against a limit of {limit}: `consume` ended at {cu}
(overshoot {int(cu) - int(limit)}), the bare conditional UPDATE at {bu} (overshoot
{int(bu) - int(limit)}), the two-statement pattern at {tu} (overshoot {int(tu) - int(limit)}).

`has_entitlement` in-server, per call: {bus} µs on a boolean feature (from the cache), {mus} µs
on a metered one (its rules and limit from the cache, its counter read).

consume / bare UPDATE in each round (consume ran first in odd rounds, the bare UPDATE in even
ones): hot {show(hot_rounds)}; spread {show(spread_rounds)}.

Goal (consume at least 0.8x the bare UPDATE, with zero overshoot), on the median of the
per-round ratios: hot {hot:.2f}x, {met(hot)}; spread {spread:.2f}x, {met(spread)}; consume's
overshoot {int(cu) - int(limit)}.
""")
PY
