-- pg_entitlements usage limits: how much of a metered feature a workspace may use, and what
-- it has used. The counter is a row that consume() locks, in the caller's transaction: a
-- rollback returns the quantity, and concurrent consumers queue on the row, so a hard limit
-- is never exceeded. docs/LIMITS.md describes the model.

-- The allowance per tier: a workspace's limit is the row of the highest tier at or below its
-- tier. NULL limit_value = unlimited, explicitly; no row at or below = an allowance of 0.
CREATE TABLE entitlements.feature_limits (
    feature text NOT NULL REFERENCES entitlements.features ON UPDATE CASCADE ON DELETE CASCADE,
    tier text NOT NULL REFERENCES entitlements.tiers ON UPDATE CASCADE ON DELETE CASCADE,
    limit_value bigint CHECK (limit_value >= 0),
    PRIMARY KEY (feature, tier)
);

-- A workspace's own limit for a feature, replacing the tier's while unexpired (NULL = unlimited).
CREATE TABLE entitlements.limit_overrides (
    workspace_id uuid NOT NULL,
    feature text NOT NULL REFERENCES entitlements.features ON UPDATE CASCADE ON DELETE CASCADE,
    limit_value bigint CHECK (limit_value >= 0),
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, feature)
);

-- The current period's usage, one row per (workspace, feature): the row consume() locks. A
-- period that never resets starts at -infinity and has no end.
-- `used` is never negative: only the extension's functions write it (no other role may), and
-- each keeps it at or above 0 (consume adds a positive quantity, refund stops at 0, a new
-- period starts at 0). There is deliberately no CHECK constraint for it: PostgreSQL reads a
-- table's CHECK constraints from the catalog again for every UPDATE statement, and consume's
-- one UPDATE is the hot path (docs/LIMITS.md).
CREATE TABLE entitlements.usage_counters (
    workspace_id uuid NOT NULL,
    feature text NOT NULL REFERENCES entitlements.features ON UPDATE CASCADE ON DELETE CASCADE,
    period_start timestamptz NOT NULL,
    period_end timestamptz,
    used bigint NOT NULL DEFAULT 0,
    -- The usage thresholds (percent of the limit) already announced in this period.
    thresholds_notified integer[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (workspace_id, feature)
);

-- Every finished period with what was used in it: for invoicing and for DBAs.
CREATE TABLE entitlements.usage_periods (
    workspace_id uuid NOT NULL,
    feature text NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz,
    used bigint NOT NULL,
    PRIMARY KEY (workspace_id, feature, period_start)
);

-- The first answer given to each idempotency key, per workspace, feature and period.
CREATE TABLE entitlements.usage_idempotency (
    workspace_id uuid NOT NULL,
    feature text NOT NULL,
    period_start timestamptz NOT NULL,
    idempotency_key text NOT NULL,
    result entitlements.usage_result NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, feature, period_start, idempotency_key)
);

SELECT pg_catalog.pg_extension_config_dump('entitlements.feature_limits', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.limit_overrides', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.usage_counters', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.usage_periods', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.usage_idempotency', '');

-- A metered or counted feature's limit and period are kept in the decision cache with the
-- feature's rules (docs/LIMITS.md), so the limits are decision inputs like the others and
-- carry the same invalidation triggers (sql/api.sql): feature_limits as catalog (a commit
-- invalidates every workspace), limit_overrides per workspace.
CREATE TRIGGER cache_invalidate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.feature_limits
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_trigger();
CREATE TRIGGER cache_invalidate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.limit_overrides
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_trigger();
ALTER TABLE entitlements.feature_limits ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE entitlements.limit_overrides ENABLE ALWAYS TRIGGER cache_invalidate;
CREATE TRIGGER cache_invalidate_inserted AFTER INSERT ON entitlements.limit_overrides
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
CREATE TRIGGER cache_invalidate_updated AFTER UPDATE ON entitlements.limit_overrides
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
CREATE TRIGGER cache_invalidate_deleted AFTER DELETE ON entitlements.limit_overrides
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
ALTER TABLE entitlements.limit_overrides ENABLE ALWAYS TRIGGER cache_invalidate_inserted;
ALTER TABLE entitlements.limit_overrides ENABLE ALWAYS TRIGGER cache_invalidate_updated;
ALTER TABLE entitlements.limit_overrides ENABLE ALWAYS TRIGGER cache_invalidate_deleted;
-- And the row triggers a logical subscriber's apply fires (sql/api.sql).
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.feature_limits
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.feature_limits ENABLE REPLICA TRIGGER cache_invalidate_applied;
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.limit_overrides
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.limit_overrides ENABLE REPLICA TRIGGER cache_invalidate_applied;

-- The period a usage counter covers at `at`. billing_period: the subscription's period when
-- it is known and `at` is inside it, else the calendar month (UTC), as for month. A period
-- that never resets starts at -infinity and has no end.
-- This function and usage_state have no SET clause so that PostgreSQL inlines them into the
-- queries that call them (a SET clause forces a plan per call, which made consume several
-- times slower); those queries run with search_path pinned (the checks' reads, and the SECURITY
-- DEFINER functions here), and the bodies name every table with its schema.
CREATE FUNCTION entitlements.usage_period(
    reset_period text, billing_start timestamptz, billing_end timestamptz, at timestamptz)
RETURNS TABLE (period_start timestamptz, period_end timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
             WHEN reset_period = 'never' THEN '-infinity'::timestamptz
             WHEN reset_period = 'day' THEN date_trunc('day', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
             WHEN coalesce(reset_period, 'billing_period') = 'billing_period'
                  AND billing_start <= at AND at < billing_end THEN billing_start
             ELSE date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
           END,
           CASE
             WHEN reset_period = 'never' THEN NULL
             WHEN reset_period = 'day' THEN (date_trunc('day', at AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC'
             WHEN coalesce(reset_period, 'billing_period') = 'billing_period'
                  AND billing_start <= at AND at < billing_end THEN billing_end
             ELSE (date_trunc('month', at AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'
           END
$$;

-- A workspace's usage of one feature at `at`: the current period, what was used in it, and
-- the limit (NULL = unlimited). The one implementation of limit resolution: the checks read
-- it as the caller (RLS applies), consume() as the extension's owner.
CREATE FUNCTION entitlements.usage_state(workspace_id uuid, feature text, at timestamptz)
RETURNS TABLE (used bigint, limit_value bigint, period_start timestamptz, period_end timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN c.period_start = p.period_start THEN c.used ELSE 0 END,
           -- An admin's limit override replaces everything; else the tier's limit (none at
           -- or below the tier: 0) plus what the subscription's items add (quantity x
           -- per_unit, stripe_feature_grants), capped at bigint's maximum. NULL = unlimited.
           CASE WHEN o.found THEN o.limit_value
                WHEN t.found AND t.limit_value IS NULL THEN NULL
                ELSE least(coalesce(t.limit_value, 0)::numeric + coalesce(s.units, 0),
                           9223372036854775807)::bigint
           END,
           p.period_start,
           p.period_end
      FROM entitlements.features f
      LEFT JOIN entitlements.billing_state b ON b.workspace_id = usage_state.workspace_id
      -- A counted feature's count never resets: it is the number of rows there are.
      CROSS JOIN LATERAL entitlements.usage_period(CASE WHEN f.kind = 'counted' THEN 'never'
                                                        ELSE f.reset_period END,
                                                   b.current_period_start, b.current_period_end,
                                                   usage_state.at) p
      LEFT JOIN entitlements.usage_counters c
             ON c.workspace_id = usage_state.workspace_id AND c.feature = f.feature
      LEFT JOIN LATERAL (
            SELECT true AS found, lo.limit_value FROM entitlements.limit_overrides lo
             WHERE lo.workspace_id = usage_state.workspace_id AND lo.feature = f.feature
               AND (lo.expires_at IS NULL OR lo.expires_at > usage_state.at)) o ON true
      LEFT JOIN LATERAL (
            SELECT true AS found, fl.limit_value
              FROM entitlements.feature_limits fl
              JOIN entitlements.tiers lt ON lt.tier = fl.tier
             WHERE fl.feature = f.feature
               AND lt.level <= coalesce((SELECT wt.level FROM entitlements.tiers wt
                                          WHERE wt.tier = coalesce(b.tier, 'free')), 0)
             ORDER BY lt.level DESC
             LIMIT 1) t ON true
      LEFT JOIN LATERAL (
            SELECT sum(g.units) AS units FROM entitlements.stripe_feature_grants g
             WHERE g.workspace_id = usage_state.workspace_id AND g.feature = f.feature
               AND g.units IS NOT NULL) s ON true
     WHERE f.feature = usage_state.feature
$$;

-- consume, refund and usage, once the library has authorized the caller and decided the
-- feature's other rules (denied_by: their reason, NULL when they pass). Called only by the
-- library (nobody is granted EXECUTE). op: 'consume', 'refund' or 'read'.
CREATE FUNCTION entitlements.usage_apply(
    p_workspace_id uuid, p_feature text, p_quantity bigint, p_idempotency_key text,
    p_op text, p_denied_by text)
RETURNS entitlements.usage_result
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- Planned once per session: every statement here is a lookup by key.
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    f record;
    st record;
    c entitlements.usage_counters;
    r entitlements.usage_result;
    now_ timestamptz := clock_timestamp();
    new_used bigint;
    allowed boolean;
    reason text;
    threshold integer;
BEGIN
    SELECT fe.kind, fe.hard_limit INTO f FROM entitlements.features fe WHERE fe.feature = p_feature;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pg_entitlements: unknown feature "%"', p_feature
            USING ERRCODE = '22023', HINT = 'The catalog is entitlements.features.';
    END IF;
    IF p_op <> 'read' THEN
        IF p_quantity <= 0 THEN
            RAISE EXCEPTION 'pg_entitlements: quantity must be positive, not %', p_quantity
                USING ERRCODE = '22023';
        END IF;
        IF f.kind <> 'metered' THEN
            RAISE EXCEPTION 'pg_entitlements: feature "%" is %, not metered: only metered features are consumed or refunded', p_feature, f.kind
                USING ERRCODE = '22023',
                      HINT = 'A counted feature counts rows of a table; a boolean one has no usage.';
        END IF;
        IF length(p_idempotency_key) > 255 THEN
            RAISE EXCEPTION 'pg_entitlements: idempotency_key is longer than 255 characters'
                USING ERRCODE = '22023';
        END IF;
    ELSIF f.kind = 'boolean' THEN
        RAISE EXCEPTION 'pg_entitlements: feature "%" is boolean: it has no usage', p_feature
            USING ERRCODE = '22023';
    END IF;

    SELECT * INTO st FROM entitlements.usage_state(p_workspace_id, p_feature, now_);

    -- A consume the feature's rules deny answers like usage() and writes nothing.
    IF p_op = 'read' OR (p_op = 'consume' AND p_denied_by IS NOT NULL) THEN
        new_used := st.used;
        allowed := p_denied_by IS NULL AND (st.limit_value IS NULL OR new_used < st.limit_value);
        reason := CASE WHEN p_denied_by IS NOT NULL THEN p_denied_by
                       WHEN NOT allowed THEN 'LIMIT_EXCEEDED' END;
    ELSE
        -- The counter row, locked: concurrent consumers of this workspace's feature queue here.
        INSERT INTO entitlements.usage_counters AS uc (workspace_id, feature, period_start, period_end, used)
        VALUES (p_workspace_id, p_feature, st.period_start, st.period_end, 0)
        ON CONFLICT ON CONSTRAINT usage_counters_pkey DO NOTHING;
        SELECT * INTO c FROM entitlements.usage_counters uc
         WHERE uc.workspace_id = p_workspace_id AND uc.feature = p_feature FOR UPDATE;
        -- A new period: keep the finished one, start from 0 (lazily: no scheduler).
        IF c.period_start IS DISTINCT FROM st.period_start THEN
            INSERT INTO entitlements.usage_periods AS up (workspace_id, feature, period_start, period_end, used)
            VALUES (p_workspace_id, p_feature, c.period_start, c.period_end, c.used)
            ON CONFLICT ON CONSTRAINT usage_periods_pkey DO UPDATE
               SET used = up.used + EXCLUDED.used, period_end = EXCLUDED.period_end;
            UPDATE entitlements.usage_counters uc
               SET period_start = st.period_start, period_end = st.period_end, used = 0,
                   thresholds_notified = '{}'
             WHERE uc.workspace_id = p_workspace_id AND uc.feature = p_feature;
            c.used := 0;
            c.thresholds_notified := '{}';
        END IF;
        IF p_idempotency_key IS NOT NULL THEN
            -- Read after the lock: a racing call with the same key has committed by now (or
            -- rolled back, and then this one takes the quantity).
            SELECT (i.result).* INTO r FROM entitlements.usage_idempotency i
             WHERE i.workspace_id = p_workspace_id AND i.feature = p_feature
               AND i.period_start = st.period_start AND i.idempotency_key = p_idempotency_key;
            IF FOUND THEN
                RETURN r;
            END IF;
        END IF;
        IF p_op = 'refund' THEN
            new_used := greatest(c.used - p_quantity, 0);
            allowed := true;
        ELSIF st.limit_value IS NULL OR NOT f.hard_limit OR c.used + p_quantity <= st.limit_value THEN
            new_used := c.used + p_quantity;
            allowed := true;
        ELSE
            new_used := c.used;
            allowed := false;
            reason := 'LIMIT_EXCEEDED';
        END IF;
        IF new_used <> c.used THEN
            -- Thresholds reached for the first time in this period are announced; NOTIFY is
            -- delivered only if the caller's transaction commits.
            -- (Every threshold is at least 1%: below that there is nothing to look up.)
            IF new_used > c.used AND st.limit_value > 0 AND new_used::numeric * 100 >= st.limit_value THEN
                FOR threshold IN
                    SELECT DISTINCT t.v::integer
                      FROM unnest(string_to_array(current_setting('pg_entitlements.usage_thresholds'), ',')) AS t(v)
                     WHERE btrim(t.v) <> ''
                     ORDER BY 1
                LOOP
                    IF new_used::numeric * 100 >= threshold::numeric * st.limit_value
                       AND NOT threshold = ANY (c.thresholds_notified) THEN
                        PERFORM pg_notify('pg_entitlements_usage', json_build_object(
                            'workspace_id', p_workspace_id, 'feature', p_feature, 'used', new_used,
                            'limit', st.limit_value, 'threshold', threshold)::text);
                        c.thresholds_notified := c.thresholds_notified || threshold;
                    END IF;
                END LOOP;
            END IF;
            UPDATE entitlements.usage_counters uc
               SET used = new_used, thresholds_notified = c.thresholds_notified
             WHERE uc.workspace_id = p_workspace_id AND uc.feature = p_feature;
        END IF;
    END IF;

    r := ROW(p_feature, allowed, reason, new_used, st.limit_value,
             CASE WHEN st.limit_value IS NOT NULL THEN greatest(st.limit_value - new_used, 0) END,
             CASE WHEN st.period_start <> '-infinity' THEN st.period_start END, st.period_end);
    -- A refused consume changes nothing, so its key stays free for a retry.
    IF p_op <> 'read' AND allowed AND p_idempotency_key IS NOT NULL THEN
        INSERT INTO entitlements.usage_idempotency (workspace_id, feature, period_start, idempotency_key, result)
        VALUES (p_workspace_id, p_feature, st.period_start, p_idempotency_key, r);
    END IF;
    RETURN r;
END
$$;

CREATE FUNCTION entitlements.set_feature_limit(feature text, tier text, limit_value bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF feature IS NULL OR tier IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: feature and tier must not be NULL'
            USING ERRCODE = '22004', HINT = 'A NULL limit_value means unlimited.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM entitlements.features f WHERE f.feature = set_feature_limit.feature) THEN
        RAISE EXCEPTION 'pg_entitlements: unknown feature "%"', feature
            USING ERRCODE = '22023', HINT = 'The catalog is entitlements.features.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM entitlements.tiers t WHERE t.tier = set_feature_limit.tier) THEN
        RAISE EXCEPTION 'pg_entitlements: unknown tier "%"', tier
            USING ERRCODE = '22023', HINT = 'The tiers are in entitlements.tiers.';
    END IF;
    IF limit_value < 0 THEN
        RAISE EXCEPTION 'pg_entitlements: limit_value must not be negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO entitlements.feature_limits AS l (feature, tier, limit_value)
    VALUES (set_feature_limit.feature, set_feature_limit.tier, set_feature_limit.limit_value)
    ON CONFLICT ON CONSTRAINT feature_limits_pkey DO UPDATE SET limit_value = EXCLUDED.limit_value;
END
$$;

CREATE FUNCTION entitlements.set_limit_override(
    workspace_id uuid, feature text, limit_value bigint, expires_at timestamptz DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF workspace_id IS NULL OR feature IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: workspace_id and feature must not be NULL'
            USING ERRCODE = '22004', HINT = 'A NULL limit_value means unlimited.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM entitlements.features f WHERE f.feature = set_limit_override.feature) THEN
        RAISE EXCEPTION 'pg_entitlements: unknown feature "%"', feature
            USING ERRCODE = '22023', HINT = 'The catalog is entitlements.features.';
    END IF;
    IF limit_value < 0 THEN
        RAISE EXCEPTION 'pg_entitlements: limit_value must not be negative' USING ERRCODE = '22023';
    END IF;
    INSERT INTO entitlements.limit_overrides AS o (workspace_id, feature, limit_value, expires_at)
    VALUES (set_limit_override.workspace_id, set_limit_override.feature,
            set_limit_override.limit_value, set_limit_override.expires_at)
    ON CONFLICT ON CONSTRAINT limit_overrides_pkey DO UPDATE
       SET limit_value = EXCLUDED.limit_value, expires_at = EXCLUDED.expires_at, created_at = now();
END
$$;

CREATE FUNCTION entitlements.clear_limit_override(workspace_id uuid, feature text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM entitlements.limit_overrides o
     WHERE o.workspace_id = clear_limit_override.workspace_id AND o.feature = clear_limit_override.feature;
    RETURN FOUND;
END
$$;

-- Counted features: the count of an app table's rows per workspace, kept in the feature's
-- usage counter (a period that never ends) by the triggers attach_limit installs. A row that
-- would take a workspace past its limit fails with PT402 (PostgREST: 402 Payment Required) and
-- writes nothing; concurrent inserts queue on the counter's row, so at limit-1 exactly one
-- lands. TG_ARGV: the workspace column, the feature.
CREATE FUNCTION entitlements.limit_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_ws uuid;
    new_ws uuid;
    hard boolean;
    current_count bigint;
    lim bigint;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_ws := (to_jsonb(OLD) ->> TG_ARGV[0])::uuid;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_ws := (to_jsonb(NEW) ->> TG_ARGV[0])::uuid;
    END IF;
    IF old_ws IS NOT DISTINCT FROM new_ws THEN
        RETURN NULL;
    END IF;
    IF new_ws IS NOT NULL THEN
        SELECT f.hard_limit INTO hard FROM entitlements.features f WHERE f.feature = TG_ARGV[1];
        INSERT INTO entitlements.usage_counters AS uc (workspace_id, feature, period_start, period_end, used)
        VALUES (new_ws, TG_ARGV[1], '-infinity', NULL, 0)
        ON CONFLICT ON CONSTRAINT usage_counters_pkey DO NOTHING;
        SELECT uc.used INTO current_count FROM entitlements.usage_counters uc
         WHERE uc.workspace_id = new_ws AND uc.feature = TG_ARGV[1] FOR UPDATE;
        SELECT s.limit_value INTO lim FROM entitlements.usage_state(new_ws, TG_ARGV[1], clock_timestamp()) s;
        IF coalesce(hard, true) AND lim IS NOT NULL AND current_count + 1 > lim THEN
            RAISE EXCEPTION 'pg_entitlements: limit of "%" reached: % of % used', TG_ARGV[1], current_count, lim
                USING ERRCODE = 'PT402',
                      DETAIL = format('workspace %s, table %s', new_ws, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME),
                      HINT = 'A plan with a higher limit, or fewer rows, makes room.';
        END IF;
        UPDATE entitlements.usage_counters uc SET used = current_count + 1
         WHERE uc.workspace_id = new_ws AND uc.feature = TG_ARGV[1];
    END IF;
    IF old_ws IS NOT NULL THEN
        UPDATE entitlements.usage_counters uc SET used = greatest(uc.used - 1, 0)
         WHERE uc.workspace_id = old_ws AND uc.feature = TG_ARGV[1];
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE of an attached table: every workspace's count of the feature is 0 again.
CREATE FUNCTION entitlements.limit_truncate_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE entitlements.usage_counters uc SET used = 0 WHERE uc.feature = TG_ARGV[1];
    RETURN NULL;
END
$$;

CREATE FUNCTION entitlements.attach_limit(tbl regclass, workspace_column name, feature text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col_type regtype;
    feature_kind text;
BEGIN
    IF tbl IS NULL OR workspace_column IS NULL OR feature IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: tbl, workspace_column and feature must not be NULL'
            USING ERRCODE = '22004';
    END IF;
    SELECT f.kind INTO feature_kind FROM entitlements.features f WHERE f.feature = attach_limit.feature;
    IF feature_kind IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: unknown feature "%"', feature
            USING ERRCODE = '22023', HINT = 'The catalog is entitlements.features.';
    END IF;
    IF feature_kind <> 'counted' THEN
        RAISE EXCEPTION 'pg_entitlements: feature "%" is %, not counted', feature, feature_kind
            USING ERRCODE = '22023', HINT = 'Set features.kind = ''counted'' first.';
    END IF;
    SELECT a.atttypid::regtype INTO col_type
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = workspace_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF col_type IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: table % has no column "%"', tbl, workspace_column
            USING ERRCODE = '22023';
    END IF;
    IF col_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'pg_entitlements: column "%" of % is %, not uuid', workspace_column, tbl, col_type
            USING ERRCODE = '22023';
    END IF;
    -- As attach_workspace_table: runs as the extension's owner, so only for tables the calling
    -- session could put a trigger on itself.
    IF NOT pg_catalog.pg_has_role(session_user,
                                  (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = tbl),
                                  'USAGE') THEN
        RAISE EXCEPTION 'pg_entitlements: must be the owner of table % to attach a limit to it', tbl
            USING ERRCODE = '42501';
    END IF;
    -- No row may change while the count is taken and the triggers installed.
    EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', tbl);
    PERFORM entitlements.detach_limit(tbl, feature);
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR DELETE OR UPDATE OF %I ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION entitlements.limit_trigger(%L, %L)',
                   left('entitlements_limit_' || feature, 63), workspace_column, tbl, workspace_column, feature);
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION entitlements.limit_truncate_trigger(%L, %L)',
                   left('entitlements_limit_truncate_' || feature, 63), tbl, workspace_column, feature);
    -- The count starts from the rows already there.
    DELETE FROM entitlements.usage_counters uc WHERE uc.feature = attach_limit.feature;
    EXECUTE format('INSERT INTO entitlements.usage_counters (workspace_id, feature, period_start, period_end, used) '
                   'SELECT %I, %L, ''-infinity'', NULL, count(*) FROM %s WHERE %I IS NOT NULL GROUP BY 1',
                   workspace_column, feature, tbl, workspace_column);
END
$$;

-- Removes attach_limit's triggers (and the counts they kept); says whether there were any.
CREATE FUNCTION entitlements.detach_limit(tbl regclass, feature text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_any boolean := false;
    trigger_name text;
BEGIN
    IF tbl IS NULL OR feature IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: tbl and feature must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF NOT pg_catalog.pg_has_role(session_user,
                                  (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = tbl),
                                  'USAGE') THEN
        RAISE EXCEPTION 'pg_entitlements: must be the owner of table % to detach a limit from it', tbl
            USING ERRCODE = '42501';
    END IF;
    FOREACH trigger_name IN ARRAY ARRAY[left('entitlements_limit_' || feature, 63),
                                        left('entitlements_limit_truncate_' || feature, 63)] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = tbl AND t.tgname = trigger_name) THEN
            EXECUTE format('DROP TRIGGER %I ON %s', trigger_name, tbl);
            found_any := true;
        END IF;
    END LOOP;
    IF found_any THEN
        DELETE FROM entitlements.usage_counters uc WHERE uc.feature = detach_limit.feature;
    END IF;
    RETURN found_any;
END
$$;
