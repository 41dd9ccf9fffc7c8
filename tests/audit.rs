//! The audit trail over real connections: records survive the caller's rollback, read-only
//! transactions and crashes; a full queue drops and counts but never fails a check; the
//! table is append-only for everyone; members read only their own workspaces' rows.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::process::Command;
use std::str::FromStr;

/// A cluster with the extension in `app`: its first check starts its writer.
fn audited(name: &str) -> Cluster {
    Cluster::start(name)
}

fn flush(c: &mut Client) -> i64 {
    c.query_one("SELECT entitlements.flush_audit()", &[]).unwrap().get(0)
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// (queued, written, dropped, pending, writer_running)
fn stats(c: &mut Client) -> (i64, i64, i64, i64, bool) {
    let r = c
        .query_one("SELECT queued, written, dropped, pending, writer_running FROM entitlements.audit_statistics()", &[])
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

/// (dropped_queue_full, dropped_no_writer, dropped_standby, dropped_refused)
fn drops_by_cause(c: &mut Client) -> (i64, i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT dropped_queue_full, dropped_no_writer, dropped_standby, dropped_refused
               FROM entitlements.audit_statistics()",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// The workspace's rows once everything queued so far is written.
fn flushed_rows(c: &mut Client, ws: &uuid_string::Ws) -> i64 {
    flush(c);
    rows_for(c, ws)
}

fn rows_for(c: &mut Client, ws: &uuid_string::Ws) -> i64 {
    count(c, &format!("SELECT count(*) FROM entitlements.entitlement_checks WHERE workspace_id = {ws}"))
}

#[test]
fn checks_of_a_rolled_back_transaction_are_recorded() {
    let pg = audited("audit-rollback");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, "BEGIN");
    assert_eq!(check(&mut c, &ws, "ccp-05"), (false, Some("TIER_INSUFFICIENT".into())));
    let all = count(&mut c, &format!("SELECT count(*) FROM entitlements.entitlement_check_all({ws})"));
    assert_eq!(all, 14);
    exec(&mut c, "ROLLBACK");
    assert_eq!(flushed_rows(&mut c, &ws), 15);
    let denied = count(&mut c, &format!(
        "SELECT count(*) FROM entitlements.entitlement_checks
          WHERE workspace_id = {ws} AND feature = 'ccp-05' AND NOT result AND reason = 'TIER_INSUFFICIENT'"));
    assert_eq!(denied, 2, "the single check and the ccp-05 row of check_all");
}

#[test]
fn checks_in_a_read_only_transaction_are_recorded() {
    let pg = audited("audit-read-only");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, "BEGIN TRANSACTION READ ONLY");
    assert_eq!(check(&mut c, &ws, "ccp-01"), (true, None));
    exec(&mut c, "COMMIT");
    exec(&mut c, "SET default_transaction_read_only = on");
    assert_eq!(check(&mut c, &ws, "ccp-02"), (true, None));
    exec(&mut c, "RESET default_transaction_read_only");
    assert_eq!(flushed_rows(&mut c, &ws), 2);
}

#[test]
fn user_agent_and_ip_come_from_settings_else_the_connection() {
    let pg = audited("audit-client");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, "SET application_name = 'billing-svc'");
    check(&mut c, &ws, "ccp-01");
    exec(&mut c, "SET pg_entitlements.user_agent = 'Mozilla/5.0'; SET pg_entitlements.client_ip = '203.0.113.7'");
    check(&mut c, &ws, "ccp-02");
    // A bad client_ip is refused when set (PostgreSQL's inet parser decides), and the
    // setting keeps its previous value.
    assert_eq!(sqlstate(&mut c, "SET pg_entitlements.client_ip = 'not-an-address'"), "22023");
    exec(&mut c, "RESET pg_entitlements.client_ip");
    assert_eq!(check(&mut c, &ws, "ccp-03"), (true, None));
    flush(&mut c);
    let rows = c
        .query(
            &format!("SELECT feature, user_agent, host(ip_address) FROM entitlements.entitlement_checks
                       WHERE workspace_id = {ws} ORDER BY id"),
            &[],
        )
        .unwrap();
    let got: Vec<(String, Option<String>, Option<String>)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(
        got,
        vec![
            ("ccp-01".into(), Some("billing-svc".into()), Some("127.0.0.1".into())),
            ("ccp-02".into(), Some("Mozilla/5.0".into()), Some("203.0.113.7".into())),
            ("ccp-03".into(), Some("Mozilla/5.0".into()), Some("127.0.0.1".into())),
        ]
    );
}

#[test]
fn addresses_of_every_form_are_stored_as_postgresql_reads_them() {
    // The writer hands rows to PostgreSQL in inet's binary form: each address must come back
    // exactly as PostgreSQL's own parser reads its text.
    let pg = audited("audit-inet");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    let forms = ["203.0.113.7", "10.1.2.0/24", "0.0.0.0/0", "::1", "2001:db8::/32", "::ffff:1.2.3.4", "fe80::1:2:3:4/64"];
    for form in forms {
        exec(&mut c, &format!("SET pg_entitlements.client_ip = '{form}'"));
        check(&mut c, &ws, "ccp-01");
    }
    flush(&mut c);
    let stored: Vec<(String, String)> = c
        .query(
            &format!(
                "SELECT ip_address::text, connection_addr::text FROM entitlements.entitlement_checks
                  WHERE workspace_id = {ws} ORDER BY id"
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<String> = forms
        .iter()
        .map(|f| c.query_one(&format!("SELECT '{f}'::inet::text"), &[]).unwrap().get(0))
        .collect();
    assert_eq!(stored.iter().map(|(ip, _)| ip.clone()).collect::<Vec<_>>(), expected);
    assert!(stored.iter().all(|(_, conn)| conn == "127.0.0.1/32" || conn == "127.0.0.1"), "{stored:?}");
}

#[test]
fn a_cached_check_is_recorded_at_the_time_of_the_check_not_of_its_decision() {
    let pg = audited("audit-time");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    check(&mut c, &ws, "ccp-05");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let now = |c: &mut Client| -> String { c.query_one("SELECT clock_timestamp()::text", &[]).unwrap().get(0) };
    let before = now(&mut c);
    let row = c.query_one(&format!("SELECT cached, resolved_at::text FROM entitlements.entitlement_check({ws}, 'ccp-05')"), &[]).unwrap();
    let after = now(&mut c);
    let (cached, resolved_at): (bool, String) = (row.get(0), row.get(1));
    assert!(cached);
    flush(&mut c);
    let ok: bool = c
        .query_one(
            &format!(
                "SELECT max(checked_at) BETWEEN $1::text::timestamptz AND $2::text::timestamptz
                        AND max(checked_at) > $3::text::timestamptz + interval '1 second'
                   FROM entitlements.entitlement_checks WHERE workspace_id = {ws}"
            ),
            &[&before, &after, &resolved_at],
        )
        .unwrap()
        .get(0);
    assert!(ok, "checked_at is not the time of the cached check (resolved_at {resolved_at}, check between {before} and {after})");
}

#[test]
fn audit_modes_denied_and_off_and_has_entitlement_is_never_recorded() {
    let pg = audited("audit-modes");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.has_entitlement({ws}, 'ccp-01')"));
    exec(&mut c, "SET pg_entitlements.audit = 'denied'");
    check(&mut c, &ws, "ccp-01"); // allowed: not recorded
    check(&mut c, &ws, "ccp-05"); // denied: recorded
    exec(&mut c, "SET pg_entitlements.audit = 'off'");
    check(&mut c, &ws, "ccp-06");
    exec(&mut c, "RESET pg_entitlements.audit");
    flush(&mut c);
    let features: Vec<String> = c
        .query(&format!("SELECT feature FROM entitlements.entitlement_checks WHERE workspace_id = {ws}"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(features, vec!["ccp-05".to_string()]);
    // Off is not a drop: nothing to count.
    assert_eq!(stats(&mut c).2, 0);

    // A non-superuser cannot switch the audit off for itself.
    exec(&mut c, "CREATE ROLE plain_user");
    exec(&mut c, "SET ROLE plain_user");
    assert_eq!(sqlstate(&mut c, "SET pg_entitlements.audit = 'off'"), "42501");
}

#[test]
fn a_full_queue_drops_and_counts_but_answers_every_check() {
    let pg = Cluster::start_with("audit-full", &["pg_entitlements.audit_queue_size = 16"]);
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    let n = 5000i64;
    let answered = count(
        &mut c,
        &format!("SELECT count((entitlements.entitlement_check({ws}, 'ccp-01')).enabled)
                    FROM generate_series(1, {n})"),
    );
    assert_eq!(answered, n, "every check answered");
    flush(&mut c);
    let (queued, written, dropped, pending, _) = stats(&mut c);
    assert!(dropped > 0, "a burst of {n} into a queue of 16 drops some (queued {queued})");
    assert_eq!(queued + dropped, n, "each check is either queued or counted as dropped");
    assert_eq!((written, pending), (queued, 0));
    assert_eq!(rows_for(&mut c, &ws), written);
    assert_eq!(drops_by_cause(&mut c), (dropped, 0, 0, 0), "all for a full queue");
    // The server log says so, with the count and the cause (at most once a minute).
    let log = pg.log();
    let reports: Vec<&str> = log.lines().filter(|l| l.contains("audit records dropped since the last report")).collect();
    assert!(!reports.is_empty(), "no report of the drops:\n{log}");
    assert!((reports.len() as i64) < dropped / 100, "a report per minute, not per drop:\n{log}");
    assert!(reports[0].contains("because the queue was full"), "{}", reports[0]);
}

/// Producers append side by side (each into a block of entries it reserved) and a writer
/// reads up to the first record still being copied: with several sessions filling a small
/// ring many times over, every record is stored once, none twice, none from an earlier lap
/// of the ring.
#[test]
fn concurrent_sessions_each_record_is_stored_exactly_once() {
    const SESSIONS: usize = 4;
    const CHECKS: i64 = 5000;
    let pg = Cluster::start_with("audit-concurrent", &["pg_entitlements.audit_queue_size = 1024"]);
    let mut c = pg.connect();
    let workspaces: Vec<uuid_string::Ws> = (0..SESSIONS).map(|_| new_workspace(&mut c)).collect();
    check(&mut c, &workspaces[0], "ccp-01"); // starts the writer
    flush(&mut c);
    let (queued_before, _, _, _, _) = stats(&mut c);
    std::thread::scope(|scope| {
        for ws in &workspaces {
            let mut session = pg.connect();
            scope.spawn(move || {
                // Each record is told apart by its user_id: the row's number in the series.
                let answered = count(
                    &mut session,
                    &format!(
                        "SELECT count((entitlements.entitlement_check({ws}, 'ccp-01')).enabled)
                           FROM generate_series(1, {CHECKS}) g,
                                LATERAL pg_catalog.set_config('pg_entitlements.user_id', g::text, false) s"
                    ),
                );
                assert_eq!(answered, CHECKS);
            });
        }
    });
    flush(&mut c);
    let (queued, written, dropped, pending, _) = stats(&mut c);
    let total = SESSIONS as i64 * CHECKS;
    assert_eq!(queued - queued_before + dropped, total, "each check is queued or counted as dropped");
    assert_eq!(pending, 0);
    assert!(queued - queued_before > 1024, "the ring went round more than once");
    let mut stored = 0;
    for ws in &workspaces {
        let r = c
            .query_one(
                &format!(
                    "SELECT count(*), count(DISTINCT user_id),
                            count(*) FILTER (WHERE user_id::int NOT BETWEEN 1 AND {CHECKS})
                       FROM entitlements.entitlement_checks WHERE workspace_id = {ws} AND user_id IS NOT NULL"
                ),
                &[],
            )
            .unwrap();
        let (rows, distinct, foreign): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(rows, distinct, "a record of {ws} stored twice");
        assert_eq!(foreign, 0, "a record of {ws} that no check of its session made");
        if dropped == 0 {
            assert_eq!(rows, CHECKS, "every check of {ws} stored");
        }
        stored += rows;
    }
    assert_eq!(stored + 1, written, "the rows stored are the rows counted as written (and the first check)");
}

/// A backend reserves a block of entries (16 in the default ring) and fills one per record.
/// One that checks once and then idles must neither hold up the records queued after its
/// block (the writer voids a reservation it has waited behind for a tick, without any
/// flush_audit) nor count as having queued more records than it made; its next check
/// reserves a new block.
#[test]
fn an_idle_sessions_reservation_neither_holds_up_later_records_nor_counts_as_queued() {
    let pg = audited("audit-idle-reservation");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    check(&mut c, &ws, "ccp-01"); // starts the writer
    flush(&mut c);
    let (queued0, written0, _, _, _) = stats(&mut c);
    let mut idle = pg.connect();
    check(&mut idle, &ws, "ccp-01");
    let mut busy = pg.connect();
    for _ in 0..5 {
        check(&mut busy, &ws, "ccp-02");
    }
    let (queued, _, dropped, _, _) = stats(&mut c);
    assert_eq!((queued - queued0, dropped), (6, 0), "reserved entries are not queued records");
    // A writer idle for 10 s leaves, and voids the reservations as it does: the records must
    // be stored well before that (in a tick or two, 200 ms each).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while stats(&mut c).1 - written0 < 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "the records are held up behind the idle session's reservation: {:?}\n{}",
            stats(&mut c),
            pg.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    check(&mut idle, &ws, "ccp-01");
    drop(idle);
    check(&mut busy, &ws, "ccp-02");
    // flush_audit() reports records still pending, not the entries reserved around them.
    let flushed = flush(&mut c);
    assert!((0..=2).contains(&flushed), "flush_audit() returned {flushed} for at most 2 pending records");
    let (queued, written, dropped, pending, _) = stats(&mut c);
    assert_eq!((queued - queued0, written - written0, dropped, pending), (8, 8, 0, 0));
    assert_eq!(rows_for(&mut c, &ws), 9, "the first check and the eight since");
}

fn kill9(pid: i32) {
    let st = Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    assert!(st.success(), "kill -9 {pid}");
}

fn writer_pid(c: &mut Client) -> Option<i32> {
    c.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_entitlements audit writer'", &[])
        .unwrap()
        .map(|r| r.get(0))
}

/// Wait for the server after crash restart number `restarts_before + 1` and reconnect. Its
/// writer starts again with the first check (flush_audit waits for it).
fn reconnect_after_crash(pg: &Cluster, restarts_before: usize) -> Client {
    drop(pg.reconnect_after_crash(restarts_before));
    pg.connect()
}

#[test]
fn records_still_arrive_after_the_writer_or_a_backend_is_killed() {
    let pg = audited("audit-sigkill");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    check(&mut c, &ws, "ccp-01");
    assert_eq!(flushed_rows(&mut c, &ws), 1);

    // SIGKILL the writer: the postmaster restarts every process (shared memory is reset).
    let pid = writer_pid(&mut c).unwrap();
    let restarts = pg.crash_restarts();
    kill9(pid);
    drop(c);
    let mut c = reconnect_after_crash(&pg, restarts);
    assert_ne!(writer_pid(&mut c), Some(pid));
    check(&mut c, &ws, "ccp-02");
    assert_eq!(flushed_rows(&mut c, &ws), 2);

    // SIGKILL an ordinary backend: the same crash restart, and the writer comes back.
    let mut victim = pg.connect();
    let victim_pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let restarts = pg.crash_restarts();
    kill9(victim_pid);
    drop(c);
    let mut c = reconnect_after_crash(&pg, restarts);
    check(&mut c, &ws, "ccp-03");
    assert_eq!(flushed_rows(&mut c, &ws), 3);
}

#[test]
fn tampering_is_refused_for_superuser_owner_and_members() {
    let pg = audited("audit-tamper");
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!(
        "CREATE ROLE member_role LOGIN; CREATE ROLE owner_role LOGIN; GRANT entitlements_app TO member_role;
         INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice', 'owner');"));
    check(&mut admin, &ws, "ccp-01");
    flush(&mut admin);
    let attempts = [
        "UPDATE entitlements.entitlement_checks SET result = NOT result".to_string(),
        "DELETE FROM entitlements.entitlement_checks".to_string(),
        "TRUNCATE entitlements.entitlement_checks".to_string(),
        format!("INSERT INTO entitlements.entitlement_checks (checked_at, workspace_id, feature, result, cached)
                 VALUES (now(), {ws}, 'ccp-14', true, false)"),
    ];
    // The superuser (who owns the table, as the extension's creator).
    for sql in &attempts {
        assert_eq!(sqlstate(&mut admin, sql), "42501", "superuser: {sql}");
    }
    // A non-superuser owner.
    exec(&mut admin, "ALTER TABLE entitlements.entitlement_checks OWNER TO owner_role");
    let mut owner = pg.connect();
    exec(&mut owner, "SET ROLE owner_role");
    for sql in &attempts {
        assert_eq!(sqlstate(&mut owner, sql), "42501", "owner: {sql}");
    }
    exec(&mut admin, "ALTER TABLE entitlements.entitlement_checks OWNER TO postgres");
    // A member of the workspace.
    let mut member = pg.connect();
    exec(&mut member, "SET ROLE member_role; SET pg_entitlements.user_id = 'alice'");
    for sql in &attempts {
        assert_eq!(sqlstate(&mut member, sql), "42501", "member: {sql}");
    }
    assert_eq!(rows_for(&mut admin, &ws), 1, "the row is untouched");
}

#[test]
fn members_read_only_their_own_workspaces_rows() {
    let pg = audited("audit-rls");
    let mut admin = pg.connect();
    let ws_a = new_workspace(&mut admin);
    let ws_b = new_workspace(&mut admin);
    exec(&mut admin, &format!(
        "CREATE ROLE app_user LOGIN; GRANT entitlements_app TO app_user;
         INSERT INTO entitlements.workspace_members VALUES ({ws_a}, 'alice', 'owner'), ({ws_b}, 'bob', 'owner');"));
    let mut app = pg.connect();
    exec(&mut app, "SET ROLE app_user; SET pg_entitlements.user_id = 'alice'");
    check(&mut app, &ws_a, "ccp-01");
    check(&mut app, &ws_a, "ccp-05");
    exec(&mut app, "SET pg_entitlements.user_id = 'bob'");
    check(&mut app, &ws_b, "ccp-01");
    flush(&mut app);

    let user_of = |c: &mut Client| -> Vec<(String, Option<String>)> {
        c.query("SELECT workspace_id::text, user_id FROM entitlements.entitlement_checks ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    exec(&mut app, "SET pg_entitlements.user_id = 'alice'");
    let alice = user_of(&mut app);
    assert_eq!(alice, vec![(ws_a.0.clone(), Some("alice".into())); 2]);
    assert_eq!(count(&mut app, "SELECT count(*) FROM entitlements.entitlement_checks_summary"), 1);
    assert_eq!(count(&mut app, "SELECT sum(denials)::bigint FROM entitlements.denials_by_reason"), 1);
    exec(&mut app, "SET pg_entitlements.user_id = 'bob'");
    assert_eq!(user_of(&mut app), vec![(ws_b.0.clone(), Some("bob".into()))]);
    exec(&mut app, "SET pg_entitlements.user_id = 'mallory'");
    assert!(user_of(&mut app).is_empty());
    // The superuser sees all three.
    assert_eq!(count(&mut admin, "SELECT count(*) FROM entitlements.entitlement_checks"), 3);
}

#[test]
fn prune_audit_is_for_superusers_only() {
    let pg = audited("audit-prune");
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    check(&mut admin, &ws, "ccp-01");
    check(&mut admin, &ws, "ccp-02");
    flush(&mut admin);
    exec(&mut admin, "CREATE ROLE dba LOGIN");
    let mut dba = pg.connect();
    exec(&mut dba, "SET ROLE dba");
    // No EXECUTE by default ...
    assert_eq!(sqlstate(&mut dba, "SELECT entitlements.prune_audit('0 seconds')"), "42501");
    // ... and granting it does not help: the function itself insists on a superuser.
    exec(&mut admin, "GRANT USAGE ON SCHEMA entitlements TO dba; GRANT EXECUTE ON FUNCTION entitlements.prune_audit(interval) TO dba");
    assert_eq!(sqlstate(&mut dba, "SELECT entitlements.prune_audit('0 seconds')"), "42501");
    assert_eq!(rows_for(&mut admin, &ws), 2);

    assert_eq!(count(&mut admin, "SELECT entitlements.prune_audit('1 day')"), 0);
    assert_eq!(count(&mut admin, "SELECT entitlements.prune_audit('0 seconds')"), 2);
    assert_eq!(rows_for(&mut admin, &ws), 0);
    // The permit ends with the call.
    exec(&mut admin, &format!("SELECT entitlements.entitlement_check({ws}, 'ccp-01')"));
    flush(&mut admin);
    assert_eq!(sqlstate(&mut admin, "DELETE FROM entitlements.entitlement_checks"), "42501");
}

#[test]
fn without_preload_checks_work_and_records_are_counted_as_dropped() {
    // A later line wins: the library is then loaded by CREATE EXTENSION, not at start.
    let pg = Cluster::start_with("audit-no-preload", &["shared_preload_libraries = ''"]);
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    assert_eq!(check(&mut c, &ws, "ccp-01"), (true, None));
    assert_eq!(check(&mut c, &ws, "ccp-05").0, false);
    assert_eq!(flush(&mut c), 0, "nothing to wait for");
    assert_eq!(stats(&mut c), (0, 0, 2, 0, false));
    assert_eq!(drops_by_cause(&mut c), (0, 2, 0, 0), "no writer without preload");
    assert_eq!(rows_for(&mut c, &ws), 0);
}

/// A client of `db` that collects the WARNINGs the server sends it.
fn connect_collecting_warnings(pg: &Cluster, db: &str) -> (Client, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let warnings = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = warnings.clone();
    let c = postgres::Config::from_str(&pg.url(db))
        .unwrap()
        .notice_callback(move |n| sink.lock().unwrap().push(format!("{}: {}", n.severity(), n.message())))
        .connect(NoTls)
        .unwrap();
    (c, warnings)
}

/// A new database with the extension (created from `admin`, a client of another database).
fn database_with_extension(pg: &Cluster, admin: &mut Client, db: &str) -> Client {
    exec(admin, &format!("CREATE DATABASE {db}"));
    let mut c = pg.connect_db(db);
    exec(&mut c, "CREATE EXTENSION pg_entitlements");
    c
}

/// The pid of the writer connected to database `db`, if one is.
fn writer_of(c: &mut Client, db: &str) -> Option<i32> {
    c.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_entitlements audit writer' AND datname = $1",
        &[&db],
    )
    .unwrap()
    .map(|r| r.get(0))
}

/// Poll (at most 60 s) until `done` holds; false if it never did.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

#[test]
fn two_databases_are_both_audited_each_in_its_own_table() {
    let pg = audited("audit-two-dbs");
    let mut admin = pg.connect_db("postgres");
    let mut app = pg.connect();
    let mut second = database_with_extension(&pg, &mut admin, "second");
    let ws_app = new_workspace(&mut app);
    let ws_second = new_workspace(&mut second);
    for _ in 0..3 {
        check(&mut app, &ws_app, "ccp-01");
        check(&mut second, &ws_second, "ccp-05");
    }
    assert_eq!(flushed_rows(&mut app, &ws_app), 3);
    assert_eq!(flushed_rows(&mut second, &ws_second), 3);
    // Each database's rows in its own table only.
    assert_eq!(rows_for(&mut app, &ws_second), 0);
    assert_eq!(rows_for(&mut second, &ws_app), 0);
    assert!(writer_of(&mut admin, "app").is_some() && writer_of(&mut admin, "second").is_some());
    assert_eq!(stats(&mut app), (6, 6, 0, 0, true), "(queued, written, dropped, pending, writer_running)");
}

#[test]
fn a_database_created_while_the_audit_runs_is_audited() {
    let pg = audited("audit-new-db");
    let mut app = pg.connect();
    let ws = new_workspace(&mut app);
    check(&mut app, &ws, "ccp-01");
    assert_eq!(flushed_rows(&mut app, &ws), 1);
    // No setting names it and nothing is restarted: its first check starts its writer.
    let mut admin = pg.connect_db("postgres");
    let mut late = database_with_extension(&pg, &mut admin, "late");
    let ws_late = new_workspace(&mut late);
    check(&mut late, &ws_late, "ccp-02");
    assert_eq!(flushed_rows(&mut late, &ws_late), 1);
    assert_eq!(stats(&mut late).2, 0, "nothing dropped");
}

#[test]
fn a_terminated_writer_comes_back_and_stores_what_was_queued_meanwhile() {
    let pg = audited("audit-terminate");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    check(&mut c, &ws, "ccp-01");
    assert_eq!(flushed_rows(&mut c, &ws), 1);
    let pid = writer_of(&mut c, "app").expect("a writer for app");
    exec(&mut c, &format!("SELECT pg_terminate_backend({pid})"));
    let gone = eventually(|| count(&mut c, &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")) == 0);
    assert!(gone, "the writer did not end");
    // Queued while no writer runs (the postmaster starts it again a second after it ended).
    check(&mut c, &ws, "ccp-02");
    check(&mut c, &ws, "ccp-03");
    assert_eq!(flushed_rows(&mut c, &ws), 3, "the records queued meanwhile are stored:\n{}", pg.log());
    let back = writer_of(&mut c, "app").expect("the writer is back");
    assert_ne!(back, pid);
    assert_eq!(stats(&mut c).2, 0, "nothing dropped");
}

#[test]
fn drop_extension_and_drop_database_end_the_writer_and_succeed() {
    let pg = audited("audit-drops");
    let mut admin = pg.connect_db("postgres");
    let mut second = database_with_extension(&pg, &mut admin, "second");
    let ws = new_workspace(&mut second);
    check(&mut second, &ws, "ccp-01");
    assert_eq!(flushed_rows(&mut second, &ws), 1);
    assert!(writer_of(&mut admin, "second").is_some());

    // DROP EXTENSION: the writer ends (it has nothing left to store there) ...
    exec(&mut second, "DROP EXTENSION pg_entitlements");
    assert!(eventually(|| writer_of(&mut admin, "second").is_none()), "the writer of second did not end:\n{}", pg.log());
    // ... and comes back when the extension does.
    exec(&mut second, "CREATE EXTENSION pg_entitlements");
    check(&mut second, &ws, "ccp-02");
    assert_eq!(flushed_rows(&mut second, &ws), 1);
    let writer = writer_of(&mut admin, "second").expect("a writer for second again");

    // DROP DATABASE without FORCE, with the writer running: the writer leaves, the drop
    // succeeds.
    drop(second);
    assert!(eventually(|| count(&mut admin, "SELECT count(*) FROM pg_stat_activity WHERE datname = 'second' AND backend_type = 'client backend'") == 0));
    exec(&mut admin, "DROP DATABASE second");
    assert_eq!(count(&mut admin, &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {writer}")), 0);
    assert!(pg.log().contains("leaving: its database is being dropped"), "{}", pg.log());
    // The other databases' audit goes on.
    let mut app = pg.connect();
    let ws_app = new_workspace(&mut app);
    check(&mut app, &ws_app, "ccp-01");
    assert_eq!(flushed_rows(&mut app, &ws_app), 1);
}

#[test]
fn more_databases_than_audit_max_databases_drop_and_count_and_warn() {
    let pg = Cluster::start_with("audit-max-dbs", &["pg_entitlements.audit_max_databases = 2"]);
    let mut admin = pg.connect_db("postgres");
    let mut app = pg.connect();
    let mut second = database_with_extension(&pg, &mut admin, "second");
    exec(&mut admin, "CREATE DATABASE third");
    let (mut third, warnings) = connect_collecting_warnings(&pg, "third");
    let ws_app = new_workspace(&mut app);
    let ws_second = new_workspace(&mut second);
    check(&mut app, &ws_app, "ccp-01");
    check(&mut second, &ws_second, "ccp-01");
    assert_eq!(flushed_rows(&mut app, &ws_app), 1);
    assert_eq!(flushed_rows(&mut second, &ws_second), 1);

    // Both writer slots are taken (a writer leaves after 10 s without records, so the next
    // steps follow at once): CREATE EXTENSION in a third database says so ...
    exec(&mut third, "CREATE EXTENSION pg_entitlements");
    let warned = warnings.lock().unwrap().clone();
    assert!(
        warned.iter().any(|w| w.starts_with("WARNING") && w.contains("audit records of this database will be dropped")),
        "{warned:?}"
    );
    // ... and its records are dropped and counted, while its checks answer.
    let ws_third = new_workspace(&mut third);
    assert_eq!(check(&mut third, &ws_third, "ccp-01"), (true, None));
    assert_eq!(flushed_rows(&mut third, &ws_third), 0);
    assert_eq!(stats(&mut third).2, 1);
    assert_eq!(drops_by_cause(&mut third), (0, 1, 0, 0));
    assert!(pg.log().contains("1 because no writer serves their database"), "{}", pg.log());
}

/// The DBA queries of docs/AUDIT.md, run as written (`:'ws'` is the psql variable).
#[test]
fn the_documented_dba_queries_run() {
    let pg = audited("audit-dba");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    for f in ["ccp-01", "ccp-05", "ccp-09", "ccp-09", "ccp-13"] {
        check(&mut c, &ws, f);
    }
    flush(&mut c);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = doc.split("## DBA queries").nth(1).expect("a DBA queries section");
    let section = section.split("\n## ").next().unwrap();
    let queries: Vec<&str> = section.split("```sql").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert!(queries.len() >= 3, "denials of a workspace, hit rate, top denied features");
    let mut results = Vec::new();
    for q in &queries {
        let sql = q.replace(":'ws'", &format!("'{}'", ws.0));
        let rows = c.query(sql.as_str(), &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
        results.push(rows);
    }
    assert_eq!(results[0].len(), 3, "three denials in the last day: ccp-09 twice, ccp-13");
    let top: String = results[2][0].get("feature");
    assert_eq!(top, "ccp-09");
}

#[derive(Clone, Debug)]
enum Op {
    Check { ws: usize, feature: u8 },
    CheckAll { ws: usize },
    RolledBack { ws: usize, feature: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 1..=14u8).prop_map(|(ws, feature)| Op::Check { ws, feature }),
        1 => (0..3usize).prop_map(|ws| Op::CheckAll { ws }),
        1 => (0..3usize, 1..=14u8).prop_map(|(ws, feature)| Op::RolledBack { ws, feature }),
    ]
}

type Row = (String, String, bool, Option<String>, bool);

/// After flush_audit(), exactly one row per audited check, with the values it returned.
#[test]
fn property_one_row_per_check_with_the_returned_values() {
    let pg = audited("audit-property");
    let mut c = pg.connect();
    let wss: Vec<_> = (0..3).map(|_| new_workspace(&mut c)).collect();
    exec(&mut c, &format!(
        "SELECT entitlements.sync_billing_state({}, 'pro', 'active');
         SELECT entitlements.sync_billing_state({}, 'enterprise', 'past_due');",
        wss[1], wss[2]));
    let cell = std::cell::RefCell::new(c);
    let mut runner = TestRunner::new(Config { cases: 16, failure_persistence: None, ..Config::default() });
    runner
        .run(&prop::collection::vec(op(), 1..20), |ops| {
            let c = &mut *cell.borrow_mut();
            let since: i64 = count(c, "SELECT coalesce(max(id), 0) FROM entitlements.entitlement_checks");
            let started: String = c.query_one("SELECT clock_timestamp()::text", &[]).unwrap().get(0);
            let mut expected: Vec<Row> = Vec::new();
            let select = "SELECT $1::text, feature, enabled, reason, cached FROM";
            for o in &ops {
                let rows = match o {
                    Op::Check { ws, feature } | Op::RolledBack { ws, feature } => {
                        let rolled_back = matches!(o, Op::RolledBack { .. });
                        if rolled_back {
                            exec(c, "BEGIN");
                        }
                        let rows = c.query(
                            &format!("{select} entitlements.entitlement_check({}, 'ccp-{feature:02}')", wss[*ws]),
                            &[&wss[*ws].0],
                        );
                        if rolled_back {
                            exec(c, "ROLLBACK");
                        }
                        rows
                    }
                    Op::CheckAll { ws } => c.query(
                        &format!("{select} entitlements.entitlement_check_all({})", wss[*ws]),
                        &[&wss[*ws].0],
                    ),
                }
                .unwrap();
                expected.extend(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))));
            }
            let finished: String = c.query_one("SELECT clock_timestamp()::text", &[]).unwrap().get(0);
            flush(c);
            let mut actual: Vec<Row> = c
                .query(
                    "SELECT workspace_id::text, feature, result, reason, cached
                       FROM entitlements.entitlement_checks WHERE id > $1",
                    &[&since],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect();
            // Each record carries the time of its own check (cached or not), not the time its
            // decision was made.
            let outside: i64 = c
                .query_one(
                    "SELECT count(*) FROM entitlements.entitlement_checks
                      WHERE id > $1 AND NOT (checked_at BETWEEN $2::text::timestamptz AND $3::text::timestamptz)",
                    &[&since, &started, &finished],
                )
                .unwrap()
                .get(0);
            prop_assert_eq!(outside, 0);
            actual.sort();
            expected.sort();
            prop_assert_eq!(actual, expected);
            Ok(())
        })
        .unwrap();
    let (queued, written, dropped, pending, running) = stats(&mut cell.borrow_mut());
    assert_eq!((written, dropped, pending, running), (queued, 0, 0, true));
}

/// A streaming replica of `primary`, started from a base backup, stopped on drop.
struct Standby {
    dir: std::path::PathBuf,
    port: u16,
}

impl Standby {
    fn pg_bin() -> String {
        common::bindir().display().to_string()
    }

    fn start(primary: &Cluster) -> Standby {
        let dir = primary.dir.with_extension("standby");
        let port = free_port();
        let as_pg = |args: &[&str]| {
            let out = Command::new("sudo").arg("-u").arg("postgres").arg("--").args(args).output().unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("chown").arg("postgres:").arg(&dir).status().unwrap();
        let data = dir.join("data");
        let bin = Self::pg_bin();
        as_pg(&[
            &format!("{bin}/pg_basebackup"), "-D", data.to_str().unwrap(), "-R", "-X", "stream", "-c", "fast",
            "-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", "postgres",
        ]);
        let conf = format!("port = {port}\nunix_socket_directories = '{}'\nhot_standby = on\n", dir.display());
        let mut f = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let log = dir.join("server.log");
        as_pg(&[&format!("{bin}/pg_ctl"), "-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "start"]);
        Standby { dir, port }
    }

    fn connect(&self) -> Client {
        let url = format!("host=127.0.0.1 port={} user=postgres dbname=app", self.port);
        for _ in 0..50 {
            if let Ok(c) = Client::connect(&url, NoTls) {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("connect to the standby on {}", self.port)
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new("sudo")
            .args(["-u", "postgres", "--", &format!("{}/pg_ctl", Self::pg_bin()), "-D"])
            .arg(&data)
            .args(["-m", "fast", "-w", "stop"])
            .output();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn on_a_hot_standby_checks_work_and_records_are_counted_as_dropped() {
    let pg = audited("audit-standby");
    let mut primary = pg.connect();
    let ws = new_workspace(&mut primary);
    exec(&mut primary, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    let standby = Standby::start(&pg);
    let mut s = standby.connect();
    // Wait until the standby has replayed everything the primary wrote; fail if it never does.
    let lsn: String = primary.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let replayed = format!("SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn, false)");
    while !s.query_one(&replayed, &[]).unwrap().get::<_, bool>(0) {
        assert!(std::time::Instant::now() < deadline, "the standby never replayed up to {lsn}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(count(&mut s, &format!("SELECT count(*) FROM entitlements.billing_state WHERE workspace_id = {ws}")), 1);
    assert_eq!(check(&mut s, &ws, "ccp-05"), (true, None));
    assert_eq!(check(&mut s, &ws, "ccp-13").0, false);
    assert_eq!(flush(&mut s), 0, "nothing is queued on a standby");
    assert_eq!(stats(&mut s), (0, 0, 2, 0, false), "counted as dropped; no writer during recovery");
    assert_eq!(drops_by_cause(&mut s), (0, 0, 2, 0));
    assert_eq!(flushed_rows(&mut primary, &ws), 0);
}

/// A batch whose INSERT keeps failing is retried, then dropped and counted; the audit goes on.
#[test]
fn a_batch_that_always_fails_is_given_up_after_retries() {
    let pg = audited("audit-poison");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, "CREATE FUNCTION public.poison() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN IF NEW.user_id = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$;
                  CREATE TRIGGER poison BEFORE INSERT ON entitlements.entitlement_checks
                  FOR EACH ROW EXECUTE FUNCTION public.poison();");
    exec(&mut c, "SET pg_entitlements.user_id = 'poison'");
    assert_eq!(check(&mut c, &ws, "ccp-01"), (true, None));
    exec(&mut c, "RESET pg_entitlements.user_id");
    flush(&mut c);
    let (_, written, dropped, pending, _) = stats(&mut c);
    assert_eq!((written, dropped, pending), (0, 1, 0));
    assert_eq!(drops_by_cause(&mut c), (0, 0, 0, 1));
    check(&mut c, &ws, "ccp-02");
    assert_eq!(flushed_rows(&mut c, &ws), 1);
    assert!(pg.log().contains("whose INSERT failed 3 times"));
}

/// A record PostgreSQL refuses (here: a constraint a DBA added) is set apart and counted; the
/// rest of its batch is stored, and the writer goes on.
#[test]
fn a_refused_record_drops_alone_and_the_rest_of_its_batch_is_stored() {
    let pg = audited("audit-refused");
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, "ALTER TABLE entitlements.entitlement_checks ADD CONSTRAINT no_ccp_02 CHECK (feature <> 'ccp-02')");
    // One transaction, so the three records are queued together and stored as one batch.
    exec(
        &mut c,
        &format!(
            "BEGIN;
             SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-01');
             SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-02');
             SELECT * FROM entitlements.entitlement_check({ws}, 'ccp-03');
             COMMIT;"
        ),
    );
    flush(&mut c);
    let stored: Vec<String> = c
        .query(&format!("SELECT feature FROM entitlements.entitlement_checks WHERE workspace_id = {ws} ORDER BY feature"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, ["ccp-01", "ccp-03"]);
    assert_eq!(drops_by_cause(&mut c).3, 1, "the refused record is counted");
    // and the writer still stores what comes next
    check(&mut c, &ws, "ccp-04");
    flush(&mut c);
    assert_eq!(rows_for(&mut c, &ws), 3);
}
