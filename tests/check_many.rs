//! `entitlement_check_many`: several features of one workspace in one call, answered in the
//! order given, each audited, with the same authorization as `entitlement_check`.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;

const AUDIT_DB: &str = "pg_entitlements.audit_database = 'app'";

fn audited_rows(c: &mut Client, ws: &uuid_string::Ws) -> Vec<(String, bool)> {
    c.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
    c.query(&format!("SELECT feature, result FROM entitlements.entitlement_checks WHERE workspace_id = {ws} ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[test]
fn one_row_per_feature_in_the_order_given_duplicates_included_each_audited() {
    let pg = Cluster::start_with("many-order", &[AUDIT_DB]);
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')"));
    let features = ["ccp-07", "ccp-01", "ccp-05", "ccp-07", "ccp-13"];
    // Twice: the second call is answered from the cache, with the same rows.
    for round in 0..2 {
        let rows = c
            .query(&format!("SELECT feature, enabled, reason, tier, cached FROM entitlements.entitlement_check_many({ws}, $1)"), &[&&features[..]])
            .unwrap();
        let got: Vec<(String, bool, Option<String>)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
        let expected: Vec<(String, bool, Option<String>)> = features
            .iter()
            .map(|f| {
                let (enabled, reason) = check(&mut c, &ws, f);
                (f.to_string(), enabled, reason)
            })
            .collect();
        assert_eq!(got, expected, "round {round}: the same answers as entitlement_check, in order");
        assert!(rows.iter().all(|r| r.get::<_, String>(3) == "pro"));
        if round == 1 {
            assert!(rows.iter().all(|r| r.get::<_, bool>(4)), "warm: every row from the cache");
        }
    }
    assert_eq!(
        got_features(&audited_rows(&mut c, &ws)),
        // per round: the five rows of check_many, then the five entitlement_check calls
        [features, features, features, features].concat(),
    );
    let empty = c.query(&format!("SELECT * FROM entitlements.entitlement_check_many({ws}, '{{}}')"), &[]).unwrap();
    assert!(empty.is_empty());
}

fn got_features(rows: &[(String, bool)]) -> Vec<&str> {
    rows.iter().map(|(f, _)| f.as_str()).collect()
}

#[test]
fn an_unknown_feature_fails_the_call_before_any_row_is_returned_or_audited() {
    let pg = Cluster::start_with("many-unknown", &[AUDIT_DB]);
    let mut c = pg.connect();
    let ws = new_workspace(&mut c);
    let err = c
        .query(&format!("SELECT * FROM entitlements.entitlement_check_many({ws}, ARRAY['ccp-01', 'ccp-05', 'no-such'])"), &[])
        .unwrap_err();
    assert_eq!(err.code().map(|s| s.code()), Some("22023"));
    assert!(err.as_db_error().unwrap().message().contains("no-such"), "{err}");
    // Not even the features before the unknown one were recorded.
    assert_eq!(audited_rows(&mut c, &ws), vec![]);
    assert_eq!(sqlstate(&mut c, &format!("SELECT * FROM entitlements.entitlement_check_many({ws}, ARRAY['ccp-01', NULL])")), "22004");
    assert_eq!(sqlstate(&mut c, &format!("SELECT * FROM entitlements.entitlement_check_many({ws}, NULL)")), "22004");
    assert_eq!(audited_rows(&mut c, &ws), vec![]);
}

#[test]
fn authorization_is_that_of_entitlement_check() {
    let pg = Cluster::start_with("many-auth", &[AUDIT_DB]);
    let mut admin = pg.connect();
    let ws = new_workspace(&mut admin);
    exec(&mut admin, &format!("INSERT INTO entitlements.workspace_members VALUES ({ws}, 'alice', 'member')"));
    exec(&mut admin, "CREATE ROLE app_login LOGIN; GRANT entitlements_app TO app_login; CREATE ROLE stranger LOGIN");
    let mut app = pg.connect_as("app_login", "app");
    let call = format!("SELECT count(*) FROM entitlements.entitlement_check_many({ws}, ARRAY['ccp-01', 'ccp-05'])");
    assert_eq!(sqlstate(&mut app, &call), "28000", "no identity");
    assert_eq!(sqlstate(&mut app, &format!("BEGIN; SET LOCAL pg_entitlements.user_id = 'bob'; {call}")), "42501", "not a member");
    exec(&mut app, "ROLLBACK");
    exec(&mut app, "BEGIN; SET LOCAL pg_entitlements.user_id = 'alice'");
    assert_eq!(app.query_one(&call, &[]).unwrap().get::<_, i64>(0), 2);
    exec(&mut app, "COMMIT");
    let mut stranger = pg.connect_as("stranger", "app");
    assert_eq!(sqlstate(&mut stranger, &call), "42501", "without entitlements_app");
}
