#!/usr/bin/env bash
# Installs what building and testing pg_entitlements needs, only what is missing:
# PostgreSQL 15 with its server headers, clang, sudo, cargo-pgrx 0.18.1 (initialised against
# the system PostgreSQL 15), and the Python packages of the Stripe cross-check.
# Idempotent; fast when everything is there.
set -euo pipefail

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
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian package starts a cluster of its own on 5432; ours are separate and need not it.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q '^15 main .* online'; then
    pg_ctlcluster 15 main stop || true
fi

export PATH="$HOME/.cargo/bin:$PATH"
if [ "$(cargo pgrx --version 2>/dev/null | awk '{print $2}')" != "$PGRX_VERSION" ]; then
    say "installing cargo-pgrx $PGRX_VERSION (a few minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi
if ! grep -qs "^pg15 *= *\"$PG_CONFIG\"" "$HOME/.pgrx/config.toml"; then
    say "cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi

# Stripe's official SDK, the independent cross-check of signature verification.
if ! python3 -c 'import stripe, psycopg; assert stripe.VERSION == "16.1.0"' 2>/dev/null; then
    say "installing Python packages: stripe, psycopg"
    python3 -m pip install --quiet --disable-pip-version-check 'stripe==16.1.0' 'psycopg[binary]>=3.1,<4'
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
