#!/usr/bin/env python3
"""apply_stripe_event against Stripe's official SDK (stripe-python), through a real cluster.

Starts its own cluster with scripts/cluster.sh (stopped in a finally), creates the
extension, and checks:
  (a) headers made by the SDK's test-header generator (WebhookSignature.
      generate_signature_header) for every fixture payload are accepted by the database;
  (b) headers made by the project's own signing helper (entitlements.sign_stripe_payload)
      are byte-identical to the SDK's and pass the SDK's WebhookSignature.verify_header;
  (c) tampered body, wrong secret, old timestamp, v0-only header, several v1 values with one
      valid, rotated secrets: the database accepts or rejects exactly as verify_header does,
      with the same message (SDK suffixes " v1" and " (<t>)" are stripped; the database
      answers the texts without them);
  (d) a seeded random mix of header pieces, same comparison.
Needs: stripe==16.1.0, psycopg 3, the extension installed (scripts/install.sh) into the PostgreSQL
of PG_CONFIG (scripts/pg_env.sh).
Prints "N passed, 0 failed" at the end.
"""
import json
import pathlib
import random
import socket
import subprocess
import sys
import time

import psycopg
import stripe
from stripe import SignatureVerificationError, WebhookSignature

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "stripe"
SECRET = "whsec_crosscheck_0123456789"
OTHER = "whsec_other_secret"
OK = "ok"
E_PARSE = "Unable to extract timestamp and signatures from header"
E_SCHEME = "No signatures found with expected scheme"
E_MATCH = "No signatures found matching the expected signature for payload"
E_TOL = "Timestamp outside the tolerance zone"
TOLERANCE = 300  # pg_entitlements.stripe_tolerance's default, which the cluster keeps

passed = 0
failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what, file=sys.stderr)


def sdk_verify(payload: str, header: str, secret: str) -> str:
    try:
        WebhookSignature.verify_header(payload, header, secret, TOLERANCE)
        return OK
    except SignatureVerificationError as e:
        msg = e.user_message
    if msg == E_SCHEME + " v1":
        return E_SCHEME
    if msg.startswith(E_TOL + " ("):
        return E_TOL
    return msg


class Db:
    def __init__(self, conn):
        self.conn = conn
        self.n = 0

    def verify(self, payload: str, header: str) -> str:
        """The database's verdict on (payload, header): ok (any outcome) or the 28000 text.
        Each call gets a fresh event id inside the payload? No: the payload is signed as
        is, so duplicates are fine (outcome 'duplicate' still means verified)."""
        try:
            with self.conn.transaction():
                self.conn.execute("SELECT * FROM entitlements.apply_stripe_event(%s, %s)", (payload, header))
            return OK
        except psycopg.Error as e:
            if e.sqlstate == "28000":
                return e.diag.message_primary
            if e.sqlstate == "22P02":
                return OK  # verified; the payload is simply not an event we can read
            raise

    def sign(self, payload: str, secret: str, ts: int) -> str:
        return self.conn.execute("SELECT entitlements.sign_stripe_payload(%s, %s, %s)", (payload, secret, ts)).fetchone()[0]


def same(db, payload, header, secret_note, expected, secret=SECRET):
    ours = db.verify(payload, header)
    sdk = sdk_verify(payload, header, secret)
    check(ours == sdk == expected, f"{secret_note} header={header[:80]!r}: db={ours!r} sdk={sdk!r} want={expected!r}")


def payloads():
    files = sorted(FIXTURES.glob("*.json"))
    assert len(files) >= 16, f"no fixtures under {FIXTURES}"
    for f in files:
        yield f.read_text(encoding="utf-8")
    yield '{"id":"evt_x","object":"event","type":"ping","created":1700000000,"data":{"object":{"h":"h\u00e9llo \u2603 \U0001f600"}}}'


def main(db: Db):
    now = int(time.time())
    # (a) + (b)
    for p in payloads():
        for ts in (now, now - 60, now + 86400):
            sdk_header = WebhookSignature.generate_signature_header(p, SECRET, timestamp=ts)
            ours = db.sign(p, SECRET, ts)
            check(ours == sdk_header, f"helper header differs from SDK: {ours} vs {sdk_header}")
            check(db.verify(p, sdk_header) == OK, "SDK-signed header rejected")
            check(WebhookSignature.verify_header(p, ours, SECRET, TOLERANCE) is True, "SDK rejects helper header")
    # (c) fixed cases
    P = (FIXTURES / "payfuzz-customer.subscription.updated.json").read_text(encoding="utf-8")
    sig = lambda secret, ts: WebhookSignature._compute_signature(f"{ts}.{P}", secret)
    good = sig(SECRET, now)
    old = now - 10_000
    cases = [
        (f"t={now},v1={good}", OK),
        (f"t={now},v0={good},v1={good}", OK),
        (f"t={now},v1={sig(OTHER, now)},v1={good}", OK),  # several v1, one valid
        (f"t={now},v1={good},v1=00,v1=", OK),
        (f"t={now + 10_000},v1={sig(SECRET, now + 10_000)}", OK),
        (f"t=+0{now},v1={good}", OK),
        (f"t={now},junk,v1={good}", OK),
        (f"v1={good}", E_PARSE),
        (f"t=abc,v1={good}", E_PARSE),
        (f"t=,v1={good}", E_PARSE),
        (f"t,v1={good}", E_PARSE),
        (f" t={now},v1={good}", E_PARSE),
        (",", E_PARSE),
        (f"t={now}", E_SCHEME),
        (f"t={now},v0={good}", E_SCHEME),  # v0 only
        (f"t={now}, v1={good}", E_SCHEME),
        (f"t={now},v1={sig(OTHER, now)}", E_MATCH),  # wrong secret
        (f"t={now + 1},v1={good}", E_MATCH),
        (f"t={now},v1={good.upper()}", E_MATCH),
        (f"t={old},v1={sig(OTHER, old)}", E_MATCH),
        (f"t={old},v1={sig(SECRET, old)}", E_TOL),  # old timestamp
    ]
    for header, want in cases:
        same(db, P, header, "fixed", want)
    same(db, P + " ", f"t={now},v1={good}", "tampered body", E_MATCH)
    same(db, P.replace("active", "canceled", 1), f"t={now},v1={good}", "tampered body", E_MATCH)

    # Rotation: a second secret is accepted alongside the first, then alone after revoking.
    db.conn.execute("SELECT entitlements.add_webhook_secret(%s)", (OTHER,))
    other_header = WebhookSignature.generate_signature_header(P, OTHER, timestamp=now)
    check(db.verify(P, other_header) == OK, "second active secret rejected")
    check(db.verify(P, f"t={now},v1={good}") == OK, "first secret rejected while both active")
    db.conn.execute("SELECT entitlements.revoke_webhook_secret(%s)", (SECRET,))
    same(db, P, f"t={now},v1={good}", "revoked secret (SDK given the new one)", E_MATCH, secret=OTHER)
    check(db.verify(P, other_header) == OK, "new secret rejected after rotation")
    db.conn.execute("SELECT entitlements.add_webhook_secret(%s)", (SECRET,))
    db.conn.execute("SELECT entitlements.revoke_webhook_secret(%s)", (OTHER,))

    # (d) seeded random headers
    rng = random.Random(20261126)
    seen = set()
    for _ in range(300):
        ts = rng.choice([now, old, now + 10_000, 0])
        pieces = [
            lambda: f"t={ts}", lambda: f"t={rng.choice(['', ' ', '+', '0'])}{ts}",
            lambda: "t=" + rng.choice(["x", "", "1e3", "--1"]), lambda: "t", lambda: "v1",
            lambda: f"v1={sig(SECRET, ts)}", lambda: f"v1={sig(OTHER, ts)}",
            lambda: f"v0={sig(SECRET, ts)}", lambda: "junk", lambda: "",
            lambda: f"v1={sig(SECRET, ts)}=x", lambda: f"t={ts}=x",
        ]
        header = ",".join(rng.choice(pieces)() for _ in range(rng.randint(1, 5)))
        if header == "":
            continue  # stripe 16.x refuses an empty header with its own message (docs/STRIPE.md)
        ours = db.verify(P, header)
        sdk = sdk_verify(P, header, SECRET)
        check(ours == sdk, f"random header={header!r}: db={ours!r} sdk={sdk!r}")
        seen.add(ours)
    check(seen == {OK, E_PARSE, E_SCHEME, E_MATCH, E_TOL}, f"not every outcome exercised: {seen}")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if __name__ == "__main__":
    cluster_dir = REPO / ".run" / "sdk-crosscheck"
    port = free_port()
    subprocess.run(["bash", str(REPO / "scripts/cluster.sh"), "start", str(cluster_dir), str(port)], check=True)
    try:
        base = f"host=127.0.0.1 port={port} user=postgres"
        with psycopg.connect(base + " dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE app")
        with psycopg.connect(base + " dbname=app", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_entitlements")
            conn.execute("SELECT entitlements.add_webhook_secret(%s)", (SECRET,))
            main(Db(conn))
    finally:
        subprocess.run(["bash", str(REPO / "scripts/cluster.sh"), "stop", str(cluster_dir)])
    print(f"stripe {stripe.VERSION}: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)
