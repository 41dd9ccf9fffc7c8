-- pg_entitlements: the write paths, the triggers that keep derived state right, and views.
-- Row-level security and grants are in sql/security.sql, which runs last.
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
-- The matrix, entitlements.entitlements, is a view over the resolver (below, with the other
-- views): it is never stale, costs nothing to keep, and a catalog edit does not depend on the
-- number of workspaces. refresh_entitlements() is kept for scripts that call it.
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.refresh_entitlements() RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 0::bigint $$;

-- Registering an already registered workspace is a no-op that keeps the earliest
-- registration time (so registering again, and a restore that meets a workspace registered by
-- a trigger during the same restore, agree).
CREATE FUNCTION entitlements.workspaces_register_once() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE entitlements.workspaces w SET registered_at = NEW.registered_at
     WHERE w.workspace_id = NEW.workspace_id AND w.registered_at > NEW.registered_at;
    IF FOUND OR EXISTS (SELECT 1 FROM entitlements.workspaces w WHERE w.workspace_id = NEW.workspace_id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER workspaces_register_once BEFORE INSERT ON entitlements.workspaces
    FOR EACH ROW EXECUTE FUNCTION entitlements.workspaces_register_once();

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
END
$$;

-- Unregistering removes what the extension keeps for the workspace's decisions: the
-- registration, its members, its overrides, what Stripe grants it and its billing state (a
-- returning workspace starts as free, like a new one). The billing history (stripe_events,
-- stripe_customers, stripe_subscriptions) and the audit trail stay: replay_stripe_events(workspace_id) rebuilds
-- the billing state from that history, and a later Stripe event for a customer still linked to
-- the workspace registers it again, as any billing state does.
CREATE FUNCTION entitlements.unregister_workspace(workspace_id uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF workspace_id IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: workspace_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    DELETE FROM entitlements.workspace_members m WHERE m.workspace_id = unregister_workspace.workspace_id;
    DELETE FROM entitlements.overrides o WHERE o.workspace_id = unregister_workspace.workspace_id;
    DELETE FROM entitlements.stripe_feature_grants g WHERE g.workspace_id = unregister_workspace.workspace_id;
    DELETE FROM entitlements.billing_state b WHERE b.workspace_id = unregister_workspace.workspace_id;
    DELETE FROM entitlements.workspaces w WHERE w.workspace_id = unregister_workspace.workspace_id;
    RETURN FOUND;
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
    -- A new row keeps the updated_at it was given (the default is now(); a restore gives
    -- the original); a change is stamped now.
    IF TG_OP = 'UPDATE' THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$$;

-- A workspace with billing state is a registered workspace.
CREATE FUNCTION entitlements.billing_state_after() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO entitlements.workspaces (workspace_id) VALUES (NEW.workspace_id)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER billing_state_before BEFORE INSERT OR UPDATE ON entitlements.billing_state
    FOR EACH ROW EXECUTE FUNCTION entitlements.billing_state_before();
CREATE TRIGGER billing_state_after AFTER INSERT OR UPDATE OF workspace_id ON entitlements.billing_state
    FOR EACH ROW EXECUTE FUNCTION entitlements.billing_state_after();

-- ---------------------------------------------------------------------------------------
-- The shared decision cache follows transactions: any statement that changes an input of the
-- decision (or who may ask: workspace_members) marks its transaction (which then bypasses the
-- cache until it ends) and queues a relcache invalidation that reaches hot standbys through
-- the WAL. At commit, a change to the catalog (tiers, features) or a TRUNCATE invalidates
-- every entry (feature_limits, the tiers' usage limits, counts as catalog: sql/limits.sql puts
-- the same triggers on it and on limit_overrides); a change to rows of billing_state,
-- overrides, limit_overrides or workspace_members invalidates
-- the entries of the workspaces those rows belong to, which the AFTER triggers name from the
-- statement's transition tables (more than 1024 in a statement: every entry).
-- ENABLE ALWAYS: the triggers fire under session_replication_role = replica too (tools that
-- replay changes in that role; a logical subscriber's apply fires the row triggers below).
-- ---------------------------------------------------------------------------------------
-- The relation whose invalidation messages carry "a decision input changed" to hot standbys:
-- every change above queues one for it. Nothing reads it; a message naming an input table
-- itself would also make every backend of the primary re-plan its statements on that table
-- after each write.
CREATE VIEW entitlements.cache_signal AS SELECT WHERE false;
COMMENT ON VIEW entitlements.cache_signal IS
    'pg_entitlements: carries decision-cache invalidations to hot standbys; holds no data';

CREATE FUNCTION entitlements.cache_invalidate_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- The catalog decides for every workspace, and a TRUNCATE names no rows.
    IF TG_OP = 'TRUNCATE' OR TG_TABLE_NAME IN ('tiers', 'features', 'feature_limits') THEN
        PERFORM entitlements.note_decision_inputs_changed(TG_RELID);
    ELSE
        PERFORM entitlements.note_workspace_statement(TG_RELID);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION entitlements.cache_invalidate_rows_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM entitlements.note_workspaces_changed(TG_RELID,
            ARRAY(SELECT DISTINCT n.workspace_id FROM new_rows n LIMIT 1025));
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM entitlements.note_workspaces_changed(TG_RELID,
            ARRAY(SELECT o.workspace_id FROM old_rows o UNION SELECT n.workspace_id FROM new_rows n LIMIT 1025));
    ELSE
        PERFORM entitlements.note_workspaces_changed(TG_RELID,
            ARRAY(SELECT DISTINCT o.workspace_id FROM old_rows o LIMIT 1025));
    END IF;
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
-- Membership decides who may ask; backends remember it per workspace version.
CREATE TRIGGER cache_invalidate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.workspace_members
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_trigger();
ALTER TABLE entitlements.billing_state ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE entitlements.overrides ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE entitlements.features ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE entitlements.tiers ENABLE ALWAYS TRIGGER cache_invalidate;
ALTER TABLE entitlements.workspace_members ENABLE ALWAYS TRIGGER cache_invalidate;
CREATE TRIGGER cache_invalidate_inserted AFTER INSERT ON entitlements.billing_state
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
CREATE TRIGGER cache_invalidate_updated AFTER UPDATE ON entitlements.billing_state
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
CREATE TRIGGER cache_invalidate_deleted AFTER DELETE ON entitlements.billing_state
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
ALTER TABLE entitlements.billing_state ENABLE ALWAYS TRIGGER cache_invalidate_inserted;
ALTER TABLE entitlements.billing_state ENABLE ALWAYS TRIGGER cache_invalidate_updated;
ALTER TABLE entitlements.billing_state ENABLE ALWAYS TRIGGER cache_invalidate_deleted;
CREATE TRIGGER cache_invalidate_inserted AFTER INSERT ON entitlements.overrides
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
CREATE TRIGGER cache_invalidate_updated AFTER UPDATE ON entitlements.overrides
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
CREATE TRIGGER cache_invalidate_deleted AFTER DELETE ON entitlements.overrides
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
ALTER TABLE entitlements.overrides ENABLE ALWAYS TRIGGER cache_invalidate_inserted;
ALTER TABLE entitlements.overrides ENABLE ALWAYS TRIGGER cache_invalidate_updated;
ALTER TABLE entitlements.overrides ENABLE ALWAYS TRIGGER cache_invalidate_deleted;
CREATE TRIGGER cache_invalidate_inserted AFTER INSERT ON entitlements.workspace_members
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
CREATE TRIGGER cache_invalidate_updated AFTER UPDATE ON entitlements.workspace_members
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
CREATE TRIGGER cache_invalidate_deleted AFTER DELETE ON entitlements.workspace_members
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.cache_invalidate_rows_trigger();
ALTER TABLE entitlements.workspace_members ENABLE ALWAYS TRIGGER cache_invalidate_inserted;
ALTER TABLE entitlements.workspace_members ENABLE ALWAYS TRIGGER cache_invalidate_updated;
ALTER TABLE entitlements.workspace_members ENABLE ALWAYS TRIGGER cache_invalidate_deleted;

-- Logical replication: the apply worker fires row triggers only, never statement triggers, and
-- runs with session_replication_role = replica. So each input table also carries a row trigger
-- enabled for that role alone (ENABLE REPLICA: it never fires in ordinary sessions, which the
-- statement triggers above cover), naming the row's workspace (or, for the catalog,
-- everything) as a statement would: a subscriber's cache follows applied changes exactly.
CREATE FUNCTION entitlements.cache_invalidate_applied_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_TABLE_NAME IN ('tiers', 'features', 'feature_limits') THEN
        PERFORM entitlements.note_decision_inputs_changed(TG_RELID);
        RETURN NULL;
    END IF;
    -- One statement's worth of bookkeeping per row: counted, then named.
    PERFORM entitlements.note_workspace_statement(TG_RELID);
    IF TG_OP = 'INSERT' THEN
        PERFORM entitlements.note_workspaces_changed(TG_RELID, ARRAY[NEW.workspace_id]);
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM entitlements.note_workspaces_changed(TG_RELID, ARRAY[OLD.workspace_id, NEW.workspace_id]);
    ELSE
        PERFORM entitlements.note_workspaces_changed(TG_RELID, ARRAY[OLD.workspace_id]);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.billing_state
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.billing_state ENABLE REPLICA TRIGGER cache_invalidate_applied;
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.overrides
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.overrides ENABLE REPLICA TRIGGER cache_invalidate_applied;
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.features
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.features ENABLE REPLICA TRIGGER cache_invalidate_applied;
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.tiers
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.tiers ENABLE REPLICA TRIGGER cache_invalidate_applied;
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.workspace_members
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.workspace_members ENABLE REPLICA TRIGGER cache_invalidate_applied;

-- ---------------------------------------------------------------------------------------
-- Change notifications for application caches: NOTIFY pg_entitlements_changed with
-- {"workspace_id": ..., "changed": "billing" | "override" | "membership" | "catalog"} for every
-- write to a decision input (a catalog edit or a TRUNCATE names workspace "*": every
-- workspace). NOTIFY is transactional: delivered when the transaction commits, never after a
-- rollback, and PostgreSQL folds identical payloads of one transaction into one, so a
-- transaction sends one notification per (workspace, kind of change).
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.notify_changed() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- TG_ARGV[0]: the kind of change.
    IF TG_ARGV[0] = 'catalog' OR TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('pg_entitlements_changed',
                          json_build_object('workspace_id', '*', 'changed', TG_ARGV[0])::text);
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('pg_entitlements_changed',
                          json_build_object('workspace_id', OLD.workspace_id, 'changed', TG_ARGV[0])::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('pg_entitlements_changed',
                          json_build_object('workspace_id', NEW.workspace_id, 'changed', TG_ARGV[0])::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER notify_changed AFTER INSERT OR UPDATE OR DELETE ON entitlements.billing_state
    FOR EACH ROW EXECUTE FUNCTION entitlements.notify_changed('billing');
CREATE TRIGGER notify_changed AFTER INSERT OR UPDATE OR DELETE ON entitlements.overrides
    FOR EACH ROW EXECUTE FUNCTION entitlements.notify_changed('override');
CREATE TRIGGER notify_changed AFTER INSERT OR UPDATE OR DELETE ON entitlements.workspace_members
    FOR EACH ROW EXECUTE FUNCTION entitlements.notify_changed('membership');
CREATE TRIGGER notify_changed AFTER INSERT OR UPDATE OR DELETE ON entitlements.tiers
    FOR EACH ROW EXECUTE FUNCTION entitlements.notify_changed('catalog');
CREATE TRIGGER notify_changed AFTER INSERT OR UPDATE OR DELETE ON entitlements.features
    FOR EACH ROW EXECUTE FUNCTION entitlements.notify_changed('catalog');
CREATE TRIGGER notify_truncated AFTER TRUNCATE ON entitlements.billing_state
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.notify_changed('billing');
CREATE TRIGGER notify_truncated AFTER TRUNCATE ON entitlements.overrides
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.notify_changed('override');
CREATE TRIGGER notify_truncated AFTER TRUNCATE ON entitlements.workspace_members
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.notify_changed('membership');
CREATE TRIGGER notify_truncated AFTER TRUNCATE ON entitlements.tiers
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.notify_changed('catalog');
CREATE TRIGGER notify_truncated AFTER TRUNCATE ON entitlements.features
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.notify_changed('catalog');
-- Like the cache's invalidation: under session_replication_role = replica too.
ALTER TABLE entitlements.billing_state ENABLE ALWAYS TRIGGER notify_changed;
ALTER TABLE entitlements.overrides ENABLE ALWAYS TRIGGER notify_changed;
ALTER TABLE entitlements.workspace_members ENABLE ALWAYS TRIGGER notify_changed;
ALTER TABLE entitlements.tiers ENABLE ALWAYS TRIGGER notify_changed;
ALTER TABLE entitlements.features ENABLE ALWAYS TRIGGER notify_changed;
ALTER TABLE entitlements.billing_state ENABLE ALWAYS TRIGGER notify_truncated;
ALTER TABLE entitlements.overrides ENABLE ALWAYS TRIGGER notify_truncated;
ALTER TABLE entitlements.workspace_members ENABLE ALWAYS TRIGGER notify_truncated;
ALTER TABLE entitlements.tiers ENABLE ALWAYS TRIGGER notify_truncated;
ALTER TABLE entitlements.features ENABLE ALWAYS TRIGGER notify_truncated;

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

-- Registers every new row of the app's own workspaces table, and unregisters deleted ones.
CREATE FUNCTION entitlements.register_workspace_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ws uuid;
BEGIN
    IF TG_OP = 'DELETE' THEN
        ws := (to_jsonb(OLD) ->> TG_ARGV[0])::uuid;
        IF ws IS NOT NULL THEN
            PERFORM entitlements.unregister_workspace(ws);
        END IF;
    ELSE
        ws := (to_jsonb(NEW) ->> TG_ARGV[0])::uuid;
        IF ws IS NOT NULL THEN
            PERFORM entitlements.register_workspace(ws);
        END IF;
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
    -- This function runs as the extension's owner: it must not become a way to put a trigger
    -- on (and read the ids of) a table the calling session could not alter itself.
    IF NOT pg_catalog.pg_has_role(session_user,
                                  (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = tbl),
                                  'USAGE') THEN
        RAISE EXCEPTION 'pg_entitlements: must be the owner of table % to attach it', tbl
            USING ERRCODE = '42501';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                WHERE t.tgrelid = tbl AND t.tgname = 'entitlements_register_workspace') THEN
        EXECUTE format('DROP TRIGGER entitlements_register_workspace ON %s', tbl);
    END IF;
    EXECUTE format('CREATE TRIGGER entitlements_register_workspace AFTER INSERT OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION entitlements.register_workspace_trigger(%L)',
                   tbl, id_column);
    -- Workspaces that existed before the table was attached are registered now.
    EXECUTE format('SELECT entitlements.register_workspace(%I) FROM %s WHERE %I IS NOT NULL',
                   id_column, tbl, id_column);
END
$$;

-- ---------------------------------------------------------------------------------------
-- Members: who may ask about a workspace. `role` is the application's own label (owner,
-- member, billing, ...): kept and shown, never acted on by the extension.
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.add_member(workspace_id uuid, user_id text, role text DEFAULT 'member')
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF workspace_id IS NULL OR user_id IS NULL OR role IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: workspace_id, user_id and role must not be NULL'
            USING ERRCODE = '22004';
    END IF;
    IF user_id = '' THEN
        RAISE EXCEPTION 'pg_entitlements: user_id must not be empty' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM entitlements.workspaces w WHERE w.workspace_id = add_member.workspace_id) THEN
        RAISE EXCEPTION 'pg_entitlements: workspace % is not registered', workspace_id
            USING ERRCODE = '22023',
                  HINT = 'Register it first: entitlements.register_workspace(workspace_id), or attach the workspaces table.';
    END IF;
    INSERT INTO entitlements.workspace_members AS m (workspace_id, user_id, role)
    VALUES (add_member.workspace_id, add_member.user_id, add_member.role)
    ON CONFLICT ON CONSTRAINT workspace_members_pkey DO UPDATE SET role = EXCLUDED.role
     WHERE m.role IS DISTINCT FROM EXCLUDED.role;
END
$$;

CREATE FUNCTION entitlements.remove_member(workspace_id uuid, user_id text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM entitlements.workspace_members m
     WHERE m.workspace_id = remove_member.workspace_id AND m.user_id = remove_member.user_id;
    RETURN FOUND;
END
$$;

-- Keeps workspace_members in step with a membership table of the app's own. TG_ARGV: the
-- workspace column, the user column. A pair the app's table still holds in another row stays
-- a member (the app's table may list a pair twice). A new pair's workspace is registered:
-- the app's row says the workspace exists.
CREATE FUNCTION entitlements.membership_table_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_ws uuid;
    old_user text;
    new_ws uuid;
    new_user text;
    still_there boolean;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_ws := (to_jsonb(OLD) ->> TG_ARGV[0])::uuid;
        old_user := to_jsonb(OLD) ->> TG_ARGV[1];
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_ws := (to_jsonb(NEW) ->> TG_ARGV[0])::uuid;
        new_user := to_jsonb(NEW) ->> TG_ARGV[1];
    END IF;
    IF old_ws IS NOT NULL AND old_user IS NOT NULL
       AND (old_ws IS DISTINCT FROM new_ws OR old_user IS DISTINCT FROM new_user) THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I = $1 AND %I::text = $2)',
                       TG_RELID::regclass, TG_ARGV[0], TG_ARGV[1])
           INTO still_there USING old_ws, old_user;
        IF NOT still_there THEN
            DELETE FROM entitlements.workspace_members m
             WHERE m.workspace_id = old_ws AND m.user_id = old_user;
        END IF;
    END IF;
    IF new_ws IS NOT NULL AND new_user IS NOT NULL AND new_user <> '' THEN
        PERFORM entitlements.register_workspace(new_ws);
        INSERT INTO entitlements.workspace_members (workspace_id, user_id) VALUES (new_ws, new_user)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION entitlements.attach_membership_table(tbl regclass, workspace_column name, user_column name)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    ws_type regtype;
    user_type regtype;
    user_category "char";
BEGIN
    IF tbl IS NULL OR workspace_column IS NULL OR user_column IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: tbl, workspace_column and user_column must not be NULL'
            USING ERRCODE = '22004';
    END IF;
    SELECT a.atttypid::regtype INTO ws_type
      FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = workspace_column AND a.attnum > 0 AND NOT a.attisdropped;
    SELECT a.atttypid::regtype, t.typcategory INTO user_type, user_category
      FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = tbl AND a.attname = user_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF ws_type IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: table % has no column "%"', tbl, workspace_column
            USING ERRCODE = '22023';
    END IF;
    IF user_type IS NULL THEN
        RAISE EXCEPTION 'pg_entitlements: table % has no column "%"', tbl, user_column
            USING ERRCODE = '22023';
    END IF;
    IF ws_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'pg_entitlements: column "%" of % is %, not uuid', workspace_column, tbl, ws_type
            USING ERRCODE = '22023';
    END IF;
    -- The string category: text, varchar, char, name (and citext).
    IF user_category <> 'S' THEN
        RAISE EXCEPTION 'pg_entitlements: column "%" of % is %, not text', user_column, tbl, user_type
            USING ERRCODE = '22023';
    END IF;
    -- As for attach_workspace_table: this runs as the extension's owner and must not become a
    -- way to put a trigger on (and read) a table the calling session could not alter itself.
    IF NOT pg_catalog.pg_has_role(session_user,
                                  (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = tbl),
                                  'USAGE') THEN
        RAISE EXCEPTION 'pg_entitlements: must be the owner of table % to attach it', tbl
            USING ERRCODE = '42501';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                WHERE t.tgrelid = tbl AND t.tgname = 'entitlements_sync_membership') THEN
        EXECUTE format('DROP TRIGGER entitlements_sync_membership ON %s', tbl);
    END IF;
    EXECUTE format('CREATE TRIGGER entitlements_sync_membership AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION entitlements.membership_table_trigger(%L, %L)',
                   tbl, workspace_column, user_column);
    -- The memberships that existed before the table was attached are imported now.
    EXECUTE format('SELECT entitlements.register_workspace(w) FROM (SELECT DISTINCT %I AS w FROM %s '
                   'WHERE %I IS NOT NULL AND %I IS NOT NULL) s',
                   workspace_column, tbl, workspace_column, user_column);
    EXECUTE format('INSERT INTO entitlements.workspace_members (workspace_id, user_id) '
                   'SELECT DISTINCT %I, %I::text FROM %s WHERE %I IS NOT NULL AND %I IS NOT NULL '
                   'AND %I::text <> '''' ON CONFLICT DO NOTHING',
                   workspace_column, user_column, tbl, workspace_column, user_column, user_column);
END
$$;

-- ---------------------------------------------------------------------------------------
-- Views. security_invoker: a member sees the rows of their own workspaces only.
-- ---------------------------------------------------------------------------------------
-- The per-workspace feature matrix: one row per (registered workspace, catalog feature),
-- decided now by the same resolver as the checks. valid_until: when the decision may change by
-- the clock alone (trial end, grace end, override expiry); updated_at: when it was evaluated.
CREATE VIEW entitlements.entitlements WITH (security_invoker = true) AS
SELECT w.workspace_id, d.feature, d.tier, d.enabled, d.reason, d.valid_until,
       pg_catalog.clock_timestamp() AS updated_at
  FROM entitlements.workspaces w
 CROSS JOIN LATERAL entitlements.decide_all(w.workspace_id) d;

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
