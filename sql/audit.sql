-- pg_entitlements audit trail: one row per audited check, written by the audit writer (a
-- background worker) outside the caller's transaction. Append-only for every role: a
-- statement trigger refuses UPDATE, DELETE, TRUNCATE and direct INSERTs (the writer,
-- entitlements.prune_audit and a superuser loading an empty trail, as a restore does, are the
-- only exceptions), and forced RLS lets members read
-- their own workspaces' rows only. The table is partitioned by UTC day, and rolled up per
-- workspace, feature and hour for the summary views (docs/AUDIT.md). Grants are in
-- sql/security.sql.

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
    connection_addr inet,     -- the connection's own address (inet_client_addr())
    quantity bigint           -- the units a consume or refund moved; NULL for a check
) PARTITION BY RANGE (checked_at);
-- One partition per UTC day, created ahead by the writer (entitlements.create_audit_partitions),
-- so that retention drops whole days instead of deleting rows. The DEFAULT partition catches
-- rows no day partition covers (a clock far off, a day whose partition could not be
-- created, rows kept from before the trail was partitioned): an INSERT must never fail for
-- want of a partition. It is the only partition the install scripts create.
CREATE TABLE entitlements.entitlement_checks_default
    PARTITION OF entitlements.entitlement_checks DEFAULT;
-- pg_dump keeps the trail (and where its ids stand); the guard below lets a superuser load
-- rows into an empty trail, which is what a restore does. pg_dump dumps no data of a
-- partitioned table itself, only of its partitions: the DEFAULT partition is marked here
-- (the parent too, so that the trail is declared as kept); day partitions are created later
-- by the writer, are not members of the extension, and pg_dump dumps them, their rows,
-- guard and security as ordinary tables.
SELECT pg_catalog.pg_extension_config_dump('entitlements.entitlement_checks', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.entitlement_checks_default', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.entitlement_checks_id_seq', '');
-- The index is created on each partition, not on the parent: a partitioned index of the
-- extension would be created again for each dumped day partition when a restore attaches
-- it, before pg_dump's own CREATE INDEX of that partition's index, which then fails.
-- Ascending on time: each new row lands at the right end of its workspace's range, where
-- B-tree page splits leave full pages (in descending order every row landed at the left
-- end and each split left half-empty pages); a newest-first read scans it backwards.
CREATE INDEX entitlement_checks_default_workspace_time_idx
    ON entitlements.entitlement_checks_default (workspace_id, checked_at);

-- Statement triggers fire only on the table a statement names: one on the parent does not
-- fire for a statement that addresses a partition directly (and a partition does not
-- inherit it). So every partition carries the guard as well; TRUNCATE of the parent fires
-- the guard of the parent and of every partition.
CREATE TRIGGER entitlement_checks_append_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.entitlement_checks
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.entitlement_checks_append_only();
-- ALWAYS: session_replication_role = replica must not switch the guard off.
ALTER TABLE entitlements.entitlement_checks ENABLE ALWAYS TRIGGER entitlement_checks_append_only;
CREATE TRIGGER entitlement_checks_append_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.entitlement_checks_default
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.entitlement_checks_append_only();
ALTER TABLE entitlements.entitlement_checks_default ENABLE ALWAYS TRIGGER entitlement_checks_append_only;
-- Partitions are read through the parent, whose policies apply; addressed directly they
-- have no grant and no policy (forced RLS: nothing for the owner either).
ALTER TABLE entitlements.entitlement_checks_default ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.entitlement_checks_default FORCE ROW LEVEL SECURITY;

-- Creates the day partitions (UTC days) from from_day for days days that do not exist yet,
-- each with the guard and forced RLS; returns how many it created. A day some of whose rows
-- are already in the DEFAULT partition is skipped (PostgreSQL would refuse the partition):
-- those rows stay in DEFAULT, where prune_audit deletes them row by row. Superusers only:
-- the writer calls it ahead of time; tests and DBAs may call it for any range.
CREATE FUNCTION entitlements.create_audit_partitions(from_day date, days integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    d date;
    lo timestamptz;
    hi timestamptz;
    part text;
    made integer := 0;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'pg_entitlements: only a superuser may create audit partitions'
            USING ERRCODE = '42501';
    END IF;
    IF from_day IS NULL OR days IS NULL OR days < 0 OR days > 366 THEN
        RAISE EXCEPTION 'pg_entitlements: create_audit_partitions needs a day and 0 to 366 days'
            USING ERRCODE = '22023';
    END IF;
    FOR i IN 0 .. days - 1 LOOP
        d := from_day + i;
        part := 'entitlement_checks_p' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass('entitlements.' || quote_ident(part)) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        CONTINUE WHEN EXISTS (SELECT 1 FROM entitlements.entitlement_checks_default
                               WHERE checked_at >= lo AND checked_at < hi);
        EXECUTE format('CREATE TABLE entitlements.%I PARTITION OF entitlements.entitlement_checks'
                       ' FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
        EXECUTE format('CREATE INDEX %I ON entitlements.%I (workspace_id, checked_at)',
                       part || '_workspace_time_idx', part);
        EXECUTE format('CREATE TRIGGER entitlement_checks_append_only'
                       ' BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.%I'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION entitlements.entitlement_checks_append_only()', part);
        EXECUTE format('ALTER TABLE entitlements.%I ENABLE ALWAYS TRIGGER entitlement_checks_append_only', part);
        EXECUTE format('ALTER TABLE entitlements.%I ENABLE ROW LEVEL SECURITY', part);
        EXECUTE format('ALTER TABLE entitlements.%I FORCE ROW LEVEL SECURITY', part);
        EXECUTE format('REVOKE ALL ON entitlements.%I FROM PUBLIC', part);
        made := made + 1;
    END LOOP;
    RETURN made;
END
$fn$;

-- Detaches and drops the day partitions that hold only rows older than cut; returns the rows
-- they held. Called by prune_audit (which then deletes the older rows of the partition that
-- straddles the cut, and of DEFAULT). Superusers only.
CREATE FUNCTION entitlements.drop_audit_partitions_before(cut timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    p record;
    n bigint;
    gone bigint := 0;
BEGIN
    IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        RAISE EXCEPTION 'pg_entitlements: only a superuser may prune the audit trail'
            USING ERRCODE = '42501';
    END IF;
    FOR p IN
        SELECT c.oid::regclass AS part,
               substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz AS upper_bound
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'entitlements.entitlement_checks'::regclass
           AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    LOOP
        CONTINUE WHEN p.upper_bound IS NULL OR p.upper_bound > cut;
        EXECUTE format('SELECT count(*) FROM %s', p.part) INTO n;
        EXECUTE format('ALTER TABLE entitlements.entitlement_checks DETACH PARTITION %s', p.part);
        EXECUTE format('DROP TABLE %s', p.part);
        gone := gone + n;
    END LOOP;
    RETURN gone;
END
$fn$;

ALTER TABLE entitlements.entitlement_checks ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.entitlement_checks FORCE ROW LEVEL SECURITY;
-- The predicate of entitlements.is_member, written out: that function is created in
-- sql/api.sql, which runs last (finalize), after this file.
CREATE POLICY members_read ON entitlements.entitlement_checks FOR SELECT
    USING (workspace_id IN (SELECT m.workspace_id FROM entitlements.workspace_members m
                             WHERE m.user_id = entitlements.current_user_id()));

-- Rollups: per workspace, UTC hour and feature, how many checks had each outcome (result,
-- cached, reason), and the last of them; and the same per workspace and UTC day, across
-- features. The writer adds to both in the same subtransaction as it stores the rows, from
-- the batch counted by group in the writer (INSERT ... ON CONFLICT DO UPDATE), so they count
-- exactly the rows stored. The summary views read them instead of scanning 30 days of rows:
-- whole days from the daily rollups, the hours of the window's first, partial day from the
-- hourly ones, so a view reads at most a day of hours whatever the trail holds.
-- Append-only like the trail, except for the writer's updates; prune_audit removes the hours
-- (and days) that end at or before its cut. Kept by pg_dump.
CREATE TABLE entitlements.entitlement_check_rollups (
    workspace_id uuid NOT NULL,
    feature text NOT NULL,
    hour timestamptz NOT NULL,            -- the start of the UTC hour of the checks
    result boolean NOT NULL,
    cached boolean NOT NULL,
    reason text,
    checks bigint NOT NULL,
    last_checked_at timestamptz NOT NULL,
    CONSTRAINT entitlement_check_rollups_key
        UNIQUE NULLS NOT DISTINCT (workspace_id, hour, feature, result, cached, reason)
);
-- The views' first, partial day across every workspace.
CREATE INDEX entitlement_check_rollups_hour_idx ON entitlements.entitlement_check_rollups (hour);
SELECT pg_catalog.pg_extension_config_dump('entitlements.entitlement_check_rollups', '');
CREATE TABLE entitlements.entitlement_check_daily (
    workspace_id uuid NOT NULL,
    day timestamptz NOT NULL,             -- the start of the UTC day of the checks
    result boolean NOT NULL,
    cached boolean NOT NULL,
    reason text,
    checks bigint NOT NULL,
    last_checked_at timestamptz NOT NULL,
    CONSTRAINT entitlement_check_daily_key
        UNIQUE NULLS NOT DISTINCT (workspace_id, day, result, cached, reason)
);
CREATE INDEX entitlement_check_daily_day_idx ON entitlements.entitlement_check_daily (day);
SELECT pg_catalog.pg_extension_config_dump('entitlements.entitlement_check_daily', '');
CREATE TRIGGER entitlement_check_rollups_append_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.entitlement_check_rollups
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.entitlement_checks_append_only();
ALTER TABLE entitlements.entitlement_check_rollups ENABLE ALWAYS TRIGGER entitlement_check_rollups_append_only;
CREATE TRIGGER entitlement_check_daily_append_only
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON entitlements.entitlement_check_daily
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.entitlement_checks_append_only();
ALTER TABLE entitlements.entitlement_check_daily ENABLE ALWAYS TRIGGER entitlement_check_daily_append_only;
ALTER TABLE entitlements.entitlement_check_rollups ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.entitlement_check_rollups FORCE ROW LEVEL SECURITY;
CREATE POLICY members_read ON entitlements.entitlement_check_rollups FOR SELECT
    USING (workspace_id IN (SELECT m.workspace_id FROM entitlements.workspace_members m
                             WHERE m.user_id = entitlements.current_user_id()));
ALTER TABLE entitlements.entitlement_check_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.entitlement_check_daily FORCE ROW LEVEL SECURITY;
CREATE POLICY members_read ON entitlements.entitlement_check_daily FOR SELECT
    USING (workspace_id IN (SELECT m.workspace_id FROM entitlements.workspace_members m
                             WHERE m.user_id = entitlements.current_user_id()));

-- The last 30 days as the views count them, by whole hours: every hour that ends after
-- now() - 30 days. A day whose first hour is in the window is counted whole from the daily
-- rollups; the day that straddles the window's start, hour by hour from the hourly ones
-- (from the window's start to that day's end, 24 hours after its UTC midnight). Runs as
-- the caller (security_invoker), so the policies apply. Not for direct use.
CREATE VIEW entitlements.entitlement_check_window WITH (security_invoker = true) AS
SELECT r.workspace_id, r.result, r.cached, r.reason, r.checks, r.last_checked_at
  FROM entitlements.entitlement_check_rollups r
 WHERE r.hour > now() - interval '30 days' - interval '1 hour'
   AND r.hour < date_trunc('day', now() - interval '30 days' - interval '1 hour', 'UTC') + interval '24 hours'
UNION ALL
SELECT d.workspace_id, d.result, d.cached, d.reason, d.checks, d.last_checked_at
  FROM entitlements.entitlement_check_daily d
 WHERE d.day > now() - interval '30 days' - interval '1 hour';

-- Views run as the caller (security_invoker), so the policies apply to them too.
CREATE VIEW entitlements.entitlement_checks_summary WITH (security_invoker = true) AS
SELECT workspace_id,
       sum(checks)::bigint AS check_count,
       coalesce(sum(checks) FILTER (WHERE result), 0)::bigint AS allowed,
       coalesce(sum(checks) FILTER (WHERE NOT result), 0)::bigint AS denied,
       coalesce(sum(checks) FILTER (WHERE cached), 0)::bigint AS cached,
       round(100.0 * coalesce(sum(checks) FILTER (WHERE cached), 0) / sum(checks), 1) AS cache_hit_rate_pct
  FROM entitlements.entitlement_check_window
 GROUP BY workspace_id;

CREATE VIEW entitlements.denials_by_reason WITH (security_invoker = true) AS
SELECT workspace_id,
       reason,
       sum(checks)::bigint AS denials,
       max(last_checked_at) AS last_denied_at
  FROM entitlements.entitlement_check_window
 WHERE NOT result
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
