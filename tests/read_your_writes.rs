//! Read-your-writes on a hot standby: a token from `entitlements.write_token()` on the primary,
//! set as `pg_entitlements.min_lsn` on the standby, makes checks wait for replay to pass it, or
//! fail with 55000 after `pg_entitlements.replica_wait_timeout`; on the primary it is
//! satisfied at once.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use std::time::{Duration, Instant};

/// Wait (polling, not asserting on time) until the standby has replayed what the primary
/// has flushed now.
fn wait_replay(p: &mut Client, s: &mut Client) {
    let lsn: String = p.query_one("SELECT pg_current_wal_flush_lsn()::text", &[]).unwrap().get(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !s.query_one(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"), &[]).unwrap().get::<_, bool>(0) {
        assert!(Instant::now() < deadline, "standby did not replay");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn enabled_under(s: &mut Client, token: &str, timeout: &str, ws: &uuid_string::Ws) -> Result<bool, String> {
    exec(s, &format!("BEGIN; SET LOCAL pg_entitlements.min_lsn = '{token}'; SET LOCAL pg_entitlements.replica_wait_timeout = '{timeout}'"));
    let r = s.query_one(&format!("SELECT enabled FROM entitlements.entitlement_check({ws}, 'ccp-05')"), &[]);
    exec(s, "ROLLBACK");
    r.map(|row| row.get(0)).map_err(|e| e.code().map(|c| c.code().to_owned()).unwrap_or_default())
}

#[test]
fn a_check_with_the_writers_token_waits_for_replay_and_fails_with_55000_when_replay_is_paused() {
    let primary = Cluster::start("ryw-primary");
    let mut p = primary.connect();
    let ws = new_workspace(&mut p);
    exec(&mut p, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    let standby = primary.start_standby("ryw-standby");
    let mut s = standby.connect();
    wait_replay(&mut p, &mut s);
    assert!(check(&mut s, &ws, "ccp-05").0, "the standby has the pro subscription");
    assert!(check(&mut s, &ws, "ccp-05").0, "and caches it");

    exec(&mut s, "SELECT pg_wal_replay_pause()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.query_one("SELECT pg_get_wal_replay_pause_state()", &[]).unwrap().get::<_, String>(0) != "paused" {
        assert!(Instant::now() < deadline, "replay did not pause");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The webhook's write, and the token it hands back to the app.
    exec(&mut p, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'canceled')"));
    let token: String = p.query_one("SELECT entitlements.write_token()::text", &[]).unwrap().get(0);

    // Without the token the standby answers from what it has replayed: the old state.
    assert!(check(&mut s, &ws, "ccp-05").0);
    // With it, the check waits, and replay being paused, gives up with 55000.
    assert_eq!(enabled_under(&mut s, &token, "200ms", &ws), Err("55000".into()));
    exec(&mut s, &format!("BEGIN; SET LOCAL pg_entitlements.min_lsn = '{token}'; SET LOCAL pg_entitlements.replica_wait_timeout = '200ms'"));
    let err = s.query_one(&format!("SELECT entitlements.has_entitlement({ws}, 'ccp-05')"), &[]).unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("55000"), "has_entitlement too: {err}");
    assert!(err.as_db_error().unwrap().message().contains("min_lsn"), "{err}");
    exec(&mut s, "ROLLBACK");

    // Replay resumes: the same check now waits for it and answers the new state, although
    // the old answer was cached on the standby.
    exec(&mut s, "SELECT pg_wal_replay_resume()");
    assert_eq!(enabled_under(&mut s, &token, "60s", &ws), Ok(false));
    // SET LOCAL ended with the transaction: no wait, and the same (replayed) answer.
    assert!(!check(&mut s, &ws, "ccp-05").0);
}

#[test]
fn on_the_primary_min_lsn_is_satisfied_at_once_and_the_token_is_the_apps_to_ask() {
    let pg = Cluster::start("ryw-primary-only");
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    // A position the primary will not reach for a long time: the primary needs no wait.
    assert_eq!(enabled_under(&mut admin, "FFFFFFFF/0", "0", &ws), Ok(true));
    assert_eq!(sqlstate(&mut admin, "SET pg_entitlements.min_lsn = 'not-an-lsn'"), "22023");
    exec(&mut admin, "SET pg_entitlements.min_lsn = ''");

    exec(&mut admin, "CREATE ROLE webhook_login LOGIN; GRANT entitlements_app TO webhook_login; CREATE ROLE stranger LOGIN");
    let mut app = pg.connect_as("webhook_login", "app");
    let token: String = app.query_one("SELECT entitlements.write_token()::text", &[]).unwrap().get(0);
    // A position the server has written: the flush position, or past it the end of this
    // session's own last commit (which a read-only transaction's heap pruning can move, and
    // which an asynchronous commit, the audit writer's say, leaves unflushed for a moment).
    let written_position: bool = admin
        .query_one(&format!("SELECT '{token}'::pg_lsn > '0/0'::pg_lsn AND '{token}'::pg_lsn <= pg_current_wal_insert_lsn()"), &[])
        .unwrap()
        .get(0);
    assert!(written_position, "{token}");
    let mut stranger = pg.connect_as("stranger", "app");
    assert_eq!(sqlstate(&mut stranger, "SELECT entitlements.write_token()"), "42501");
}
