//! The audit trail over real connections: records survive the caller's rollback, read-only
//! transactions and crashes; a full queue drops and counts but never fails a check; the
//! table is append-only for everyone; members read only their own workspaces' rows.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::process::Command;

/// The harness creates the extension in `app`; the writer must serve that database.
const AUDIT_DB: &str = "pg_entitlements.audit_database = 'app'";

fn audited(name: &str) -> Cluster {
    Cluster::start_with(name, &[AUDIT_DB])
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
    let pg = Cluster::start_with("audit-full", &[AUDIT_DB, "pg_entitlements.audit_queue_size = 16"]);
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

/// Wait for the server (after crash restart number `restarts_before + 1`, unless
/// `usize::MAX`: no crash expected) and its writer to be back.
fn reconnect_with_writer(pg: &Cluster, restarts_before: usize) -> Client {
    if restarts_before != usize::MAX {
        drop(pg.reconnect_after_crash(restarts_before));
    }
    for _ in 0..100 {
        if let Ok(mut c) = Client::connect(&pg.url("app"), NoTls) {
            let writer = c
                .query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_entitlements audit writer'", &[])
                .ok()
                .flatten();
            if writer.is_some() {
                return c;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the writer did not come back:\n{}", pg.log())
}

#[test]
fn records_still_arrive_after_the_writer_or_a_backend_is_killed() {
    let pg = audited("audit-sigkill");
    let mut c = reconnect_with_writer(&pg, usize::MAX);
    let ws = new_workspace(&mut c);
    check(&mut c, &ws, "ccp-01");
    assert_eq!(flushed_rows(&mut c, &ws), 1);

    // SIGKILL the writer: the postmaster restarts every process (shared memory is reset).
    let pid = writer_pid(&mut c).unwrap();
    let restarts = pg.crash_restarts();
    kill9(pid);
    drop(c);
    let mut c = reconnect_with_writer(&pg, restarts);
    assert_ne!(writer_pid(&mut c), Some(pid));
    check(&mut c, &ws, "ccp-02");
    assert_eq!(flushed_rows(&mut c, &ws), 2);

    // SIGKILL an ordinary backend: the same crash restart, and the writer comes back.
    let mut victim = pg.connect();
    let victim_pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let restarts = pg.crash_restarts();
    kill9(victim_pid);
    drop(c);
    let mut c = reconnect_with_writer(&pg, restarts);
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
    assert_eq!(rows_for(&mut c, &ws), 0);
}

#[test]
fn checks_in_another_database_are_counted_as_dropped() {
    let pg = audited("audit-other-db");
    let mut app = reconnect_with_writer(&pg, usize::MAX);
    exec(&mut app, "SELECT 1");
    let mut admin = pg.connect_db("postgres");
    exec(&mut admin, "CREATE DATABASE other");
    let mut other = pg.connect_db("other");
    exec(&mut other, "CREATE EXTENSION pg_entitlements");
    let ws = new_workspace(&mut other);
    assert_eq!(check(&mut other, &ws, "ccp-01"), (true, None));
    assert_eq!(stats(&mut other).2, 1);
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
    assert_eq!(flushed_rows(&mut primary, &ws), 0);
}

/// A batch whose INSERT keeps failing is retried, then dropped and counted; the audit goes on.
#[test]
fn a_batch_that_always_fails_is_given_up_after_retries() {
    let pg = audited("audit-poison");
    let mut c = reconnect_with_writer(&pg, usize::MAX);
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
    let mut c = reconnect_with_writer(&pg, usize::MAX);
    check(&mut c, &ws, "ccp-02");
    assert_eq!(flushed_rows(&mut c, &ws), 1);
    assert!(pg.log().contains("whose INSERT failed 3 times"));
}
