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
    outcome text NOT NULL CHECK (outcome IN ('applied', 'stale', 'ignored', 'unmapped', 'partial')),
    payload jsonb NOT NULL,
    stripe_customer_id text,
    stripe_subscription_id text,
    arrival bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- What the application counted, for entitlement summaries:
    -- {"granted": n, "unknown_lookup_keys": n} (lookup_keys stripe_feature_map does not map).
    outcome_detail jsonb
);
CREATE INDEX stripe_events_workspace_idx ON entitlements.stripe_events (workspace_id);
CREATE INDEX stripe_events_unmapped_customer_idx ON entitlements.stripe_events (stripe_customer_id)
    WHERE outcome = 'unmapped';
CREATE INDEX stripe_events_unmapped_subscription_idx ON entitlements.stripe_events (stripe_subscription_id)
    WHERE outcome = 'unmapped';

-- ---------------------------------------------------------------------------------------
-- Stripe's catalog beyond the tier: add-ons, quantities and Stripe Entitlements.
-- ---------------------------------------------------------------------------------------
-- Which features a Stripe price (id or lookup_key) or product grants, on top of the tier its
-- subscription buys: an add-on item, or the plan item itself. per_unit, for a metered or
-- counted feature: every unit of the item's quantity adds that much to the workspace's limit.
CREATE TABLE entitlements.stripe_price_features (
    stripe_id text NOT NULL,
    feature text NOT NULL REFERENCES entitlements.features ON UPDATE CASCADE ON DELETE CASCADE,
    per_unit bigint DEFAULT NULL CHECK (per_unit >= 0),
    PRIMARY KEY (stripe_id, feature)
);

-- Which feature a Stripe Entitlements feature (its lookup_key) is here.
CREATE TABLE entitlements.stripe_feature_map (
    lookup_key text PRIMARY KEY,
    feature text NOT NULL REFERENCES entitlements.features ON UPDATE CASCADE ON DELETE CASCADE
);

-- A mapping names a feature of the catalog and a per_unit of at least 0, whoever writes it
-- (the functions below or an admin's INSERT): 22023 otherwise, before the constraints, whose
-- own codes (23503, 23514) would not say which argument is wrong.
CREATE FUNCTION entitlements.stripe_mapping_check() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.feature IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM entitlements.features f WHERE f.feature = NEW.feature) THEN
        RAISE EXCEPTION 'pg_entitlements: unknown feature "%"', NEW.feature
            USING ERRCODE = '22023', HINT = 'The catalog is entitlements.features.';
    END IF;
    IF TG_TABLE_NAME = 'stripe_price_features' THEN
        IF NEW.per_unit < 0 THEN
            RAISE EXCEPTION 'pg_entitlements: per_unit must not be negative, not %', NEW.per_unit
                USING ERRCODE = '22023';
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER stripe_mapping_check BEFORE INSERT OR UPDATE ON entitlements.stripe_price_features
    FOR EACH ROW EXECUTE FUNCTION entitlements.stripe_mapping_check();
CREATE TRIGGER stripe_mapping_check BEFORE INSERT OR UPDATE ON entitlements.stripe_feature_map
    FOR EACH ROW EXECUTE FUNCTION entitlements.stripe_mapping_check();

-- The mappings as functions, for admins who prefer them to INSERT ... ON CONFLICT (both go
-- through the check above). A mapping applies from the next event of a subscription or
-- customer (or replay_stripe_events).
CREATE FUNCTION entitlements.map_stripe_price_feature(stripe_id text, feature text, per_unit bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF stripe_id IS NULL OR feature IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: stripe_id and feature must not be NULL' USING ERRCODE = '22004';
    END IF;
    INSERT INTO entitlements.stripe_price_features AS p (stripe_id, feature, per_unit)
    VALUES (map_stripe_price_feature.stripe_id, map_stripe_price_feature.feature, map_stripe_price_feature.per_unit)
    ON CONFLICT ON CONSTRAINT stripe_price_features_pkey DO UPDATE SET per_unit = EXCLUDED.per_unit;
END
$$;

CREATE FUNCTION entitlements.map_stripe_feature(lookup_key text, feature text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF lookup_key IS NULL OR feature IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: lookup_key and feature must not be NULL' USING ERRCODE = '22004';
    END IF;
    INSERT INTO entitlements.stripe_feature_map AS m (lookup_key, feature)
    VALUES (map_stripe_feature.lookup_key, map_stripe_feature.feature)
    ON CONFLICT ON CONSTRAINT stripe_feature_map_pkey DO UPDATE SET feature = EXCLUDED.feature;
END
$$;

-- What Stripe grants each workspace now, apart from admin overrides: a decision input (the
-- checks read it, the cache is invalidated per workspace when it changes). Written by
-- apply_stripe_event only:
--   via 'item':        a subscription item whose price, lookup_key or product
--                      stripe_price_features maps (grant_key: the item's id), while the
--                      subscription the workspace follows grants access;
--   via 'entitlement': a feature of the customer's active entitlement summary that
--                      stripe_feature_map maps (grant_key: customer/lookup_key).
-- units: quantity x per_unit, what the item adds to the feature's limit (NULL: nothing).
CREATE TABLE entitlements.stripe_feature_grants (
    workspace_id uuid NOT NULL,
    feature text NOT NULL REFERENCES entitlements.features ON UPDATE CASCADE ON DELETE CASCADE,
    via text NOT NULL CHECK (via IN ('item', 'entitlement')),
    grant_key text NOT NULL,
    stripe_id text NOT NULL,
    customer_id text,
    subscription_id text,
    quantity bigint,
    per_unit bigint,
    units bigint,
    event_id text NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, feature, via, grant_key)
);
CREATE INDEX stripe_feature_grants_customer_idx ON entitlements.stripe_feature_grants (customer_id)
    WHERE via = 'entitlement';

-- Per customer: the `created` of the last entitlement summary applied (older ones are
-- stale), and whether it was complete (a summary with has_more grants but revokes nothing
-- until the full list arrives through apply_stripe_entitlements).
CREATE TABLE entitlements.stripe_entitlement_summaries (
    customer_id text PRIMARY KEY,
    workspace_id uuid,
    last_created timestamptz,
    last_event_id text,
    complete boolean NOT NULL DEFAULT true,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- For support staff: per workspace, what each Stripe item or entitlement grants and why.
CREATE VIEW entitlements.stripe_grants WITH (security_invoker = true) AS
SELECT g.workspace_id, g.feature, 'stripe'::text AS source, g.via, g.stripe_id,
       g.customer_id, g.subscription_id,
       CASE g.via WHEN 'item' THEN g.grant_key END AS subscription_item_id,
       g.quantity, g.per_unit, g.units AS adds_to_limit,
       CASE g.via
         WHEN 'item' THEN format('subscription item %s (%s) maps to %s in stripe_price_features',
                                 g.grant_key, g.stripe_id, g.feature)
         ELSE format('active entitlement %s maps to %s in stripe_feature_map', g.stripe_id, g.feature)
       END AS why,
       g.event_id, g.granted_at
  FROM entitlements.stripe_feature_grants g;

-- Stripe grants are a decision input, per workspace like overrides: the same cache
-- invalidation (sql/api.sql) and change notifications ("changed": "stripe_grant").
CREATE TRIGGER cache_invalidate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.stripe_feature_grants
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_trigger();
ALTER TABLE entitlements.stripe_feature_grants ENABLE ALWAYS TRIGGER cache_invalidate;
CREATE TRIGGER cache_invalidate_inserted AFTER INSERT ON entitlements.stripe_feature_grants
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
CREATE TRIGGER cache_invalidate_updated AFTER UPDATE ON entitlements.stripe_feature_grants
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
CREATE TRIGGER cache_invalidate_deleted AFTER DELETE ON entitlements.stripe_feature_grants
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
ALTER TABLE entitlements.stripe_feature_grants ENABLE ALWAYS TRIGGER cache_invalidate_inserted;
ALTER TABLE entitlements.stripe_feature_grants ENABLE ALWAYS TRIGGER cache_invalidate_updated;
ALTER TABLE entitlements.stripe_feature_grants ENABLE ALWAYS TRIGGER cache_invalidate_deleted;
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.stripe_feature_grants
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.stripe_feature_grants ENABLE REPLICA TRIGGER cache_invalidate_applied;
CREATE TRIGGER notify_changed AFTER INSERT OR UPDATE OR DELETE ON entitlements.stripe_feature_grants
    FOR EACH ROW EXECUTE FUNCTION entitlements.notify_changed('stripe_grant');
CREATE TRIGGER notify_truncated AFTER TRUNCATE ON entitlements.stripe_feature_grants
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.notify_changed('stripe_grant');
ALTER TABLE entitlements.stripe_feature_grants ENABLE ALWAYS TRIGGER notify_changed;
ALTER TABLE entitlements.stripe_feature_grants ENABLE ALWAYS TRIGGER notify_truncated;

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
ALTER TABLE entitlements.stripe_price_features ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_feature_map ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_feature_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_entitlement_summaries ENABLE ROW LEVEL SECURITY;
REVOKE ALL ON entitlements.webhook_secrets, entitlements.stripe_price_tiers,
              entitlements.stripe_customers, entitlements.stripe_subscriptions,
              entitlements.stripe_events, entitlements.stripe_customer_locks,
              entitlements.stripe_price_features, entitlements.stripe_feature_map,
              entitlements.stripe_feature_grants, entitlements.stripe_entitlement_summaries,
              entitlements.stripe_grants
  FROM PUBLIC;

-- The DBA grants apply_stripe_event and apply_stripe_entitlements to the webhook role, the
-- others to billing admins.
REVOKE EXECUTE ON FUNCTION
    entitlements.apply_stripe_event(text, text),
    entitlements.apply_stripe_entitlements(text, text[], timestamptz),
    entitlements.link_stripe_customer(uuid, text),
    entitlements.replay_stripe_events(uuid),
    entitlements.sign_stripe_payload(text, text, bigint),
    entitlements.add_webhook_secret(text, timestamptz),
    entitlements.revoke_webhook_secret(text),
    entitlements.map_stripe_price_feature(text, text, bigint),
    entitlements.map_stripe_feature(text, text),
    entitlements.stripe_mapping_check()
  FROM PUBLIC;

-- pg_dump keeps the mapping and the event log; never the secrets (re-add them after a
-- restore: a dump file is no place for key material).
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_price_tiers', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_customers', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_events', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_events_arrival_seq', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_price_features', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_feature_map', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_feature_grants', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_entitlement_summaries', '');
