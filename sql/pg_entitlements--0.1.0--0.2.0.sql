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

-- Registers every new row of the app's own workspaces table, and unregisters deleted ones.
CREATE OR REPLACE FUNCTION entitlements.register_workspace_trigger() RETURNS trigger
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
    EXECUTE format('CREATE TRIGGER entitlements_register_workspace AFTER INSERT OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION entitlements.register_workspace_trigger(%L)',
                   tbl, id_column);
    -- Workspaces that existed before the table was attached are registered now.
    EXECUTE format('SELECT entitlements.register_workspace(%I) FROM %s WHERE %I IS NOT NULL',
                   id_column, tbl, id_column);
END
$$;

-- Tables attached before: their trigger now also unregisters deleted workspaces.
DO $attached$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tg.tgrelid::pg_catalog.regclass AS tbl,
                    pg_catalog.convert_from(pg_catalog.substr(tg.tgargs, 1,
                        pg_catalog.length(tg.tgargs) OPERATOR(pg_catalog.-) 1), 'UTF8') AS id_column
               FROM pg_catalog.pg_trigger tg
              WHERE tg.tgname OPERATOR(pg_catalog.=) 'entitlements_register_workspace' AND tg.tgnargs OPERATOR(pg_catalog.=) 1
                AND tg.tgfoid OPERATOR(pg_catalog.=) 'entitlements.register_workspace_trigger()'::pg_catalog.regprocedure
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER entitlements_register_workspace ON %s', t.tbl);
        EXECUTE pg_catalog.format('CREATE TRIGGER entitlements_register_workspace AFTER INSERT OR DELETE ON %s '
                                  'FOR EACH ROW EXECUTE FUNCTION entitlements.register_workspace_trigger(%L)',
                                  t.tbl, t.id_column);
    END LOOP;
END
$attached$;

CREATE VIEW entitlements.entitlements WITH (security_invoker = true) AS
SELECT w.workspace_id, d.feature, d.tier, d.enabled, d.reason, d.valid_until,
       pg_catalog.clock_timestamp() AS updated_at
  FROM entitlements.workspaces w
 CROSS JOIN LATERAL entitlements.decide_all(w.workspace_id) d;


-- ---------------------------------------------------------------------------------------
-- Tiers: level's uniqueness is checked at commit, so a tier can be inserted between two.
-- ---------------------------------------------------------------------------------------
ALTER TABLE entitlements.tiers
    DROP CONSTRAINT tiers_level_key,
    ADD CONSTRAINT tiers_level_key UNIQUE (level) DEFERRABLE INITIALLY DEFERRED;

-- ---------------------------------------------------------------------------------------
-- The audit trail: who asked, for real; kept by pg_dump; guarded under replication too.
-- ---------------------------------------------------------------------------------------
ALTER TABLE entitlements.entitlement_checks
    ADD COLUMN session_role text,
    ADD COLUMN connection_addr inet;
-- One name for the decision's reason everywhere: the checks' result, the matrix, the trail.
ALTER TABLE entitlements.entitlement_checks RENAME COLUMN reason_code TO reason;
ALTER VIEW entitlements.denials_by_reason RENAME COLUMN reason_code TO reason;
-- The trail is partitioned by day (docs/AUDIT.md). A table cannot become partitioned in
-- place: the new parent is created beside the old table, every row moves in with its id,
-- the id sequence goes on where it stood, and the old table (with the views that read it)
-- is dropped. The rows all land in the DEFAULT partition (a fresh install has no day
-- partitions either; the writer creates them from the next check on, for days that have no
-- rows in DEFAULT); prune_audit and the retention delete them from there row by row.
ALTER TABLE entitlements.entitlement_checks RENAME TO entitlement_checks_0_1;
ALTER SEQUENCE entitlements.entitlement_checks_id_seq RENAME TO entitlement_checks_0_1_id_seq;
ALTER INDEX entitlements.entitlement_checks_workspace_time_idx RENAME TO entitlement_checks_0_1_workspace_time_idx;
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
INSERT INTO entitlements.entitlement_checks
       (id, checked_at, workspace_id, user_id, feature, result, reason, cached, user_agent,
        ip_address, session_role, connection_addr)
OVERRIDING SYSTEM VALUE
SELECT id, checked_at, workspace_id, user_id, feature, result, reason, cached, user_agent,
       ip_address, session_role, connection_addr
  FROM entitlements.entitlement_checks_0_1;
SELECT pg_catalog.setval('entitlements.entitlement_checks_id_seq', s.last_value, s.is_called)
  FROM entitlements.entitlement_checks_0_1_id_seq s;
DROP VIEW entitlements.entitlement_checks_summary, entitlements.denials_by_reason;
DROP TABLE entitlements.entitlement_checks_0_1;
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

-- The rollups start from the rows kept.
INSERT INTO entitlements.entitlement_check_rollups
       (workspace_id, feature, hour, result, cached, reason, checks, last_checked_at)
SELECT workspace_id, feature, date_trunc('hour', checked_at, 'UTC'), result, cached, reason,
       count(*), max(checked_at)
  FROM entitlements.entitlement_checks
 GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO entitlements.entitlement_check_daily
       (workspace_id, day, result, cached, reason, checks, last_checked_at)
SELECT workspace_id, date_trunc('day', hour, 'UTC'), result, cached, reason,
       sum(checks), max(last_checked_at)
  FROM entitlements.entitlement_check_rollups
 GROUP BY 1, 2, 3, 4, 5;
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

-- Which build of the library a backend runs: after a package upgrade a running server keeps the
-- build it loaded until restart (docs/OPERATIONS.md).
CREATE FUNCTION entitlements.library_version() RETURNS TABLE (version text, build text)
STRICT STABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'library_version_wrapper';

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
-- Paywall answers: the tier that lifts a denial, in check_result and upgrade_options.
-- ---------------------------------------------------------------------------------------
ALTER TYPE entitlements.check_result ADD ATTRIBUTE required_tier text;

CREATE FUNCTION entitlements.upgrade_options(
	"workspace_id" uuid
) RETURNS TABLE (
	"feature" TEXT,
	"reason" TEXT,
	"required_tier" TEXT
)
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'upgrade_options_wrapper';

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

-- ---------------------------------------------------------------------------------------
-- Per-workspace cache invalidation: the AFTER triggers name the workspaces a statement
-- changed, so a commit invalidates only theirs.
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.note_workspace_statement(
	"relid" oid
) RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'note_workspace_statement_wrapper';

CREATE FUNCTION entitlements.note_workspaces_changed(
	"relid" oid,
	"workspace_ids" uuid[]
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'note_workspaces_changed_wrapper';

CREATE OR REPLACE FUNCTION entitlements.cache_invalidate_trigger() RETURNS trigger
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

-- ---------------------------------------------------------------------------------------
-- Checks of several features in one call.
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.entitlement_check_many(
	"workspace_id" uuid,
	"features" TEXT[]
) RETURNS SETOF entitlements.check_result
VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'entitlement_check_many_wrapper';

-- ---------------------------------------------------------------------------------------
-- Read-your-writes on hot standbys: the token a writer hands to the app.
-- ---------------------------------------------------------------------------------------
CREATE FUNCTION entitlements.write_token() RETURNS pg_lsn
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'write_token_wrapper';

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
CREATE TRIGGER notify_changed AFTER INSERT OR UPDATE OR DELETE ON entitlements.stripe_feature_grants
    FOR EACH ROW EXECUTE FUNCTION entitlements.notify_changed('stripe_grant');
CREATE TRIGGER notify_truncated AFTER TRUNCATE ON entitlements.stripe_feature_grants
    FOR EACH STATEMENT EXECUTE FUNCTION entitlements.notify_changed('stripe_grant');
ALTER TABLE entitlements.stripe_feature_grants ENABLE ALWAYS TRIGGER notify_changed;
ALTER TABLE entitlements.stripe_feature_grants ENABLE ALWAYS TRIGGER notify_truncated;
-- The event log: a new outcome (partial) and what a summary's application counted.
ALTER TABLE entitlements.stripe_events DROP CONSTRAINT stripe_events_outcome_check;
ALTER TABLE entitlements.stripe_events
    ADD CONSTRAINT stripe_events_outcome_check
        CHECK (outcome IN ('applied', 'stale', 'ignored', 'unmapped', 'partial')),
    ADD COLUMN outcome_detail jsonb;
ALTER TABLE entitlements.stripe_price_features ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_feature_map ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_feature_grants ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.stripe_entitlement_summaries ENABLE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_price_features', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_feature_map', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_feature_grants', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.stripe_entitlement_summaries', '');
-- The full list of a customer's entitlements, after a partial summary (as generated by pgrx).
CREATE  FUNCTION entitlements."apply_stripe_entitlements"(
	"customer_id" TEXT, /* Option < & str > */
	"lookup_keys" TEXT[], /* :: std :: option :: Option < Vec < Option < String > > > */
	"as_of" timestamp with time zone /* Option < TimestampWithTimeZone > */
) RETURNS entitlements.stripe_event_result /* :: pgrx :: heap_tuple :: PgHeapTuple < '_, :: pgrx :: pgbox :: AllocatedByRust
> */
VOLATILE SECURITY DEFINER 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'apply_stripe_entitlements_wrapper';

-- ---------------------------------------------------------------------------------------
-- Usage limits: feature kinds, limits per tier and per workspace, usage counters consumed in
-- the caller's transaction, the billing period's start (sql/limits.sql).
-- ---------------------------------------------------------------------------------------
CREATE TYPE entitlements.usage_result AS (
    feature text,
    allowed boolean,
    reason text,
    used bigint,
    limit_value bigint,
    remaining bigint,
    period_start timestamptz,
    period_end timestamptz
);
ALTER TABLE entitlements.features
    ADD COLUMN kind text NOT NULL DEFAULT 'boolean' CHECK (kind IN ('boolean', 'metered', 'counted')),
    ADD COLUMN reset_period text CHECK (reset_period IN ('billing_period', 'month', 'day', 'never')),
    ADD COLUMN hard_limit boolean NOT NULL DEFAULT true;
ALTER TABLE entitlements.billing_state ADD COLUMN current_period_start timestamptz;
-- sync_billing_state gains the period's start (a trailing parameter: existing calls keep working)
-- and becomes the Rust function of src/billing.rs, the one writer of billing_state that Stripe
-- ingestion uses too (as generated by pgrx).
DROP FUNCTION entitlements.sync_billing_state(uuid, text, text, timestamptz, timestamptz, boolean);
CREATE  FUNCTION entitlements."sync_billing_state"(
	"workspace_id" uuid, /* Option < Uuid > */
	"tier" TEXT, /* Option < & str > */
	"status" TEXT, /* Option < & str > */
	"trial_end" timestamp with time zone DEFAULT NULL, /* Option < TimestampWithTimeZone > */
	"current_period_end" timestamp with time zone DEFAULT NULL, /* Option < TimestampWithTimeZone > */
	"cancel_at_period_end" bool DEFAULT false, /* Option < bool > */
	"current_period_start" timestamp with time zone DEFAULT NULL /* Option < TimestampWithTimeZone > */
) RETURNS void
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'sync_billing_state_wrapper';

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

CREATE FUNCTION entitlements."consume"(
	"workspace_id" uuid, /* Option < Uuid > */
	"feature" TEXT, /* Option < & str > */
	"quantity" bigint DEFAULT 1, /* Option < i64 > */
	"idempotency_key" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS entitlements.usage_result /* UsageResultRow */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'consume_wrapper';

CREATE FUNCTION entitlements."refund"(
	"workspace_id" uuid, /* Option < Uuid > */
	"feature" TEXT, /* Option < & str > */
	"quantity" bigint, /* Option < i64 > */
	"idempotency_key" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS entitlements.usage_result /* UsageResultRow */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'refund_wrapper';

CREATE FUNCTION entitlements."usage"(
	"workspace_id" uuid, /* Option < Uuid > */
	"feature" TEXT /* Option < & str > */
) RETURNS entitlements.usage_result /* UsageResultRow */
VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'usage_wrapper';

CREATE FUNCTION entitlements."usage_all"(
	"workspace_id" uuid /* Option < Uuid > */
) RETURNS SETOF entitlements.usage_result /* UsageResultRow */
VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'usage_all_wrapper';

ALTER TABLE entitlements.feature_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.limit_overrides ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.usage_counters ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.usage_periods ENABLE ROW LEVEL SECURITY;
ALTER TABLE entitlements.usage_idempotency ENABLE ROW LEVEL SECURITY;
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

-- The decision cache's signal to hot standbys (sql/api.sql): changes to the inputs queue
-- their invalidation messages for this relation instead of for the input tables. Backends
-- that looked the watched relations up before this update look them up again because the
-- schema's grants below rewrite its pg_namespace row (the library watches that catalog).
CREATE VIEW entitlements.cache_signal AS SELECT WHERE false;
COMMENT ON VIEW entitlements.cache_signal IS
    'pg_entitlements: carries decision-cache invalidations to hot standbys; holds no data';

-- The row triggers a logical subscriber's apply fires (sql/api.sql).
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
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.feature_limits
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.feature_limits ENABLE REPLICA TRIGGER cache_invalidate_applied;
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.limit_overrides
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.limit_overrides ENABLE REPLICA TRIGGER cache_invalidate_applied;
CREATE TRIGGER cache_invalidate_applied AFTER INSERT OR UPDATE OR DELETE ON entitlements.stripe_feature_grants
    FOR EACH ROW EXECUTE FUNCTION entitlements.cache_invalidate_applied_trigger();
ALTER TABLE entitlements.stripe_feature_grants ENABLE REPLICA TRIGGER cache_invalidate_applied;

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
