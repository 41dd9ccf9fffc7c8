//! The audit rollups over a real cluster: after random checks (allowed, denied for various
//! reasons, cached), the summary views, which read the rollups, equal the same counts taken
//! over the raw rows; and the rollups of pruned hours go with them.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// entitlement_checks_summary as it was computed from the raw rows.
const SUMMARY_RAW: &str = "
SELECT workspace_id::text, count(*), count(*) FILTER (WHERE result), count(*) FILTER (WHERE NOT result),
       count(*) FILTER (WHERE cached), round(100.0 * count(*) FILTER (WHERE cached) / count(*), 1)::text
  FROM entitlements.entitlement_checks WHERE checked_at >= now() - interval '30 days'
 GROUP BY 1 ORDER BY 1";
const SUMMARY_VIEW: &str = "
SELECT workspace_id::text, check_count, allowed, denied, cached, cache_hit_rate_pct::text
  FROM entitlements.entitlement_checks_summary ORDER BY 1";
/// denials_by_reason as it was computed from the raw rows.
const DENIALS_RAW: &str = "
SELECT workspace_id::text, coalesce(reason, '-'), count(*), max(checked_at)::text
  FROM entitlements.entitlement_checks WHERE NOT result AND checked_at >= now() - interval '30 days'
 GROUP BY 1, 2 ORDER BY 1, 2";
const DENIALS_VIEW: &str = "
SELECT workspace_id::text, coalesce(reason, '-'), denials, last_denied_at::text
  FROM entitlements.denials_by_reason ORDER BY 1, 2";

type Summary = (String, i64, i64, i64, i64, String);
type Denials = (String, String, i64, String);

fn summary(c: &mut Client, sql: &str) -> Vec<Summary> {
    c.query(sql, &[]).unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect()
}

fn denials(c: &mut Client, sql: &str) -> Vec<Denials> {
    c.query(sql, &[]).unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect()
}

#[derive(Clone, Debug)]
enum Op {
    Check { ws: usize, feature: u8 },
    CheckAll { ws: usize },
    Uncached { ws: usize, feature: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 1..=14u8).prop_map(|(ws, feature)| Op::Check { ws, feature }),
        1 => (0..4usize).prop_map(|ws| Op::CheckAll { ws }),
        1 => (0..4usize, 1..=14u8).prop_map(|(ws, feature)| Op::Uncached { ws, feature }),
    ]
}

#[test]
fn property_the_views_over_rollups_equal_counts_over_the_raw_rows() {
    let pg = Cluster::start("rollups-property");
    let mut c = pg.connect();
    let wss: Vec<_> = (0..4).map(|_| new_workspace(&mut c)).collect();
    exec(&mut c, &format!(
        "SELECT entitlements.sync_billing_state({}, 'pro', 'active');
         SELECT entitlements.sync_billing_state({}, 'enterprise', 'past_due', current_period_end => now() - interval '30 days');
         SELECT entitlements.sync_billing_state({}, 'pro', 'canceled');",
        wss[1], wss[2], wss[3]));
    let cell = std::cell::RefCell::new(c);
    let mut runner = TestRunner::new(Config { cases: 12, failure_persistence: None, ..Config::default() });
    runner
        .run(&prop::collection::vec(op(), 1..25), |ops| {
            let c = &mut *cell.borrow_mut();
            for o in &ops {
                match o {
                    Op::Check { ws, feature } => {
                        c.query(&format!("SELECT entitlements.entitlement_check({}, 'ccp-{feature:02}')", wss[*ws]), &[]).unwrap();
                    }
                    Op::CheckAll { ws } => {
                        c.query(&format!("SELECT * FROM entitlements.entitlement_check_all({})", wss[*ws]), &[]).unwrap();
                    }
                    Op::Uncached { ws, feature } => {
                        exec(c, "SET pg_entitlements.cache_enabled = off");
                        c.query(&format!("SELECT entitlements.entitlement_check({}, 'ccp-{feature:02}')", wss[*ws]), &[]).unwrap();
                        exec(c, "RESET pg_entitlements.cache_enabled");
                    }
                }
            }
            c.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
            prop_assert_eq!(summary(c, SUMMARY_VIEW), summary(c, SUMMARY_RAW));
            prop_assert_eq!(denials(c, DENIALS_VIEW), denials(c, DENIALS_RAW));
            Ok(())
        })
        .unwrap();
    let c = &mut *cell.borrow_mut();
    // The run produced each kind of row the views count.
    let kinds: (i64, i64, i64, i64) = {
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE result), count(*) FILTER (WHERE NOT result), count(*) FILTER (WHERE cached),
                        count(DISTINCT reason) FROM entitlements.entitlement_checks",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert!(kinds.0 > 0 && kinds.1 > 0 && kinds.2 > 0 && kinds.3 > 1, "{kinds:?}");
    // Pruning everything takes the rollups of every hour that ended, and the rows.
    let rows: i64 = c.query_one("SELECT count(*) FROM entitlements.entitlement_checks", &[]).unwrap().get(0);
    let removed: i64 = c.query_one("SELECT entitlements.prune_audit('-2 hours')", &[]).unwrap().get(0);
    assert_eq!(removed, rows);
    let left: i64 = c.query_one("SELECT count(*) FROM entitlements.entitlement_check_rollups", &[]).unwrap().get(0);
    assert_eq!(left, 0);
    assert!(summary(c, SUMMARY_VIEW).is_empty());
}

#[test]
fn rollups_are_append_only_but_for_the_writer_and_members_read_their_own() {
    let pg = Cluster::start("rollups-guard");
    let mut admin = pg.connect();
    let (a, b) = (new_workspace(&mut admin), new_workspace(&mut admin));
    exec(&mut admin, &format!(
        "CREATE ROLE app_user LOGIN; GRANT entitlements_app TO app_user;
         INSERT INTO entitlements.workspace_members VALUES ({a}, 'alice', 'owner'), ({b}, 'bob', 'owner');"));
    for ws in [&a, &a, &b] {
        check(&mut admin, ws, "ccp-01");
    }
    admin.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
    for sql in [
        "UPDATE entitlements.entitlement_check_rollups SET checks = checks + 1",
        "DELETE FROM entitlements.entitlement_check_rollups",
        "TRUNCATE entitlements.entitlement_check_rollups",
        "INSERT INTO entitlements.entitlement_check_rollups SELECT workspace_id, feature, hour - interval '1 day', result, cached, reason, 1, last_checked_at FROM entitlements.entitlement_check_rollups",
    ] {
        assert_eq!(sqlstate(&mut admin, sql), "42501", "superuser: {sql}");
    }
    let mut app = pg.connect();
    exec(&mut app, "SET ROLE app_user; SET pg_entitlements.user_id = 'alice'");
    let mine: i64 = app.query_one("SELECT coalesce(sum(checks), 0)::bigint FROM entitlements.entitlement_check_rollups", &[]).unwrap().get(0);
    assert_eq!(mine, 2);
    assert_eq!(sqlstate(&mut app, "UPDATE entitlements.entitlement_check_rollups SET checks = 0"), "42501");
}
