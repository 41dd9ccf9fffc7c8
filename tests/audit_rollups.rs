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

fn summary(c: &mut impl postgres::GenericClient, sql: &str) -> Vec<Summary> {
    c.query(sql, &[]).unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))).collect()
}

fn denials(c: &mut impl postgres::GenericClient, sql: &str) -> Vec<Denials> {
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

/// The views count the last 30 days by whole hours, reading whole days from the daily
/// rollups and the window's first, partial day from the hourly ones. Rows spread over 35
/// days (loaded the way a restore loads them, with both rollups built as the writer groups
/// them) give the same counts as the same window over the raw rows, and pruning takes the
/// days with the hours.
#[test]
fn the_views_window_joins_days_and_hours_exactly() {
    let pg = Cluster::start("rollups-window");
    let mut c = pg.connect();
    exec(&mut c, "
        SELECT entitlements.create_audit_partitions((now() AT TIME ZONE 'UTC')::date - 36, 38);
        INSERT INTO entitlements.entitlement_checks (checked_at, workspace_id, feature, result, reason, cached)
        SELECT now() - (g * interval '17 minutes') - (g % 7) * interval '1 second',
               (ARRAY['11111111-1111-1111-1111-111111111111', '22222222-2222-2222-2222-222222222222']::uuid[])[1 + g % 2],
               'ccp-0' || (1 + g % 3), g % 5 <> 0, CASE WHEN g % 5 = 0 THEN (ARRAY['TIER_INSUFFICIENT', 'SUBSCRIPTION_CANCELED'])[1 + g % 2] END,
               g % 3 = 0
          FROM generate_series(0, 35 * 24 * 60 / 17) g;
        INSERT INTO entitlements.entitlement_check_rollups
               (workspace_id, feature, hour, result, cached, reason, checks, last_checked_at)
        SELECT workspace_id, feature, date_trunc('hour', checked_at, 'UTC'), result, cached, reason, count(*), max(checked_at)
          FROM entitlements.entitlement_checks GROUP BY 1, 2, 3, 4, 5, 6;
        INSERT INTO entitlements.entitlement_check_daily
               (workspace_id, day, result, cached, reason, checks, last_checked_at)
        SELECT workspace_id, date_trunc('day', checked_at, 'UTC'), result, cached, reason, count(*), max(checked_at)
          FROM entitlements.entitlement_checks GROUP BY 1, 2, 3, 4, 5;");
    // Every hour that ends after now() - 30 days, over the raw rows.
    let window = "date_trunc('hour', checked_at, 'UTC') > now() - interval '30 days' - interval '1 hour'";
    let summary_raw = format!(
        "SELECT workspace_id::text, count(*), count(*) FILTER (WHERE result), count(*) FILTER (WHERE NOT result),
                count(*) FILTER (WHERE cached), round(100.0 * count(*) FILTER (WHERE cached) / count(*), 1)::text
           FROM entitlements.entitlement_checks WHERE {window} GROUP BY 1 ORDER BY 1");
    let denials_raw = format!(
        "SELECT workspace_id::text, coalesce(reason, '-'), count(*), max(checked_at)::text
           FROM entitlements.entitlement_checks WHERE NOT result AND {window} GROUP BY 1, 2 ORDER BY 1, 2");
    // In one transaction, so now() is the same for the view and the raw count.
    let mut t = c.transaction().unwrap();
    let view = summary(&mut t, SUMMARY_VIEW);
    assert_eq!(view, summary(&mut t, &summary_raw));
    assert_eq!(denials(&mut t, DENIALS_VIEW), denials(&mut t, &denials_raw));
    // The window left rows out (those older than 30 days), and counted rows of 31 days.
    let total: i64 = t.query_one("SELECT count(*) FROM entitlements.entitlement_checks", &[]).unwrap().get(0);
    let counted: i64 = view.iter().map(|s| s.1).sum();
    assert!(counted < total && counted > total * 30 / 36, "{counted} of {total}");
    t.commit().unwrap();
    // Pruning 10 days back takes the days and hours that end before the cut, nothing after.
    c.query_one("SELECT entitlements.prune_audit('10 days')", &[]).unwrap();
    let left: (i64, i64) = {
        let r = c.query_one(
            "SELECT (SELECT count(*) FROM entitlements.entitlement_check_daily WHERE day + interval '24 hours' <= now() - interval '10 days'),
                    (SELECT count(*) FROM entitlements.entitlement_check_rollups WHERE hour + interval '1 hour' <= now() - interval '10 days')",
            &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(left, (0, 0));
    // Each day counts what its hours count, the day that straddled the cut too.
    let mismatched: i64 = c.query_one(
        "WITH h AS (SELECT workspace_id, date_trunc('day', hour, 'UTC'), result, cached, reason, sum(checks)::bigint
                      FROM entitlements.entitlement_check_rollups GROUP BY 1, 2, 3, 4, 5),
              d AS (SELECT workspace_id, day, result, cached, reason, checks FROM entitlements.entitlement_check_daily)
         SELECT count(*) FROM ((TABLE h EXCEPT TABLE d) UNION ALL (TABLE d EXCEPT TABLE h)) x", &[]).unwrap().get(0);
    assert_eq!(mismatched, 0);
    let kept: i64 = c.query_one("SELECT count(*) FROM entitlements.entitlement_check_daily", &[]).unwrap().get(0);
    assert!(kept >= 2 * 10, "{kept}");
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
