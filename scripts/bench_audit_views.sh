#!/usr/bin/env bash
# The audit views at scale, for docs/BENCHMARKS.md ("Audit views"): ROWS audit rows (default
# 10,000,000) over the last 30 days in day partitions, with their rollups, on a cluster with
# PostgreSQL's default durability; then the median time of each view for one workspace and
# in full, beside the same summary computed from the raw rows.
# The rows are loaded the way a restore loads them (a superuser filling an empty trail),
# because storing 10 million checks through the writer would take minutes of checks; the
# rollups are built by the same grouping the writer applies. The distribution: WORKSPACES
# workspaces (default 1,000) drawn with a skew (a few busy, many quiet), FEATURES of the
# catalog's features per workspace (default 5), check times uniform over 30 days, 90%
# allowed, 95% cached.
#   ROWS=10000000 RUNS=7 bash scripts/bench_audit_views.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/pg_env.sh
PY=$PWD/.run/venv/bin/python  # made by scripts/setup.sh
[ -x "$PY" ] || bash scripts/setup.sh
ROWS=${ROWS:-10000000}
WORKSPACES=${WORKSPACES:-1000}
FEATURES=${FEATURES:-5}
RUNS=${RUNS:-7}
DIR=$PWD/.run/bench-audit-views
PORT=${BENCH_PORT:-$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

if [ "${SKIP_INSTALL:-}" != 1 ]; then
    bash scripts/install.sh --release >/dev/null
fi
trap 'bash scripts/cluster.sh stop "$DIR"' EXIT
# Default durability: cluster.sh turns fsync off only with CLUSTER_FAST=1.
CLUSTER_FAST= bash scripts/cluster.sh start "$DIR" "$PORT" "max_connections = 20" >/dev/null
psql() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE app"
psql -d app -c "CREATE EXTENSION pg_entitlements"

t0=$(date +%s)
psql -d app <<SQL
SELECT entitlements.create_audit_partitions((now() AT TIME ZONE 'UTC')::date - 31, 33);
-- Each workspace checks FEATURES features of the catalog, picked by its number.
INSERT INTO entitlements.entitlement_checks
       (checked_at, workspace_id, user_id, feature, result, reason, cached, user_agent)
SELECT now() - random() * interval '30 days',
       md5('ws' || w)::uuid,
       'user-' || (w * 7 + k % 5),
       a.fs[1 + (w + k % $FEATURES) % pg_catalog.array_length(a.fs, 1)],
       ok,
       CASE WHEN NOT ok THEN (ARRAY['TIER_INSUFFICIENT', 'SUBSCRIPTION_CANCELED', 'LIMIT_EXCEEDED'])[1 + k % 3] END,
       random() < 0.95,
       'bench'
  FROM (SELECT array_agg(feature ORDER BY feature) AS fs FROM entitlements.features) a,
       (SELECT g AS k, floor($WORKSPACES * random() ^ 2)::int AS w, random() < 0.9 AS ok
          FROM generate_series(1, $ROWS) g) s;
-- The rollups, grouped as the writer groups a batch.
INSERT INTO entitlements.entitlement_check_rollups
       (workspace_id, feature, hour, result, cached, reason, checks, last_checked_at)
SELECT workspace_id, feature, date_trunc('hour', checked_at, 'UTC'), result, cached, reason,
       count(*), max(checked_at)
  FROM entitlements.entitlement_checks
 GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO entitlements.entitlement_check_daily
       (workspace_id, day, result, cached, reason, checks, last_checked_at)
SELECT workspace_id, date_trunc('day', hour, 'UTC'), result, cached, reason, sum(checks), max(last_checked_at)
  FROM entitlements.entitlement_check_rollups
 GROUP BY 1, 2, 3, 4, 5;
VACUUM ANALYZE;
SQL
load_s=$(( $(date +%s) - t0 ))
rows=$(psql -d app -At -c "SELECT count(*) FROM entitlements.entitlement_checks")
groups=$(psql -d app -At -c "SELECT count(*) FROM entitlements.entitlement_check_rollups")
days=$(psql -d app -At -c "SELECT count(*) FROM entitlements.entitlement_check_daily")
busy=$(psql -d app -At -c "SELECT workspace_id FROM entitlements.entitlement_check_rollups GROUP BY 1 ORDER BY sum(checks) DESC LIMIT 1")
busy_rows=$(psql -d app -At -c "SELECT count(*) FROM entitlements.entitlement_checks WHERE workspace_id = '$busy'")

# The same summary computed from the raw rows: what the views cost without the rollups.
RAW_SUMMARY="SELECT workspace_id, count(*), count(*) FILTER (WHERE result), count(*) FILTER (WHERE NOT result), count(*) FILTER (WHERE cached)
  FROM entitlements.entitlement_checks WHERE checked_at > now() - interval '30 days' GROUP BY workspace_id"
RAW_DENIALS="SELECT workspace_id, reason, count(*), max(checked_at)
  FROM entitlements.entitlement_checks WHERE NOT result AND checked_at > now() - interval '30 days' GROUP BY 1, 2"

# Median of RUNS executions in ms, timed by the server (EXPLAIN ANALYZE's execution time plus
# planning), after one warm-up run.
median_ms() {
    local q=$1 out=""
    for _ in $(seq 0 "$RUNS"); do
        out="$out $(psql -d app -At -c "EXPLAIN (ANALYZE, FORMAT JSON) $q" \
            | "$PY" -c 'import json,sys; p=json.load(sys.stdin)[0]; print(p["Planning Time"] + p["Execution Time"])')"
    done
    echo "$out" | tr ' ' '\n' | tail -n +3 | sort -g | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)]}'
}
one_summary=$(median_ms "SELECT * FROM entitlements.entitlement_checks_summary WHERE workspace_id = '$busy'")
all_summary=$(median_ms "SELECT * FROM entitlements.entitlement_checks_summary")
one_denials=$(median_ms "SELECT * FROM entitlements.denials_by_reason WHERE workspace_id = '$busy'")
all_denials=$(median_ms "SELECT * FROM entitlements.denials_by_reason")
raw_one=$(median_ms "SELECT * FROM ($RAW_SUMMARY) s WHERE workspace_id = '$busy'")
raw_all=$(median_ms "$RAW_SUMMARY")
raw_denials=$(median_ms "$RAW_DENIALS")

echo "audit views: $rows rows ($WORKSPACES workspaces, $FEATURES features each, 30 days; loaded in ${load_s} s), $groups hourly and $days daily rollup rows; busiest workspace $busy_rows rows"
echo "median of $RUNS runs, ms (planning + execution, server side):"
printf "%-46s %8s\n" "entitlement_checks_summary, one workspace" "$one_summary"
printf "%-46s %8s\n" "entitlement_checks_summary, in full" "$all_summary"
printf "%-46s %8s\n" "denials_by_reason, one workspace" "$one_denials"
printf "%-46s %8s\n" "denials_by_reason, in full" "$all_denials"
printf "%-46s %8s\n" "raw rows: summary, one workspace" "$raw_one"
printf "%-46s %8s\n" "raw rows: summary, in full" "$raw_all"
printf "%-46s %8s\n" "raw rows: denials, in full" "$raw_denials"
