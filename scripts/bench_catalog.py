"""Catalog edits at scale: with 100,000 registered workspaces, how long an admin's edit of the
catalog takes (a description, a new feature, a changed minimum tier), each in its own
transaction, committed. The matrix is a view over the resolver, so no edit touches the
workspaces; the cache is invalidated by the commit. Default durability (fsync and
synchronous_commit on). Writes the "catalog" section of docs/BENCHMARKS.md. Run with
`make bench` (or scripts/bench.sh catalog).
"""
import statistics, time
from benchlib import cluster, machine, write_section
import psycopg

WORKSPACES = 100_000
RUNS = 7

EDITS = [
    ("edit one feature's description", [
        "UPDATE entitlements.features SET description = 'Data export ' || {i} WHERE feature = 'ccp-05'",
    ]),
    ("edit one tier's description", [
        "UPDATE entitlements.tiers SET description = 'Pro plan ' || {i} WHERE tier = 'pro'",
    ]),
    ("add a feature", [
        "INSERT INTO entitlements.features VALUES ('bench-{i}', 'pro_plus', 'added')",
    ]),
    ("change a feature's minimum tier", [
        "UPDATE entitlements.features SET min_tier = CASE WHEN {i} % 2 = 0 THEN 'pro_plus' ELSE 'pro' END WHERE feature = 'ccp-05'",
    ]),
]


def main():
    with cluster("catalog") as (dsn, _port):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_entitlements")
            t = time.perf_counter()
            c.execute(f"SELECT entitlements.register_workspace(gen_random_uuid()) FROM generate_series(1, {WORKSPACES})")
            register_s = time.perf_counter() - t
            n = c.execute("SELECT count(*) FROM entitlements.workspaces").fetchone()[0]
            assert n == WORKSPACES, n
            rows = []
            for label, stmts in EDITS:
                times = []
                for i in range(RUNS):
                    t = time.perf_counter()
                    with c.transaction():
                        for s in stmts:
                            c.execute(s.format(i=i))
                    times.append((time.perf_counter() - t) * 1000)
                rows.append((label, statistics.median(times), max(times)))
            # The matrix follows at once: one workspace's row for the edited feature.
            matrix = c.execute("SELECT count(*) FROM entitlements.entitlements e JOIN (SELECT workspace_id FROM entitlements.workspaces LIMIT 1) w USING (workspace_id)").fetchone()[0]
    body = [
        "## Catalog edits at scale",
        "",
        f"`scripts/bench.sh catalog` (release build, default durability, {machine()}): with "
        f"{WORKSPACES:,} registered workspaces (registering them took {register_s:.1f} s), each edit in its own "
        f"committed transaction, {RUNS} runs.",
        "",
        "| edit | median ms | max ms | goal |",
        "|---|---:|---:|---|",
    ]
    goals = {"edit one feature's description": "< 50", "edit one tier's description": "< 50",
             "add a feature": "< 200", "change a feature's minimum tier": "< 200"}
    for label, med, mx in rows:
        body.append(f"| {label} | **{med:.1f}** | {mx:.1f} | {goals[label]} |")
    body += ["", f"- The matrix (`entitlements.entitlements`) is a view over the resolver: no edit writes a "
             f"row per workspace, and a workspace's matrix after the edits has {matrix} rows, decided when read."]
    write_section("catalog", "\n".join(body))
    for r in rows:
        print(f"{r[0]:40s} median {r[1]:.1f} ms, max {r[2]:.1f} ms")


if __name__ == "__main__":
    main()
