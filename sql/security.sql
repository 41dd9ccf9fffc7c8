-- pg_entitlements: who may do what. Runs last (finalize), after every table, view and
-- function exists. docs/SECURITY.md states the trust model this file implements.
--
-- Least privilege: nothing in schema entitlements is granted to PUBLIC. Five roles carry
-- what the product's users need (roles are cluster-wide: created by the first CREATE
-- EXTENSION, kept when the extension is dropped, as any role):
--   entitlements_app           what an application role needs: the checks, reading its
--                              tenants' rows through RLS, asserting an identity
--                              (SET pg_entitlements.user_id). Grant it to the app's login role.
--   entitlements_webhook       what the webhook layer needs: apply_stripe_event.
--   entitlements_audit_writer  the only rights the audit writer stores rows with: INSERT on
--                              the audit table. Nobody logs in as it.
--   entitlements_admin         billing, catalog and membership administration: the admin
--                              functions and writes to the catalog, overrides, members and
--                              the Stripe price map.
--   entitlements_reader        read-only, every workspace (support, analytics); never the
--                              webhook secrets.
--   pg_monitor                 (PostgreSQL's own) the cluster-wide counters.

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
DO $more_roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'entitlements_admin') THEN
        CREATE ROLE entitlements_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'entitlements_reader') THEN
        CREATE ROLE entitlements_reader NOLOGIN;
    END IF;
END
$more_roles$;
COMMENT ON ROLE entitlements_admin IS 'pg_entitlements: grant to roles that administer billing, the catalog, overrides and members';
COMMENT ON ROLE entitlements_reader IS 'pg_entitlements: grant to read-only roles (support, analytics): every workspace, no writes, no secrets';

-- ---------------------------------------------------------------------------------------
-- Row-level security: members read their own workspaces' rows; nobody but privileged roles
-- writes directly (there are no write grants); writes go through the functions.
-- ---------------------------------------------------------------------------------------
ALTER TABLE entitlements.tiers ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.features ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.workspaces ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.billing_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.overrides ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.workspace_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.feature_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.limit_overrides ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.usage_counters ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.usage_periods ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.usage_idempotency ENABLE ROW LEVEL SECURITY;

CREATE POLICY catalog_is_public ON entitlements.tiers FOR SELECT USING (true);
CREATE POLICY catalog_is_public ON entitlements.features FOR SELECT USING (true);
CREATE POLICY members_read ON entitlements.workspaces FOR SELECT
    USING (entitlements.is_member(workspace_id));
CREATE POLICY members_read ON entitlements.billing_state FOR SELECT
    USING (entitlements.is_member(workspace_id));
CREATE POLICY members_read ON entitlements.overrides FOR SELECT
    USING (entitlements.is_member(workspace_id));
CREATE POLICY own_memberships ON entitlements.workspace_members FOR SELECT
    USING (user_id = entitlements.current_user_id());
-- Limits and usage: the checks read them as the caller. Only consume() and refund() (as the
-- extension's owner) write usage; the idempotency answers are read by nobody else.
CREATE POLICY catalog_is_public ON entitlements.feature_limits FOR SELECT USING (true);
CREATE POLICY members_read ON entitlements.limit_overrides FOR SELECT
    USING (entitlements.is_member(workspace_id));
CREATE POLICY members_read ON entitlements.usage_counters FOR SELECT
    USING (entitlements.is_member(workspace_id));
CREATE POLICY members_read ON entitlements.usage_periods FOR SELECT
    USING (entitlements.is_member(workspace_id));
-- Stripe grants: the checks read them as the caller, like overrides.
CREATE POLICY members_read ON entitlements.stripe_feature_grants FOR SELECT
    USING (entitlements.is_member(workspace_id));

-- The audit writer's INSERT (the table forces RLS, for its owner too).
CREATE POLICY audit_writer_inserts ON entitlements.entitlement_checks FOR INSERT
    TO entitlements_audit_writer WITH CHECK (true);
-- ... and its rollups, which it adds to (INSERT ... ON CONFLICT DO UPDATE reads the row it
-- updates, so SELECT and UPDATE too; the guard refuses updates from anyone else).
CREATE POLICY audit_writer_rolls_up ON entitlements.entitlement_check_rollups
    TO entitlements_audit_writer USING (true) WITH CHECK (true);
CREATE POLICY audit_writer_rolls_up ON entitlements.entitlement_check_daily
    TO entitlements_audit_writer USING (true) WITH CHECK (true);

-- Admins write the catalog, overrides, members and the Stripe price map directly; readers
-- read every workspace's rows (never the webhook secrets: no policy, no grant).
CREATE POLICY admin_writes ON entitlements.tiers TO entitlements_admin USING (true) WITH CHECK (true);
CREATE POLICY admin_writes ON entitlements.features TO entitlements_admin USING (true) WITH CHECK (true);
CREATE POLICY admin_writes ON entitlements.overrides TO entitlements_admin USING (true) WITH CHECK (true);
CREATE POLICY admin_writes ON entitlements.workspace_members TO entitlements_admin USING (true) WITH CHECK (true);
CREATE POLICY admin_writes ON entitlements.stripe_price_tiers TO entitlements_admin USING (true) WITH CHECK (true);
CREATE POLICY admin_writes ON entitlements.stripe_price_features TO entitlements_admin USING (true) WITH CHECK (true);
CREATE POLICY admin_writes ON entitlements.stripe_feature_map TO entitlements_admin USING (true) WITH CHECK (true);
-- Admins read what Stripe grants (the stripe_grants view), every workspace; only ingestion writes it.
CREATE POLICY admin_reads ON entitlements.stripe_feature_grants FOR SELECT TO entitlements_admin USING (true);
CREATE POLICY reader_reads ON entitlements.workspaces FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.billing_state FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.overrides FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.workspace_members FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.entitlement_checks FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.entitlement_check_rollups FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.entitlement_check_daily FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.stripe_price_tiers FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.stripe_customers FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.stripe_subscriptions FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.stripe_events FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.stripe_customer_locks FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.limit_overrides FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.usage_counters FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.usage_periods FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.usage_idempotency FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.stripe_price_features FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.stripe_feature_map FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.stripe_feature_grants FOR SELECT TO entitlements_reader USING (true);
CREATE POLICY reader_reads ON entitlements.stripe_entitlement_summaries FOR SELECT TO entitlements_reader USING (true);

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
    entitlements.entitlement_check_many(uuid, text[]),
    entitlements.has_entitlement(uuid, text),
    entitlements.upgrade_options(uuid),
    entitlements.current_user_id(),
    entitlements.is_member(uuid),
    entitlements.decide_all(uuid),
    entitlements.past_due_grace(),
    entitlements.cache_enabled(),
    entitlements.flush_audit(),
    entitlements.write_token(),
    entitlements.consume(uuid, text, bigint, text),
    entitlements.refund(uuid, text, bigint, text),
    entitlements.usage(uuid, text),
    entitlements.usage_all(uuid),
    entitlements.usage_state(uuid, text, timestamptz),
    entitlements.usage_period(text, timestamptz, timestamptz, timestamptz)
  TO entitlements_app;
-- The checks read limits, usage and Stripe grants as the caller (RLS: members' workspaces only).
GRANT SELECT ON entitlements.feature_limits, entitlements.limit_overrides,
                entitlements.usage_counters, entitlements.usage_periods,
                entitlements.stripe_feature_grants
   TO entitlements_app, entitlements_reader;
-- Reading is filtered by RLS to the workspaces the asserted identity is a member of.
GRANT SELECT ON entitlements.tiers, entitlements.features, entitlements.workspaces,
                entitlements.billing_state, entitlements.entitlements, entitlements.overrides,
                entitlements.workspace_members, entitlements.entitlements_current,
                entitlements.billing_status_current, entitlements.entitlement_checks,
                entitlements.entitlement_check_rollups, entitlements.entitlement_check_daily,
                entitlements.entitlement_check_window,
                entitlements.entitlement_checks_summary, entitlements.denials_by_reason
   TO entitlements_app;
-- Asserting an identity is the application's privilege, not every connected role's.
GRANT SET ON PARAMETER pg_entitlements.user_id TO entitlements_app;

-- The webhook layer hands over Stripe's deliveries, nothing else (the function is SECURITY
-- DEFINER: it verifies, records and applies without the caller reading or writing a table).
GRANT EXECUTE ON FUNCTION entitlements.apply_stripe_event(text, text) TO entitlements_webhook;
-- ... and the full list of a customer's entitlements after a `partial` summary.
GRANT EXECUTE ON FUNCTION entitlements.apply_stripe_entitlements(text, text[], timestamptz) TO entitlements_webhook;

-- The audit writer stores rows, nothing else.
GRANT INSERT ON entitlements.entitlement_checks TO entitlements_audit_writer;
GRANT SELECT, INSERT, UPDATE ON entitlements.entitlement_check_rollups,
                                entitlements.entitlement_check_daily TO entitlements_audit_writer;

GRANT USAGE ON SCHEMA entitlements TO entitlements_admin, entitlements_reader;

-- Billing, catalog and membership administration. The functions are SECURITY DEFINER (they
-- validate before they write); the tables below may also be edited directly.
GRANT EXECUTE ON FUNCTION
    entitlements.sync_billing_state(uuid, text, text, timestamptz, timestamptz, boolean, timestamptz),
    entitlements.set_override(uuid, text, boolean, timestamptz, text),
    entitlements.set_feature_limit(text, text, bigint),
    entitlements.set_limit_override(uuid, text, bigint, timestamptz),
    entitlements.clear_limit_override(uuid, text),
    entitlements.attach_limit(regclass, name, text),
    entitlements.detach_limit(regclass, text),
    entitlements.clear_override(uuid, text),
    entitlements.register_workspace(uuid),
    entitlements.unregister_workspace(uuid),
    entitlements.add_member(uuid, text, text),
    entitlements.remove_member(uuid, text),
    entitlements.attach_workspace_table(regclass, name),
    entitlements.attach_membership_table(regclass, name, name),
    entitlements.link_stripe_customer(uuid, text),
    entitlements.replay_stripe_events(uuid),
    entitlements.add_webhook_secret(text, timestamptz),
    entitlements.revoke_webhook_secret(text),
    entitlements.map_stripe_price_feature(text, text, bigint),
    entitlements.map_stripe_feature(text, text)
  TO entitlements_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON entitlements.tiers, entitlements.features,
      entitlements.overrides, entitlements.workspace_members, entitlements.stripe_price_tiers,
      entitlements.stripe_price_features, entitlements.stripe_feature_map
   TO entitlements_admin;
GRANT SELECT ON entitlements.stripe_feature_grants, entitlements.stripe_grants TO entitlements_admin;

-- Read-only, every workspace (RLS policies reader_reads; the checks' authorization lets a
-- member of entitlements_reader read any workspace's decisions, which the matrix views need).
GRANT EXECUTE ON FUNCTION
    entitlements.current_user_id(),
    entitlements.is_member(uuid),
    entitlements.decide_all(uuid),
    entitlements.past_due_grace(),
    entitlements.usage_state(uuid, text, timestamptz),
    entitlements.usage_period(text, timestamptz, timestamptz, timestamptz)
  TO entitlements_reader;
GRANT SELECT ON entitlements.tiers, entitlements.features, entitlements.workspaces,
                entitlements.billing_state, entitlements.entitlements, entitlements.overrides,
                entitlements.workspace_members, entitlements.entitlements_current,
                entitlements.billing_status_current, entitlements.entitlement_checks,
                entitlements.entitlement_check_rollups, entitlements.entitlement_check_daily,
                entitlements.entitlement_check_window,
                entitlements.entitlement_checks_summary, entitlements.denials_by_reason,
                entitlements.stripe_price_tiers, entitlements.stripe_customers,
                entitlements.stripe_subscriptions, entitlements.stripe_events,
                entitlements.stripe_customer_locks, entitlements.usage_idempotency,
                entitlements.stripe_price_features, entitlements.stripe_feature_map,
                entitlements.stripe_entitlement_summaries, entitlements.stripe_grants
   TO entitlements_reader;

-- Monitoring: the counters span every database of the cluster.
GRANT EXECUTE ON FUNCTION
    entitlements.library_version(),
    entitlements.cache_statistics(),
    entitlements.audit_statistics(),
    entitlements.cache_shared_memory(),
    entitlements.cache_enabled()
  TO pg_monitor;

-- Everything else (the admin functions, the Stripe functions, prune_audit, the cache's
-- manual invalidation, the entitlement_cache view) is for superusers and the roles a DBA
-- grants it to: docs/SECURITY.md lists them.
