#!/usr/bin/env bash
# The demo: install what is missing, build and install the extension, and run a local
# PostgreSQL 15 cluster (as the postgres OS user, loopback, data in .run/demo).
#   demo.sh          reuse the demo cluster if there is one (start it if stopped; its data
#                    stays), else create it, create the extension and walk one workspace from
#                    free to pro
#   demo.sh --reset  stop and delete the demo cluster, then create it anew
# Leaves the cluster running and prints the connection string. `make stop` stops it.
# DEMO_PORT (default 54815) is the port of a new cluster; PG_ROOT selects a private copy of
# the PostgreSQL install (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh
. scripts/pg_env.sh  # the system PostgreSQL 15, or PG_CONFIG / PG_ROOT when set
PORT=${DEMO_PORT:-54815}
DIR=$PWD/.run/demo
as_pg() { sudo -u postgres -- "$@"; }

if [ "${1:-}" = "--reset" ]; then
    echo "[demo] deleting the demo cluster in .run/demo"
    bash scripts/cluster.sh stop "$DIR"
    rm -rf "$DIR"
fi

echo "[demo] building and installing pg_entitlements into $PG_CONFIG"
# Atomically: a demo cluster still running from an earlier `make run` keeps serving.
bash scripts/install.sh >/dev/null

if [ -f "$DIR/data/PG_VERSION" ]; then
    # An existing cluster keeps its data and its port (the last `port =` line of its config).
    PORT=$(sed -n 's/^port = \([0-9]*\).*/\1/p' "$DIR/data/postgresql.conf" | tail -1)
    if [ -n "${DEMO_PORT:-}" ] && [ "$DEMO_PORT" != "$PORT" ]; then
        echo "[demo] the demo cluster listens on $PORT, not DEMO_PORT=$DEMO_PORT: make reset recreates it there"
    fi
    if as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
        echo "[demo] the demo cluster is already running on 127.0.0.1:$PORT (stop and run again to load a new build)"
    else
        echo "[demo] starting the demo cluster on 127.0.0.1:$PORT (data kept in .run/demo)"
        as_pg "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
    fi
    URL="postgresql://postgres@127.0.0.1:$PORT/demo"
else
    echo "[demo] creating the demo cluster: PostgreSQL 15 on 127.0.0.1:$PORT (data in .run/demo)"
    bash scripts/cluster.sh start "$DIR" "$PORT"
    URL="postgresql://postgres@127.0.0.1:$PORT/demo"
    "$PG_BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE demo"
    "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 "$URL" -f scripts/demo.sql
fi
cat <<EOT

The demo cluster is running. Go on with:
    psql "$URL"
Stop it with: make stop (its data stays for the next make run); start over with: make reset
EOT
