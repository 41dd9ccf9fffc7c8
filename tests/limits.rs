//! Usage limits: `consume` takes the quantity in the caller's transaction, atomically, and the
//! checks follow the limits. Real clusters, real connections, concurrent sessions.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use std::sync::{Arc, Barrier};

/// A metered feature of the catalog (`min_tier`, `reset_period`, hard or soft).
fn add_metered(c: &mut Client, feature: &str, min_tier: &str, reset: &str, hard: bool) {
    exec(
        c,
        &format!(
            "INSERT INTO entitlements.features (feature, min_tier, description, kind, reset_period, hard_limit)
             VALUES ('{feature}', '{min_tier}', 'metered for a test', 'metered', '{reset}', {hard})"
        ),
    );
}

/// `(allowed, reason, used, limit_value, remaining)` of one consume.
type Outcome = (bool, Option<String>, i64, Option<i64>, Option<i64>);

fn outcome(row: &postgres::Row) -> Outcome {
    (row.get("allowed"), row.get("reason"), row.get("used"), row.get("limit_value"), row.get("remaining"))
}

fn consume(c: &mut Client, ws: &uuid_string::Ws, feature: &str, quantity: i64) -> Outcome {
    outcome(&c.query_one(&format!("SELECT * FROM entitlements.consume({ws}, '{feature}', {quantity})"), &[]).unwrap())
}

fn usage(c: &mut Client, ws: &uuid_string::Ws, feature: &str) -> Outcome {
    outcome(&c.query_one(&format!("SELECT * FROM entitlements.usage({ws}, '{feature}')"), &[]).unwrap())
}

fn used(c: &mut Client, ws: &uuid_string::Ws, feature: &str) -> i64 {
    usage(c, ws, feature).2
}

fn has(c: &mut Client, ws: &uuid_string::Ws, feature: &str) -> bool {
    c.query_one(&format!("SELECT entitlements.has_entitlement({ws}, '{feature}')"), &[]).unwrap().get(0)
}

#[test]
fn sixteen_connections_racing_for_a_limit_of_300_get_exactly_300() {
    let pg = Cluster::start("limits-race");
    let mut c = pg.connect();
    add_metered(&mut c, "api_calls", "free", "month", true);
    exec(&mut c, "SELECT entitlements.set_feature_limit('api_calls', 'free', 300)");
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.register_workspace({ws})"));
    let start = Arc::new(Barrier::new(16));
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (url, ws, start) = (pg.url("app"), ws.clone(), start.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&url, NoTls).unwrap();
                start.wait();
                let (mut allowed, mut errors) = (0, 0);
                // Each worker asks until it is refused: once used = 300, every later call is.
                loop {
                    match c.query_one(&format!("SELECT allowed FROM entitlements.consume({ws}, 'api_calls')"), &[]) {
                        Ok(row) if row.get::<_, bool>(0) => allowed += 1,
                        Ok(_) => break,
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    }
                }
                (allowed, errors)
            })
        })
        .collect();
    let results: Vec<(i64, i64)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(results.iter().map(|r| r.0).sum::<i64>(), 300, "exactly the limit was allowed");
    assert_eq!(results.iter().map(|r| r.1).sum::<i64>(), 0, "zero errors");
    assert_eq!(usage(&mut c, &ws, "api_calls"), (false, Some("LIMIT_EXCEEDED".into()), 300, Some(300), Some(0)));
}

#[test]
fn a_rollback_returns_the_quantity_and_so_does_a_savepoint_rollback() {
    let pg = Cluster::start("limits-rollback");
    let mut c = pg.connect();
    add_metered(&mut c, "tokens", "free", "month", true);
    exec(&mut c, "SELECT entitlements.set_feature_limit('tokens', 'free', 1000)");
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("BEGIN; SELECT entitlements.consume({ws}, 'tokens', 400); ROLLBACK"));
    assert_eq!(used(&mut c, &ws, "tokens"), 0, "the rolled back transaction took nothing");
    exec(
        &mut c,
        &format!(
            "BEGIN;
             SELECT entitlements.consume({ws}, 'tokens', 100);
             SAVEPOINT s;
             SELECT entitlements.consume({ws}, 'tokens', 300);
             ROLLBACK TO SAVEPOINT s;
             COMMIT"
        ),
    );
    assert_eq!(used(&mut c, &ws, "tokens"), 100, "the savepoint's 300 came back, the 100 stayed");
    // Reserve then settle: 750 of a reserved 1,000 were used.
    assert_eq!(consume(&mut c, &ws, "tokens", 900).2, 1000);
    let refunded = outcome(&c.query_one(&format!("SELECT * FROM entitlements.refund({ws}, 'tokens', 250)"), &[]).unwrap());
    assert_eq!(refunded, (true, None, 750, Some(1000), Some(250)));
    let floor = outcome(&c.query_one(&format!("SELECT * FROM entitlements.refund({ws}, 'tokens', 5000)"), &[]).unwrap());
    assert_eq!(floor.2, 0, "a refund never goes below 0");
}

#[test]
fn the_same_idempotency_key_consumes_once_also_from_two_racing_sessions() {
    let pg = Cluster::start("limits-idempotency");
    let mut c = pg.connect();
    add_metered(&mut c, "exports", "free", "month", true);
    exec(&mut c, "SELECT entitlements.set_feature_limit('exports', 'free', 10)");
    let ws = new_workspace(&mut c);
    let call = |key: &str, q: i64| format!("SELECT * FROM entitlements.consume({ws}, 'exports', {q}, '{key}')");
    let first = outcome(&c.query_one(&call("req-1", 3), &[]).unwrap());
    let again = outcome(&c.query_one(&call("req-1", 3), &[]).unwrap());
    assert_eq!(first, (true, None, 3, Some(10), Some(7)));
    assert_eq!(again, first, "the first outcome, answered again");
    assert_eq!(used(&mut c, &ws, "exports"), 3, "the same key twice consumed once");

    // Two sessions, same key: the second waits on the counter's row, then sees the first's key.
    let mut a = pg.connect();
    a.batch_execute("BEGIN").unwrap();
    let a_result = outcome(&a.query_one(&call("req-2", 2), &[]).unwrap());
    let (url, b_sql) = (pg.url("app"), call("req-2", 2));
    let b = std::thread::spawn(move || {
        let mut b = Client::connect(&url, NoTls).unwrap();
        b.batch_execute("SET application_name = 'second'").unwrap();
        outcome(&b.query_one(&b_sql, &[]).unwrap())
    });
    // Wait (without a deadline) until the second session is queued behind the first's lock.
    loop {
        let waiting: bool = c
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'second' AND wait_event_type = 'Lock')", &[])
            .unwrap()
            .get(0);
        if waiting {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    a.batch_execute("COMMIT").unwrap();
    let b_result = b.join().unwrap();
    assert_eq!(a_result, (true, None, 5, Some(10), Some(5)));
    assert_eq!(b_result, a_result, "the racing session got the first outcome");
    assert_eq!(used(&mut c, &ws, "exports"), 5, "taken once");
}

#[test]
fn limits_resolve_by_tier_inheritance_explicit_unlimited_no_row_and_overrides() {
    let pg = Cluster::start("limits-resolution");
    let mut c = pg.connect();
    add_metered(&mut c, "calls", "free", "month", true);
    add_metered(&mut c, "reports", "free", "month", true);
    exec(
        &mut c,
        "SELECT entitlements.set_feature_limit('calls', 'free', 10);
         SELECT entitlements.set_feature_limit('calls', 'pro_plus', NULL);
         SELECT entitlements.set_feature_limit('calls', 'enterprise', 1000);
         SELECT entitlements.set_feature_limit('reports', 'pro', 5);",
    );
    let limit_of = |c: &mut Client, tier: &str, feature: &str| {
        let ws = new_workspace(c);
        exec(c, &format!("SELECT entitlements.sync_billing_state({ws}, '{tier}', 'active')"));
        usage(c, &ws, feature).3
    };
    assert_eq!(limit_of(&mut c, "pro", "calls"), Some(10), "pro inherits free's limit");
    assert_eq!(limit_of(&mut c, "portfolio", "calls"), None, "portfolio inherits pro_plus's explicit unlimited");
    assert_eq!(limit_of(&mut c, "enterprise", "calls"), Some(1000));
    assert_eq!(limit_of(&mut c, "free", "reports"), Some(0), "no row at or below the tier is 0, not unlimited");

    let free = new_workspace(&mut c);
    assert!(!has(&mut c, &free, "reports"), "an allowance of 0 denies");
    assert_eq!(check(&mut c, &free, "reports"), (false, Some("LIMIT_EXCEEDED".into())));
    assert_eq!(consume(&mut c, &free, "reports", 1), (false, Some("LIMIT_EXCEEDED".into()), 0, Some(0), Some(0)));

    // Overrides replace the tier's limit while unexpired; setting one again replaces it.
    exec(&mut c, &format!("SELECT entitlements.set_limit_override({free}, 'reports', 2)"));
    assert_eq!(usage(&mut c, &free, "reports").3, Some(2));
    exec(&mut c, &format!("SELECT entitlements.set_limit_override({free}, 'reports', NULL)"));
    assert_eq!(usage(&mut c, &free, "reports").3, None, "a NULL override is unlimited");
    exec(&mut c, &format!("SELECT entitlements.set_limit_override({free}, 'reports', 7, now() - interval '1 second')"));
    assert_eq!(usage(&mut c, &free, "reports").3, Some(0), "an expired override no longer counts");
    exec(&mut c, &format!("SELECT entitlements.set_limit_override({free}, 'reports', 7, now() + interval '1 day')"));
    assert_eq!(usage(&mut c, &free, "reports").3, Some(7));
    exec(&mut c, &format!("SELECT entitlements.clear_limit_override({free}, 'reports')"));
    assert_eq!(usage(&mut c, &free, "reports").3, Some(0));

    // A tier change mid-period: the upgrade raises the limit at once, the usage is kept.
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'free', 'active')"));
    assert_eq!(consume(&mut c, &ws, "calls", 10).0, true);
    assert_eq!(consume(&mut c, &ws, "calls", 1), (false, Some("LIMIT_EXCEEDED".into()), 10, Some(10), Some(0)));
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'enterprise', 'active')"));
    assert_eq!(consume(&mut c, &ws, "calls", 1), (true, None, 11, Some(1000), Some(989)));
}

#[test]
fn checks_say_limit_exceeded_once_used_reaches_the_limit_in_every_session() {
    let pg = Cluster::start("limits-checks");
    let mut c = pg.connect();
    let mut other = pg.connect();
    add_metered(&mut c, "seats_calls", "pro", "month", true);
    exec(&mut c, "SELECT entitlements.set_feature_limit('seats_calls', 'pro', 3)");
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    // Asked twice (a cache would have kept the answer), then consumed to the limit.
    for _ in 0..2 {
        assert!(has(&mut other, &ws, "seats_calls"));
        assert_eq!(check(&mut other, &ws, "seats_calls"), (true, None));
    }
    assert_eq!(consume(&mut c, &ws, "seats_calls", 3).2, 3);
    assert!(!has(&mut other, &ws, "seats_calls"), "the committed consume changed the decision");
    assert_eq!(check(&mut other, &ws, "seats_calls"), (false, Some("LIMIT_EXCEEDED".into())));
    let all: Option<String> = other
        .query_one(&format!("SELECT reason FROM entitlements.entitlement_check_all({ws}) WHERE feature = 'seats_calls'"), &[])
        .unwrap()
        .get(0);
    assert_eq!(all.as_deref(), Some("LIMIT_EXCEEDED"));
    // The rules come first: a workspace below the tier is told so, not about its usage.
    let free = new_workspace(&mut c);
    assert_eq!(check(&mut other, &free, "seats_calls"), (false, Some("TIER_INSUFFICIENT".into())));
    assert_eq!(consume(&mut c, &free, "seats_calls", 1).1.as_deref(), Some("TIER_INSUFFICIENT"));
    let rows: i64 = c
        .query_one(&format!("SELECT count(*) FROM entitlements.usage_counters WHERE workspace_id = {free}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "a consume the rules refuse writes nothing");
    // A refund frees quota, and the checks follow.
    exec(&mut c, &format!("SELECT entitlements.refund({ws}, 'seats_calls', 1)"));
    assert!(has(&mut other, &ws, "seats_calls"));
    // Boolean features stay as they were.
    assert_eq!(check(&mut other, &ws, "ccp-05"), (true, None));
}

/// `consume` and the checks keep a feature's limit in the decision cache: every change to what
/// the limit is made of, committed by another session, must reach the next consume and check
/// of a session whose cache already holds the old limit.
#[test]
fn a_limit_changed_in_another_session_applies_to_the_next_consume_and_check() {
    let pg = Cluster::start("limits-cache");
    let mut admin = pg.connect();
    let mut app = pg.connect();
    add_metered(&mut admin, "calls", "free", "month", true);
    exec(&mut admin, "SELECT entitlements.set_feature_limit('calls', 'free', 10)");
    exec(&mut admin, "SELECT entitlements.set_feature_limit('calls', 'pro', 20)");
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'free', 'active')"));
    // Twice: the first fills the cache, the second is served from it.
    for used in [1, 2] {
        assert_eq!(consume(&mut app, &ws, "calls", 1), (true, None, used, Some(10), Some(10 - used)));
    }
    // The tier's limit (feature_limits).
    exec(&mut admin, "SELECT entitlements.set_feature_limit('calls', 'free', 3)");
    assert_eq!(consume(&mut app, &ws, "calls", 1), (true, None, 3, Some(3), Some(0)));
    assert_eq!(consume(&mut app, &ws, "calls", 1), (false, Some("LIMIT_EXCEEDED".into()), 3, Some(3), Some(0)));
    assert!(!has(&mut app, &ws, "calls"));
    // The workspace's own limit (limit_overrides), set and cleared.
    exec(&mut admin, &format!("SELECT entitlements.set_limit_override({ws}, 'calls', 5)"));
    assert!(has(&mut app, &ws, "calls"));
    assert_eq!(consume(&mut app, &ws, "calls", 1), (true, None, 4, Some(5), Some(1)));
    exec(&mut admin, &format!("SELECT entitlements.clear_limit_override({ws}, 'calls')"));
    assert_eq!(consume(&mut app, &ws, "calls", 1), (false, Some("LIMIT_EXCEEDED".into()), 4, Some(3), Some(0)));
    // A direct edit of the tables, as an admin may make.
    exec(&mut admin, "UPDATE entitlements.feature_limits SET limit_value = NULL WHERE feature = 'calls' AND tier = 'free'");
    assert_eq!(consume(&mut app, &ws, "calls", 1), (true, None, 5, None, None));
    exec(&mut admin, &format!("INSERT INTO entitlements.limit_overrides (workspace_id, feature, limit_value) VALUES ({ws}, 'calls', 5)"));
    assert_eq!(consume(&mut app, &ws, "calls", 1), (false, Some("LIMIT_EXCEEDED".into()), 5, Some(5), Some(0)));
    exec(&mut admin, &format!("DELETE FROM entitlements.limit_overrides WHERE workspace_id = {ws}"));
    exec(&mut admin, "UPDATE entitlements.feature_limits SET limit_value = 3 WHERE feature = 'calls' AND tier = 'free'");
    // The tier (billing_state) and the feature's kind (the catalog).
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    assert_eq!(consume(&mut app, &ws, "calls", 1), (true, None, 6, Some(20), Some(14)));
    exec(&mut admin, "UPDATE entitlements.features SET hard_limit = false WHERE feature = 'calls'");
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'free', 'active')"));
    assert_eq!(consume(&mut app, &ws, "calls", 1), (true, None, 7, Some(3), Some(0)), "soft: past the limit");
    exec(&mut admin, "UPDATE entitlements.features SET kind = 'boolean' WHERE feature = 'calls'");
    assert_eq!(sqlstate(&mut app, &format!("SELECT entitlements.consume({ws}, 'calls')")), "22023");
}

#[test]
fn a_soft_limit_lets_consume_past_it_and_shows_the_overage() {
    let pg = Cluster::start("limits-soft");
    let mut c = pg.connect();
    add_metered(&mut c, "emails", "free", "day", false);
    exec(&mut c, "SELECT entitlements.set_feature_limit('emails', 'free', 5)");
    let ws = new_workspace(&mut c);
    assert_eq!(consume(&mut c, &ws, "emails", 4).0, true);
    assert_eq!(consume(&mut c, &ws, "emails", 3), (true, None, 7, Some(5), Some(0)));
    assert_eq!(usage(&mut c, &ws, "emails"), (false, Some("LIMIT_EXCEEDED".into()), 7, Some(5), Some(0)));
    assert!(!has(&mut c, &ws, "emails"));
}

#[test]
fn a_new_billing_period_starts_a_fresh_counter_and_keeps_the_finished_one() {
    let pg = Cluster::start("limits-period");
    let mut c = pg.connect();
    add_metered(&mut c, "api", "free", "billing_period", true);
    exec(&mut c, "SELECT entitlements.set_feature_limit('api', 'free', 100)");
    let ws = new_workspace(&mut c);
    exec(
        &mut c,
        &format!(
            "SELECT entitlements.sync_billing_state({ws}, 'pro', 'active', NULL,
                    date_trunc('second', now()) + interval '20 days', false,
                    date_trunc('second', now()) - interval '10 days')"
        ),
    );
    assert_eq!(consume(&mut c, &ws, "api", 30).2, 30);
    let first_start: String = c
        .query_one(&format!("SELECT period_start::text FROM entitlements.usage({ws}, 'api')"), &[])
        .unwrap()
        .get(0);
    // The renewal: a new period that started an hour ago.
    exec(
        &mut c,
        &format!(
            "SELECT entitlements.sync_billing_state({ws}, 'pro', 'active', NULL,
                    date_trunc('second', now()) + interval '30 days', false,
                    date_trunc('second', now()) - interval '1 hour')"
        ),
    );
    assert_eq!(used(&mut c, &ws, "api"), 0, "the new period starts from 0");
    assert_eq!(consume(&mut c, &ws, "api", 1), (true, None, 1, Some(100), Some(99)));
    let kept = c
        .query(&format!("SELECT period_start::text, used FROM entitlements.usage_periods WHERE workspace_id = {ws}"), &[])
        .unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].get::<_, String>(0), kept[0].get::<_, i64>(1)), (first_start, 30));

    // Without a known period: the calendar month, UTC.
    let other = new_workspace(&mut c);
    let row = c
        .query_one(
            &format!(
                "SELECT period_start = date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                        period_end = (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'
                   FROM entitlements.usage({other}, 'api')"
            ),
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0) && row.get::<_, bool>(1));
}

#[test]
fn only_members_with_an_identity_consume_and_nobody_writes_usage_directly() {
    let pg = Cluster::start("limits-auth");
    let mut admin = pg.connect();
    add_metered(&mut admin, "calls", "free", "month", true);
    exec(&mut admin, "SELECT entitlements.set_feature_limit('calls', 'free', 10)");
    let ws = new_workspace(&mut admin);
    exec(
        &mut admin,
        &format!(
            "CREATE ROLE my_app LOGIN; GRANT entitlements_app TO my_app;
             CREATE ROLE billing LOGIN; GRANT entitlements_admin TO billing;
             SELECT entitlements.register_workspace({ws});
             SELECT entitlements.add_member({ws}, 'alice')"
        ),
    );
    let mut app = pg.connect_as("my_app", "app");
    let as_user = |user: &str, sql: &str| format!("BEGIN; SET LOCAL pg_entitlements.user_id = '{user}'; {sql}; COMMIT");
    exec(&mut app, &as_user("alice", &format!("SELECT entitlements.consume({ws}, 'calls', 2)")));
    assert_eq!(used(&mut admin, &ws, "calls"), 2);
    let row = app
        .query_one(&format!("SELECT set_config('pg_entitlements.user_id', 'alice', false), (entitlements.usage({ws}, 'calls')).used"), &[])
        .unwrap();
    assert_eq!(row.get::<_, i64>(1), 2, "a member reads the usage");
    exec(&mut app, "RESET pg_entitlements.user_id");
    assert_eq!(sqlstate(&mut app, &as_user("mallory", &format!("SELECT entitlements.consume({ws}, 'calls')"))), "42501");
    exec(&mut app, "ROLLBACK");
    assert_eq!(sqlstate(&mut app, &format!("SELECT entitlements.consume({ws}, 'calls')")), "28000");
    assert_eq!(sqlstate(&mut app, &format!("UPDATE entitlements.usage_counters SET used = 0 WHERE workspace_id = {ws}")), "42501");
    assert_eq!(
        sqlstate(&mut app, &format!("SELECT entitlements.usage_apply({ws}, 'calls', 1, NULL, 'refund', NULL)")),
        "42501",
        "the counter's function is the library's alone"
    );
    assert_eq!(sqlstate(&mut app, "SELECT entitlements.set_feature_limit('calls', 'free', 1000)"), "42501");
    assert_eq!(used(&mut admin, &ws, "calls"), 2, "nothing the refused calls tried was written");
    // The admin sets limits; a non-member's usage is invisible to the app.
    let mut billing = pg.connect_as("billing", "app");
    exec(&mut billing, &format!("SELECT entitlements.set_limit_override({ws}, 'calls', 50)"));
    exec(&mut billing, "SELECT entitlements.set_feature_limit('calls', 'free', 20)");
    let seen: i64 = app
        .query_one("SELECT count(*) FROM entitlements.usage_counters", &[])
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "without an identity, RLS shows no workspace's usage");
}

#[test]
fn bad_input_gets_its_sqlstate_and_writes_nothing() {
    let pg = Cluster::start("limits-bad-input");
    let mut c = pg.connect();
    add_metered(&mut c, "calls", "free", "month", true);
    exec(&mut c, "SELECT entitlements.set_feature_limit('calls', 'free', 10);
                  INSERT INTO entitlements.features (feature, min_tier, kind) VALUES ('projects', 'free', 'counted')");
    let ws = new_workspace(&mut c);
    let long_key = "k".repeat(256);
    let cases = [
        (format!("SELECT entitlements.consume({ws}, 'calls', 0)"), "22023"),
        (format!("SELECT entitlements.consume({ws}, 'calls', -1)"), "22023"),
        (format!("SELECT entitlements.refund({ws}, 'calls', 0)"), "22023"),
        (format!("SELECT entitlements.consume({ws}, 'ccp-01')"), "22023"),
        (format!("SELECT entitlements.consume({ws}, 'projects')"), "22023"),
        (format!("SELECT entitlements.refund({ws}, 'projects', 1)"), "22023"),
        (format!("SELECT entitlements.consume({ws}, 'no-such-feature')"), "22023"),
        (format!("SELECT entitlements.usage({ws}, 'no-such-feature')"), "22023"),
        (format!("SELECT entitlements.usage({ws}, 'ccp-01')"), "22023"),
        (format!("SELECT entitlements.consume({ws}, 'calls', 1, '{long_key}')"), "22023"),
        ("SELECT entitlements.consume(NULL, 'calls')".to_owned(), "22004"),
        (format!("SELECT entitlements.consume({ws}, NULL)"), "22004"),
        (format!("SELECT entitlements.consume({ws}, 'calls', NULL)"), "22004"),
        (format!("SELECT entitlements.refund({ws}, 'calls', NULL)"), "22004"),
        ("SELECT entitlements.set_feature_limit('calls', 'free', -1)".to_owned(), "22023"),
        ("SELECT entitlements.set_feature_limit('calls', 'gold', 1)".to_owned(), "22023"),
        ("INSERT INTO entitlements.features (feature, min_tier, kind) VALUES ('x', 'free', 'gauge')".to_owned(), "23514"),
        ("INSERT INTO entitlements.features (feature, min_tier, kind, reset_period) VALUES ('x', 'free', 'metered', 'week')".to_owned(), "23514"),
    ];
    for (sql, want) in &cases {
        assert_eq!(&sqlstate(&mut c, sql), want, "{sql}");
    }
    let written: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM entitlements.usage_counters) + (SELECT count(*) FROM entitlements.usage_idempotency)
                    + (SELECT count(*) FROM entitlements.usage_periods)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "nothing written");
    assert_eq!(usage(&mut c, &ws, "calls"), (true, None, 0, Some(10), Some(10)));
}

/// docs/LIMITS.md's "free plan: 3 projects", run as written by an application role.
#[test]
fn free_plan_three_projects_through_an_rls_policy_as_the_docs_show() {
    let pg = Cluster::start("limits-projects");
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(
        &mut admin,
        &format!(
            "INSERT INTO entitlements.features (feature, min_tier, description, kind, reset_period)
             VALUES ('projects', 'free', 'Projects', 'metered', 'never');
             SELECT entitlements.set_feature_limit('projects', 'free', 3);
             SELECT entitlements.set_feature_limit('projects', 'pro', NULL);
             CREATE ROLE my_app LOGIN; GRANT entitlements_app TO my_app;
             CREATE SCHEMA app AUTHORIZATION my_app;
             SELECT entitlements.register_workspace({ws});
             SELECT entitlements.add_member({ws}, 'alice');"
        ),
    );
    let mut app = pg.connect_as("my_app", "app");
    exec(
        &mut app,
        "CREATE TABLE app.projects (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, workspace_id uuid NOT NULL);
         ALTER TABLE app.projects ENABLE ROW LEVEL SECURITY;
         ALTER TABLE app.projects FORCE ROW LEVEL SECURITY;
         CREATE POLICY projects_read ON app.projects FOR SELECT USING (entitlements.is_member(workspace_id));
         CREATE POLICY projects_quota ON app.projects FOR INSERT
             WITH CHECK ((entitlements.consume(workspace_id, 'projects')).allowed);",
    );
    let insert = format!("BEGIN; SET LOCAL pg_entitlements.user_id = 'alice'; INSERT INTO app.projects (workspace_id) VALUES ({ws}); COMMIT");
    exec(&mut app, &format!("BEGIN; SET LOCAL pg_entitlements.user_id = 'alice'; INSERT INTO app.projects (workspace_id) VALUES ({ws}); ROLLBACK"));
    for _ in 0..3 {
        exec(&mut app, &insert);
    }
    assert_eq!(sqlstate(&mut app, &insert), "42501", "the fourth project is refused by the policy");
    exec(&mut app, "ROLLBACK");
    let projects: i64 = admin.query_one("SELECT count(*) FROM app.projects", &[]).unwrap().get(0);
    assert_eq!(projects, 3, "three rows, the rolled back insert took no unit");
    assert_eq!(used(&mut admin, &ws, "projects"), 3);
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    exec(&mut app, &insert);
    assert_eq!(used(&mut admin, &ws, "projects"), 4, "the upgrade lifted the limit, usage kept");
}

/// A Stripe renewal (customer.subscription.updated with the next period, API "basil" shape:
/// the period on the item) starts a fresh counter; the finished period is kept.
#[test]
fn a_signed_stripe_renewal_event_starts_a_new_period() {
    let pg = Cluster::start("limits-stripe-renewal");
    let mut c = pg.connect();
    add_metered(&mut c, "api", "free", "billing_period", true);
    exec(&mut c, "SELECT entitlements.set_feature_limit('api', 'free', 100)");
    let ws = new_workspace(&mut c);
    exec(
        &mut c,
        &format!(
            "SELECT entitlements.register_workspace({ws});
             SELECT entitlements.link_stripe_customer({ws}, 'cus_renew');
             INSERT INTO entitlements.stripe_price_tiers VALUES ('price_pro', 'pro');
             SELECT entitlements.add_webhook_secret('whsec_renew');"
        ),
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let apply = |c: &mut Client, n: i64, start: i64, end: i64| {
        let payload = serde_json::json!({
            "id": format!("evt_renew_{n}"), "object": "event", "type": "customer.subscription.updated",
            "created": now - 100 + n,
            "data": {"object": {"id": "sub_renew", "object": "subscription", "customer": "cus_renew",
                "status": "active", "cancel_at_period_end": false,
                "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item",
                    "current_period_start": start, "current_period_end": end,
                    "price": {"id": "price_pro", "object": "price", "product": "prod_x"}}]}}}
        })
        .to_string();
        let header: String = c.query_one("SELECT entitlements.sign_stripe_payload($1, 'whsec_renew')", &[&payload]).unwrap().get(0);
        let outcome: String = c.query_one("SELECT outcome FROM entitlements.apply_stripe_event($1, $2)", &[&payload, &header]).unwrap().get(0);
        assert_eq!(outcome, "applied");
    };
    let day = 86_400;
    apply(&mut c, 1, now - 20 * day, now + 10 * day);
    assert_eq!(consume(&mut c, &ws, "api", 40).2, 40);
    let first_start: i64 = c
        .query_one(&format!("SELECT extract(epoch FROM period_start)::bigint FROM entitlements.usage({ws}, 'api')"), &[])
        .unwrap()
        .get(0);
    assert_eq!(first_start, now - 20 * day, "the period is the subscription's, from the event");
    apply(&mut c, 2, now - 60, now + 30 * day);
    assert_eq!(used(&mut c, &ws, "api"), 0);
    assert_eq!(consume(&mut c, &ws, "api", 2).2, 2);
    let kept: (i64, i64) = {
        let r = c
            .query_one(&format!("SELECT extract(epoch FROM period_start)::bigint, used FROM entitlements.usage_periods WHERE workspace_id = {ws}"), &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(kept, (now - 20 * day, 40));
}

/// A metered `api` (monthly, hard limit of 10 on free), a workspace, and a second session
/// LISTENing on pg_entitlements_usage.
fn api_limited_to_10(pg: Cluster) -> (Cluster, Client, uuid_string::Ws, Client) {
    let mut c = pg.connect();
    add_metered(&mut c, "api", "free", "month", true);
    exec(&mut c, "SELECT entitlements.set_feature_limit('api', 'free', 10)");
    let ws = new_workspace(&mut c);
    let mut listener = pg.connect();
    exec(&mut listener, "LISTEN pg_entitlements_usage");
    (pg, c, ws, listener)
}

/// The usage notifications `listener` (LISTENing on pg_entitlements_usage) has received, in
/// order: a marker is sent from `c` after everything, and every notification committed
/// before it has been delivered by the time the marker is.
fn usage_notifications(c: &mut Client, listener: &mut Client) -> Vec<serde_json::Value> {
    exec(c, "NOTIFY pg_entitlements_usage, 'marker'");
    let mut got = Vec::new();
    let mut notifications = listener.notifications();
    let mut it = notifications.blocking_iter();
    loop {
        let n = postgres::fallible_iterator::FallibleIterator::next(&mut it).unwrap().expect("a notification");
        if n.payload() == "marker" {
            return got;
        }
        got.push(serde_json::from_str(n.payload()).unwrap());
    }
}

/// Crossing 80% and 100% of the limit sends one NOTIFY each per period, delivered only when
/// the consuming transaction commits.
#[test]
fn usage_thresholds_notify_after_commit_only_and_once_per_period() {
    let (_pg, mut c, ws, mut listener) = api_limited_to_10(Cluster::start("limits-notify"));
    // Crosses 80% in a transaction that rolls back: nothing is delivered.
    exec(&mut c, &format!("BEGIN; SELECT entitlements.consume({ws}, 'api', 9); ROLLBACK"));
    // Then committed: 7 (no threshold), 8 (80%), 9 (none: 80% was announced), 10 (100%).
    for q in [7, 1, 1, 1] {
        consume(&mut c, &ws, "api", q);
    }
    exec(&mut c, &format!("SELECT entitlements.refund({ws}, 'api', 5)"));
    consume(&mut c, &ws, "api", 5);
    let mut got = Vec::new();
    for v in usage_notifications(&mut c, &mut listener) {
        assert_eq!(v["workspace_id"], ws.0.as_str());
        assert_eq!(v["feature"], "api");
        assert_eq!(v["limit"], 10);
        got.push((v["used"].as_i64().unwrap(), v["threshold"].as_i64().unwrap()));
    }
    assert_eq!(got, vec![(8, 80), (10, 100)], "each threshold once, none from the rolled back consume");
}

/// `pg_entitlements.usage_thresholds` changed in a session applies to that session's next
/// consume (the announcement rules follow the setting's text as it is at each call).
#[test]
fn a_changed_threshold_setting_applies_to_the_next_consume() {
    let (_pg, mut c, ws, mut listener) = api_limited_to_10(Cluster::start("limits-thresholds-set"));
    // Default 80,100: 1 and 2 announce nothing (and put the rules in the cache).
    consume(&mut c, &ws, "api", 1);
    consume(&mut c, &ws, "api", 1);
    exec(&mut c, "SET pg_entitlements.usage_thresholds = '30'");
    consume(&mut c, &ws, "api", 1); // 3: 30%
    exec(&mut c, "SET pg_entitlements.usage_thresholds = '30, 50'");
    consume(&mut c, &ws, "api", 1); // 4: nothing
    consume(&mut c, &ws, "api", 1); // 5: 50%
    exec(&mut c, "SET pg_entitlements.usage_thresholds = ''");
    consume(&mut c, &ws, "api", 5); // 10: nothing, no thresholds
    exec(&mut c, "RESET pg_entitlements.usage_thresholds");
    let got: Vec<(i64, i64)> = usage_notifications(&mut c, &mut listener)
        .iter()
        .map(|v| (v["used"].as_i64().unwrap(), v["threshold"].as_i64().unwrap()))
        .collect();
    assert_eq!(got, vec![(3, 30), (5, 50)], "each setting as it was at the consume");
    assert_eq!(used(&mut c, &ws, "api"), 10);
}

fn add_counted(c: &mut Client, feature: &str) {
    exec(c, &format!("INSERT INTO entitlements.features (feature, min_tier, description, kind) VALUES ('{feature}', 'free', 'counted for a test', 'counted')"));
}

#[test]
fn eight_concurrent_inserts_at_limit_minus_one_land_exactly_one_row() {
    let pg = Cluster::start("limits-attach-race");
    let mut c = pg.connect();
    add_counted(&mut c, "projects");
    let ws = new_workspace(&mut c);
    exec(
        &mut c,
        &format!(
            "SELECT entitlements.set_feature_limit('projects', 'free', 5);
             CREATE TABLE projects (id serial PRIMARY KEY, workspace_id uuid);
             INSERT INTO projects (workspace_id) SELECT {ws} FROM generate_series(1, 4);
             SELECT entitlements.attach_limit('projects', 'workspace_id', 'projects');"
        ),
    );
    assert_eq!(used(&mut c, &ws, "projects"), 4, "the count starts from the rows already there");
    let start = Arc::new(Barrier::new(8));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (url, ws, start) = (pg.url("app"), ws.clone(), start.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(&url, NoTls).unwrap();
                start.wait();
                match c.batch_execute(&format!("INSERT INTO projects (workspace_id) VALUES ({ws})")) {
                    Ok(()) => "landed".to_owned(),
                    Err(e) => e.code().map(|s| s.code().to_owned()).unwrap_or_else(|| e.to_string()),
                }
            })
        })
        .collect();
    let mut outcomes: Vec<String> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    outcomes.sort();
    assert_eq!(outcomes, [vec!["PT402".to_owned(); 7], vec!["landed".to_owned()]].concat());
    let rows: i64 = c.query_one("SELECT count(*) FROM projects", &[]).unwrap().get(0);
    assert_eq!((rows, used(&mut c, &ws, "projects")), (5, 5));
}

#[test]
fn counted_limits_follow_rows_downgrades_and_deletes() {
    let pg = Cluster::start("limits-attach");
    let mut c = pg.connect();
    add_counted(&mut c, "projects");
    let (ws, other) = (new_workspace(&mut c), new_workspace(&mut c));
    exec(
        &mut c,
        &format!(
            "SELECT entitlements.set_feature_limit('projects', 'free', 3);
             SELECT entitlements.set_feature_limit('projects', 'pro', 10);
             SELECT entitlements.sync_billing_state({ws}, 'pro', 'active');
             CREATE TABLE projects (id serial PRIMARY KEY, workspace_id uuid, name text);
             SELECT entitlements.attach_limit('projects', 'workspace_id', 'projects');
             INSERT INTO projects (workspace_id) SELECT {ws} FROM generate_series(1, 5);"
        ),
    );
    assert_eq!(usage(&mut c, &ws, "projects"), (true, None, 5, Some(10), Some(5)));
    // A downgrade from 10 to 3: nothing is deleted, new rows are refused, checks deny.
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'free', 'active')"));
    let err = c.batch_execute(&format!("INSERT INTO projects (workspace_id) VALUES ({ws})")).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "PT402");
    assert!(db.message().contains("projects") && db.message().contains("5 of 3"), "{}", db.message());
    assert_eq!(check(&mut c, &ws, "projects"), (false, Some("LIMIT_EXCEEDED".into())));
    let rows: i64 = c.query_one("SELECT count(*) FROM projects", &[]).unwrap().get(0);
    assert_eq!(rows, 5, "nothing deleted, nothing written");
    // Deletes free units; under the limit again, one more row fits.
    exec(&mut c, &format!("DELETE FROM projects WHERE id IN (SELECT id FROM projects WHERE workspace_id = {ws} LIMIT 3)"));
    assert_eq!(used(&mut c, &ws, "projects"), 2);
    assert!(has(&mut c, &ws, "projects"));
    exec(&mut c, &format!("INSERT INTO projects (workspace_id) VALUES ({ws})"));
    assert_eq!(sqlstate(&mut c, &format!("INSERT INTO projects (workspace_id) VALUES ({ws})")), "PT402");
    // Moving a row to another workspace moves its unit; other column updates count nothing.
    exec(&mut c, &format!("UPDATE projects SET name = 'x' WHERE workspace_id = {ws}"));
    exec(&mut c, &format!("UPDATE projects SET workspace_id = {other} WHERE id = (SELECT min(id) FROM projects WHERE workspace_id = {ws})"));
    assert_eq!((used(&mut c, &ws, "projects"), used(&mut c, &other, "projects")), (2, 1));
    // A rollback takes nothing; TRUNCATE empties the counts; detach removes the triggers.
    exec(&mut c, &format!("BEGIN; INSERT INTO projects (workspace_id) VALUES ({ws}); ROLLBACK"));
    assert_eq!(used(&mut c, &ws, "projects"), 2);
    exec(&mut c, "TRUNCATE projects");
    assert_eq!(used(&mut c, &ws, "projects"), 0);
    let detached: bool = c.query_one("SELECT entitlements.detach_limit('projects', 'projects')", &[]).unwrap().get(0);
    assert!(detached);
    exec(&mut c, &format!("INSERT INTO projects (workspace_id) SELECT {ws} FROM generate_series(1, 5)"));
    // Bad input.
    exec(&mut c, "CREATE TABLE named (id serial, workspace_name text)");
    assert_eq!(sqlstate(&mut c, "SELECT entitlements.attach_limit('named', 'workspace_name', 'projects')"), "22023");
    assert_eq!(sqlstate(&mut c, "SELECT entitlements.attach_limit('projects', 'workspace_id', 'ccp-01')"), "22023");
    assert_eq!(sqlstate(&mut c, "SELECT entitlements.attach_limit('projects', 'workspace_id', 'nope')"), "22023");
}

#[test]
fn seats_follow_the_plan_through_workspace_members() {
    let pg = Cluster::start("limits-seats");
    let mut c = pg.connect();
    add_counted(&mut c, "seats");
    let ws = new_workspace(&mut c);
    exec(
        &mut c,
        &format!(
            "SELECT entitlements.set_feature_limit('seats', 'free', 2);
             SELECT entitlements.set_feature_limit('seats', 'pro', 5);
             SELECT entitlements.register_workspace({ws});
             SELECT entitlements.add_member({ws}, 'alice');
             SELECT entitlements.attach_limit('entitlements.workspace_members', 'workspace_id', 'seats');
             SELECT entitlements.add_member({ws}, 'bob');"
        ),
    );
    assert_eq!(sqlstate(&mut c, &format!("SELECT entitlements.add_member({ws}, 'carol')")), "PT402");
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    exec(&mut c, &format!("SELECT entitlements.add_member({ws}, 'carol')"));
    assert_eq!(usage(&mut c, &ws, "seats"), (true, None, 3, Some(5), Some(2)));
}

/// Every consume and refund is in the audit trail like a check, with the units it asked to
/// move (negative for a refund); a refused consume is there too, with its reason; checks keep
/// a NULL quantity. The rollups count them as checks.
#[test]
fn consumes_and_refunds_are_audited_with_their_quantity() {
    let pg = Cluster::start("limits-audit");
    let mut c = pg.connect();
    add_metered(&mut c, "api_calls", "free", "month", true);
    exec(&mut c, "SELECT entitlements.set_feature_limit('api_calls', 'free', 10)");
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.register_workspace({ws})"));
    // Twice through each path: the first consume fills the cache, the next ones use it.
    assert!(consume(&mut c, &ws, "api_calls", 4).0);
    assert!(consume(&mut c, &ws, "api_calls", 3).0);
    exec(&mut c, &format!("SELECT entitlements.consume({ws}, 'api_calls', 1, 'key-1')"));
    let refused = consume(&mut c, &ws, "api_calls", 5);
    assert_eq!((refused.0, refused.1.as_deref()), (false, Some("LIMIT_EXCEEDED")));
    exec(&mut c, &format!("SELECT entitlements.refund({ws}, 'api_calls', 2)"));
    exec(&mut c, &format!("SELECT entitlements.entitlement_check({ws}, 'api_calls')"));
    c.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
    let rows: Vec<(bool, Option<String>, Option<i64>)> = c
        .query(
            &format!("SELECT result, reason, quantity FROM entitlements.entitlement_checks
                       WHERE workspace_id = {ws} AND feature = 'api_calls' ORDER BY id"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (true, None, Some(4)),
            (true, None, Some(3)),
            (true, None, Some(1)),
            (false, Some("LIMIT_EXCEEDED".to_owned()), Some(5)),
            (true, None, Some(-2)),
            (true, None, None),
        ]
    );
    let rolled_up: i64 = c
        .query_one(&format!("SELECT sum(checks)::bigint FROM entitlements.entitlement_check_rollups WHERE workspace_id = {ws}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(rolled_up, 6);
}
