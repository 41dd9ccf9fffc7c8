-- pg_entitlements 0.1.0 -> 0.2.0. Every statement here brings a 0.1.0 database to exactly
-- what CREATE EXTENSION makes in 0.2.0 (tests/upgrade.rs compares the two, object by
-- object), keeping every row. Function bodies are copied from sql/*.sql verbatim.

-- ---------------------------------------------------------------------------------------
-- The matrix becomes a view over the resolver: drop the table and what kept it in step.
-- ---------------------------------------------------------------------------------------
DROP TRIGGER billing_state_truncate ON entitlements.billing_state;
DROP TRIGGER overrides_truncate ON entitlements.overrides;
DROP TRIGGER tiers_after ON entitlements.tiers;
DROP TRIGGER features_after ON entitlements.features;
DROP TRIGGER overrides_after ON entitlements.overrides;
DROP TRIGGER billing_state_after ON entitlements.billing_state;
DROP FUNCTION entitlements.catalog_after();
DROP FUNCTION entitlements.overrides_after();
DROP FUNCTION entitlements.resync_workspace(uuid);
-- Take the table out of the extension's configuration tables first (pg_dump reads them).
UPDATE pg_catalog.pg_extension e
   SET (extconfig, extcondition) = (
       SELECT pg_catalog.array_agg(c.rel ORDER BY c.ord), pg_catalog.array_agg(c.cond ORDER BY c.ord)
         FROM ROWS FROM (pg_catalog.unnest(e.extconfig), pg_catalog.unnest(e.extcondition))
              WITH ORDINALITY AS c(rel, cond, ord)
        WHERE c.rel OPERATOR(pg_catalog.<>) 'entitlements.entitlements'::pg_catalog.regclass)
 WHERE e.extname OPERATOR(pg_catalog.=) 'pg_entitlements';
DROP TABLE entitlements.entitlements;

CREATE OR REPLACE FUNCTION entitlements.refresh_entitlements() RETURNS bigint
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT 0::bigint $$;

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


CREATE OR REPLACE FUNCTION entitlements.register_workspace(workspace_id uuid) RETURNS void
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

CREATE OR REPLACE FUNCTION entitlements.billing_state_before() RETURNS trigger
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

CREATE OR REPLACE FUNCTION entitlements.billing_state_after() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO entitlements.workspaces (workspace_id) VALUES (NEW.workspace_id)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE TRIGGER billing_state_after AFTER INSERT OR UPDATE OF workspace_id ON entitlements.billing_state
    FOR EACH ROW EXECUTE FUNCTION entitlements.billing_state_after();


CREATE OR REPLACE FUNCTION entitlements.attach_workspace_table(tbl regclass, id_column name) RETURNS void
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
    EXECUTE format('CREATE TRIGGER entitlements_register_workspace AFTER INSERT ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION entitlements.register_workspace_trigger(%L)',
                   tbl, id_column);
    -- Workspaces that existed before the table was attached are registered now.
    EXECUTE format('SELECT entitlements.register_workspace(%I) FROM %s WHERE %I IS NOT NULL',
                   id_column, tbl, id_column);
END
$$;

CREATE VIEW entitlements.entitlements WITH (security_invoker = true) AS
SELECT w.workspace_id, d.feature, d.tier, d.enabled, d.reason AS reason_code, d.valid_until,
       pg_catalog.clock_timestamp() AS updated_at
  FROM entitlements.workspaces w
 CROSS JOIN LATERAL entitlements.decide_all(w.workspace_id) d;


-- ---------------------------------------------------------------------------------------
-- The audit trail: who asked, for real; kept by pg_dump; guarded under replication too.
-- ---------------------------------------------------------------------------------------
ALTER TABLE entitlements.entitlement_checks
    ADD COLUMN session_role text,
    ADD COLUMN connection_addr inet;
SELECT pg_catalog.pg_extension_config_dump('entitlements.entitlement_checks', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.entitlement_checks_id_seq', '');
ALTER TABLE entitlements.entitlement_checks ENABLE ALWAYS TRIGGER entitlement_checks_append_only;
-- Every database has a writer of its own, up to pg_entitlements.audit_max_databases: this
-- tells whether this database can have one (as generated by pgrx).
CREATE  FUNCTION entitlements."audit_can_store_here"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'audit_can_store_here_wrapper';
-- The counters gain the drops by cause (columns at the end): a function's result type
-- cannot change in place. The grants below (pg_monitor) apply to the new one.
DROP FUNCTION entitlements.audit_statistics();
CREATE  FUNCTION entitlements."audit_statistics"() RETURNS TABLE (
	"queued" bigint,  /* i64 */
	"written" bigint,  /* i64 */
	"dropped" bigint,  /* i64 */
	"pending" bigint,  /* i64 */
	"last_flush_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"writer_running" bool,  /* bool */
	"dropped_queue_full" bigint,  /* i64 */
	"dropped_no_writer" bigint,  /* i64 */
	"dropped_standby" bigint,  /* i64 */
	"dropped_refused" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'audit_statistics_wrapper';

-- ---------------------------------------------------------------------------------------
-- Stripe: no secrets in pg_statistic; customer locks on rows only the extension writes; the
-- event ledger's arrival order survives a restore.
-- ---------------------------------------------------------------------------------------
ALTER TABLE entitlements.webhook_secrets ALTER COLUMN secret SET STATISTICS 0;
DELETE FROM pg_catalog.pg_statistic
 WHERE starelid = 'entitlements.webhook_secrets'::pg_catalog.regclass
   AND staattnum = (SELECT a.attnum FROM pg_catalog.pg_attribute a
                     WHERE a.attrelid = 'entitlements.webhook_secrets'::pg_catalog.regclass
                       AND a.attname = 'secret');
CREATE TABLE entitlements.stripe_customer_locks (
    customer_id text PRIMARY KEY
);

ALTER TABLE entitlements.stripe_customer_locks ENABLE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_events_arrival_seq', '');

-- ---------------------------------------------------------------------------------------
-- Least privilege (sql/security.sql): the roles, the writer's policy, and the grants.
-- ---------------------------------------------------------------------------------------
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'entitlements_app') THEN
        CREATE ROLE entitlements_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'entitlements_webhook') THEN
        CREATE ROLE entitlements_webhook NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'entitlements_audit_writer') THEN
        CREATE ROLE entitlements_audit_writer NOLOGIN;
    END IF;
END
$roles$;
COMMENT ON ROLE entitlements_app IS 'pg_entitlements: grant to application login roles (checks, tenant reads, identity)';
COMMENT ON ROLE entitlements_webhook IS 'pg_entitlements: grant to the role of the Stripe webhook layer (apply_stripe_event)';
COMMENT ON ROLE entitlements_audit_writer IS 'pg_entitlements: the audit writer stores rows as this role';

-- The audit writer's INSERT (the table forces RLS, for its owner too).
CREATE POLICY audit_writer_inserts ON entitlements.entitlement_checks FOR INSERT
    TO entitlements_audit_writer WITH CHECK (true);

-- ---------------------------------------------------------------------------------------
-- Grants: first nothing for PUBLIC, then exactly what each role needs.
-- ---------------------------------------------------------------------------------------
REVOKE ALL ON SCHEMA entitlements FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA entitlements FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA entitlements FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA entitlements FROM PUBLIC;

GRANT USAGE ON SCHEMA entitlements TO entitlements_app, entitlements_webhook, entitlements_audit_writer, pg_monitor;

-- Applications: the checks and what RLS policies and views call on their behalf.
GRANT EXECUTE ON FUNCTION
    entitlements.entitlement_check(uuid, text),
    entitlements.entitlement_check_all(uuid),
    entitlements.has_entitlement(uuid, text),
    entitlements.current_user_id(),
    entitlements.is_member(uuid),
    entitlements.decide_all(uuid),
    entitlements.past_due_grace(),
    entitlements.cache_enabled(),
    entitlements.flush_audit()
  TO entitlements_app;
-- Reading is filtered by RLS to the workspaces the asserted identity is a member of.
GRANT SELECT ON entitlements.tiers, entitlements.features, entitlements.workspaces,
                entitlements.billing_state, entitlements.entitlements, entitlements.overrides,
                entitlements.workspace_members, entitlements.entitlements_current,
                entitlements.billing_status_current, entitlements.entitlement_checks,
                entitlements.entitlement_checks_summary, entitlements.denials_by_reason
   TO entitlements_app;
-- Asserting an identity is the application's privilege, not every connected role's.
GRANT SET ON PARAMETER pg_entitlements.user_id TO entitlements_app;

-- The webhook layer hands over Stripe's deliveries, nothing else (the function is SECURITY
-- DEFINER: it verifies, records and applies without the caller reading or writing a table).
GRANT EXECUTE ON FUNCTION entitlements.apply_stripe_event(text, text) TO entitlements_webhook;

-- The audit writer stores rows, nothing else.
GRANT INSERT ON entitlements.entitlement_checks TO entitlements_audit_writer;

-- Monitoring: the counters span every database of the cluster.
GRANT EXECUTE ON FUNCTION
    entitlements.cache_statistics(),
    entitlements.audit_statistics(),
    entitlements.cache_shared_memory(),
    entitlements.cache_enabled()
  TO pg_monitor;

-- Everything else (the admin functions, the Stripe functions, prune_audit, the cache's
-- manual invalidation, the entitlement_cache view) is for superusers and the roles a DBA
-- grants it to: docs/SECURITY.md lists them.
