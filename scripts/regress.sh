#!/usr/bin/env bash
# The pg_test/ scenarios (pg_test/sql/*.sql against pg_test/expected/*.out) on a fresh
# cluster, with the installed extension. Diffs land in .run/regress/regression.diffs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/pg_env.sh
PG_REGRESS=$(dirname "$("$PG_CONFIG" --pgxs)")/../test/regress/pg_regress
DIR=$PWD/.run/regress-cluster
PORT=${REGRESS_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
OUT=$PWD/.run/regress
trap 'bash scripts/cluster.sh stop "$DIR"' EXIT
bash scripts/cluster.sh start "$DIR" "$PORT"
rm -rf "$OUT" && mkdir -p "$OUT"
tests=$(cd pg_test/sql && ls *.sql | sed 's/\.sql$//' | sort)
"$PG_REGRESS" --bindir="$PG_BIN" --host=127.0.0.1 --port="$PORT" --user=postgres \
    --inputdir=pg_test --outputdir="$OUT" --dbname=pg_entitlements_regress $tests || {
    cat "$OUT/regression.diffs" 2>/dev/null | head -100
    exit 1
}
