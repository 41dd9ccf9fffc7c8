"""Shared pieces of the benchmark scripts: a throwaway cluster and the BENCHMARKS.md writer."""
import contextlib, os, re, socket, statistics, subprocess, time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def cluster(name, *conf):
    """A fresh cluster (scripts/cluster.sh), stopped when the block ends, also on error."""
    d = REPO / ".run" / f"bench-{name}"
    port = free_port()
    subprocess.run(["bash", str(REPO / "scripts/cluster.sh"), "start", str(d), str(port), *conf], check=True)
    try:
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres", port
    finally:
        subprocess.run(["bash", str(REPO / "scripts/cluster.sh"), "stop", str(d)], check=False)


def timed(conn, sql, runs=5):
    """Median wall time of `sql` over `runs` runs (after one warm-up), in seconds."""
    conn.execute(sql)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        conn.execute(sql).fetchall()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine():
    cpu = "unknown cpu"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {cpu}"


def write_section(name, body):
    """Replace the section between <!-- name:begin --> and <!-- name:end --> in docs/BENCHMARKS.md."""
    path = REPO / "docs" / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
