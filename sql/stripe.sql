-- pg_entitlements: Stripe webhook ingestion. The tables apply_stripe_event reads and writes,
-- the privileged secret functions, row-level security and grants. Runs after the Rust
-- functions it revokes from PUBLIC (requires, in src/stripe/ingest.rs).
--
-- Nothing here is readable by a non-privileged role: RLS is on with no policies and there
-- are no grants. The webhook role gets EXECUTE on apply_stripe_event only (docs/STRIPE.md).

-- Endpoint signing secrets (whsec_...). Several may be active at once while Stripe rolls a
-- secret. Kept in clear because HMAC needs the key itself; no constraint here may fail on
-- a row (an error's DETAIL would print the secret): the functions below validate first.
CREATE TABLE entitlements.webhook_secrets (
    secret text PRIMARY KEY,
    added_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);

-- No histogram or most-common-values list of the secrets in pg_statistic: a revoked secret
-- must not live on there.
ALTER TABLE entitlements.webhook_secrets ALTER COLUMN secret SET STATISTICS 0;

-- One row per Stripe customer ever seen: apply_stripe_event locks it (FOR UPDATE) to
-- serialise the deliveries of one customer. Only the extension writes it, so no other role
-- can hold the lock.
CREATE TABLE entitlements.stripe_customer_locks (
    customer_id text PRIMARY KEY
);

-- Which tier a Stripe price (id or lookup_key) or product buys.
CREATE TABLE entitlements.stripe_price_tiers (
    stripe_id text PRIMARY KEY,
    tier text NOT NULL REFERENCES entitlements.tiers ON UPDATE CASCADE
);

-- Which workspace a Stripe customer belongs to. linked_by: 'link_stripe_customer' or the id
-- of the event that linked it (a checkout, or a subscription carrying metadata.workspace_id).
CREATE TABLE entitlements.stripe_customers (
    customer_id text PRIMARY KEY,
    workspace_id uuid NOT NULL,
    linked_at timestamptz NOT NULL DEFAULT now(),
    linked_by text NOT NULL
);
CREATE INDEX stripe_customers_workspace_idx ON entitlements.stripe_customers (workspace_id);

-- Per subscription: its workspace (once known) and the `created` of the last event applied,
-- which orders deliveries (older = stale). Its row is locked while an event applies.
CREATE TABLE entitlements.stripe_subscriptions (
    subscription_id text PRIMARY KEY,
    customer_id text,
    workspace_id uuid,
    last_created timestamptz,
    last_event_id text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stripe_subscriptions_workspace_idx ON entitlements.stripe_subscriptions (workspace_id);

-- Every verified event, once. outcome: what its (last) application did; a duplicate
-- delivery is answered `duplicate` and not stored again. arrival orders events of the same
-- second; stripe_customer_id / stripe_subscription_id find the unmapped events a new link
-- reaches.
CREATE TABLE entitlements.stripe_events (
    event_id text PRIMARY KEY,
    event_type text NOT NULL,
    created timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    workspace_id uuid,
    outcome text NOT NULL CHECK (outcome IN ('applied', 'stale', 'ignored', 'unmapped')),
    payload jsonb NOT NULL,
    stripe_customer_id text,
    stripe_subscription_id text,
    arrival bigint GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX stripe_events_workspace_idx ON entitlements.stripe_events (workspace_id);
CREATE INDEX stripe_events_unmapped_customer_idx ON entitlements.stripe_events (stripe_customer_id)
    WHERE outcome = 'unmapped';
CREATE INDEX stripe_events_unmapped_subscription_idx ON entitlements.stripe_events (stripe_subscription_id)
    WHERE outcome = 'unmapped';

-- ---------------------------------------------------------------------------------------
-- Secrets. Messages never include the secret (nor does any error on these paths: a second
-- add of the same secret updates its expiry instead of violating the primary key).
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.add_webhook_secret(secret text, expires_at timestamptz DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF secret IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: secret must not be NULL' USING ERRCODE = '22004';
    END IF;
    -- The SDKs' blank check (the secret itself is not echoed).
    IF btrim(secret, E' \t\r\n\f\v') = '' THEN
        RAISE EXCEPTION 'pg_entitlements: secret must not be empty' USING ERRCODE = '22023';
    END IF;
    INSERT INTO entitlements.webhook_secrets AS w (secret, expires_at)
    VALUES (add_webhook_secret.secret, add_webhook_secret.expires_at)
    ON CONFLICT ON CONSTRAINT webhook_secrets_pkey DO UPDATE SET expires_at = EXCLUDED.expires_at;
END
$$;

-- Revoking deletes the secret: nothing keeps key material that can no longer verify.
CREATE FUNCTION entitlements.revoke_webhook_secret(secret text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM entitlements.webhook_secrets w WHERE w.secret = revoke_webhook_secret.secret;
    RETURN FOUND;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Row-level security and grants.
-- ---------------------------------------------------------------------------------------
ALTER TABLE entitlements.webhook_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_price_tiers ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_customers ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_customer_locks ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON entitlements.webhook_secrets, entitlements.stripe_price_tiers,
              entitlements.stripe_customers, entitlements.stripe_subscriptions,
              entitlements.stripe_events, entitlements.stripe_customer_locks
  FROM PUBLIC;

-- The DBA grants apply_stripe_event to the webhook role, the others to billing admins.
REVOKE EXECUTE ON FUNCTION
    entitlements.apply_stripe_event(text, text),
    entitlements.link_stripe_customer(uuid, text),
    entitlements.replay_stripe_events(uuid),
    entitlements.sign_stripe_payload(text, text, bigint),
    entitlements.add_webhook_secret(text, timestamptz),
    entitlements.revoke_webhook_secret(text)
  FROM PUBLIC;

-- pg_dump keeps the mapping and the event log; never the secrets (re-add them after a
-- restore: a dump file is no place for key material).
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_price_tiers', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_customers', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_events', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_events_arrival_seq', '');
