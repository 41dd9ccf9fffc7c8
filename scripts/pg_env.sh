# Sourced by the scripts after scripts/setup.sh: which PostgreSQL they work with, decided in
# one place. PG_CONFIG names it; when unset, the pg_config of the private copy in PG_ROOT
# (scripts/setup.sh makes it) or, without PG_ROOT, of the system's PostgreSQL 15. Every other
# path comes from asking that pg_config. Exported, so the tests in tests/ use the same one.
: "${PG_CONFIG:=${PG_ROOT:-}/usr/lib/postgresql/15/bin/pg_config}"
export PG_CONFIG
PG_BIN=$("$PG_CONFIG" --bindir)
