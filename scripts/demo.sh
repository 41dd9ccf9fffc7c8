#!/usr/bin/env bash
# The demo: install what is missing, build and install the extension, start a local
# PostgreSQL 15 cluster (as the postgres OS user, loopback, data in .run/demo), create the
# extension and walk one workspace from free to pro. Leaves the cluster running and prints
# the connection string. `make stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
. scripts/pg_env.sh  # the system PostgreSQL 15, or PG_CONFIG / PG_ROOT when set
PORT=${DEMO_PORT:-54815}
DIR=$PWD/.run/demo

echo "[demo] building and installing pg_entitlements into $PG_CONFIG"
# Atomically: a demo cluster still running from an earlier `make run` keeps serving.
bash scripts/install.sh >/dev/null
echo "[demo] starting PostgreSQL 15 on 127.0.0.1:$PORT (data in .run/demo)"
# The audit writer serves one database, named here (docs/AUDIT.md).
bash scripts/cluster.sh start "$DIR" "$PORT" "pg_entitlements.audit_database = 'demo'"
URL="postgresql://postgres@127.0.0.1:$PORT/demo"
"$PG_BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE demo"
"$PG_BIN/psql" -X -v ON_ERROR_STOP=1 "$URL" -f scripts/demo.sql
cat <<EOT

The demo cluster is running. Go on with:
    psql "$URL"
Stop it with: make stop
EOT
