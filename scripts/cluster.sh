#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for pg_entitlements, run as the `postgres` OS user (initdb
# refuses root), listening on loopback only, with the extension preloaded. Default durability
# unless CLUSTER_FAST=1 (tests only).
#   cluster.sh start DIR PORT [extra postgresql.conf lines...]
#   cluster.sh stop DIR
# PG_CONFIG (or PG_ROOT) selects the PostgreSQL install (scripts/pg_env.sh).
set -euo pipefail
. "$(dirname "$0")/pg_env.sh"
cmd=$1 dir=$(realpath -m "$2")

as_pg() { sudo -u postgres -- "$@"; }

case $cmd in
start)
    port=$3; shift 3
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    bash "$(dirname "$0")/pg_can_reach.sh" "$dir"
    chown postgres: "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$dir'"
        echo "shared_preload_libraries = 'pg_entitlements'"
        # PostgreSQL's default durability (fsync, synchronous_commit) unless the caller
        # asks for speed over crash safety: the test suite does (CLUSTER_FAST=1), the demo
        # and the benchmarks never do, because users run with the defaults.
        if [ "${CLUSTER_FAST:-}" = 1 ]; then echo "fsync = off"; fi
        for line in "$@"; do echo "$line"; done
    } >> "$dir/data/postgresql.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start >/dev/null
    ;;
stop)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
    ;;
*) echo "usage: cluster.sh start DIR PORT [conf...] | stop DIR" >&2; exit 2 ;;
esac
