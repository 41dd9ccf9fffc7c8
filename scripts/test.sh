#!/usr/bin/env bash
# Every test of pg_entitlements, in order of cost:
#   1. cargo pgrx test: the pure unit tests and the #[pg_test]s (in-server, rolled back);
#   2. scripts/install.sh, then the pg_test/ regression scenarios against a fresh cluster;
#   3. the tests/ integration tests over real connections (each starts its own cluster);
#   4. the Stripe SDK cross-check (python).
# Installs whatever is missing first.
#
# Tests install builds, and `cargo pgrx test` installs its build by writing over the installed
# library in place, which crashes any server running from that install (docs/OPERATIONS.md).
# So by default everything here works on a private copy of PostgreSQL in .run/pgroot, never
# on the system's. PG_ROOT names another private copy (scripts/setup.sh makes it), PG_CONFIG
# any PostgreSQL 15 (scripts/pg_env.sh); PGRX_HOME, when set, must name the same pg_config.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
RUN=$PWD/.run
mkdir -p "$RUN"
if [ -z "${PG_CONFIG:-}" ] && [ -z "${PG_ROOT:-}" ]; then
    export PG_ROOT=$RUN/pgroot
fi
bash scripts/setup.sh
. scripts/pg_env.sh
bash scripts/pg_can_reach.sh "$PG_BIN"  # the postgres OS user runs the servers from there

# `cargo pgrx test` builds against and installs into the pg_config that $PGRX_HOME/config.toml
# names for pg15.
pgrx_config=$(printf '[configs]\npg15 = "%s"\n' "$PG_CONFIG")
if [ -z "${PGRX_HOME:-}" ]; then
    export PGRX_HOME=$RUN/pgrx-home
    mkdir -p "$PGRX_HOME"
    # Rewritten only when it changes: pgrx's build reruns (and rebuilds all) when it is touched.
    if [ "$(cat "$PGRX_HOME/config.toml" 2>/dev/null)" != "$pgrx_config" ]; then
        printf '%s\n' "$pgrx_config" > "$PGRX_HOME/config.toml"
    fi
elif ! grep -qsx "pg15 *= *\"$PG_CONFIG\"" "$PGRX_HOME/config.toml"; then
    echo "PGRX_HOME=$PGRX_HOME: its config.toml must say pg15 = \"$PG_CONFIG\"," \
        "else cargo pgrx test installs into another PostgreSQL" >&2
    exit 1
fi
echo "[test] PostgreSQL: $PG_CONFIG (PGRX_HOME=$PGRX_HOME)"
# Test clusters trade crash safety for speed (fsync = off); benchmarks and the demo do not.
export CLUSTER_FAST=1
step() { printf '\n==== %s\n' "$*"; }

step "unit tests and #[pg_test]s (cargo pgrx test)"
# cargo pgrx test installs its build with `sudo cp`, over the installed library in place. Should
# a server be running from this install all the same, give the file a new inode first (same
# bytes, renamed over it): the in-place write then reaches no page that server runs.
so=$("$PG_CONFIG" --pkglibdir)/pg_entitlements.so
if [ -f "$so" ]; then cp -p "$so" "$so.detached.$$" && mv -f "$so.detached.$$" "$so"; fi
rm -rf "$RUN/pgrx-test"
bash scripts/pg_can_reach.sh "$RUN/pgrx-test" && chown postgres: "$RUN/pgrx-test"
cargo pgrx test pg15 --runas postgres --pgdata "$RUN/pgrx-test/data"

step "install the extension into $PG_CONFIG"
bash scripts/install.sh >/dev/null

step "pg_test/ regression scenarios (pg_regress)"
bash scripts/regress.sh

step "integration tests (tests/)"
cargo test --no-fail-fast --no-default-features --features pg15 --test "*" -- --test-threads=2

step "Stripe SDK cross-check (tests/stripe_sdk_crosscheck.py)"
# stripe==16.1.0 (its test-header generator) is installed by setup.sh into .run/venv.
"$RUN/venv/bin/python" tests/stripe_sdk_crosscheck.py

step "all tests passed"
