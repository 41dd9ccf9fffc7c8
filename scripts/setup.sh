#!/usr/bin/env bash
# Installs what building and testing pg_entitlements needs, only what is missing:
# PostgreSQL 15 with its server headers, clang, sudo, pgbouncer, cargo-pgrx 0.18.1 (initialised
# against the system PostgreSQL 15, or the PG_ROOT copy when PGRX_HOME is set too), and the
# Python packages of the Stripe cross-check and the benchmarks in a virtual environment of
# their own (.run/venv; the system's Python packages are left alone). Never stops or changes
# the machine's own PostgreSQL clusters. Idempotent; fast when everything is there.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=$REPO/.run/venv

PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PG_BIN/pg_config
PGRX_VERSION=0.18.1
say() { printf '[setup] %s\n' "$*"; }

need_apt=()
[ -x "$PG_BIN/postgres" ] || need_apt+=(postgresql-15)
[ -x "$PG_CONFIG" ] && [ -f /usr/include/postgresql/15/server/postgres.h ] || need_apt+=(postgresql-server-dev-15)
command -v clang >/dev/null || need_apt+=(clang)
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v sudo >/dev/null || need_apt+=(sudo)
# A test runs its own pgbouncer on a port of its own; the package's service, if the package
# starts one, listens elsewhere and nothing here uses or stops it.
[ -x /usr/sbin/pgbouncer ] || need_apt+=(pgbouncer)
command -v python3 >/dev/null || need_apt+=(python3)
# Debian splits venv's pip bootstrap (ensurepip) into python3-venv.
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian package may start a cluster of its own on 5432. It is the machine's, not ours: our
# clusters use ports of their own, so it is left as it is.

export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
    say "installing cargo-pgrx $PGRX_VERSION (a few minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi
# PG_ROOT=/some/dir: a private, relocated copy of the PostgreSQL 15 install, so that a second
# checkout (a git worktree) can install and test its own build of the extension without
# replacing the system one. PostgreSQL finds its share and lib dirs relative to its binaries.
if [ -n "${PG_ROOT:-}" ] && [ ! -x "$PG_ROOT/usr/lib/postgresql/15/bin/postgres" ]; then
    say "copying the PostgreSQL 15 install to $PG_ROOT"
    mkdir -p "$PG_ROOT/usr/lib/postgresql" "$PG_ROOT/usr/share/postgresql" "$PG_ROOT/usr/include"
    cp -a /usr/lib/postgresql/15 "$PG_ROOT/usr/lib/postgresql/"
    cp -a /usr/share/postgresql/15 "$PG_ROOT/usr/share/postgresql/"
    cp -a /usr/include/postgresql "$PG_ROOT/usr/include/"
fi

# cargo pgrx keeps its config in $PGRX_HOME (default ~/.pgrx). A checkout that sets both
# PGRX_HOME and PG_ROOT builds and tests against its private copy; otherwise the system install.
PGRX_PG_CONFIG=$PG_CONFIG
if [ -n "${PGRX_HOME:-}" ] && [ -n "${PG_ROOT:-}" ]; then PGRX_PG_CONFIG=$PG_ROOT$PG_CONFIG; fi
if ! grep -qs "^pg15 *= *\"$PGRX_PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    say "cargo pgrx init --pg15 $PGRX_PG_CONFIG"
    cargo pgrx init --pg15 "$PGRX_PG_CONFIG" >/dev/null
fi

# Stripe's official SDK, the independent cross-check of signature verification, and psycopg
# for it and the benchmarks: in .run/venv, which scripts/test.sh and scripts/bench*.sh use.
if ! "$VENV/bin/python" -c 'import stripe, psycopg; assert stripe.VERSION == "16.1.0"' 2>/dev/null; then
    say "installing Python packages into $VENV: stripe, psycopg"
    # --clear: a venv left broken (say its python moved) is rebuilt rather than patched.
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' 2>/dev/null || python3 -m venv --clear "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'stripe==16.1.0' 'psycopg[binary]>=3.1,<4'
fi
