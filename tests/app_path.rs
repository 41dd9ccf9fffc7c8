//! The application developer's path, over TCP with real LOGIN roles: members, workspaces,
//! the admin and reader roles, the catalog, paywall answers and change notifications.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use postgres::fallible_iterator::FallibleIterator;

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// A LOGIN role granted entitlements_app, connected over TCP.
fn app_login(pg: &Cluster, admin: &mut Client, role: &str) -> Client {
    exec(admin, &format!("CREATE ROLE {role} LOGIN; GRANT entitlements_app TO {role};"));
    pg.connect_as(role, "app")
}

/// `(enabled, reason)` of a check made for `user` inside a transaction, as an app does it.
fn check_as(app: &mut Client, user: &str, ws: &uuid_string::Ws, feature: &str) -> Result<(bool, Option<String>), String> {
    let mut tx = app.transaction().unwrap();
    tx.batch_execute(&format!("SET LOCAL pg_entitlements.user_id = '{user}'")).unwrap();
    let r = tx
        .query_one(&format!("SELECT enabled, reason FROM entitlements.entitlement_check({ws}, $1)"), &[&feature])
        .map(|row| (row.get(0), row.get(1)))
        .map_err(|e| e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| e.to_string()));
    let _ = tx.rollback();
    r
}

fn members(c: &mut Client, ws: &uuid_string::Ws) -> Vec<(String, String)> {
    c.query(&format!("SELECT user_id, role FROM entitlements.workspace_members WHERE workspace_id = {ws} ORDER BY 1"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn pair(u: &str, r: &str) -> (String, String) {
    (u.to_owned(), r.to_owned())
}

#[test]
fn add_member_gives_access_updates_the_role_and_remove_member_takes_it_away() {
    let pg = Cluster::start("app-members");
    let mut admin = pg.connect();
    let mut app = app_login(&pg, &mut admin, "web_app");
    let ws = new_workspace(&mut admin);

    assert_eq!(sqlstate(&mut admin, &format!("SELECT entitlements.add_member({ws}, 'alice')")), "22023", "unregistered");
    assert_eq!(sqlstate(&mut admin, &format!("SELECT entitlements.add_member({ws}, NULL)")), "22004");
    exec(&mut admin, &format!("SELECT entitlements.register_workspace({ws})"));
    assert_eq!(check_as(&mut app, "alice", &ws, "ccp-01"), Err("42501".into()));

    exec(&mut admin, &format!("SELECT entitlements.add_member({ws}, 'alice')"));
    assert_eq!(members(&mut admin, &ws), vec![pair("alice", "member")]);
    assert_eq!(check_as(&mut app, "alice", &ws, "ccp-01"), Ok((true, None)));
    assert_eq!(check_as(&mut app, "bob", &ws, "ccp-01"), Err("42501".into()));

    // Adding again updates the role; still one membership.
    exec(&mut admin, &format!("SELECT entitlements.add_member({ws}, 'alice', 'owner')"));
    assert_eq!(members(&mut admin, &ws), vec![pair("alice", "owner")]);

    let removed: bool = admin.query_one(&format!("SELECT entitlements.remove_member({ws}, 'alice')"), &[]).unwrap().get(0);
    assert!(removed);
    assert_eq!(check_as(&mut app, "alice", &ws, "ccp-01"), Err("42501".into()));
    let again: bool = admin.query_one(&format!("SELECT entitlements.remove_member({ws}, 'alice')"), &[]).unwrap().get(0);
    assert!(!again, "nothing left to remove");
}

#[test]
fn an_attached_membership_table_keeps_members_in_step_on_insert_update_and_delete() {
    let pg = Cluster::start("app-member-table");
    let mut admin = pg.connect();
    let mut app = app_login(&pg, &mut admin, "web_app");
    let ws = new_workspace(&mut admin);
    let ws2 = new_workspace(&mut admin);
    exec(
        &mut admin,
        &format!(
            "CREATE TABLE public.memberships (id serial PRIMARY KEY, workspace uuid NOT NULL, login varchar(64));
             INSERT INTO public.memberships (workspace, login) VALUES ({ws}, 'alice'), ({ws}, NULL);
             SELECT entitlements.attach_membership_table('public.memberships', 'workspace', 'login');"
        ),
    );
    // The row that existed before is imported (and its workspace registered); the NULL is not.
    assert_eq!(members(&mut admin, &ws), vec![pair("alice", "member")]);
    assert_eq!(check_as(&mut app, "alice", &ws, "ccp-01"), Ok((true, None)));

    exec(&mut admin, &format!("INSERT INTO public.memberships (workspace, login) VALUES ({ws}, 'bob')"));
    assert_eq!(check_as(&mut app, "bob", &ws, "ccp-01"), Ok((true, None)));

    // UPDATE moves a membership: bob leaves ws for ws2 (registered by the trigger).
    exec(&mut admin, &format!("UPDATE public.memberships SET workspace = {ws2} WHERE login = 'bob'"));
    assert_eq!(check_as(&mut app, "bob", &ws, "ccp-01"), Err("42501".into()));
    assert_eq!(check_as(&mut app, "bob", &ws2, "ccp-01"), Ok((true, None)));

    // A pair listed twice stays a member until its last row goes.
    exec(&mut admin, &format!("INSERT INTO public.memberships (workspace, login) VALUES ({ws}, 'alice')"));
    exec(&mut admin, "DELETE FROM public.memberships WHERE id = (SELECT min(id) FROM public.memberships WHERE login = 'alice')");
    assert_eq!(check_as(&mut app, "alice", &ws, "ccp-01"), Ok((true, None)));
    exec(&mut admin, "DELETE FROM public.memberships WHERE login = 'alice'");
    assert_eq!(check_as(&mut app, "alice", &ws, "ccp-01"), Err("42501".into()));
    assert_eq!(members(&mut admin, &ws), vec![]);

    // Attaching again replaces the trigger without a NOTICE and keeps one trigger.
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = notices.clone();
    let mut cfg: postgres::Config = pg.url("app").parse().unwrap();
    cfg.notice_callback(move |n| seen.lock().unwrap().push(n.message().to_owned()));
    let mut again = cfg.connect(NoTls).unwrap();
    exec(&mut again, "SELECT entitlements.attach_membership_table('public.memberships', 'workspace', 'login')");
    assert_eq!(*notices.lock().unwrap(), Vec::<String>::new());
    assert_eq!(count(&mut admin, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.memberships'::regclass AND NOT tgisinternal"), 1);

    // Wrong column types: 22023.
    exec(&mut admin, "CREATE TABLE public.bad (ws text, uid int)");
    assert_eq!(sqlstate(&mut admin, "SELECT entitlements.attach_membership_table('public.bad', 'ws', 'uid')"), "22023");
    exec(&mut admin, "ALTER TABLE public.bad ALTER COLUMN ws TYPE uuid USING NULL");
    assert_eq!(sqlstate(&mut admin, "SELECT entitlements.attach_membership_table('public.bad', 'ws', 'uid')"), "22023");
    assert_eq!(sqlstate(&mut admin, "SELECT entitlements.attach_membership_table('public.bad', 'ws', 'nope')"), "22023");
}

#[test]
fn attach_membership_table_refuses_a_table_the_caller_does_not_own() {
    let pg = Cluster::start("app-member-owner");
    let mut admin = pg.connect();
    exec(
        &mut admin,
        "CREATE ROLE victim LOGIN; CREATE ROLE admin_x LOGIN;
         CREATE TABLE public.their_members (ws uuid, uid text); ALTER TABLE public.their_members OWNER TO victim;
         INSERT INTO public.their_members VALUES (gen_random_uuid(), 'mallory');
         GRANT USAGE ON SCHEMA entitlements TO admin_x;
         GRANT EXECUTE ON FUNCTION entitlements.attach_membership_table(regclass, name, name) TO admin_x;",
    );
    let mut other = pg.connect_as("admin_x", "app");
    assert_eq!(
        sqlstate(&mut other, "SELECT entitlements.attach_membership_table('public.their_members', 'ws', 'uid')"),
        "42501"
    );
    assert_eq!(count(&mut admin, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.their_members'::regclass"), 0);
    assert_eq!(count(&mut admin, "SELECT count(*) FROM entitlements.workspace_members"), 0);
}

#[test]
fn unregister_workspace_removes_registration_members_overrides_and_billing_state_and_keeps_the_history() {
    let pg = Cluster::start_with("app-unregister", &["pg_entitlements.audit_database = 'app'"]);
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    let other = new_workspace(&mut admin);
    for w in [&ws, &other] {
        exec(
            &mut admin,
            &format!(
                "SELECT entitlements.sync_billing_state({w}, 'pro', 'active');
                 SELECT entitlements.set_override({w}, 'ccp-13', true);
                 SELECT entitlements.add_member({w}, 'alice', 'owner');"
            ),
        );
    }
    exec(&mut admin, &format!("SELECT entitlements.link_stripe_customer({ws}, 'cus_gone')"));
    assert_eq!(check(&mut admin, &ws, "ccp-05"), (true, None));
    admin.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
    let audit_before = count(&mut admin, &format!("SELECT count(*) FROM entitlements.entitlement_checks WHERE workspace_id = {ws}"));
    assert_eq!(audit_before, 1);

    let removed: bool = admin.query_one(&format!("SELECT entitlements.unregister_workspace({ws})"), &[]).unwrap().get(0);
    assert!(removed);
    for table in ["workspaces", "workspace_members", "overrides", "billing_state"] {
        assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.{table} WHERE workspace_id = {ws}")), 0, "{table}");
        assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.{table} WHERE workspace_id = {other}")), 1, "{table} of another workspace");
    }
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.entitlements WHERE workspace_id = {ws}")), 0, "no matrix rows");
    // The billing history and the audit trail stay.
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.stripe_customers WHERE workspace_id = {ws}")), 1);
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.entitlement_checks WHERE workspace_id = {ws}")), audit_before);
    // Its decisions are a new workspace's (free, no override), from the cache's point of view too.
    assert_eq!(check(&mut admin, &ws, "ccp-05"), (false, Some("TIER_INSUFFICIENT".into())));
    assert_eq!(check(&mut admin, &ws, "ccp-13"), (false, Some("TIER_INSUFFICIENT".into())));

    let again: bool = admin.query_one(&format!("SELECT entitlements.unregister_workspace({ws})"), &[]).unwrap().get(0);
    assert!(!again);
    assert_eq!(sqlstate(&mut admin, "SELECT entitlements.unregister_workspace(NULL)"), "22004");
}

#[test]
fn deleting_a_row_of_an_attached_workspaces_table_unregisters_it_without_notices() {
    let pg = Cluster::start("app-attach-delete");
    let mut admin = pg.connect();
    let mut owner = app_login(&pg, &mut admin, "web_app");
    exec(
        &mut admin,
        "CREATE TABLE public.workspaces (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text);
         ALTER TABLE public.workspaces OWNER TO web_app;
         GRANT EXECUTE ON FUNCTION entitlements.attach_workspace_table(regclass, name) TO web_app;",
    );
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = notices.clone();
    let mut cfg: postgres::Config = format!("host=127.0.0.1 port={} user=web_app dbname=app", pg.port).parse().unwrap();
    cfg.notice_callback(move |n| seen.lock().unwrap().push(n.message().to_owned()));
    let mut noticed = cfg.connect(NoTls).unwrap();
    exec(&mut owner, "INSERT INTO public.workspaces (name) VALUES ('acme'), ('globex')");
    exec(&mut noticed, "SELECT entitlements.attach_workspace_table('public.workspaces', 'id')");
    exec(&mut noticed, "SELECT entitlements.attach_workspace_table('public.workspaces', 'id')");
    assert_eq!(*notices.lock().unwrap(), Vec::<String>::new(), "attaching (twice) says nothing");
    let acme: String = admin.query_one("SELECT id::text FROM public.workspaces WHERE name = 'acme'", &[]).unwrap().get(0);
    let acme = uuid_string::Ws(acme);
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({acme}, 'pro', 'active'); SELECT entitlements.add_member({acme}, 'alice')"));
    assert_eq!(count(&mut admin, "SELECT count(*) FROM entitlements.workspaces"), 2);

    // The app deletes its own row, as its own role.
    exec(&mut noticed, "DELETE FROM public.workspaces WHERE name = 'acme'");
    assert_eq!(*notices.lock().unwrap(), Vec::<String>::new(), "deleting says nothing");
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.workspaces WHERE workspace_id = {acme}")), 0);
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.billing_state WHERE workspace_id = {acme}")), 0);
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM entitlements.workspace_members WHERE workspace_id = {acme}")), 0);
    assert_eq!(count(&mut admin, "SELECT count(*) FROM entitlements.workspaces"), 1, "globex stays");
}

/// Rows a statement affected, or its SQLSTATE.
fn affected(c: &mut Client, sql: &str) -> Result<u64, String> {
    c.execute(sql, &[]).map_err(|e| e.code().map(|s| s.code().to_owned()).unwrap_or_else(|| e.to_string()))
}

#[test]
fn entitlements_admin_runs_every_admin_function_and_writes_the_admin_tables() {
    let pg = Cluster::start("app-admin-role");
    let mut su = pg.connect();
    exec(
        &mut su,
        "CREATE ROLE billing_admin LOGIN; GRANT entitlements_admin TO billing_admin;
         CREATE TABLE public.teams (id uuid PRIMARY KEY); ALTER TABLE public.teams OWNER TO billing_admin;
         CREATE TABLE public.team_members (team uuid, login text); ALTER TABLE public.team_members OWNER TO billing_admin;",
    );
    let ws = new_workspace(&mut su);
    let mut admin = pg.connect_as("billing_admin", "app");
    for sql in [
        format!("SELECT entitlements.register_workspace({ws})"),
        format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"),
        format!("SELECT entitlements.set_override({ws}, 'ccp-13', true)"),
        format!("SELECT entitlements.clear_override({ws}, 'ccp-13')"),
        format!("SELECT entitlements.add_member({ws}, 'alice', 'owner')"),
        format!("SELECT entitlements.remove_member({ws}, 'alice')"),
        format!("SELECT entitlements.unregister_workspace({ws})"),
        "SELECT entitlements.attach_workspace_table('public.teams', 'id')".to_owned(),
        "SELECT entitlements.attach_membership_table('public.team_members', 'team', 'login')".to_owned(),
        format!("SELECT entitlements.link_stripe_customer({ws}, 'cus_admin')"),
        format!("SELECT entitlements.replay_stripe_events({ws})"),
        "SELECT entitlements.add_webhook_secret('whsec_admin_role')".to_owned(),
        "SELECT entitlements.revoke_webhook_secret('whsec_admin_role')".to_owned(),
    ] {
        exec(&mut admin, &sql);
    }
    exec(&mut admin, &format!("SELECT entitlements.register_workspace({ws})"));
    // Direct writes: each statement reaches its row (not an RLS violation, not UPDATE 0).
    for (sql, rows) in [
        ("INSERT INTO entitlements.tiers VALUES ('team', 10, 'Team')".to_owned(), 1),
        ("UPDATE entitlements.tiers SET description = 'Team plan' WHERE tier = 'team'".to_owned(), 1),
        ("INSERT INTO entitlements.features VALUES ('ccp-99', 'team', 'Team feature')".to_owned(), 1),
        ("UPDATE entitlements.features SET min_tier = 'pro' WHERE feature = 'ccp-99'".to_owned(), 1),
        (format!("INSERT INTO entitlements.overrides (workspace_id, feature, enabled) VALUES ({ws}, 'ccp-99', false)"), 1),
        (format!("UPDATE entitlements.overrides SET enabled = true WHERE workspace_id = {ws}"), 1),
        (format!("INSERT INTO entitlements.workspace_members VALUES ({ws}, 'bob', 'member')"), 1),
        (format!("UPDATE entitlements.workspace_members SET role = 'billing' WHERE workspace_id = {ws}"), 1),
        ("INSERT INTO entitlements.stripe_price_tiers VALUES ('price_team', 'team')".to_owned(), 1),
        ("UPDATE entitlements.stripe_price_tiers SET tier = 'pro' WHERE stripe_id = 'price_team'".to_owned(), 1),
        ("DELETE FROM entitlements.stripe_price_tiers WHERE stripe_id = 'price_team'".to_owned(), 1),
        (format!("DELETE FROM entitlements.workspace_members WHERE workspace_id = {ws}"), 1),
        (format!("DELETE FROM entitlements.overrides WHERE workspace_id = {ws}"), 1),
        ("DELETE FROM entitlements.features WHERE feature = 'ccp-99'".to_owned(), 1),
        ("DELETE FROM entitlements.tiers WHERE tier = 'team'".to_owned(), 1),
    ] {
        assert_eq!(affected(&mut admin, &sql), Ok(rows), "{sql}");
    }
    // Not an admin's: the secrets, the audit trail, billing state behind the functions' back.
    assert_eq!(affected(&mut admin, "SELECT * FROM entitlements.webhook_secrets"), Err("42501".into()));
    assert_eq!(affected(&mut admin, "DELETE FROM entitlements.entitlement_checks"), Err("42501".into()));
    assert_eq!(affected(&mut admin, "DELETE FROM entitlements.billing_state"), Err("42501".into()));
    assert_eq!(affected(&mut admin, "SELECT entitlements.prune_audit('1 day')"), Err("42501".into()));
    // And the admin's edits are what checks answer from.
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    exec(&mut admin, "UPDATE entitlements.features SET min_tier = 'pro' WHERE feature = 'ccp-13'");
    assert_eq!(check(&mut su, &ws, "ccp-13"), (true, None));
}

#[test]
fn entitlements_reader_reads_every_workspace_and_cannot_write_anything() {
    let pg = Cluster::start_with("app-reader-role", &["pg_entitlements.audit_database = 'app'"]);
    let mut su = pg.connect();
    let a = new_workspace(&mut su);
    let b = new_workspace(&mut su);
    exec(
        &mut su,
        &format!(
            "CREATE ROLE support LOGIN; GRANT entitlements_reader TO support;
             SELECT entitlements.sync_billing_state({a}, 'pro', 'active');
             SELECT entitlements.sync_billing_state({b}, 'enterprise', 'past_due');
             SELECT entitlements.set_override({a}, 'ccp-13', true);
             SELECT entitlements.add_member({a}, 'alice'); SELECT entitlements.add_member({b}, 'bob');
             INSERT INTO entitlements.features (feature, min_tier, kind, reset_period) VALUES ('calls', 'free', 'metered', 'month');
             SELECT entitlements.set_feature_limit('calls', 'free', 10);
             SELECT entitlements.set_limit_override({b}, 'calls', 20);
             SELECT entitlements.consume({a}, 'calls', 1, 'req-1');
             INSERT INTO entitlements.usage_periods VALUES ({a}, 'calls', '2026-01-01', '2026-02-01', 7);
             INSERT INTO entitlements.stripe_price_tiers VALUES ('price_pro', 'pro');
             SELECT entitlements.add_webhook_secret('whsec_reader');
             SELECT entitlements.link_stripe_customer({a}, 'cus_reader');
             SELECT entitlements.map_stripe_price_feature('price_roles', 'ccp-07');
             SELECT entitlements.map_stripe_feature('sso', 'ccp-14');"
        ),
    );
    let payload = format!(
        r#"{{"id":"evt_reader","object":"event","type":"customer.subscription.updated","created":{},
            "data":{{"object":{{"id":"sub_r","object":"subscription","customer":"cus_reader","status":"active",
            "cancel_at_period_end":false,"items":{{"object":"list","data":[{{"id":"si","object":"subscription_item",
            "price":{{"id":"price_pro","object":"price","product":"prod"}}}},
            {{"id":"si_roles","object":"subscription_item","price":{{"id":"price_roles","object":"price"}}}}]}}}}}}}}"#,
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 5
    );
    // And a Stripe Entitlements summary, so that every Stripe table has rows.
    let summary = format!(
        r#"{{"id":"evt_reader_summary","object":"event","type":"entitlements.active_entitlement_summary.updated","created":{},
            "data":{{"object":{{"object":"entitlements.active_entitlement_summary","customer":"cus_reader",
            "entitlements":{{"object":"list","has_more":false,"data":[{{"object":"entitlements.active_entitlement","lookup_key":"sso"}}]}}}}}}}}"#,
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 5
    );
    for payload in [&payload, &summary] {
        let header: String = su.query_one("SELECT entitlements.sign_stripe_payload($1, 'whsec_reader')", &[payload]).unwrap().get(0);
        let outcome: String = su.query_one("SELECT outcome FROM entitlements.apply_stripe_event($1, $2)", &[payload, &header]).unwrap().get(0);
        assert_eq!(outcome, "applied");
    }
    check(&mut su, &a, "ccp-05");
    check(&mut su, &b, "ccp-05");
    assert_eq!(check(&mut su, &a, "ccp-10").0, false, "a denial for denials_by_reason");
    su.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();

    let mut reader = pg.connect_as("support", "app");
    // Every table and view of the schema but the secrets, the superusers' cache view and the
    // cache's data-less signal view (granted to nobody): the reader sees what a superuser
    // sees, across workspaces. (The audit trail is read through its partitioned parent; its
    // partitions, addressed directly, are closed to every role.)
    let relations: Vec<String> = su
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c
              WHERE c.relnamespace = 'entitlements'::regnamespace AND c.relkind IN ('r', 'p', 'v')
                AND NOT c.relispartition
                AND c.relname NOT IN ('webhook_secrets', 'entitlement_cache', 'cache_signal') ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(relations.len() >= 17, "{relations:?}");
    for rel in &relations {
        let all = count(&mut su, &format!("SELECT count(*) FROM {rel}"));
        assert!(all > 0, "{rel} has rows to read");
        let seen = reader.query_one(&format!("SELECT count(*) FROM {rel}"), &[]).map(|r| r.get::<_, i64>(0));
        assert_eq!(seen.map_err(|e| e.to_string()), Ok(all), "{rel}");
    }
    assert_eq!(affected(&mut reader, "SELECT * FROM entitlements.webhook_secrets"), Err("42501".into()));

    // Nothing it can write: every table, every kind of write; no admin function; no audited check.
    let tables: Vec<String> = su
        .query("SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = 'entitlements'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for t in &tables {
        for sql in [
            format!("INSERT INTO {t} DEFAULT VALUES"),
            format!("UPDATE {t} SET {col} = {col}", col = first_column(&mut su, t)),
            format!("DELETE FROM {t}"),
            format!("TRUNCATE {t}"),
        ] {
            assert_eq!(affected(&mut reader, &sql), Err("42501".into()), "{sql}");
        }
    }
    for sql in [
        format!("SELECT entitlements.sync_billing_state({a}, 'free', 'active')"),
        format!("SELECT entitlements.set_override({a}, 'ccp-01', false)"),
        format!("SELECT entitlements.add_member({a}, 'mallory')"),
        format!("SELECT entitlements.unregister_workspace({a})"),
        format!("SELECT entitlements.replay_stripe_events({a})"),
        "SELECT entitlements.add_webhook_secret('whsec_x')".to_owned(),
        format!("SELECT * FROM entitlements.entitlement_check({a}, 'ccp-01')"),
    ] {
        assert_eq!(affected(&mut reader, &sql), Err("42501".into()), "{sql}");
    }
    let rows_after: i64 = count(&mut su, "SELECT count(*) FROM entitlements.workspace_members");
    assert_eq!(rows_after, 2);
}

fn first_column(c: &mut Client, table: &str) -> String {
    c.query_one(
        "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = $1::text::regclass AND attnum > 0
            AND attidentity = '' AND attgenerated = '' AND NOT attisdropped ORDER BY attnum LIMIT 1",
        &[&table],
    )
    .unwrap()
    .get(0)
}

/// The README's recipe, as written there, run by an entitlements_admin login.
const INSERT_TIER_RECIPE: &str = "
BEGIN;
UPDATE entitlements.tiers SET level = level + 1 WHERE level >= 2;
INSERT INTO entitlements.tiers (tier, level, description) VALUES ('team', 2, 'Team plan');
COMMIT;";

#[test]
fn a_tier_can_be_inserted_between_two_in_one_transaction_and_levels_stay_unique_at_commit() {
    let pg = Cluster::start("app-insert-tier");
    let mut su = pg.connect();
    exec(&mut su, "CREATE ROLE billing_admin LOGIN; GRANT entitlements_admin TO billing_admin;");
    let ws = new_workspace(&mut su);
    exec(&mut su, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro_plus', 'active')"));
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains(INSERT_TIER_RECIPE.trim()), "the README shows this recipe");

    let mut admin = pg.connect_as("billing_admin", "app");
    exec(&mut admin, INSERT_TIER_RECIPE);
    let order: Vec<String> =
        su.query("SELECT tier FROM entitlements.tiers ORDER BY level", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(order, ["free", "pro", "team", "pro_plus", "portfolio", "enterprise"]);
    // Decisions follow the new order: a team feature is within pro_plus, not within pro.
    exec(&mut admin, "INSERT INTO entitlements.features VALUES ('ccp-15', 'team', 'Team analytics')");
    assert_eq!(check(&mut su, &ws, "ccp-15"), (true, None));
    assert_eq!(check(&mut su, &ws, "ccp-10"), (false, Some("TIER_INSUFFICIENT".into())));

    // Two tiers on one level are still refused, at commit.
    exec(&mut admin, "BEGIN; UPDATE entitlements.tiers SET level = 1 WHERE tier = 'team'");
    assert_eq!(sqlstate(&mut admin, "COMMIT"), "23505");
    let team: i32 = su.query_one("SELECT level FROM entitlements.tiers WHERE tier = 'team'", &[]).unwrap().get(0);
    assert_eq!(team, 2);
}

/// `(enabled, reason, required_tier, cached)` of one check.
fn paywall(c: &mut Client, ws: &uuid_string::Ws, feature: &str) -> (bool, Option<String>, Option<String>, bool) {
    let r = c
        .query_one(&format!("SELECT enabled, reason, required_tier, cached FROM entitlements.entitlement_check({ws}, $1)"), &[&feature])
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[test]
fn required_tier_names_the_tier_that_unlocks_a_denied_feature_cached_or_not() {
    let pg = Cluster::start("app-required-tier");
    let mut su = pg.connect();
    let ws = new_workspace(&mut su);
    exec(&mut su, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active'); SELECT entitlements.add_member({ws}, 'alice')"));
    let s = |x: &str| Some(x.to_owned());
    // Uncached, then the same answer from the cache.
    for cached in [false, true] {
        assert_eq!(paywall(&mut su, &ws, "ccp-10"), (false, s("TIER_INSUFFICIENT"), s("portfolio"), cached));
        assert_eq!(paywall(&mut su, &ws, "ccp-05"), (true, None, None, cached), "allowed: no tier needed");
    }
    // A catalog edit moves the answer, cached path included (the backend's catalog memo follows).
    exec(&mut su, "UPDATE entitlements.features SET min_tier = 'enterprise' WHERE feature = 'ccp-10'");
    assert_eq!(paywall(&mut su, &ws, "ccp-10"), (false, s("TIER_INSUFFICIENT"), s("enterprise"), false));
    assert_eq!(paywall(&mut su, &ws, "ccp-10"), (false, s("TIER_INSUFFICIENT"), s("enterprise"), true));
    // No tier lifts an admin's revocation; any tier's subscription lifts an inactive one.
    exec(&mut su, &format!("SELECT entitlements.set_override({ws}, 'ccp-04', false)"));
    for cached in [false, true] {
        assert_eq!(paywall(&mut su, &ws, "ccp-04"), (false, s("FEATURE_DISABLED"), None, cached));
    }
    exec(&mut su, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'canceled')"));
    assert_eq!(paywall(&mut su, &ws, "ccp-05"), (false, s("SUBSCRIPTION_INACTIVE"), s("pro"), false));
    assert_eq!(paywall(&mut su, &ws, "ccp-05"), (false, s("SUBSCRIPTION_INACTIVE"), s("pro"), true));
    // entitlement_check_all fills it too, from the cache as well.
    for _ in 0..2 {
        let n: i64 = count(
            &mut su,
            &format!(
                "SELECT count(*) FROM entitlements.entitlement_check_all({ws}) c JOIN entitlements.features f USING (feature)
                  WHERE c.required_tier IS DISTINCT FROM CASE WHEN NOT c.enabled AND c.reason <> 'FEATURE_DISABLED' THEN f.min_tier END"
            ),
        );
        assert_eq!(n, 0);
    }
}

#[test]
fn upgrade_options_lists_each_denied_feature_with_the_tier_that_unlocks_it_for_members_only() {
    let pg = Cluster::start("app-upgrade-options");
    let mut su = pg.connect();
    let mut app = app_login(&pg, &mut su, "web_app");
    let ws = new_workspace(&mut su);
    exec(
        &mut su,
        &format!(
            "SELECT entitlements.sync_billing_state({ws}, 'pro_plus', 'active'); SELECT entitlements.add_member({ws}, 'alice');
             SELECT entitlements.set_override({ws}, 'ccp-13', true); SELECT entitlements.set_override({ws}, 'ccp-09', false);"
        ),
    );
    let mut tx = app.transaction().unwrap();
    tx.batch_execute("SET LOCAL pg_entitlements.user_id = 'alice'").unwrap();
    let rows: Vec<(String, String, Option<String>)> = tx
        .query(&format!("SELECT feature, reason, required_tier FROM entitlements.upgrade_options({ws}) ORDER BY feature"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    tx.commit().unwrap();
    let o = |f: &str, r: &str, t: Option<&str>| (f.to_owned(), r.to_owned(), t.map(str::to_owned));
    assert_eq!(
        rows,
        vec![
            o("ccp-09", "FEATURE_DISABLED", None),
            o("ccp-10", "TIER_INSUFFICIENT", Some("portfolio")),
            o("ccp-11", "TIER_INSUFFICIENT", Some("portfolio")),
            o("ccp-12", "TIER_INSUFFICIENT", Some("portfolio")),
            o("ccp-14", "TIER_INSUFFICIENT", Some("enterprise")),
        ]
    );
    let mut tx = app.transaction().unwrap();
    tx.batch_execute("SET LOCAL pg_entitlements.user_id = 'mallory'").unwrap();
    let err = tx.query(&format!("SELECT * FROM entitlements.upgrade_options({ws})"), &[]).unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    drop(tx);
    assert_eq!(sqlstate(&mut app, &format!("SELECT * FROM entitlements.upgrade_options({ws})")), "28000");
}

/// The next notification on `pg_entitlements_changed`, as (workspace_id, changed). Blocks
/// until one arrives: every wait below is ended by a committed change made for that purpose.
fn next_change(listener: &mut Client) -> (String, String) {
    let n = listener.notifications().blocking_iter().next().unwrap().unwrap();
    assert_eq!(n.channel(), "pg_entitlements_changed");
    let v: serde_json::Value = serde_json::from_str(n.payload()).unwrap();
    (v["workspace_id"].as_str().unwrap().to_owned(), v["changed"].as_str().unwrap().to_owned())
}

#[test]
fn changes_are_notified_on_commit_never_after_rollback_and_once_per_workspace_and_kind() {
    let pg = Cluster::start("app-notify");
    let mut su = pg.connect();
    let mut writer = pg.connect();
    let mut listener = pg.connect();
    let ws = new_workspace(&mut su);
    let marker = new_workspace(&mut su);
    exec(&mut su, &format!("SELECT entitlements.register_workspace({ws}); SELECT entitlements.register_workspace({marker})"));
    exec(&mut listener, "LISTEN pg_entitlements_changed");
    let change = |w: &uuid_string::Ws, kind: &str| (w.0.clone(), kind.to_owned());
    // A committed change from another session: what ends each wait.
    let mark = |su: &mut Client| exec(su, &format!("SELECT entitlements.sync_billing_state({marker}, 'pro', 'active')"));

    // Open transaction: nothing yet; the marker committed meanwhile comes first.
    exec(&mut writer, &format!("BEGIN; SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    mark(&mut su);
    assert_eq!(next_change(&mut listener), change(&marker, "billing"));
    exec(&mut writer, "COMMIT");
    assert_eq!(next_change(&mut listener), change(&ws, "billing"), "delivered at commit");

    // Rolled back: never delivered.
    exec(&mut writer, &format!("BEGIN; SELECT entitlements.set_override({ws}, 'ccp-13', true); ROLLBACK"));
    mark(&mut su);
    assert_eq!(next_change(&mut listener), change(&marker, "billing"), "nothing from the rollback");

    // One transaction, many writes: one notification per (workspace, kind).
    exec(
        &mut writer,
        &format!(
            "BEGIN;
             SELECT entitlements.sync_billing_state({ws}, 'pro_plus', 'active');
             SELECT entitlements.sync_billing_state({ws}, 'portfolio', 'trialing');
             SELECT entitlements.set_override({ws}, 'ccp-13', true);
             SELECT entitlements.set_override({ws}, 'ccp-14', true);
             SELECT entitlements.add_member({ws}, 'alice');
             SELECT entitlements.add_member({ws}, 'bob');
             UPDATE entitlements.features SET description = description || '.';
             COMMIT;"
        ),
    );
    mark(&mut su);
    let mut got = Vec::new();
    loop {
        let c = next_change(&mut listener);
        if c == change(&marker, "billing") {
            break;
        }
        got.push(c);
    }
    assert_eq!(
        got,
        vec![change(&ws, "billing"), change(&ws, "override"), change(&ws, "membership"), ("*".to_owned(), "catalog".to_owned())]
    );

    // Unregistering notifies what it removed; a direct TRUNCATE names every workspace.
    exec(&mut writer, &format!("SELECT entitlements.unregister_workspace({ws})"));
    assert_eq!(next_change(&mut listener), change(&ws, "membership"));
    assert_eq!(next_change(&mut listener), change(&ws, "override"));
    assert_eq!(next_change(&mut listener), change(&ws, "billing"));
    exec(&mut writer, "TRUNCATE entitlements.overrides");
    assert_eq!(next_change(&mut listener), ("*".to_owned(), "override".to_owned()));
}
