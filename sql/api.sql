-- pg_entitlements: the write paths, the triggers that keep derived state right, row-level
-- security, views and grants. Runs after the Rust functions exist (finalize).
--
-- Every SECURITY DEFINER function pins search_path, so objects planted in public cannot
-- hijack it. Errors use the SQLSTATEs listed in the README (22023 bad value, 22004 NULL).

-- ---------------------------------------------------------------------------------------
-- Membership, as RLS policies need it.
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.is_member(p_workspace_id uuid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM entitlements.workspace_members m
                    WHERE m.workspace_id = p_workspace_id
                      AND m.user_id = entitlements.current_user_id())
$$;

-- ---------------------------------------------------------------------------------------
-- The matrix: entitlements.entitlements follows the resolver, row for row.
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.resync_workspace(p_workspace_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM entitlements.workspaces WHERE workspace_id = p_workspace_id) THEN
        RETURN;
    END IF;
    INSERT INTO entitlements.entitlements AS e
           (workspace_id, feature, tier, enabled, reason_code, valid_until, updated_at)
    SELECT p_workspace_id, d.feature, d.tier, d.enabled, d.reason, d.valid_until, now()
      FROM entitlements.decide_all(p_workspace_id) d
    ON CONFLICT (workspace_id, feature) DO UPDATE
       SET tier = EXCLUDED.tier, enabled = EXCLUDED.enabled, reason_code = EXCLUDED.reason_code,
           valid_until = EXCLUDED.valid_until, updated_at = EXCLUDED.updated_at
     WHERE (e.tier, e.enabled, e.reason_code, e.valid_until)
           IS DISTINCT FROM (EXCLUDED.tier, EXCLUDED.enabled, EXCLUDED.reason_code, EXCLUDED.valid_until);
END
$$;

-- Matrix rows whose decision the clock alone has changed (a trial ended, a grace ran out, an
-- override expired). Returns how many workspaces were resynced.
CREATE FUNCTION entitlements.refresh_entitlements() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint := 0;
    ws uuid;
BEGIN
    FOR ws IN SELECT DISTINCT workspace_id FROM entitlements.entitlements
               WHERE valid_until <= clock_timestamp() LOOP
        PERFORM entitlements.resync_workspace(ws);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

CREATE FUNCTION entitlements.register_workspace(workspace_id uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF workspace_id IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: workspace_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    INSERT INTO entitlements.workspaces AS w (workspace_id) VALUES (register_workspace.workspace_id)
    ON CONFLICT DO NOTHING;
    PERFORM entitlements.resync_workspace(register_workspace.workspace_id);
END
$$;

-- billing_state: keep past_due_since and updated_at right on every path (the functions, a
-- direct UPDATE by a privileged role, Stripe ingestion).
CREATE FUNCTION entitlements.billing_state_before() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.status = 'past_due' THEN
        IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM 'past_due' THEN
            NEW.past_due_since := coalesce(NEW.past_due_since, now());
        END IF;
    ELSE
        NEW.past_due_since := NULL;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE FUNCTION entitlements.billing_state_after() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO entitlements.workspaces (workspace_id) VALUES (NEW.workspace_id)
        ON CONFLICT DO NOTHING;
        PERFORM entitlements.resync_workspace(NEW.workspace_id);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') AND (TG_OP = 'DELETE' OR OLD.workspace_id <> NEW.workspace_id) THEN
        PERFORM entitlements.resync_workspace(OLD.workspace_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER billing_state_before BEFORE INSERT OR UPDATE ON entitlements.billing_state
    FOR EACH ROW EXECUTE FUNCTION entitlements.billing_state_before();
CREATE TRIGGER billing_state_after AFTER INSERT OR UPDATE OR DELETE ON entitlements.billing_state
    FOR EACH ROW EXECUTE FUNCTION entitlements.billing_state_after();

CREATE FUNCTION entitlements.overrides_after() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP <> 'DELETE' THEN
        PERFORM entitlements.resync_workspace(NEW.workspace_id);
    END IF;
    IF TG_OP = 'DELETE' OR OLD.workspace_id <> NEW.workspace_id THEN
        PERFORM entitlements.resync_workspace(OLD.workspace_id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER overrides_after AFTER INSERT OR UPDATE OR DELETE ON entitlements.overrides
    FOR EACH ROW EXECUTE FUNCTION entitlements.overrides_after();

-- A catalog edit (tiers or features) can change every workspace's matrix.
CREATE FUNCTION entitlements.catalog_after() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM entitlements.resync_workspace(w.workspace_id) FROM entitlements.workspaces w;
    RETURN NULL;
END
$$;

-- TRUNCATE fires no row triggers: resync everything.
CREATE TRIGGER billing_state_truncate AFTER TRUNCATE ON entitlements.billing_state
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.catalog_after();
CREATE TRIGGER overrides_truncate AFTER TRUNCATE ON entitlements.overrides
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.catalog_after();
CREATE TRIGGER tiers_after AFTER INSERT OR UPDATE OR DELETE ON entitlements.tiers
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.catalog_after();
CREATE TRIGGER features_after AFTER INSERT OR UPDATE OR DELETE ON entitlements.features
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.catalog_after();

-- ---------------------------------------------------------------------------------------
-- The shared decision cache follows transactions: any statement that changes an input of the
-- decision (or who may ask: workspace_members) marks its transaction (which then bypasses the cache and invalidates it when it
-- commits) and queues a relcache invalidation that reaches hot standbys through the WAL.
-- ENABLE ALWAYS: the triggers fire under session_replication_role = replica too (logical
-- replication apply).
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.cache_invalidate_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM entitlements.note_decision_inputs_changed(TG_RELID);
    RETURN NULL;
END
$$;

CREATE TRIGGER cache_invalidate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.billing_state
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_trigger();
CREATE TRIGGER cache_invalidate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.overrides
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_trigger();
CREATE TRIGGER cache_invalidate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.features
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_trigger();
CREATE TRIGGER cache_invalidate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.tiers
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_trigger();
-- Membership decides who may ask; backends remember it per epoch.
CREATE TRIGGER cache_invalidate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.workspace_members
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_trigger();
ALTER TABLE entitlements.billing_state ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE entitlements.overrides ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE entitlements.features ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE entitlements.tiers ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE entitlements.workspace_members ENABLE ALWAYS TRIGGER cache_invalidate;

-- Live entries of this database (superusers only: it spans every workspace).
CREATE VIEW entitlements.entitlement_cache AS
SELECT workspace_id, feature, enabled, reason, cached_at, expires_at
  FROM entitlements.cache_entries();

DO $$
BEGIN
    IF NOT entitlements.cache_enabled() THEN
        RAISE WARNING 'pg_entitlements: the shared decision cache is off; checks are correct but uncached'
            USING HINT = 'Add pg_entitlements to shared_preload_libraries in postgresql.conf and restart the server.';
    END IF;
END
$$;

-- ---------------------------------------------------------------------------------------
-- Write paths.
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.sync_billing_state(
    workspace_id uuid,
    tier text,
    status text,
    trial_end timestamptz DEFAULT NULL,
    current_period_end timestamptz DEFAULT NULL,
    cancel_at_period_end boolean DEFAULT false
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF workspace_id IS NULL OR tier IS NULL OR status IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: workspace_id, tier and status must not be NULL'
            USING ERRCODE = '22004';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM entitlements.tiers t WHERE t.tier = sync_billing_state.tier) THEN
        RAISE EXCEPTION 'pg_entitlements: unknown tier "%"', tier
            USING ERRCODE = '22023', HINT = 'The tiers are in entitlements.tiers.';
    END IF;
    IF status NOT IN ('trialing', 'active', 'past_due', 'canceled', 'unpaid', 'incomplete',
                      'incomplete_expired', 'paused', 'none') THEN
        RAISE EXCEPTION 'pg_entitlements: unknown status "%"', status
            USING ERRCODE = '22023',
                  HINT = 'One of trialing, active, past_due, canceled, unpaid, incomplete, incomplete_expired, paused, none.';
    END IF;
    INSERT INTO entitlements.billing_state AS b
           (workspace_id, tier, status, trial_end, current_period_end, cancel_at_period_end)
    VALUES (sync_billing_state.workspace_id, sync_billing_state.tier, sync_billing_state.status,
            sync_billing_state.trial_end, sync_billing_state.current_period_end,
            coalesce(sync_billing_state.cancel_at_period_end, false))
    ON CONFLICT ON CONSTRAINT billing_state_pkey DO UPDATE
       SET tier = EXCLUDED.tier, status = EXCLUDED.status, trial_end = EXCLUDED.trial_end,
           current_period_end = EXCLUDED.current_period_end,
           cancel_at_period_end = EXCLUDED.cancel_at_period_end;
END
$$;

CREATE FUNCTION entitlements.set_override(
    workspace_id uuid,
    feature text,
    enabled boolean,
    expires_at timestamptz DEFAULT NULL,
    reason text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF workspace_id IS NULL OR feature IS NULL OR enabled IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: workspace_id, feature and enabled must not be NULL'
            USING ERRCODE = '22004';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM entitlements.features f WHERE f.feature = set_override.feature) THEN
        RAISE EXCEPTION 'pg_entitlements: unknown feature "%"', feature
            USING ERRCODE = '22023', HINT = 'The catalog is entitlements.features.';
    END IF;
    INSERT INTO entitlements.workspaces AS w (workspace_id) VALUES (set_override.workspace_id)
    ON CONFLICT DO NOTHING;
    INSERT INTO entitlements.overrides AS o (workspace_id, feature, enabled, expires_at, reason)
    VALUES (set_override.workspace_id, set_override.feature, set_override.enabled,
            set_override.expires_at, set_override.reason)
    ON CONFLICT ON CONSTRAINT overrides_pkey DO UPDATE
       SET enabled = EXCLUDED.enabled, expires_at = EXCLUDED.expires_at, reason = EXCLUDED.reason,
           created_at = now();
END
$$;

CREATE FUNCTION entitlements.clear_override(workspace_id uuid, feature text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM entitlements.overrides o
     WHERE o.workspace_id = clear_override.workspace_id AND o.feature = clear_override.feature;
    RETURN FOUND;
END
$$;

-- Registers every new row of the app's own workspaces table.
CREATE FUNCTION entitlements.register_workspace_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ws uuid := (to_jsonb(NEW) ->> TG_ARGV[0])::uuid;
BEGIN
    IF ws IS NOT NULL THEN
        PERFORM entitlements.register_workspace(ws);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION entitlements.attach_workspace_table(tbl regclass, id_column name) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col_type regtype;
BEGIN
    IF tbl IS NULL OR id_column IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: tbl and id_column must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT a.atttypid::regtype INTO col_type
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = id_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF col_type IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: table % has no column "%"', tbl, id_column
            USING ERRCODE = '22023';
    END IF;
    IF col_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'pg_entitlements: column "%" of % is %, not uuid', id_column, tbl, col_type
            USING ERRCODE = '22023';
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS entitlements_register_workspace ON %s', tbl);
    EXECUTE format('CREATE TRIGGER entitlements_register_workspace AFTER INSERT ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION entitlements.register_workspace_trigger(%L)',
                   tbl, id_column);
    -- Workspaces that existed before the table was attached are registered now.
    EXECUTE format('SELECT entitlements.register_workspace(%I) FROM %s WHERE %I IS NOT NULL',
                   id_column, tbl, id_column);
END
$$;

-- ---------------------------------------------------------------------------------------
-- Views. security_invoker: a member sees the rows of their own workspaces only.
-- ---------------------------------------------------------------------------------------
CREATE VIEW entitlements.entitlements_current WITH (security_invoker = true) AS
SELECT w.workspace_id, d.feature, d.tier, d.valid_until
  FROM entitlements.workspaces w
 CROSS JOIN LATERAL entitlements.decide_all(w.workspace_id) d
 WHERE d.enabled;

CREATE VIEW entitlements.billing_status_current WITH (security_invoker = true) AS
SELECT w.workspace_id,
       coalesce(b.tier, 'free') AS tier,
       coalesce(b.status, 'none') AS status,
       b.trial_end,
       b.current_period_end,
       coalesce(b.cancel_at_period_end, false) AS cancel_at_period_end,
       CASE WHEN b.status = 'trialing' AND b.trial_end IS NOT NULL
            THEN greatest(0, ceil(extract(epoch FROM b.trial_end - now()) / 86400))::integer
       END AS days_left_in_trial,
       CASE WHEN b.status = 'past_due'
            THEN coalesce(b.past_due_since, now()) + entitlements.past_due_grace()
       END AS past_due_grace_ends_at,
       b.updated_at
  FROM entitlements.workspaces w
  LEFT JOIN entitlements.billing_state b ON b.workspace_id = w.workspace_id;

-- ---------------------------------------------------------------------------------------
-- Row-level security: members read their own workspaces' rows; nobody but privileged roles
-- writes directly (there are no write grants); writes go through the functions above.
-- ---------------------------------------------------------------------------------------
ALTER TABLE entitlements.tiers ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.features ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.workspaces ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.billing_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.entitlements ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.overrides ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.workspace_members ENABLE ROW LEVEL SECURITY;

CREATE POLICY catalog_is_public ON entitlements.tiers FOR SELECT USING (true);
CREATE POLICY catalog_is_public ON entitlements.features FOR SELECT USING (true);
CREATE POLICY members_read ON entitlements.workspaces FOR SELECT
    USING (entitlements.is_member(workspace_id));
CREATE POLICY members_read ON entitlements.billing_state FOR SELECT
    USING (entitlements.is_member(workspace_id));
CREATE POLICY members_read ON entitlements.entitlements FOR SELECT
    USING (entitlements.is_member(workspace_id));
CREATE POLICY members_read ON entitlements.overrides FOR SELECT
    USING (entitlements.is_member(workspace_id));
CREATE POLICY own_memberships ON entitlements.workspace_members FOR SELECT
    USING (user_id = entitlements.current_user_id());

GRANT USAGE ON SCHEMA entitlements TO PUBLIC;
GRANT SELECT ON entitlements.tiers, entitlements.features, entitlements.workspaces,
                entitlements.billing_state, entitlements.entitlements, entitlements.overrides,
                entitlements.workspace_members, entitlements.entitlements_current,
                entitlements.billing_status_current
   TO PUBLIC;

-- Admin functions: the DBA grants EXECUTE to the roles that administer billing.
REVOKE EXECUTE ON FUNCTION
    entitlements.sync_billing_state(uuid, text, text, timestamptz, timestamptz, boolean),
    entitlements.set_override(uuid, text, boolean, timestamptz, text),
    entitlements.clear_override(uuid, text),
    entitlements.register_workspace(uuid),
    entitlements.attach_workspace_table(regclass, name),
    entitlements.resync_workspace(uuid),
    entitlements.refresh_entitlements(),
    entitlements.register_workspace_trigger(),
    entitlements.billing_state_after(),
    entitlements.overrides_after(),
    entitlements.catalog_after(),
    entitlements.cache_invalidate_trigger(),
    entitlements.note_decision_inputs_changed(oid),
    entitlements.cache_entries(),
    entitlements.invalidate_workspace_cache(uuid),
    entitlements.clear_cache()
  FROM PUBLIC;
REVOKE ALL ON entitlements.entitlement_cache FROM PUBLIC;
