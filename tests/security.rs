//! The attack review, as tests: each attack on the extension's own SQL, run by real
//! non-superuser roles over real connections against a real cluster, must fail.
//! `make test-security` runs this file alone.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use std::time::{Duration, Instant};

const AUDIT_DB: &str = "pg_entitlements.audit_database = 'app'";

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn flush(c: &mut Client) {
    c.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
}

/// A LOGIN role with the application's rights, connected over TCP as itself.
fn app_role(pg: &Cluster, admin: &mut Client, role: &str) -> Client {
    exec(admin, &format!("CREATE ROLE {role} LOGIN; GRANT entitlements_app TO {role}"));
    pg.connect_as(role, "app")
}

fn writer_pid(c: &mut Client) -> Option<i32> {
    c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_entitlements audit writer'", &[])
        .unwrap()
        .map(|r| r.get(0))
}

/// The writer of `c`'s database, once running and other than `not`. A writer starts with its
/// database's first check: one on a workspace of its own makes sure it does.
fn wait_for_writer(c: &mut Client, not: Option<i32>) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    exec(c, "SELECT entitlements.entitlement_check(gen_random_uuid(), 'ccp-01')");
    loop {
        if let Some(pid) = writer_pid(c) {
            if Some(pid) != not {
                return pid;
            }
        }
        assert!(Instant::now() < deadline, "the audit writer did not (re)start");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Functions and operators an attacker plants to hijack the extension's statements: each
/// records that it ran (and as whom) in public.pwned.
const PLANTS: &str = "
CREATE TABLE public.pwned (what text, who text, superuser boolean);
GRANT INSERT ON public.pwned TO PUBLIC;
CREATE FUNCTION public.note(what text) RETURNS boolean LANGUAGE sql AS
  $$ INSERT INTO public.pwned SELECT what, current_user, rolsuper FROM pg_roles WHERE rolname = current_user RETURNING true $$;
CREATE FUNCTION public.unnest(timestamptz[]) RETURNS SETOF timestamptz LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.note('unnest(timestamptz[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.unnest(uuid[]) RETURNS SETOF uuid LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.note('unnest(uuid[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.note('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION public.to_regclass(text) RETURNS regclass LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.note('to_regclass'); RETURN pg_catalog.to_regclass($1); END $$;
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.note('now'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION public.count(anyelement) RETURNS bigint LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.note('count'); RETURN 0; END $$;
CREATE FUNCTION public.date_trunc(text, timestamptz, text) RETURNS timestamptz LANGUAGE plpgsql AS
  $$ BEGIN PERFORM public.note('date_trunc'); RETURN pg_catalog.date_trunc($1, $2, $3); END $$;
";

#[test]
fn planted_functions_never_run_in_the_audit_writer() {
    let pg = Cluster::start_with("sec-writer", &[AUDIT_DB]);
    let mut admin = pg.connect();
    // The attacker: a role with CREATE on public (a database owner has it, or a grant).
    exec(&mut admin, "CREATE ROLE mallory LOGIN; GRANT CREATE ON SCHEMA public TO mallory");
    let mut mallory = pg.connect_as("mallory", "app");
    exec(&mut mallory, PLANTS);
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));

    // The writer plans at start: terminate it so it plans again with the plants in place.
    let before = wait_for_writer(&mut admin, None);
    exec(&mut admin, &format!("SELECT pg_terminate_backend({before})"));
    let after = wait_for_writer(&mut admin, Some(before));
    assert_ne!(before, after);
    for _ in 0..20 {
        check(&mut admin, &ws, "ccp-05");
    }
    flush(&mut admin);
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.entitlement_checks WHERE workspace_id = {ws}")), 20);
    // Pruning (superuser) runs under a pinned search_path too.
    exec(&mut admin, "SELECT entitlements.prune_audit('1000 years')");
    let ran: Vec<String> = admin.query("SELECT what || ' as ' || who FROM public.pwned", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(ran.is_empty(), "planted code ran: {ran:?}");
    // The role the writer stores rows as may do nothing but that.
    let privileges: Vec<String> = admin
        .query(
            "SELECT table_name || ' ' || privilege_type FROM information_schema.role_table_grants
              WHERE grantee = 'entitlements_audit_writer' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // (INSERT ... ON CONFLICT DO UPDATE into the rollups reads and updates the row it adds to.)
    assert_eq!(
        privileges,
        vec![
            "entitlement_check_daily INSERT".to_owned(),
            "entitlement_check_daily SELECT".to_owned(),
            "entitlement_check_daily UPDATE".to_owned(),
            "entitlement_check_rollups INSERT".to_owned(),
            "entitlement_check_rollups SELECT".to_owned(),
            "entitlement_check_rollups UPDATE".to_owned(),
            "entitlement_checks INSERT".to_owned(),
        ]
    );
}

/// Operators that answer `true` for every pair, planted where the caller's search_path finds
/// them first, and in pg_temp.
fn plant_operators(c: &mut Client, schema: &str) {
    exec(
        c,
        &format!(
            "CREATE FUNCTION {schema}.yes(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
             CREATE FUNCTION {schema}.yes(uuid, uuid) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
             CREATE FUNCTION {schema}.yes(integer, integer) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true';
             CREATE OPERATOR {schema}.= (LEFTARG = text, RIGHTARG = text, FUNCTION = {schema}.yes);
             CREATE OPERATOR {schema}.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = {schema}.yes);
             CREATE OPERATOR {schema}.< (LEFTARG = integer, RIGHTARG = integer, FUNCTION = {schema}.yes);
             CREATE OPERATOR {schema}.>= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = {schema}.yes);"
        ),
    );
}

#[test]
fn shadowing_operators_do_not_poison_the_shared_cache() {
    let pg = Cluster::start_with("sec-poison", &[AUDIT_DB]);
    let mut admin = pg.connect();
    let free_ws = new_workspace(&mut admin);
    let pro_ws = new_workspace(&mut admin);
    exec(
        &mut admin,
        &format!(
            "SELECT entitlements.sync_billing_state({pro_ws}, 'pro', 'active');
             INSERT INTO entitlements.workspace_members VALUES ({free_ws}, 'mallory'), ({pro_ws}, 'mallory');
             CREATE SCHEMA evil AUTHORIZATION CURRENT_USER;"
        ),
    );
    let mut mallory = app_role(&pg, &mut admin, "mallory");
    exec(&mut admin, "ALTER SCHEMA evil OWNER TO mallory");
    plant_operators(&mut mallory, "evil");
    exec(&mut mallory, "SET search_path = evil, pg_catalog");
    // pg_temp too (searched for relations only; operators there are never chosen).
    let _ = mallory.batch_execute("CREATE TEMP TABLE t (x int)");
    let temp_schema: String = mallory.query_one("SELECT nspname::text FROM pg_namespace WHERE oid = pg_my_temp_schema()", &[]).unwrap().get(0);
    plant_operators(&mut mallory, &temp_schema);

    exec(&mut mallory, "SET pg_entitlements.user_id = 'mallory'");
    // Every check the attacker makes under the planted path: enterprise on free, and the
    // reverse (a paying customer's feature).
    for f in ["ccp-13", "ccp-05", "ccp-01"] {
        for ws in [&free_ws, &pro_ws] {
            let _ = check(&mut mallory, ws, f);
            let _: bool = mallory.query_one(&format!("SELECT entitlements.has_entitlement({ws}, '{f}')"), &[]).unwrap().get(0);
            let _ = mallory.query(&format!("SELECT * FROM entitlements.entitlement_check_all({ws})"), &[]).unwrap();
        }
    }
    // What every role now reads, from the cache, equals a clean evaluation.
    for ws in [&free_ws, &pro_ws] {
        let expected: Vec<(String, bool)> = admin
            .query(&format!("SELECT feature, enabled FROM entitlements.decide_all({ws}) ORDER BY feature"), &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(expected.len(), 14);
        for (feature, enabled) in &expected {
            let row = admin
                .query_one(&format!("SELECT enabled, cached FROM entitlements.entitlement_check({ws}, $1)"), &[feature])
                .unwrap();
            assert_eq!(row.get::<_, bool>(0), *enabled, "{ws} {feature} (cached: {})", row.get::<_, bool>(1));
            // The attacker's own answers are the clean ones too.
            assert_eq!(check(&mut mallory, ws, feature).0, *enabled, "mallory's {ws} {feature}");
        }
    }
    assert!(!check(&mut admin, &free_ws, "ccp-13").0);
    assert!(check(&mut admin, &pro_ws, "ccp-05").0);
    flush(&mut admin);
    // The audit recorded the clean decisions.
    let wrong = count(
        &mut admin,
        &format!("SELECT count(*) FROM entitlements.entitlement_checks WHERE workspace_id = {free_ws} AND feature = 'ccp-13' AND result"),
    );
    assert_eq!(wrong, 0);
}

#[test]
fn a_malformed_client_ip_is_refused_and_drops_no_record() {
    let pg = Cluster::start_with("sec-inet", &[AUDIT_DB]);
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice')"));
    let mut app = app_role(&pg, &mut admin, "app_inet");
    exec(&mut app, "SET pg_entitlements.user_id = 'alice'");
    let writer = wait_for_writer(&mut admin, None);
    // What the review found accepted by the old parser; PostgreSQL's inet refuses each.
    for bad in ["::1/01", "::/00", "::ffff:1.2.3.4/096", "10.0.0.1/33", "not an address", "1.2.3.4\u{1}"] {
        assert_eq!(
            sqlstate(&mut app, &format!("SET pg_entitlements.client_ip = '{}'", bad.replace('\'', "''"))),
            "22023",
            "{bad:?} was accepted"
        );
        check(&mut app, &ws, "ccp-01");
    }
    // A valid address in a long form is stored in inet's canonical form.
    exec(&mut app, "SET pg_entitlements.client_ip = '0000:0000:0000:0000:0000:0000:0000:0001'");
    check(&mut app, &ws, "ccp-01");
    flush(&mut admin);
    let ips: Vec<Option<String>> = admin
        .query(&format!("SELECT host(ip_address) FROM entitlements.entitlement_checks WHERE workspace_id = {ws} ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ips.len(), 7, "every check was recorded");
    assert_eq!(ips.last().unwrap().as_deref(), Some("::1"));
    assert_eq!(writer_pid(&mut admin), Some(writer), "the writer did not restart");
    let dropped: i64 = admin.query_one("SELECT dropped FROM entitlements.audit_statistics()", &[]).unwrap().get(0);
    assert_eq!(dropped, 0);
}

#[test]
fn audit_records_the_session_role_and_the_connection_address() {
    let pg = Cluster::start_with("sec-who", &[AUDIT_DB]);
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice')"));
    let mut app = app_role(&pg, &mut admin, "app_who");
    exec(&mut app, "SET pg_entitlements.user_id = 'alice'; SET pg_entitlements.client_ip = '203.0.113.9'");
    check(&mut app, &ws, "ccp-01");
    flush(&mut admin);
    let row = admin
        .query_one(
            &format!("SELECT user_id, session_role, host(ip_address), host(connection_addr) FROM entitlements.entitlement_checks WHERE workspace_id = {ws}"),
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "alice");
    assert_eq!(row.get::<_, String>(1), "app_who");
    assert_eq!(row.get::<_, String>(2), "203.0.113.9");
    assert_eq!(row.get::<_, String>(3), "127.0.0.1");
}

#[test]
fn a_role_without_entitlements_app_reads_nothing_and_checks_nothing() {
    let pg = Cluster::start("sec-stranger");
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(
        &mut admin,
        &format!(
            "SELECT entitlements.sync_billing_state({ws}, 'pro', 'active');
             INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice');
             CREATE ROLE stranger LOGIN;"
        ),
    );
    let mut stranger = pg.connect_as("stranger", "app");
    // Claiming an identity is refused to a role that was not granted it.
    assert_eq!(sqlstate(&mut stranger, "SET pg_entitlements.user_id = 'alice'"), "42501");
    assert_eq!(sqlstate(&mut stranger, "SET pg_entitlements.identity_source = 'jwt'"), "42501");
    exec(&mut stranger, r#"SET request.jwt.claims = '{"sub":"alice"}'"#);
    for sql in [
        format!("SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-05')"),
        format!("SELECT entitlements.has_entitlement({ws}, 'ccp-05')"),
        "SELECT * FROM entitlements.billing_state".to_owned(),
        "SELECT * FROM entitlements.workspace_members".to_owned(),
        "SELECT * FROM entitlements.entitlement_checks".to_owned(),
        "SELECT * FROM entitlements.stripe_customers".to_owned(),
        "SELECT * FROM entitlements.overrides".to_owned(),
        "SELECT * FROM entitlements.billing_status_current".to_owned(),
        "SELECT * FROM entitlements.cache_statistics()".to_owned(),
        "SELECT * FROM entitlements.audit_statistics()".to_owned(),
        "SELECT * FROM entitlements.tiers".to_owned(),
    ] {
        assert_eq!(sqlstate(&mut stranger, &sql), "42501", "{sql}");
    }
    // Nothing in the schema is granted to PUBLIC.
    let public_grants = count(
        &mut admin,
        "SELECT count(*) FROM (
             SELECT c.relacl AS acl FROM pg_class c WHERE c.relnamespace = 'entitlements'::regnamespace
             UNION ALL SELECT p.proacl FROM pg_proc p WHERE p.pronamespace = 'entitlements'::regnamespace
             UNION ALL SELECT n.nspacl FROM pg_namespace n WHERE n.nspname = 'entitlements') x,
           LATERAL aclexplode(x.acl) a
          WHERE x.acl IS NOT NULL AND a.grantee = 0",
    );
    assert_eq!(public_grants, 0);
    // Functions without an explicit ACL default to EXECUTE for PUBLIC: there must be none.
    let default_acl = count(
        &mut admin,
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'entitlements'::regnamespace AND proacl IS NULL",
    );
    assert_eq!(default_acl, 0);

    // The same role granted entitlements_app: asserts alice and reads alice's rows only.
    exec(&mut admin, "GRANT entitlements_app TO stranger");
    let mut app = pg.connect_as("stranger", "app");
    exec(&mut app, "BEGIN; SET LOCAL pg_entitlements.user_id = 'alice'");
    assert_eq!(check(&mut app, &ws, "ccp-05"), (true, None));
    assert_eq!(count(&mut app, "SELECT count(*) FROM entitlements.billing_state"), 1);
    assert_eq!(sqlstate(&mut app, "SELECT * FROM entitlements.stripe_customers"), "42501");
    exec(&mut app, "COMMIT");
    // The statistics are for monitoring roles.
    exec(&mut admin, "CREATE ROLE watcher LOGIN; GRANT pg_monitor TO watcher");
    let mut watcher = pg.connect_as("watcher", "app");
    exec(&mut watcher, "SELECT * FROM entitlements.cache_statistics(); SELECT * FROM entitlements.audit_statistics()");
}

#[test]
fn an_advisory_lock_held_by_another_role_does_not_delay_apply_stripe_event() {
    let pg = Cluster::start_with("sec-lock", &["pg_entitlements.stripe_lock_timeout = '300ms'"]);
    let mut admin = pg.connect();
    let secret = "whsec_security_test_0123456789";
    exec(
        &mut admin,
        &format!(
            "SELECT entitlements.add_webhook_secret('{secret}');
             INSERT INTO entitlements.stripe_price_tiers VALUES ('price_pro', 'pro');
             CREATE ROLE webhook LOGIN; GRANT entitlements_webhook TO webhook;
             CREATE ROLE tenant LOGIN;"
        ),
    );
    let ws = new_workspace(&mut admin);
    let event = |id: &str, created: i64| {
        serde_json::json!({
            "id": id, "object": "event", "type": "customer.subscription.updated", "created": created,
            "data": {"object": {
                "id": "sub_lock", "object": "subscription", "customer": "cus_lock", "status": "active",
                "cancel_at_period_end": false, "metadata": {"workspace_id": ws.0},
                "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item",
                    "current_period_end": created + 86400,
                    "price": {"id": "price_pro", "object": "price", "product": "prod_x"}}]}
            }}
        })
        .to_string()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let sign = |c: &mut Client, payload: &str| -> String {
        c.query_one("SELECT entitlements.sign_stripe_payload($1, $2)", &[&payload, &secret]).unwrap().get(0)
    };

    // The tenant holds what the old advisory key was, in a session of its own.
    let mut tenant = pg.connect_as("tenant", "app");
    exec(&mut tenant, "SELECT pg_advisory_lock(21332, hashtext('cus_lock'))");
    let mut webhook = pg.connect_as("webhook", "app");
    exec(&mut webhook, "SET statement_timeout = '10s'");
    let p1 = event("evt_lock_1", now - 10);
    let h1 = sign(&mut admin, &p1);
    let started = Instant::now();
    let outcome: String = webhook.query_one("SELECT outcome FROM entitlements.apply_stripe_event($1, $2)", &[&p1, &h1]).unwrap().get(0);
    assert_eq!(outcome, "applied");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(check(&mut admin, &ws, "ccp-05"), (true, None));

    // A transaction stuck holding the customer's lock makes the next delivery fail fast with
    // 55P03, changing nothing.
    let mut stuck = pg.connect();
    let p2 = event("evt_lock_2", now - 5);
    let h2 = sign(&mut admin, &p2);
    exec(&mut stuck, "BEGIN");
    stuck.query_one("SELECT outcome FROM entitlements.apply_stripe_event($1, $2)", &[&p2, &h2]).unwrap();
    let p3 = event("evt_lock_3", now);
    let h3 = sign(&mut admin, &p3);
    let err = webhook.query_one("SELECT outcome FROM entitlements.apply_stripe_event($1, $2)", &[&p3, &h3]).unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55P03", "{err}");
    exec(&mut stuck, "ROLLBACK");
    assert_eq!(count(&mut admin, "SELECT count(*) FROM entitlements.stripe_events WHERE event_id = 'evt_lock_3'"), 0);
    let lock_timeout: String = webhook.query_one("SHOW lock_timeout", &[]).unwrap().get(0);
    assert_eq!(lock_timeout, "0", "the caller's lock_timeout is left as it was");
}

#[test]
fn schema_grants_and_revokes_leave_the_cache_warm() {
    let pg = Cluster::start("sec-epoch");
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active'); CREATE ROLE owner_x LOGIN; CREATE SCHEMA x AUTHORIZATION owner_x"));
    let mut owner = pg.connect_as("owner_x", "app");
    check(&mut admin, &ws, "ccp-05");
    let invalidations = |c: &mut Client| count(c, "SELECT invalidations FROM entitlements.cache_statistics()");
    let before = invalidations(&mut admin);
    for _ in 0..20 {
        exec(&mut owner, "GRANT USAGE ON SCHEMA x TO PUBLIC; REVOKE USAGE ON SCHEMA x FROM PUBLIC");
        let cached: bool = admin.query_one(&format!("SELECT cached FROM entitlements.entitlement_check({ws}, 'ccp-05')"), &[]).unwrap().get(0);
        assert!(cached, "a schema grant emptied the cache");
    }
    assert_eq!(invalidations(&mut admin), before);
    // A real change still invalidates.
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'free', 'active')"));
    assert_eq!(check(&mut admin, &ws, "ccp-05").0, false);
}

#[test]
fn attach_workspace_table_refuses_a_table_the_caller_does_not_own() {
    let pg = Cluster::start("sec-attach");
    let mut admin = pg.connect();
    exec(
        &mut admin,
        "CREATE ROLE victim LOGIN; CREATE ROLE admin_x LOGIN;
         CREATE TABLE public.private_ws (id uuid PRIMARY KEY); ALTER TABLE public.private_ws OWNER TO victim;
         INSERT INTO public.private_ws VALUES (gen_random_uuid());
         GRANT USAGE ON SCHEMA entitlements TO admin_x;
         GRANT EXECUTE ON FUNCTION entitlements.attach_workspace_table(regclass, name), entitlements.register_workspace(uuid) TO admin_x;
         CREATE TABLE public.own_ws (id uuid PRIMARY KEY); ALTER TABLE public.own_ws OWNER TO admin_x;",
    );
    let mut attacker = pg.connect_as("admin_x", "app");
    assert_eq!(sqlstate(&mut attacker, "SELECT entitlements.attach_workspace_table('public.private_ws', 'id')"), "42501");
    assert_eq!(count(&mut admin, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.private_ws'::regclass"), 0);
    assert_eq!(count(&mut admin, "SELECT count(*) FROM entitlements.workspaces"), 0);
    // Its own table works, without a NOTICE about a trigger that did not exist.
    exec(&mut attacker, "SELECT entitlements.attach_workspace_table('public.own_ws', 'id')");
    assert_eq!(count(&mut admin, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.own_ws'::regclass"), 1);
}

#[test]
fn session_replication_role_replica_does_not_open_the_audit_trail() {
    let pg = Cluster::start_with("sec-replica", &[AUDIT_DB]);
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    check(&mut admin, &ws, "ccp-01");
    flush(&mut admin);
    exec(&mut admin, "SET session_replication_role = replica");
    for sql in [
        "DELETE FROM entitlements.entitlement_checks",
        "UPDATE entitlements.entitlement_checks SET result = NOT result",
        "TRUNCATE entitlements.entitlement_checks",
    ] {
        assert_eq!(sqlstate(&mut admin, sql), "42501", "{sql}");
    }
    exec(&mut admin, "RESET session_replication_role");
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.entitlement_checks WHERE workspace_id = {ws}")), 1);
}

#[test]
fn a_revoked_webhook_secret_leaves_no_trace_in_statistics() {
    let pg = Cluster::start("sec-stats");
    let mut admin = pg.connect();
    for i in 0..200 {
        exec(&mut admin, &format!("SELECT entitlements.add_webhook_secret('whsec_statistics_{i:04}')"));
    }
    exec(&mut admin, "ANALYZE entitlements.webhook_secrets");
    exec(&mut admin, "SELECT entitlements.revoke_webhook_secret('whsec_statistics_0007')");
    exec(&mut admin, "ANALYZE entitlements.webhook_secrets");
    let leaked = count(
        &mut admin,
        "SELECT count(*) FROM pg_stats WHERE schemaname = 'entitlements' AND tablename = 'webhook_secrets' AND attname = 'secret'",
    );
    assert_eq!(leaked, 0);
}

#[test]
fn a_removed_member_loses_access_inside_a_repeatable_read_transaction_that_wrote() {
    let pg = Cluster::start("sec-rr");
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice')"));
    let mut app = app_role(&pg, &mut admin, "app_rr");
    exec(&mut app, "CREATE TEMP TABLE scratch (x int)");
    exec(&mut app, "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL pg_entitlements.user_id = 'alice'; INSERT INTO scratch VALUES (1)");
    assert_eq!(check(&mut app, &ws, "ccp-01"), (true, None));
    exec(&mut admin, &format!("DELETE FROM entitlements.workspace_members WHERE workspace_id = {ws}"));
    assert_eq!(sqlstate(&mut app, &format!("SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-01')")), "42501");
}

#[test]
fn a_jwt_sub_with_a_nul_character_or_of_the_wrong_type_is_refused_with_a_hint() {
    let pg = Cluster::start("sec-jwt");
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice')"));
    let mut app = app_role(&pg, &mut admin, "app_jwt");
    for (claims, hint) in [
        (r#"{"sub":"al\u0000ice"}"#, "\"sub\""),
        (r#"{"sub":42}"#, "\"sub\""),
        ("not json", "not a JSON object"),
    ] {
        exec(&mut app, &format!("SET request.jwt.claims = '{claims}'"));
        let err = app.query_one(&format!("SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-01')"), &[]).unwrap_err();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "28000", "{claims}");
        assert!(db.hint().unwrap_or_default().contains(hint), "{claims}: {:?}", db.hint());
    }
    exec(&mut app, r#"SET request.jwt.claims = '{"sub":"alice"}'"#);
    assert_eq!(check(&mut app, &ws, "ccp-01"), (true, None));
    // Without any identity, the hint says that SET LOCAL only lasts inside a transaction.
    exec(&mut app, "RESET request.jwt.claims");
    let err = app.query_one(&format!("SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-01')"), &[]).unwrap_err();
    assert!(err.as_db_error().unwrap().hint().unwrap_or_default().contains("transaction block"));
    // A non-member is named in the 42501 message.
    exec(&mut app, "SET pg_entitlements.user_id = 'bob'");
    let err = app.query_one(&format!("SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-01')"), &[]).unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("\"bob\""));
}

#[test]
fn identity_source_jwt_ignores_the_setting() {
    let pg = Cluster::start_with("sec-source", &["pg_entitlements.identity_source = 'jwt'"]);
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice')"));
    let mut app = app_role(&pg, &mut admin, "app_src");
    exec(&mut app, "SET pg_entitlements.user_id = 'alice'");
    assert_eq!(sqlstate(&mut app, &format!("SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-01')")), "28000");
    exec(&mut app, r#"SET request.jwt.claims = '{"sub":"alice"}'"#);
    assert_eq!(check(&mut app, &ws, "ccp-01"), (true, None));
}

