#!/usr/bin/env bash
# Every test of pg_entitlements, in order of cost:
#   1. cargo pgrx test: the pure unit tests and the #[pg_test]s (in-server, rolled back);
#   2. cargo pgrx install, then the pg_test/ regression scenarios against a fresh cluster;
#   3. the tests/ integration tests over real connections (each starts its own cluster);
#   4. the Stripe SDK cross-check (python).
# Installs whatever is missing first. PG_ROOT selects a private PostgreSQL copy (setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/setup.sh

PG_BIN=${PG_ROOT:-}/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
RUN=$PWD/.run
mkdir -p "$RUN"
# Test clusters trade crash safety for speed (fsync = off); benchmarks and the demo do not.
export CLUSTER_FAST=1
step() { printf '\n==== %s\n' "$*"; }

step "unit tests and #[pg_test]s (cargo pgrx test)"
rm -rf "$RUN/pgrx-test"
bash scripts/pg_can_reach.sh "$RUN/pgrx-test" && chown postgres: "$RUN/pgrx-test"
cargo pgrx test pg15 --runas postgres --pgdata "$RUN/pgrx-test/data"

step "install the extension into $PG_CONFIG"
cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null
# The frozen install scripts of earlier versions (cargo pgrx copies only name--a--b.sql).
cp sql/pg_entitlements--*.sql "$("$PG_CONFIG" --sharedir)/extension/"

step "pg_test/ regression scenarios (pg_regress)"
bash scripts/regress.sh

step "integration tests (tests/)"
cargo test --no-fail-fast --no-default-features --features pg15 --test "*" -- --test-threads=2

step "Stripe SDK cross-check (tests/stripe_sdk_crosscheck.py)"
# stripe==16.1.0 (its test-header generator) is installed by setup.sh into .run/venv.
"$RUN/venv/bin/python" tests/stripe_sdk_crosscheck.py

step "all tests passed"
