-- pg_entitlements audit trail: one row per audited check, written by the audit writer (a
-- background worker) outside the caller's transaction. Append-only for every role: a
-- statement trigger refuses UPDATE, DELETE, TRUNCATE and direct INSERTs (the writer,
-- entitlements.prune_audit and a superuser loading an empty trail, as a restore does, are the
-- only exceptions), and forced RLS lets members read
-- their own workspaces' rows only. Grants are in sql/security.sql.

CREATE TABLE entitlements.entitlement_checks (
    id bigint GENERATED ALWAYS AS IDENTITY (CACHE 1000),  -- the writer inserts thousands a second
    checked_at timestamptz NOT NULL,
    workspace_id uuid NOT NULL,
    user_id text,
    feature text NOT NULL,
    result boolean NOT NULL,
    reason text,
    cached boolean NOT NULL,
    user_agent text,
    ip_address inet,
    session_role text,        -- the database role of the session (session_user)
    connection_addr inet      -- the connection's own address (inet_client_addr())
);
-- pg_dump keeps the trail (and where its ids stand); the guard below lets a superuser load
-- rows into an empty trail, which is what a restore does.
SELECT pg_catalog.pg_extension_config_dump('entitlements.entitlement_checks', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.entitlement_checks_id_seq', '');
CREATE INDEX entitlement_checks_workspace_time_idx
    ON entitlements.entitlement_checks (workspace_id, checked_at DESC);

CREATE TRIGGER entitlement_checks_append_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.entitlement_checks
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.entitlement_checks_append_only();
-- ALWAYS: session_replication_role = replica must not switch the guard off.
ALTER TABLE entitlements.entitlement_checks ENABLE ALWAYS TRIGGER entitlement_checks_append_only;

ALTER TABLE entitlements.entitlement_checks ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.entitlement_checks FORCE ROW LEVEL SECURITY;
-- The predicate of entitlements.is_member, written out: that function is created in
-- sql/api.sql, which runs last (finalize), after this file.
CREATE POLICY members_read ON entitlements.entitlement_checks FOR SELECT
    USING (workspace_id IN (SELECT m.workspace_id FROM entitlements.workspace_members m
                             WHERE m.user_id = entitlements.current_user_id()));

-- Views run as the caller (security_invoker), so the policy above applies to them too.
CREATE VIEW entitlements.entitlement_checks_summary WITH (security_invoker = true) AS
SELECT workspace_id,
       count(*) AS check_count,
       count(*) FILTER (WHERE result) AS allowed,
       count(*) FILTER (WHERE NOT result) AS denied,
       count(*) FILTER (WHERE cached) AS cached,
       round(100.0 * count(*) FILTER (WHERE cached) / count(*), 1) AS cache_hit_rate_pct
  FROM entitlements.entitlement_checks
 WHERE checked_at >= now() - interval '30 days'
 GROUP BY workspace_id;

CREATE VIEW entitlements.denials_by_reason WITH (security_invoker = true) AS
SELECT workspace_id,
       reason,
       count(*) AS denials,
       max(checked_at) AS last_denied_at
  FROM entitlements.entitlement_checks
 WHERE NOT result AND checked_at >= now() - interval '30 days'
 GROUP BY workspace_id, reason;

-- Every database's records are stored in that database, by a writer of its own; the number
-- of writers is bounded (pg_entitlements.audit_max_databases). Say so now when this
-- database gets none, rather than let its records be dropped unnoticed.
DO $$
BEGIN
    IF NOT entitlements.audit_can_store_here() THEN
        RAISE WARNING 'pg_entitlements: the audit records of this database will be dropped: every audit writer serves another database'
            USING HINT = 'Raise pg_entitlements.audit_max_databases in postgresql.conf (and max_worker_processes) and restart the server.';
    END IF;
END
$$;
