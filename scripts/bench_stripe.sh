#!/usr/bin/env bash
# Stripe ingestion throughput, one client: signed events applied per second through
# entitlements.apply_stripe_event, beside a bare INSERT ... ON CONFLICT DO UPDATE of the same
# billing_state row, in the same run on the same cluster. Uses the build installed into the
# PostgreSQL of PG_CONFIG (scripts/pg_env.sh; for release figures install a release build
# first: scripts/install.sh --release).
#   bench_stripe.sh [seconds per measurement, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
DIR=$PWD/.run/bench-stripe
PY=$PWD/.run/venv/bin/python  # psycopg, installed there by scripts/setup.sh
[ -x "$PY" ] || bash scripts/setup.sh
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'bash scripts/cluster.sh stop "$DIR"' EXIT
bash scripts/cluster.sh start "$DIR" "$PORT"
"$PY" - "$PORT" "$SECS" <<'PY'
import hashlib, hmac, json, sys, time, uuid
import psycopg
port, secs = int(sys.argv[1]), float(sys.argv[2])
base = f"host=127.0.0.1 port={port} user=postgres"
with psycopg.connect(base + " dbname=postgres", autocommit=True) as c:
    c.execute("CREATE DATABASE app")
conn = psycopg.connect(base + " dbname=app", autocommit=True)
conn.execute("CREATE EXTENSION pg_entitlements")
secret = "whsec_bench_0123456789abcdef"
conn.execute("SELECT entitlements.add_webhook_secret(%s)", (secret,))
conn.execute("INSERT INTO entitlements.stripe_price_tiers VALUES ('price_pro', 'pro'), ('price_plus', 'pro_plus')")
ws = str(uuid.uuid4())
conn.execute("SELECT entitlements.register_workspace(%s)", (ws,))

def event(i):
    # A realistic subscription.updated (one item, basil shape), alternating tier so every
    # event really changes the row and the matrix, as the bare upsert below does.
    return json.dumps({
        "id": f"evt_bench_{i}", "object": "event", "type": "customer.subscription.updated",
        "created": 1_700_000_000 + i, "api_version": "2025-03-31.basil", "livemode": False,
        "data": {"object": {
            "id": "sub_bench", "object": "subscription", "customer": "cus_bench", "status": "active",
            "cancel_at_period_end": False, "metadata": {"workspace_id": ws},
            "items": {"object": "list", "data": [{"id": "si_bench", "object": "subscription_item",
                "current_period_start": 1_700_000_000 + i, "current_period_end": 1_702_592_000 + i,
                "price": {"id": "price_pro" if i % 2 else "price_plus", "object": "price",
                          "product": "prod_bench", "lookup_key": None}}]}}}})

def header(payload):
    t = int(time.time())
    sig = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={sig}"

def measure(step):
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < secs:
        step(n)
        n += 1
    return n / (time.perf_counter() - start)

def apply(i):
    p = event(i)
    (outcome,) = conn.execute("SELECT outcome FROM entitlements.apply_stripe_event(%s, %s)", (p, header(p))).fetchone()
    assert outcome == "applied", outcome

def bare(i):
    conn.execute("""INSERT INTO entitlements.billing_state AS b (workspace_id, tier, status)
                    VALUES (%s, %s, 'active')
                    ON CONFLICT (workspace_id) DO UPDATE SET tier = EXCLUDED.tier, status = EXCLUDED.status""",
                 (ws, "pro" if i % 2 else "pro_plus"))

measure(bare)  # warm-up: plans, caches
for i in range(200):  # and apply's own statements, planned on first use
    apply(5_000_000 + i)
bare_rate = measure(bare)
stripe_rate = measure(lambda i: apply(10_000_000 + i))
print(f"bare upsert:        {bare_rate:8.0f} /s")
print(f"apply_stripe_event: {stripe_rate:8.0f} /s")
print(f"ratio:              {stripe_rate / bare_rate:8.2f} (goal >= 0.50)")
PY
