"""Per-call cost of a check in-server: cache hits, the uncached path, and the floor.

All on one cluster in one run: an inlined trivial SQL function over the same series is the
floor; each figure is the time above it divided by the number of calls. Writes the "cache"
section of docs/BENCHMARKS.md. Run with `make bench` (or scripts/bench.sh cache).
"""
import sys
from benchlib import cluster, timed, machine, write_section
import psycopg

N_CACHED = 1_000_000
N_UNCACHED = 100_000
WS = "0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01"


def series(n, predicate):
    return f"SELECT count(*) FILTER (WHERE {predicate}) FROM generate_series(1, {n})"


def main():
    with cluster("cache") as (dsn, _port):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_entitlements")
            c.execute(f"SELECT entitlements.sync_billing_state('{WS}', 'pro', 'active')")
            c.execute(f"INSERT INTO entitlements.workspace_members VALUES ('{WS}', 'alice')")
            c.execute("CREATE ROLE app_user")
            c.execute("GRANT entitlements_app TO app_user")
            c.execute("CREATE SCHEMA bench")
            # inlined by the planner: the cost of the series and the FILTER itself
            c.execute("CREATE FUNCTION bench.trivial(uuid, text) RETURNS boolean LANGUAGE sql IMMUTABLE "
                      "AS 'SELECT $1 IS NOT NULL AND $2 IS NOT NULL'")
            has = f"entitlements.has_entitlement('{WS}'::uuid, 'ccp-05')"
            chk = f"(entitlements.entitlement_check('{WS}'::uuid, 'ccp-05')).enabled"
            floor = f"bench.trivial('{WS}'::uuid, 'ccp-05')"

            t_floor = timed(c, series(N_CACHED, floor))
            t_floor_u = timed(c, series(N_UNCACHED, floor))
            rows = []

            def per_call(t, t0, n):
                return (t - t0) / n * 1e6

            t = timed(c, series(N_CACHED, has))
            has_hit = per_call(t, t_floor, N_CACHED)
            t = timed(c, series(N_CACHED, chk))
            chk_hit = per_call(t, t_floor, N_CACHED)
            c.execute("SET pg_entitlements.cache_enabled = off")
            t = timed(c, series(N_UNCACHED, has), runs=3)
            has_miss = per_call(t, t_floor_u, N_UNCACHED)
            t = timed(c, series(N_UNCACHED, chk), runs=3)
            chk_miss = per_call(t, t_floor_u, N_UNCACHED)
            c.execute("RESET pg_entitlements.cache_enabled")
            # a non-privileged member, as an RLS policy would run it
            c.execute("SET ROLE app_user")
            c.execute("SET pg_entitlements.user_id = 'alice'")
            t = timed(c, series(N_UNCACHED, has), runs=3)
            has_member = per_call(t, t_floor_u, N_UNCACHED)
            c.execute("RESET ROLE")
            stats = c.execute("SELECT hits, misses, hit_rate FROM entitlements.cache_statistics()").fetchone()
            mem = c.execute("SELECT bytes, bytes_per_entry FROM entitlements.cache_shared_memory()").fetchone()
            cap = c.execute("SELECT capacity FROM entitlements.cache_statistics()").fetchone()[0]

    body = f"""
## Decision cache

Command: `make bench` (or `scripts/bench.sh cache`), which runs `scripts/bench_cache.py` against a
release build on a fresh cluster. Machine: {machine()}, shared with other work, so read the
ratios rather than the absolute figures. Every row comes from the same run on the same cluster.

| in-server, per call, above the floor | µs per call |
|---|---|
| floor: inlined trivial SQL function, `count(*) FILTER (WHERE …) FROM generate_series(1, {N_CACHED:,})` | {t_floor / N_CACHED * 1e6:.3f} (absolute) |
| `has_entitlement`, cache hit (superuser) | **{has_hit:.3f}** |
| `entitlement_check(...).enabled`, cache hit (superuser; audit on: the record is queued) | **{chk_hit:.3f}** |
| `has_entitlement`, cache off (`pg_entitlements.cache_enabled = off`) | {has_miss:.3f} |
| `entitlement_check(...).enabled`, cache off | {chk_miss:.3f} |
| `has_entitlement` as a non-privileged member (identity from the GUC, membership remembered per backend) | {has_member:.3f} |

- A cache hit costs {has_hit:.2f} µs (`has_entitlement`) and {chk_hit:.2f} µs (`entitlement_check`) above the
  floor. Goal: at most 1 µs ({'met' if max(has_hit, chk_hit) <= 1 else '**not met**'}).
- Uncached over cached: {has_miss / has_hit:.0f}× (`has_entitlement`) and {chk_miss / chk_hit:.0f}× (`entitlement_check`).
  Goal: at least 10× ({'met' if min(has_miss / has_hit, chk_miss / chk_hit) >= 10 else '**not met**'}).
- Shared memory: {mem[1]:.1f} bytes per entry at the default `cache_size` ({cap:,} entries, {mem[0] / 1048576:.1f} MiB in all).
- Cache counters after the run: {stats[0]:,} hits, {stats[1]:,} misses.
"""
    write_section("cache", body)
    print(body)


if __name__ == "__main__":
    sys.exit(main())
