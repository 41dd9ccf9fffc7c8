//! Behind PgBouncer in transaction mode, one server connection serves many clients in turn. Two
//! clients of one application role take turns on that one connection, each acting for its own
//! end user with `SET LOCAL` (or the JWT's `sub` with `set_config(..., true)`) inside each
//! transaction: each sees exactly its own answers, rows and errors, the shared cache serves
//! them warm, and the audit records who asked. A plain `SET`, the documented mistake, leaks the
//! identity to the other client's next transaction.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::uuid_string::Ws;
use common::*;
use postgres::types::{ToSql, Type};
use postgres::Row;

/// Rounds of alternating transactions.
const ROUNDS: usize = 20;
/// The feature each row of `public.reports` needs, one row each per workspace (free, pro,
/// pro_plus).
const REPORT_FEATURES: [&str; 3] = ["ccp-01", "ccp-05", "ccp-07"];
/// The audit goes to the app's database; a long TTL, so a slow machine cannot turn a warm answer
/// cold between rounds (correctness never depends on it).
const CONF: &[&str] = &["pg_entitlements.audit_database = 'app'", "pg_entitlements.cache_ttl = '1d'"];

/// A statement through the pooler, its parameters as text: an unnamed statement of the extended
/// protocol, sent with its Sync in one round trip. This works in transaction mode on every
/// PgBouncer version; named prepared statements do not (see the README's "Poolers").
fn query(c: &mut Client, sql: &str, params: &[&str]) -> Result<Vec<Row>, postgres::Error> {
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = params.iter().map(|p| (p as &(dyn ToSql + Sync), Type::TEXT)).collect();
    c.query_typed(sql, &typed)
}

fn rows(c: &mut Client, sql: &str, params: &[&str]) -> Vec<Row> {
    query(c, sql, params).unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error().map(|d| d.message())))
}

fn error_code(c: &mut Client, sql: &str, params: &[&str]) -> String {
    match query(c, sql, params) {
        Ok(_) => panic!("expected an error from: {sql} {params:?}"),
        Err(e) => e.code().map(|s| s.code().to_owned()).unwrap_or_else(|| format!("{e}")),
    }
}

fn whoami(c: &mut Client) -> Option<String> {
    rows(c, "SELECT entitlements.current_user_id()", &[])[0].get(0)
}

fn backend_pid(c: &mut Client) -> i32 {
    rows(c, "SELECT pg_backend_pid()", &[])[0].get(0)
}

/// The server backends of role `app`, as `(pid, client address)`, seen by a superuser connected
/// directly.
fn app_backends(admin: &mut Client) -> Vec<(i32, String)> {
    admin
        .query("SELECT pid, host(client_addr) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend'", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// `(feature, enabled, reason)` of every catalog feature, ordered by feature.
type Answers = Vec<(String, bool, Option<String>)>;

/// Three workspaces: `pro` (alice's), `free` (bob's), `enterprise` (carol's, neither's), each with
/// a row in the app's own table `public.reports` per feature of REPORT_FEATURES, under an RLS
/// policy on `entitlements.has_entitlement`; and the application's login role `app`.
fn setup(admin: &mut Client) -> (Ws, Ws, Ws) {
    let features = REPORT_FEATURES.map(|f| format!("'{f}'")).join(", ");
    let (pro, free, third) = (new_workspace(admin), new_workspace(admin), new_workspace(admin));
    exec(
        admin,
        &format!(
            "CREATE ROLE app LOGIN; GRANT entitlements_app TO app;
             SELECT entitlements.sync_billing_state({pro}, 'pro', 'active');
             SELECT entitlements.sync_billing_state({free}, 'free', 'active');
             SELECT entitlements.sync_billing_state({third}, 'enterprise', 'active');
             INSERT INTO entitlements.workspace_members VALUES ({pro}, 'alice'), ({free}, 'bob'), ({third}, 'carol');
             CREATE TABLE public.reports (id bigserial PRIMARY KEY, workspace_id uuid NOT NULL, needs text NOT NULL);
             ALTER TABLE public.reports ENABLE ROW LEVEL SECURITY;
             CREATE POLICY reports_need_feature ON public.reports
                 USING (entitlements.has_entitlement(workspace_id, needs));
             GRANT SELECT ON public.reports TO app;
             INSERT INTO public.reports (workspace_id, needs)
                  SELECT w, f FROM unnest(ARRAY[{pro}, {free}, {third}]) w, unnest(ARRAY[{features}]) f;"
        ),
    );
    (pro, free, third)
}

/// The answers for `ws`, decided for a superuser connected directly (unaudited, uncached).
fn decided(admin: &mut Client, ws: &Ws) -> Answers {
    admin
        .query(&format!("SELECT feature, enabled, reason FROM entitlements.decide_all({ws}) ORDER BY feature"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// One end user, served by one client connection through the pooler.
struct EndUser {
    name: &'static str,
    client: Client,
    own: Ws,
    expected: Answers,
}

/// One request of the application for `u`, as the README says to write it: BEGIN; the identity
/// with SET LOCAL (or the JWT claims with set_config(..., true)); checks and reads; COMMIT.
/// Asserts what it sees, inside and after the transaction; returns how many audited checks it made.
fn request(u: &mut EndUser, foreign: &[&Ws], server_pid: i32, warm: bool, via_jwt: bool) -> usize {
    let (name, own) = (u.name, u.own.0.as_str());
    let c = &mut u.client;
    exec(c, "BEGIN");
    if via_jwt {
        rows(c, "SELECT set_config('request.jwt.claims', $1, true)", &[&format!(r#"{{"sub":"{name}"}}"#)]);
    } else {
        exec(c, &format!("SET LOCAL pg_entitlements.user_id = '{name}'"));
    }
    assert_eq!(backend_pid(c), server_pid, "{name}: a server connection other than the pool's one");
    assert_eq!(whoami(c).as_deref(), Some(name));

    let mut audited = 0;
    for (feature, enabled, reason) in &u.expected {
        let r = &rows(c, "SELECT enabled, reason, cached FROM entitlements.entitlement_check($1::uuid, $2)", &[own, feature])[0];
        audited += 1;
        assert_eq!((r.get::<_, bool>(0), r.get::<_, Option<String>>(1)), (*enabled, reason.clone()), "{name}: {feature}");
        assert!(!warm || r.get::<_, bool>(2), "{name}: {feature} is not served by the warm cache");
        let has: bool = rows(c, "SELECT entitlements.has_entitlement($1::uuid, $2)", &[own, feature])[0].get(0);
        assert_eq!(has, *enabled, "{name}: has_entitlement {feature}");
    }
    let all = rows(c, "SELECT feature, enabled, reason, cached FROM entitlements.entitlement_check_all($1::uuid)", &[own]);
    audited += all.len();
    let mut answers: Answers = all.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    answers.sort();
    assert_eq!(answers, u.expected, "{name}: entitlement_check_all");
    assert!(!warm || all.iter().all(|r| r.get::<_, bool>(3)), "{name}: entitlement_check_all is not served by the warm cache");
    for ws in foreign {
        // Not a member: false, even for a feature every tier has.
        let has: bool = rows(c, "SELECT entitlements.has_entitlement($1::uuid, 'ccp-01')", &[&ws.0])[0].get(0);
        assert!(!has, "{name}: has_entitlement on {ws}");
    }

    // Rows, through RLS: the user's own workspace only.
    let billing: Vec<String> = rows(c, "SELECT workspace_id::text FROM entitlements.billing_state", &[]).iter().map(|r| r.get(0)).collect();
    assert_eq!(billing, [own], "{name}: billing_state");
    let members: Vec<(String, String)> = rows(c, "SELECT workspace_id::text, user_id FROM entitlements.workspace_members", &[])
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(members, [(own.to_owned(), name.to_owned())], "{name}: workspace_members");
    let reports: Vec<(String, String)> = rows(c, "SELECT workspace_id::text, needs FROM public.reports ORDER BY needs", &[])
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let entitled_reports: Vec<(String, String)> = REPORT_FEATURES
        .iter()
        .filter(|f| u.expected.iter().any(|(feature, enabled, _)| feature == *f && *enabled))
        .map(|f| (own.to_owned(), f.to_string()))
        .collect();
    assert_eq!(reports, entitled_reports, "{name}: reports");

    // Errors: the other workspaces are refused; the identity outlives a rolled-back savepoint.
    for ws in foreign {
        for sql in [
            "SELECT * FROM entitlements.entitlement_check($1::uuid, 'ccp-01')",
            "SELECT * FROM entitlements.entitlement_check_all($1::uuid)",
        ] {
            exec(c, "SAVEPOINT other_workspace");
            assert_eq!(error_code(c, sql, &[&ws.0]), "42501", "{name}: {sql} on {ws}");
            exec(c, "ROLLBACK TO SAVEPOINT other_workspace");
        }
    }
    assert_eq!(whoami(c).as_deref(), Some(name));
    exec(c, "COMMIT");

    // After the transaction the identity is gone, from this client and from the server connection.
    assert_eq!(whoami(c), None, "{name}: the identity outlived the transaction");
    for sql in [
        "SELECT * FROM entitlements.entitlement_check($1::uuid, 'ccp-01')",
        "SELECT entitlements.has_entitlement($1::uuid, 'ccp-01')",
    ] {
        assert_eq!(error_code(c, sql, &[own]), "28000", "{name}: {sql} after COMMIT");
    }
    assert_eq!(error_code(c, "SELECT count(*) FROM public.reports", &[]), "28000", "{name}: reports after COMMIT");
    audited
}

fn counter(admin: &mut Client, sql: &str) -> i64 {
    admin.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// True while a process with this pid exists and has not exited.

#[test]
fn set_local_behind_pgbouncer_keeps_each_client_to_its_own_user() {
    let pg = Cluster::start_with("pgbouncer-local", CONF);
    let mut admin = pg.connect();
    let (pro, free, third) = setup(&mut admin);
    let (pro_answers, free_answers) = (decided(&mut admin, &pro), decided(&mut admin, &free));
    // The two users' answers differ where the test looks.
    let enabled = |a: &Answers, f: &str| a.iter().find(|(feature, _, _)| feature == f).unwrap().1;
    assert!(enabled(&pro_answers, "ccp-05") && !enabled(&free_answers, "ccp-05"));

    let bouncer = PgBouncer::start(&pg, &["app"]);
    let bouncer_pid = bouncer.pid().expect("pgbouncer runs");
    let mut alice = EndUser { name: "alice", client: bouncer.connect_as("app", "client-a"), own: pro, expected: pro_answers };
    let mut bob = EndUser { name: "bob", client: bouncer.connect_as("app", "client-b"), own: free, expected: free_answers };

    // Both clients are served by one and the same server backend, which PostgreSQL sees as
    // PgBouncer's single connection of role app.
    let server_pid = backend_pid(&mut alice.client);
    assert_eq!(backend_pid(&mut bob.client), server_pid);
    assert_eq!(app_backends(&mut admin), [(server_pid, "127.0.0.1".to_owned())]);

    let hits = |admin: &mut Client| counter(admin, "SELECT hits FROM entitlements.cache_statistics()");
    let (mut audited_alice, mut audited_bob, mut warm_audited) = (0, 0, 0);
    let mut last_hits = hits(&mut admin);
    for round in 0..ROUNDS {
        // Round 0 fills the cache; from then on every answer comes from it.
        let warm = round > 0;
        let a = request(&mut alice, &[&bob.own, &third], server_pid, warm, false);
        // Bob's app alternates between the setting and JWT claims (as behind PostgREST).
        let b = request(&mut bob, &[&alice.own, &third], server_pid, warm, round % 2 == 1);
        audited_alice += a;
        audited_bob += b;
        if warm {
            warm_audited += a + b;
        }
        // cache_statistics is for pg_monitor: read it on the superuser's direct connection.
        let now = hits(&mut admin);
        assert!(!warm || now > last_hits, "round {round}: cache hits did not rise ({last_hits} -> {now})");
        last_hits = now;
    }
    assert_eq!(app_backends(&mut admin), [(server_pid, "127.0.0.1".to_owned())], "still one server connection");

    // The audit, unchanged behind the pooler: each check under the user its transaction asserted,
    // the role and address PostgreSQL saw (the pooler's), and each client's application_name.
    counter(&mut admin, "SELECT entitlements.flush_audit()");
    assert_eq!(counter(&mut admin, "SELECT dropped FROM entitlements.audit_statistics()"), 0);
    let audit: Vec<(String, String, String, String, Option<String>, i64, i64)> = admin
        .query(
            "SELECT user_id, workspace_id::text, session_role, host(connection_addr), user_agent,
                    count(*), count(*) FILTER (WHERE cached)
               FROM entitlements.entitlement_checks GROUP BY 1, 2, 3, 4, 5 ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6)))
        .collect();
    assert_eq!(audit.len(), 2, "{audit:?}");
    let expected = [("alice", &alice.own, "client-a", audited_alice), ("bob", &bob.own, "client-b", audited_bob)];
    for (row, (user, ws, app_name, n)) in audit.iter().zip(expected) {
        let (u, w, role, addr, agent, count, _) = row;
        assert_eq!(
            (u.as_str(), w.as_str(), role.as_str(), addr.as_str(), agent.as_deref(), *count),
            (user, ws.0.as_str(), "app", "127.0.0.1", Some(app_name), n as i64)
        );
    }
    let cached: i64 = audit.iter().map(|r| r.6).sum();
    assert!(cached >= warm_audited as i64, "{cached} cached records, {warm_audited} warm checks");

    // No pgbouncer is left behind.
    drop(alice);
    drop(bob);
    drop(bouncer);
    assert!(!process_alive(bouncer_pid), "pgbouncer {bouncer_pid} still runs");
}

#[test]
fn a_plain_set_behind_pgbouncer_leaks_the_identity_to_the_next_client() {
    let pg = Cluster::start_with("pgbouncer-leak", CONF);
    let mut admin = pg.connect();
    let (pro, free, _) = setup(&mut admin);
    let bouncer = PgBouncer::start(&pg, &["app"]);
    let mut alice = bouncer.connect_as("app", "client-a");
    let mut bob = bouncer.connect_as("app", "client-b");
    assert_eq!(backend_pid(&mut alice), backend_pid(&mut bob), "one server connection");

    // Bob's client, done right, sees bob's workspace and not alice's.
    exec(&mut bob, "BEGIN; SET LOCAL pg_entitlements.user_id = 'bob'");
    assert_eq!(error_code(&mut bob, "SELECT * FROM entitlements.entitlement_check($1::uuid, 'ccp-05')", &[&pro.0]), "42501");
    exec(&mut bob, "ROLLBACK");

    // Alice's client makes the mistake: SET without LOCAL, outside a transaction. PgBouncer
    // hands the server connection, setting included, to the next transaction of any client.
    exec(&mut alice, "SET pg_entitlements.user_id = 'alice'");
    exec(&mut bob, "BEGIN");
    assert_eq!(whoami(&mut bob).as_deref(), Some("alice"), "bob's transaction runs as alice");
    let enabled: bool = rows(&mut bob, "SELECT enabled FROM entitlements.entitlement_check($1::uuid, 'ccp-05')", &[&pro.0])[0].get(0);
    assert!(enabled, "bob's client reads alice's pro workspace");
    let reports: Vec<String> = rows(&mut bob, "SELECT DISTINCT workspace_id::text FROM public.reports", &[]).iter().map(|r| r.get(0)).collect();
    assert_eq!(reports, [pro.0.clone()], "bob's client reads alice's reports");
    exec(&mut bob, "COMMIT");

    // SET LOCAL still wins inside a transaction, but the leaked identity is back after it.
    exec(&mut bob, "BEGIN; SET LOCAL pg_entitlements.user_id = 'bob'");
    assert_eq!(whoami(&mut bob).as_deref(), Some("bob"));
    let enabled: bool = rows(&mut bob, "SELECT enabled FROM entitlements.entitlement_check($1::uuid, 'ccp-01')", &[&free.0])[0].get(0);
    assert!(enabled);
    exec(&mut bob, "COMMIT");
    assert_eq!(whoami(&mut bob).as_deref(), Some("alice"), "outside bob's transaction, alice again");

    // A RESET from any client clears it for every client of the connection.
    exec(&mut bob, "RESET pg_entitlements.user_id");
    assert_eq!(whoami(&mut alice), None);
    assert_eq!(error_code(&mut alice, "SELECT * FROM entitlements.entitlement_check($1::uuid, 'ccp-05')", &[&pro.0]), "28000");
}
