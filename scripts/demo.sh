#!/usr/bin/env bash
# The demo: install what is missing, build and install the extension, start a local
# PostgreSQL 15 cluster (as the postgres OS user, loopback, data in .run/demo), create the
# extension and walk one workspace from free to pro. Leaves the cluster running and prints
# the connection string. `make stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh

PG_BIN=${PG_ROOT:-}/usr/lib/postgresql/15/bin
PORT=${DEMO_PORT:-54815}
DIR=$PWD/.run/demo

echo "[demo] building and installing pg_entitlements"
cargo pgrx install --pg-config "$PG_BIN/pg_config" >/dev/null
echo "[demo] starting PostgreSQL 15 on 127.0.0.1:$PORT (data in .run/demo)"
bash scripts/cluster.sh start "$DIR" "$PORT"
URL="postgresql://postgres@127.0.0.1:$PORT/demo"
"$PG_BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE demo"
"$PG_BIN/psql" -X -v ON_ERROR_STOP=1 "$URL" -f scripts/demo.sql
cat <<EOT

The demo cluster is running. Go on with:
    psql "$URL"
Stop it with: make stop
EOT
