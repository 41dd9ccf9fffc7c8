//! The foundation, as its users meet it, over real connections to a real cluster.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

#[test]
fn billing_change_committed_in_one_session_is_seen_by_the_next_check_in_another() {
    let pg = Cluster::start("two-sessions");
    let mut billing = pg.connect();
    let mut app = pg.connect();
    let ws = new_workspace(&mut billing);
    exec(&mut billing, &format!("SELECT entitlements.register_workspace({ws})"));

    assert_eq!(check(&mut app, &ws, "ccp-05"), (false, Some("TIER_INSUFFICIENT".into())));

    // Uncommitted: the other session still sees the old decision.
    exec(&mut billing, &format!("BEGIN; SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    assert_eq!(check(&mut app, &ws, "ccp-05").0, false);
    exec(&mut billing, "COMMIT");
    assert_eq!(check(&mut app, &ws, "ccp-05"), (true, None));

    exec(&mut billing, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'canceled')"));
    assert_eq!(check(&mut app, &ws, "ccp-05"), (false, Some("SUBSCRIPTION_INACTIVE".into())));
    assert_eq!(check(&mut app, &ws, "ccp-01"), (true, None), "free features stay");
}

/// Two tenants, real non-privileged roles, identity from the GUC and from JWT claims.
#[test]
fn identity_membership_and_rls_with_real_roles() {
    let pg = Cluster::start("identity");
    let mut admin = pg.connect();
    let ws_a = new_workspace(&mut admin);
    let ws_b = new_workspace(&mut admin);
    exec(
        &mut admin,
        &format!(
            "CREATE ROLE app_user LOGIN; GRANT entitlements_app TO app_user;
             SELECT entitlements.sync_billing_state({ws_a}, 'pro', 'active');
             SELECT entitlements.sync_billing_state({ws_b}, 'enterprise', 'active');
             INSERT INTO entitlements.workspace_members VALUES ({ws_a}, 'alice', 'owner'), ({ws_b}, 'bob', 'owner');"
        ),
    );
    let mut app = pg.connect();
    exec(&mut app, "SET ROLE app_user");

    // No identity: 28000 (the "401"), for both check functions and for has_entitlement.
    assert_eq!(sqlstate(&mut app, &format!("SELECT * FROM entitlements.entitlement_check({ws_a}, 'ccp-05')")), "28000");
    assert_eq!(sqlstate(&mut app, &format!("SELECT * FROM entitlements.entitlement_check_all({ws_a})")), "28000");
    assert_eq!(sqlstate(&mut app, &format!("SELECT entitlements.has_entitlement({ws_a}, 'ccp-05')")), "28000");

    // Alice may check her workspace; Bob's is a 42501 (the "403").
    exec(&mut app, "SET pg_entitlements.user_id = 'alice'");
    assert_eq!(check(&mut app, &ws_a, "ccp-05"), (true, None));
    assert_eq!(sqlstate(&mut app, &format!("SELECT * FROM entitlements.entitlement_check({ws_b}, 'ccp-05')")), "42501");
    assert_eq!(sqlstate(&mut app, &format!("SELECT * FROM entitlements.entitlement_check_all({ws_b})")), "42501");
    // has_entitlement filters rather than fails: another tenant's workspace is simply false.
    let r: bool = app.query_one(&format!("SELECT entitlements.has_entitlement({ws_b}, 'ccp-13')"), &[]).unwrap().get(0);
    assert!(!r);

    // RLS: Alice reads her own rows only, in every table and view.
    for (table, col) in [
        ("entitlements.billing_state", "workspace_id"),
        ("entitlements.entitlements", "workspace_id"),
        ("entitlements.workspaces", "workspace_id"),
        ("entitlements.workspace_members", "workspace_id"),
        ("entitlements.entitlements_current", "workspace_id"),
        ("entitlements.billing_status_current", "workspace_id"),
    ] {
        let others: i64 = app
            .query_one(&format!("SELECT count(*) FROM {table} WHERE {col} <> {ws_a}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(others, 0, "{table} leaks another tenant's rows");
        let own: i64 = app.query_one(&format!("SELECT count(*) FROM {table}"), &[]).unwrap().get(0);
        assert!(own > 0, "{table} shows alice nothing");
    }

    // Writes go through the admin functions only: none granted to app_user.
    assert_eq!(sqlstate(&mut app, &format!("UPDATE entitlements.billing_state SET tier = 'enterprise' WHERE workspace_id = {ws_a}")), "42501");
    assert_eq!(sqlstate(&mut app, &format!("INSERT INTO entitlements.workspace_members VALUES ({ws_b}, 'alice', 'owner')")), "42501");
    assert_eq!(sqlstate(&mut app, &format!("SELECT entitlements.sync_billing_state({ws_a}, 'enterprise', 'active')")), "42501");
    assert_eq!(sqlstate(&mut app, &format!("SELECT entitlements.set_override({ws_a}, 'ccp-13', true)")), "42501");

    // Identity from PostgREST/Supabase JWT claims when the GUC is empty.
    exec(&mut app, r#"RESET pg_entitlements.user_id; SET request.jwt.claims = '{"sub":"bob","role":"authenticated"}'"#);
    assert_eq!(check(&mut app, &ws_b, "ccp-13"), (true, None));
    assert_eq!(sqlstate(&mut app, &format!("SELECT * FROM entitlements.entitlement_check({ws_a}, 'ccp-05')")), "42501");

    // A BYPASSRLS role may check any workspace without an identity.
    exec(&mut admin, "CREATE ROLE support BYPASSRLS; GRANT entitlements_app TO support");
    exec(&mut app, "RESET ROLE; RESET request.jwt.claims; SET ROLE support");
    assert_eq!(check(&mut app, &ws_b, "ccp-13"), (true, None));
}

#[test]
fn security_definer_functions_ignore_objects_planted_in_public() {
    let pg = Cluster::start("search-path");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    // A planted now() that would push every past_due_since far into the past.
    exec(
        &mut c,
        "CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '2000-01-01'::timestamptz $$;
         SET search_path = public, pg_catalog;",
    );
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'past_due')"));
    let since_recent: bool = c
        .query_one(&format!("SELECT past_due_since > '2020-01-01' FROM entitlements.billing_state WHERE workspace_id = {ws}"), &[])
        .unwrap()
        .get(0);
    assert!(since_recent, "the trigger used the planted now()");
    assert_eq!(check(&mut c, &ws, "ccp-05"), (true, None), "within grace");
}

#[test]
fn bad_input_gets_a_clear_sqlstate_and_writes_nothing() {
    let pg = Cluster::start("bad-input");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    assert_eq!(sqlstate(&mut c, &format!("SELECT * FROM entitlements.entitlement_check({ws}, 'no-such')")), "22023");
    assert_eq!(sqlstate(&mut c, "SELECT * FROM entitlements.entitlement_check(NULL, 'ccp-01')"), "22004");
    assert_eq!(sqlstate(&mut c, &format!("SELECT * FROM entitlements.entitlement_check({ws}, NULL)")), "22004");
    assert_eq!(sqlstate(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'gold', 'active')")), "22023");
    assert_eq!(sqlstate(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'Active')")), "22023");
    assert_eq!(sqlstate(&mut c, &format!("SELECT entitlements.set_override({ws}, 'no-such', true)")), "22023");
    let rows: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM entitlements.billing_state) + (SELECT count(*) FROM entitlements.overrides)
                  + (SELECT count(*) FROM entitlements.workspaces)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    // The backend is still the same one: nothing crashed.
    c.batch_execute("SELECT 1").unwrap();
}

#[test]
fn attached_workspace_table_registers_new_and_existing_workspaces() {
    let pg = Cluster::start("attach");
    let mut c = pg.connect();
    exec(
        &mut c,
        "CREATE TABLE public.workspaces (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name text);
         INSERT INTO public.workspaces (name) VALUES ('before');
         SELECT entitlements.attach_workspace_table('public.workspaces', 'id');
         INSERT INTO public.workspaces (name) VALUES ('after');",
    );
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM public.workspaces w JOIN entitlements.entitlements e ON e.workspace_id = w.id",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2 * 14, "both workspaces have a full matrix");
    assert_eq!(sqlstate(&mut c, "SELECT entitlements.attach_workspace_table('public.workspaces', 'name')"), "22023");
}

#[derive(Clone, Debug)]
enum Step {
    Billing { ws: usize, tier: &'static str, status: &'static str },
    Override { ws: usize, feature: u8, enabled: bool },
    ClearOverride { ws: usize, feature: u8 },
    MoveFeature { feature: u8, tier: &'static str },
    AddFeature { n: u8, tier: &'static str },
    SetLevel { tier: &'static str, level: i32 },
}

const TIERS: [&str; 5] = ["free", "pro", "pro_plus", "portfolio", "enterprise"];
const STATUSES: [&str; 9] =
    ["trialing", "active", "past_due", "canceled", "unpaid", "incomplete", "incomplete_expired", "paused", "none"];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, prop::sample::select(&TIERS[..]), prop::sample::select(&STATUSES[..]))
            .prop_map(|(ws, tier, status)| Step::Billing { ws, tier, status }),
        2 => (0..3usize, 1..=14u8, any::<bool>()).prop_map(|(ws, feature, enabled)| Step::Override { ws, feature, enabled }),
        1 => (0..3usize, 1..=14u8).prop_map(|(ws, feature)| Step::ClearOverride { ws, feature }),
        1 => (1..=14u8, prop::sample::select(&TIERS[..])).prop_map(|(feature, tier)| Step::MoveFeature { feature, tier }),
        1 => (15..=17u8, prop::sample::select(&TIERS[..])).prop_map(|(n, tier)| Step::AddFeature { n, tier }),
        1 => (prop::sample::select(&TIERS[1..]), 5..50i32).prop_map(|(tier, level)| Step::SetLevel { tier, level }),
    ]
}

/// Property: after any sequence of billing changes, overrides and catalog edits, the matrix
/// table, the views and entitlement_check agree on every (workspace, feature) pair.
#[test]
fn matrix_views_and_checks_never_disagree() {
    let pg = Cluster::start("agreement");
    let cell = std::cell::RefCell::new(pg.connect());
    let ws: Vec<_> = (0..3).map(|_| new_workspace(&mut cell.borrow_mut())).collect();
    for w in &ws {
        exec(&mut cell.borrow_mut(), &format!("SELECT entitlements.register_workspace({w})"));
    }
    let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
    runner
        .run(&prop::collection::vec(step(), 1..12), |steps| {
            let c = &mut *cell.borrow_mut();
            for s in &steps {
                let sql = match s {
                    Step::Billing { ws: i, tier, status } => {
                        let w = &ws[*i];
                        // trial and grace chosen far from now, so no boundary falls inside the test
                        format!("SELECT entitlements.sync_billing_state({w}, '{tier}', '{status}', now() + interval '3 days')")
                    }
                    Step::Override { ws: i, feature, enabled } => {
                        format!("SELECT entitlements.set_override({}, 'ccp-{feature:02}', {enabled})", ws[*i])
                    }
                    Step::ClearOverride { ws: i, feature } => {
                        format!("SELECT entitlements.clear_override({}, 'ccp-{feature:02}')", ws[*i])
                    }
                    Step::MoveFeature { feature, tier } => {
                        format!("UPDATE entitlements.features SET min_tier = '{tier}' WHERE feature = 'ccp-{feature:02}'")
                    }
                    Step::AddFeature { n, tier } => format!(
                        "INSERT INTO entitlements.features VALUES ('ccp-{n:02}', '{tier}') ON CONFLICT (feature) DO UPDATE SET min_tier = EXCLUDED.min_tier"
                    ),
                    Step::SetLevel { tier, level } => format!(
                        "UPDATE entitlements.tiers SET level = {level} WHERE tier = '{tier}' AND NOT EXISTS (SELECT 1 FROM entitlements.tiers WHERE level = {level})"
                    ),
                };
                exec(c, &sql);
            }
            let disagreements: i64 = c
                .query_one(
                    "WITH checks AS (
                         SELECT w.workspace_id, r.feature, r.enabled, r.reason, r.tier
                           FROM entitlements.workspaces w
                          CROSS JOIN LATERAL entitlements.entitlement_check_all(w.workspace_id) r),
                     single AS (
                         SELECT w.workspace_id, f.feature, r.enabled, r.reason
                           FROM entitlements.workspaces w CROSS JOIN entitlements.features f
                          CROSS JOIN LATERAL entitlements.entitlement_check(w.workspace_id, f.feature) r)
                     SELECT count(*) FROM checks c
                       FULL JOIN entitlements.entitlements m USING (workspace_id, feature)
                       FULL JOIN single s USING (workspace_id, feature)
                       LEFT JOIN entitlements.entitlements_current v USING (workspace_id, feature)
                      WHERE c.enabled IS DISTINCT FROM m.enabled
                         OR c.reason IS DISTINCT FROM m.reason
                         OR c.tier IS DISTINCT FROM m.tier
                         OR s.enabled IS DISTINCT FROM c.enabled
                         OR s.reason IS DISTINCT FROM c.reason
                         OR c.enabled IS DISTINCT FROM (v.feature IS NOT NULL)",
                    &[],
                )
                .unwrap()
                .get(0);
            prop_assert_eq!(disagreements, 0, "after steps {:?}", steps);
            // the billing view agrees with the tier every check reports
            let tier_mismatch: i64 = c
                .query_one(
                    "SELECT count(*) FROM entitlements.billing_status_current b
                      CROSS JOIN LATERAL entitlements.entitlement_check(b.workspace_id, 'ccp-01') r
                      WHERE r.tier <> b.tier",
                    &[],
                )
                .unwrap()
                .get(0);
            prop_assert_eq!(tier_mismatch, 0);
            Ok(())
        })
        .unwrap();
}

/// The README's headline RLS policy, read from the README and run as written, for a real
/// non-privileged LOGIN role connecting over TCP that says who it acts for with `SET LOCAL`
/// inside a transaction. Alice is a member of a pro_plus workspace and of a free one; a third
/// workspace is pro_plus but not hers. She sees exactly the pro_plus workspace's rows.
#[test]
fn the_readme_rls_policy_shows_a_member_exactly_the_entitled_workspaces_rows() {
    let pg = Cluster::start("readme-rls");
    let mut admin = pg.connect();
    let plus = new_workspace(&mut admin);
    let free = new_workspace(&mut admin);
    let not_hers = new_workspace(&mut admin);
    exec(
        &mut admin,
        &format!(
            "CREATE ROLE report_reader LOGIN; GRANT entitlements_app TO report_reader;
             SELECT entitlements.sync_billing_state({plus}, 'pro_plus', 'active');
             SELECT entitlements.sync_billing_state({free}, 'free', 'active');
             SELECT entitlements.sync_billing_state({not_hers}, 'pro_plus', 'active');
             INSERT INTO entitlements.workspace_members VALUES
                 ({plus}, 'alice', 'member'), ({free}, 'alice', 'member'), ({not_hers}, 'bob', 'owner');
             CREATE TABLE public.reports (id int PRIMARY KEY, workspace_id uuid NOT NULL, title text NOT NULL);
             INSERT INTO public.reports VALUES
                 (1, {plus}, 'plus: Q1'), (2, {plus}, 'plus: Q2'), (3, {free}, 'free: Q1'), (4, {not_hers}, 'bob: Q1');
             GRANT SELECT ON public.reports TO report_reader;"
        ),
    );
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let policy = doc
        .split("```sql")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("CREATE POLICY reports_need_ccp07"))
        .expect("the README's RLS example");
    exec(&mut admin, policy);
    let all: i64 = admin.query_one("SELECT count(*) FROM public.reports", &[]).unwrap().get(0);
    assert_eq!(all, 4, "the owner sees every row");

    let url = format!("host=127.0.0.1 port={} user=report_reader dbname=app", pg.port);
    let mut app = Client::connect(&url, NoTls).unwrap();
    let who = app
        .query_one(
            "SELECT current_user::text, rolsuper, rolbypassrls, inet_server_addr() IS NOT NULL
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap();
    assert_eq!(
        (who.get::<_, String>(0), who.get::<_, bool>(1), who.get::<_, bool>(2), who.get::<_, bool>(3)),
        ("report_reader".to_owned(), false, false, true),
        "a plain role over TCP"
    );

    let mut tx = app.transaction().unwrap();
    tx.batch_execute("SET LOCAL pg_entitlements.user_id = 'alice'").unwrap();
    let seen: Vec<(i32, String)> = tx
        .query("SELECT id, workspace_id::text FROM public.reports ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    tx.commit().unwrap();
    assert_eq!(seen, vec![(1, plus.0.clone()), (2, plus.0.clone())], "exactly the pro_plus workspace's rows");

    // SET LOCAL ended with the transaction: with no identity the policy refuses (28000).
    assert_eq!(sqlstate(&mut app, "SELECT count(*) FROM public.reports"), "28000");
}

#[test]
fn the_matrix_follows_the_clock_without_any_refresh() {
    let pg = Cluster::start("matrix-clock");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'trialing', clock_timestamp() + interval '2 seconds')"));
    let row = |c: &mut Client| -> (bool, Option<String>) {
        let r = c
            .query_one(&format!("SELECT enabled, reason FROM entitlements.entitlements WHERE workspace_id = {ws} AND feature = 'ccp-05'"), &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(row(&mut c), (true, None));
    // The trial ends; nothing refreshes anything.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert_eq!(row(&mut c), (false, Some("TRIAL_EXPIRED".to_owned())));
    assert_eq!(check(&mut c, &ws, "ccp-05"), (false, Some("TRIAL_EXPIRED".to_owned())));
}

