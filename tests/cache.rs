//! The shared decision cache is exact: what commits is seen by every check that starts after
//! the commit, in every session and on a hot standby; what rolls back is never seen; after a
//! crash the cache starts empty and works. Each property over real connections, with the cache warm and
//! the TTL at its default (300 s), so a passing test cannot be the TTL's doing.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `(enabled, reason, cached)` of one check.
fn check_c(c: &mut Client, ws: &uuid_string::Ws, feature: &str) -> (bool, Option<String>, bool) {
    let row = c
        .query_one(&format!("SELECT enabled, reason, cached FROM entitlements.entitlement_check({ws}, $1)"), &[&feature])
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Check twice so the second answer comes from the cache, and return it.
fn warm(c: &mut Client, ws: &uuid_string::Ws, feature: &str) -> bool {
    check_c(c, ws, feature);
    let (enabled, _, cached) = check_c(c, ws, feature);
    assert!(cached, "the second check of {feature} is served by the cache");
    enabled
}

fn has(c: &mut Client, ws: &uuid_string::Ws, feature: &str) -> bool {
    c.query_one(&format!("SELECT entitlements.has_entitlement({ws}, $1)"), &[&feature]).unwrap().get(0)
}

#[test]
fn ttl_is_at_its_default_and_the_cache_is_on() {
    let pg = Cluster::start("cache-defaults");
    let mut c = pg.connect();
    let row = c
        .query_one("SELECT current_setting('pg_entitlements.cache_ttl'), enabled, capacity FROM entitlements.cache_statistics()", &[])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "5min");
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, i64>(2), 65536);
}

/// Property 1: a committed change through any path is seen by the next check everywhere.
#[test]
fn every_committed_change_is_seen_by_the_next_check_in_every_session() {
    let pg = Cluster::start("cache-commit");
    let mut admin = pg.connect();
    let mut a = pg.connect();
    let mut b = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'free', 'active')"));

    let changes: Vec<(&str, String, &str, bool)> = vec![
        ("sync_billing_state", format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"), "ccp-05", true),
        ("direct UPDATE by a privileged role", format!("UPDATE entitlements.billing_state SET status = 'canceled' WHERE workspace_id = {ws}"), "ccp-05", false),
        ("direct UPDATE back", format!("UPDATE entitlements.billing_state SET status = 'active' WHERE workspace_id = {ws}"), "ccp-05", true),
        ("override revoke", format!("SELECT entitlements.set_override({ws}, 'ccp-05', false)"), "ccp-05", false),
        ("override cleared", format!("SELECT entitlements.clear_override({ws}, 'ccp-05')"), "ccp-05", true),
        ("catalog: feature moved up", "UPDATE entitlements.features SET min_tier = 'enterprise' WHERE feature = 'ccp-05'".into(), "ccp-05", false),
        ("catalog: tier level changed", "UPDATE entitlements.tiers SET level = 10 WHERE tier = 'pro'".into(), "ccp-05", true),
        ("catalog: feature added", "INSERT INTO entitlements.features VALUES ('ccp-15', 'free')".into(), "ccp-15", true),
        (
            "catalog: tier added, feature moved to it",
            "INSERT INTO entitlements.tiers VALUES ('ultimate', 20); UPDATE entitlements.features SET min_tier = 'ultimate' WHERE feature = 'ccp-15'".into(),
            "ccp-15",
            false,
        ),
        ("TRUNCATE billing_state", "TRUNCATE entitlements.billing_state CASCADE".into(), "ccp-04", false),
    ];
    for (what, sql, feature, expect) in changes {
        // warm both sessions' view of the shared cache with the old, opposite decision
        // (a feature about to be added has none)
        if what != "catalog: feature added" {
            assert_eq!(warm(&mut a, &ws, feature), !expect, "{what}: warm before");
            assert_eq!(warm(&mut b, &ws, feature), !expect, "{what}: warm before");
        }
        exec(&mut admin, &sql);
        assert_eq!(check_c(&mut a, &ws, feature).0, expect, "{what}: session a");
        assert_eq!(check_c(&mut b, &ws, feature).0, expect, "{what}: session b");
        assert_eq!(has(&mut b, &ws, feature), expect, "{what}: has_entitlement");
        let mut fresh = pg.connect();
        assert_eq!(check_c(&mut fresh, &ws, feature).0, expect, "{what}: a new session");
    }
}

/// Property 2: a rolled-back change (also one rolled back to a savepoint) is never visible.
#[test]
fn rolled_back_changes_never_become_visible_even_through_the_cache() {
    let pg = Cluster::start("cache-rollback");
    let mut w = pg.connect();
    let mut r = pg.connect();
    let ws = new_workspace(&mut w);
    exec(&mut w, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    assert!(warm(&mut r, &ws, "ccp-05"));

    exec(&mut w, &format!("BEGIN; SELECT entitlements.sync_billing_state({ws}, 'pro', 'canceled')"));
    assert!(!check_c(&mut w, &ws, "ccp-05").0, "the writer sees its own change");
    assert!(check_c(&mut r, &ws, "ccp-05").0);
    exec(&mut w, "ROLLBACK");
    assert!(check_c(&mut r, &ws, "ccp-05").0);
    assert!(check_c(&mut w, &ws, "ccp-05").0, "after ROLLBACK the writer sees the old state");

    exec(
        &mut w,
        &format!(
            "BEGIN; SAVEPOINT s; SELECT entitlements.set_override({ws}, 'ccp-05', false);
             SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-05'); ROLLBACK TO SAVEPOINT s;"
        ),
    );
    assert!(check_c(&mut w, &ws, "ccp-05").0, "inside the transaction, after ROLLBACK TO");
    exec(&mut w, "COMMIT");
    assert!(check_c(&mut r, &ws, "ccp-05").0);
    assert!(warm(&mut w, &ws, "ccp-05"), "and the cache serves it again afterwards");
}

/// Property 3: the writing transaction sees its change at once; nobody else until COMMIT.
#[test]
fn a_transaction_sees_its_own_change_before_commit_and_others_only_after() {
    let pg = Cluster::start("cache-own");
    let mut w = pg.connect();
    let mut r = pg.connect();
    let ws = new_workspace(&mut w);
    exec(&mut w, &format!("SELECT entitlements.sync_billing_state({ws}, 'free', 'none')"));
    assert!(!warm(&mut r, &ws, "ccp-05"));
    assert!(!warm(&mut w, &ws, "ccp-05"));

    exec(&mut w, &format!("BEGIN; SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    let (enabled, _, cached) = check_c(&mut w, &ws, "ccp-05");
    assert!(enabled && !cached, "own uncommitted change, not from the cache");
    assert!(has(&mut w, &ws, "ccp-05"));
    let (enabled, _, _) = check_c(&mut r, &ws, "ccp-05");
    assert!(!enabled, "not visible to another session before COMMIT");
    // the writer's decision did not enter the shared cache
    assert!(!check_c(&mut r, &ws, "ccp-05").0);
    exec(&mut w, "COMMIT");
    assert!(check_c(&mut r, &ws, "ccp-05").0);
}

/// A statement whose snapshot predates a commit must not store a stale decision (rule 2 of
/// docs/ARCHITECTURE.md: the inputs are read under a fresh snapshot).
#[test]
fn a_check_inside_an_old_snapshot_does_not_leave_a_stale_entry() {
    let pg = Cluster::start("cache-old-snapshot");
    let mut w = pg.connect();
    let mut old = pg.connect();
    let mut r = pg.connect();
    let ws = new_workspace(&mut w);
    exec(&mut w, &format!("SELECT entitlements.sync_billing_state({ws}, 'free', 'none')"));
    // A REPEATABLE READ transaction takes its snapshot now...
    exec(&mut old, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1");
    // ...the customer pays...
    exec(&mut w, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    // ...and the old transaction checks (cold cache for this key).
    exec(&mut old, "SELECT entitlements.clear_cache()");
    let _ = check_c(&mut old, &ws, "ccp-05");
    let _ = check_c(&mut old, &ws, "ccp-05");
    exec(&mut old, "COMMIT");
    assert!(check_c(&mut r, &ws, "ccp-05").0, "a customer who just paid is never refused");
    assert!(has(&mut r, &ws, "ccp-05"));
}

/// Property 4: 16 connections check in a loop while another moves a workspace through the
/// tiers 200 times; every check that began after a move's COMMIT returned sees that move (or a
/// later one), and nothing errors.
#[test]
fn sixteen_readers_and_a_flipper_never_see_a_stale_tier() {
    const TIERS: [&str; 5] = ["free", "pro", "pro_plus", "portfolio", "enterprise"];
    let pg = Cluster::start("cache-concurrency");
    let mut w = pg.connect();
    let ws = new_workspace(&mut w);
    exec(&mut w, &format!("SELECT entitlements.sync_billing_state({ws}, 'free', 'active')"));
    let committed = Arc::new(AtomicUsize::new(0)); // number of the last acknowledged move
    let done = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (committed, done, ws, url) = (committed.clone(), done.clone(), ws.clone(), pg.url("app"));
            std::thread::spawn(move || {
                let mut c = Client::connect(&url, NoTls).unwrap();
                let (mut checks, mut hits) = (0u64, 0u64);
                while done.load(Ordering::SeqCst) == 0 {
                    let before = committed.load(Ordering::SeqCst);
                    let row = c
                        .query_one(&format!("SELECT tier, cached FROM entitlements.entitlement_check({ws}, 'ccp-01')"), &[])
                        .expect("no check errors");
                    let after = committed.load(Ordering::SeqCst);
                    let tier: String = row.get(0);
                    let seen = TIERS.iter().position(|t| *t == tier).unwrap();
                    // moves before..=after+1 may have committed while the check ran
                    let allowed: Vec<usize> = (before..=after + 1).map(|m| m % TIERS.len()).collect();
                    assert!(allowed.contains(&seen), "check began after move {before} but saw {tier}");
                    checks += 1;
                    hits += u64::from(row.get::<_, bool>(1));
                }
                (checks, hits)
            })
        })
        .collect();
    for m in 1..=200usize {
        exec(&mut w, &format!("SELECT entitlements.sync_billing_state({ws}, '{}', 'active')", TIERS[m % TIERS.len()]));
        committed.store(m, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
    }
    done.store(1, Ordering::SeqCst);
    let (mut checks, mut hits) = (0, 0);
    for r in readers {
        let (c, h) = r.join().expect("a reader failed");
        checks += c;
        hits += h;
    }
    assert!(checks > 200, "readers ran ({checks} checks)");
    assert!(hits > 0, "and the cache served some of them ({hits} hits)");
}

/// Property 5: a hot standby's warm cache follows the primary once the change has replayed.
#[test]
fn a_standby_with_a_warm_cache_follows_replayed_changes() {
    let primary = Cluster::start("cache-primary");
    let mut p = primary.connect();
    let ws = new_workspace(&mut p);
    exec(&mut p, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    let standby = primary.start_standby("cache-standby");
    let mut s = standby.connect();
    let in_recovery: bool = s.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(in_recovery);

    let wait_replay = |p: &mut Client, s: &mut Client| {
        let lsn: String = p.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let done: bool = s
                .query_one(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"), &[])
                .unwrap()
                .get(0);
            if done {
                return;
            }
            assert!(Instant::now() < deadline, "standby did not replay");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_replay(&mut p, &mut s);
    assert!(warm(&mut s, &ws, "ccp-05"), "warm on the standby: allowed");

    for (sql, expect) in [
        (format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'canceled')"), false),
        (format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"), true),
        (format!("SELECT entitlements.set_override({ws}, 'ccp-05', false)"), false),
        (format!("SELECT entitlements.clear_override({ws}, 'ccp-05')"), true),
        ("UPDATE entitlements.features SET min_tier = 'enterprise' WHERE feature = 'ccp-05'".into(), false),
        ("UPDATE entitlements.tiers SET level = 9 WHERE tier = 'pro'".into(), true),
    ] {
        assert_eq!(warm(&mut s, &ws, "ccp-05"), !expect, "warm before: {sql}");
        exec(&mut p, &sql);
        wait_replay(&mut p, &mut s);
        assert_eq!(check_c(&mut s, &ws, "ccp-05").0, expect, "same standby session after {sql}");
        let mut fresh = standby.connect();
        assert_eq!(check_c(&mut fresh, &ws, "ccp-05").0, expect, "new standby session after {sql}");
        assert_eq!(has(&mut fresh, &ws, "ccp-05"), expect);
    }
}

/// A standby session that used the cache before `ALTER EXTENSION ... UPDATE` to 0.2.0 still
/// follows the primary after it, when the primary's changes are signalled through the relation
/// the update creates (entitlements.cache_signal) rather than through the input tables.
#[test]
fn a_standby_session_from_before_the_update_follows_changes_signalled_after_it() {
    let primary = Cluster::init("cache-upd-primary", &[]);
    primary.connect_db("postgres").batch_execute("CREATE DATABASE app").unwrap();
    let mut p = primary.connect();
    exec(&mut p, "CREATE EXTENSION pg_entitlements VERSION '0.1.0'");
    let ws = new_workspace(&mut p);
    exec(&mut p, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    let standby = primary.start_standby("cache-upd-standby");
    let mut s = standby.connect();
    let wait_replay = |p: &mut Client, s: &mut Client| {
        let lsn: String = p.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !s
            .query_one(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"), &[])
            .unwrap()
            .get::<_, bool>(0)
        {
            assert!(Instant::now() < deadline, "standby did not replay");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_replay(&mut p, &mut s);
    // The standby session uses the cache (and looks up what it watches) on the 0.1.0 schema.
    assert!(has(&mut s, &ws, "ccp-05") && has(&mut s, &ws, "ccp-05"));

    exec(&mut p, "ALTER EXTENSION pg_entitlements UPDATE TO '0.2.0'");
    // A session of the updated schema: its changes name the signal relation.
    let mut p2 = primary.connect();
    let signal: bool = p2
        .query_one("SELECT to_regclass('entitlements.cache_signal') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert!(signal, "the update created the signal relation");
    wait_replay(&mut p2, &mut s);
    assert!(has(&mut s, &ws, "ccp-05"), "still allowed, from the cache");
    for (status, expect) in [("canceled", false), ("active", true), ("canceled", false)] {
        exec(&mut p2, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', '{status}')"));
        wait_replay(&mut p2, &mut s);
        assert_eq!(has(&mut s, &ws, "ccp-05"), expect, "the same standby session after {status}");
        assert_eq!(check_c(&mut s, &ws, "ccp-05").0, expect);
    }
}

/// A logical-replication subscriber's warm cache follows the changes its apply worker writes:
/// the apply fires row triggers only, never the statement triggers ordinary writes go through.
#[test]
fn a_logical_subscriber_with_a_warm_cache_follows_applied_changes() {
    let publisher = Cluster::start_with("cache-lr-pub", &["wal_level = logical"]);
    let subscriber = Cluster::start("cache-lr-sub");
    let mut p = publisher.connect();
    let mut s = subscriber.connect();
    exec(
        &mut p,
        "CREATE PUBLICATION decision_inputs FOR TABLE entitlements.billing_state, entitlements.overrides,
             entitlements.features, entitlements.tiers, entitlements.workspace_members",
    );
    // Both sides hold the extension's seed catalog already: replicate changes, not the copy.
    exec(
        &mut s,
        &format!(
            "CREATE SUBSCRIPTION decision_inputs
                 CONNECTION 'host=127.0.0.1 port={} dbname=app user=postgres'
                 PUBLICATION decision_inputs WITH (copy_data = false)",
            publisher.port
        ),
    );
    let ws = new_workspace(&mut p);
    // Applied once the subscriber's row matches the publisher's.
    let applied = |s: &mut Client, sql: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !s.query_one(sql, &[]).unwrap().get::<_, bool>(0) {
            assert!(Instant::now() < deadline, "not applied: {sql}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let status_is = |status: &str| {
        format!("SELECT EXISTS (SELECT 1 FROM entitlements.billing_state WHERE workspace_id = {ws} AND status = '{status}')")
    };
    exec(&mut p, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    applied(&mut s, &status_is("active"));
    assert!(warm(&mut s, &ws, "ccp-05"), "warm on the subscriber: allowed");

    exec(&mut p, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'canceled')"));
    applied(&mut s, &status_is("canceled"));
    assert!(!check_c(&mut s, &ws, "ccp-05").0, "the same subscriber session after the cancellation");
    assert!(!has(&mut subscriber.connect(), &ws, "ccp-05"), "a new subscriber session");

    exec(&mut p, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    applied(&mut s, &status_is("active"));
    assert!(warm(&mut s, &ws, "ccp-05"), "allowed again, and cached");
    exec(&mut p, &format!("SELECT entitlements.set_override({ws}, 'ccp-05', false)"));
    applied(&mut s, &format!("SELECT EXISTS (SELECT 1 FROM entitlements.overrides WHERE workspace_id = {ws})"));
    assert!(!check_c(&mut s, &ws, "ccp-05").0, "after an applied override");
    exec(&mut p, &format!("SELECT entitlements.clear_override({ws}, 'ccp-05')"));
    applied(&mut s, &format!("SELECT NOT EXISTS (SELECT 1 FROM entitlements.overrides WHERE workspace_id = {ws})"));
    assert!(warm(&mut s, &ws, "ccp-05"), "after the override is cleared");
    // A catalog change applied on the subscriber invalidates every workspace.
    exec(&mut p, "UPDATE entitlements.features SET min_tier = 'enterprise' WHERE feature = 'ccp-05'");
    applied(&mut s, "SELECT min_tier = 'enterprise' FROM entitlements.features WHERE feature = 'ccp-05'");
    assert!(!check_c(&mut s, &ws, "ccp-05").0, "after an applied catalog change");
    exec(&mut s, "DROP SUBSCRIPTION decision_inputs");
}

/// Property 6: a backend SIGKILLed while checking; the postmaster reinitialises shared memory;
/// then the cache starts empty and works. (A lock the victim held cannot outlive the
/// restart, which recreates shared memory, locks included: nothing to assert about locks.)
#[test]
fn a_backend_killed_while_checking_leaves_a_working_cache() {
    let pg = Cluster::start("cache-sigkill");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    let url = pg.url("app");
    let victim = {
        let ws = ws.clone();
        std::thread::spawn(move || {
            let mut v = Client::connect(&url, NoTls).unwrap();
            // a long run of cached checks; it ends with the kill
            v.query_one(
                &format!(
                    "SELECT count(*) FROM generate_series(1, 50000000) g
                      WHERE entitlements.has_entitlement({ws}, 'ccp-05') AND (SELECT enabled FROM entitlements.entitlement_check({ws}, 'ccp-04'))"
                ),
                &[],
            )
            .map(|_| ())
        })
    };
    // find the victim while it runs, then SIGKILL it
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid: i32 = loop {
        let rows = c
            .query("SELECT pid FROM pg_stat_activity WHERE query LIKE '%generate_series(1, 50000000)%' AND pid <> pg_backend_pid() AND state = 'active'", &[])
            .unwrap();
        if let Some(r) = rows.first() {
            break r.get(0);
        }
        assert!(Instant::now() < deadline, "victim never ran");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    let restarts = pg.crash_restarts();
    assert!(std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap().success());
    assert!(victim.join().unwrap().is_err(), "the victim's connection died");

    // the postmaster restarts everything; reconnect
    let mut c2 = pg.reconnect_after_crash(restarts);
    exec(&mut c2, "SET statement_timeout = '20s'");
    let stats = c2.query_one("SELECT enabled, entries FROM entitlements.cache_statistics()", &[]).unwrap();
    assert!(stats.get::<_, bool>(0));
    assert_eq!(stats.get::<_, i64>(1), 0, "shared memory was reinitialised");
    assert!(warm(&mut c2, &ws, "ccp-05"), "the cache works after the restart");
    assert!(pg.log().contains("terminated by signal 9"), "the server log shows the crash");
    assert_eq!(pg.crash_restarts(), restarts + 1);
}

/// Eviction: a full table evicts and counts, and never errors.
#[test]
fn a_full_cache_evicts_and_counts_without_errors() {
    let pg = Cluster::start_with("cache-small", &["pg_entitlements.cache_size = 128"]);
    let mut c = pg.connect();
    let n: i64 = c
        .query_one(
            "SELECT count(*) FROM (SELECT e.enabled FROM generate_series(1, 300) g
               CROSS JOIN LATERAL entitlements.entitlement_check(md5(g::text)::uuid, 'ccp-05') e) s",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 300);
    let row = c.query_one("SELECT capacity, entries, evictions FROM entitlements.cache_statistics()", &[]).unwrap();
    assert_eq!(row.get::<_, i64>(0), 128);
    assert!(row.get::<_, i64>(1) <= 128);
    assert!(row.get::<_, i64>(2) >= 300 - 128, "evictions counted");
}

/// Time boundaries: an entry never outlives the decision's own boundary (here a trial end a
/// second away, far inside the TTL).
#[test]
fn an_entry_expires_at_the_trial_end_not_at_the_ttl() {
    let pg = Cluster::start("cache-boundary");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'trialing', clock_timestamp() + interval '1.5 seconds')"));
    assert!(warm(&mut c, &ws, "ccp-05"));
    let ttl: i32 = c
        .query_one(&format!("SELECT cache_ttl_remaining FROM entitlements.entitlement_check({ws}, 'ccp-05')"), &[])
        .unwrap()
        .get(0);
    assert!(ttl <= 2, "ttl follows the trial end, got {ttl}");
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(check_c(&mut c, &ws, "ccp-05"), (false, Some("TRIAL_EXPIRED".into()), false));
}

/// Privileged-only cache administration, and the view of live entries.
#[test]
fn cache_administration_is_privileged_and_counts_what_it_removes() {
    let pg = Cluster::start("cache-admin");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT * FROM entitlements.entitlement_check_all({ws})"));
    let listed: i64 = c
        .query_one(&format!("SELECT count(*) FROM entitlements.entitlement_cache WHERE workspace_id = {ws}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(listed, 14);
    let all_cached: bool = c
        .query_one(&format!("SELECT bool_and(cached) FROM entitlements.entitlement_check_all({ws})"), &[])
        .unwrap()
        .get(0);
    assert!(all_cached, "entitlement_check_all reads through the cache");
    exec(&mut c, "CREATE ROLE someone");
    exec(&mut c, "SET ROLE someone");
    assert_eq!(sqlstate(&mut c, "SELECT entitlements.clear_cache()"), "42501");
    assert_eq!(sqlstate(&mut c, &format!("SELECT entitlements.invalidate_workspace_cache({ws})")), "42501");
    assert_eq!(sqlstate(&mut c, "SELECT * FROM entitlements.entitlement_cache"), "42501");
    exec(&mut c, "RESET ROLE");
    let n: i64 = c.query_one(&format!("SELECT entitlements.invalidate_workspace_cache({ws})"), &[]).unwrap().get(0);
    assert_eq!(n, 14);
    let n: i64 = c.query_one("SELECT entitlements.clear_cache()", &[]).unwrap().get(0);
    assert_eq!(n, 0);
}

/// Without shared_preload_libraries: CREATE EXTENSION works with a WARNING, checks are right.
#[test]
fn without_preload_the_extension_works_uncached_and_says_how_to_turn_the_cache_on() {
    let pg = Cluster::init("cache-nopreload", &["shared_preload_libraries = ''"]);
    pg.connect_db("postgres").batch_execute("CREATE DATABASE app").unwrap();
    let mut c = pg.connect();
    let notices = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = notices.clone();
    let mut c2 = postgres::Config::new()
        .host("127.0.0.1")
        .port(pg.port)
        .user("postgres")
        .dbname("app")
        .notice_callback(move |n| sink.lock().unwrap().push(format!("{}: {}", n.severity(), n.message())))
        .connect(NoTls)
        .unwrap();
    c2.batch_execute("CREATE EXTENSION pg_entitlements").unwrap();
    let warned = notices.lock().unwrap().iter().any(|n| n.starts_with("WARNING") && n.contains("cache is off"));
    assert!(warned, "a WARNING at CREATE EXTENSION: {:?}", notices.lock().unwrap());
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    assert_eq!(check_c(&mut c, &ws, "ccp-05"), (true, None, false));
    assert_eq!(check_c(&mut c, &ws, "ccp-05"), (true, None, false), "never cached");
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'canceled')"));
    assert_eq!(check_c(&mut c, &ws, "ccp-05").0, false);
    let enabled: bool = c.query_one("SELECT enabled FROM entitlements.cache_statistics()", &[]).unwrap().get(0);
    assert!(!enabled);
}

/// Membership is remembered per backend for speed, but a removed member is refused at once.
#[test]
fn removing_a_member_takes_effect_at_once_despite_the_membership_memo() {
    let pg = Cluster::start("cache-membership");
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(
        &mut admin,
        &format!(
            "CREATE ROLE app_user; GRANT entitlements_app TO app_user; SELECT entitlements.sync_billing_state({ws}, 'pro', 'active');
             INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice')"
        ),
    );
    let mut app = pg.connect();
    exec(&mut app, "SET ROLE app_user; SET pg_entitlements.user_id = 'alice'");
    assert!(warm(&mut app, &ws, "ccp-05"));
    assert!(has(&mut app, &ws, "ccp-05"));

    exec(&mut admin, &format!("DELETE FROM entitlements.workspace_members WHERE workspace_id = {ws}"));
    assert_eq!(sqlstate(&mut app, &format!("SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-05')")), "42501");
    assert!(!has(&mut app, &ws, "ccp-05"), "a non-member's row is filtered");

    exec(&mut admin, &format!("INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice')"));
    assert!(check_c(&mut app, &ws, "ccp-05").0);
    // and the memo does not confuse two identities on one connection
    exec(&mut app, "SET pg_entitlements.user_id = 'mallory'");
    assert_eq!(sqlstate(&mut app, &format!("SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-05')")), "42501");
}

/// The partition and slot hash mixes every byte: 10,000 workspaces whose ids differ only in
/// their last bytes, one feature each, all fit in the default-size shared cache.
#[test]
fn sequential_workspace_ids_fit_in_the_shared_cache_without_evictions() {
    let pg = Cluster::start("cache-spread");
    let mut c = pg.connect();
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE entitlements.has_entitlement(
                        lpad(to_hex(i), 32, '0')::uuid, 'ccp-01'))
               FROM generate_series(1, 10000) AS i",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 10_000, "ccp-01 is a free feature");
    let row = c.query_one("SELECT entries, evictions FROM entitlements.cache_statistics()", &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (10_000, 0));
}

/// Per-workspace invalidation: a committed change to one workspace's billing state, overrides
/// or members leaves the other workspaces' entries cached; a catalog change, a TRUNCATE and a
/// statement over more than 1024 workspaces still invalidate everything. (Other workspaces
/// share the changed one's invalidation bucket with probability 1/16384 each: at most one of
/// the twenty may lose its entry.)
#[test]
fn a_change_to_one_workspace_leaves_the_other_workspaces_cached() {
    let pg = Cluster::start("cache-per-workspace");
    let mut admin = pg.connect();
    let mut a = pg.connect();
    let changed = new_workspace(&mut admin);
    let others: Vec<_> = (0..20).map(|_| new_workspace(&mut admin)).collect();
    for ws in others.iter().chain([&changed]) {
        exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    }
    let still_cached = |a: &mut Client| {
        others.iter().filter(|ws| {
            let (enabled, _, cached) = check_c(a, ws, "ccp-05");
            assert!(enabled, "another workspace's answer never changes here");
            cached
        }).count()
    };
    let per_workspace_changes = [
        (format!("SELECT entitlements.sync_billing_state({changed}, 'pro', 'canceled')"), false),
        (format!("UPDATE entitlements.billing_state SET status = 'active' WHERE workspace_id = {changed}"), true),
        (format!("SELECT entitlements.set_override({changed}, 'ccp-05', false)"), false),
        (format!("DELETE FROM entitlements.overrides WHERE workspace_id = {changed}"), true),
        (format!("INSERT INTO entitlements.workspace_members VALUES ({changed}, 'alice')"), true),
        (format!("DELETE FROM entitlements.billing_state WHERE workspace_id = {changed}"), false),
    ];
    for (sql, expect) in per_workspace_changes {
        for ws in others.iter().chain([&changed]) {
            warm(&mut a, ws, "ccp-05");
        }
        exec(&mut admin, &sql);
        assert_eq!(check_c(&mut a, &changed, "ccp-05").0, expect, "{sql}: the changed workspace follows");
        assert!(still_cached(&mut a) >= 19, "{sql}: the other workspaces stay cached");
    }

    let everything = [
        "UPDATE entitlements.features SET description = description WHERE feature = 'ccp-05'".to_owned(),
        "TRUNCATE entitlements.overrides".to_owned(),
        // 1,100 workspaces in one statement: too many to name one by one.
        "SELECT count(entitlements.sync_billing_state(gen_random_uuid(), 'free', 'active')) FROM generate_series(1, 1)".to_owned(),
        "INSERT INTO entitlements.billing_state (workspace_id, tier, status)
           SELECT gen_random_uuid(), 'free', 'active' FROM generate_series(1, 1100)".to_owned(),
    ];
    for (i, sql) in everything.iter().enumerate() {
        for ws in &others {
            warm(&mut a, ws, "ccp-05");
        }
        exec(&mut admin, sql);
        let cached = still_cached(&mut a);
        if i == 2 {
            assert!(cached >= 19, "one new workspace invalidates only its own bucket");
        } else {
            assert_eq!(cached, 0, "{sql}: every entry went");
        }
    }
}
