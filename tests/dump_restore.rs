//! Backups: a database using the extension, dumped with pg_dump (plain and custom format) and
//! restored into a new database of a preloaded cluster with errors stopping the restore, comes
//! back whole: the admin's catalog edits, billing states, overrides, members, the Stripe
//! mapping, customers and event ledger, and the audit trail, with nothing duplicated, every
//! decision the same, and the audit trail still append-only.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;

/// Every row of every table the extension keeps, in a stable order.
const TABLES: &[&str] = &[
    "tiers", "features", "workspaces", "billing_state", "overrides", "workspace_members",
    "stripe_price_tiers", "stripe_customers", "stripe_subscriptions", "stripe_events", "entitlement_checks",
    "entitlement_check_rollups", "entitlement_check_daily",
    "feature_limits", "limit_overrides", "usage_counters", "usage_periods", "usage_idempotency",
    "stripe_price_features", "stripe_feature_map", "stripe_feature_grants", "stripe_entitlement_summaries",
];

fn snapshot(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for t in TABLES {
        for r in c.query(&format!("SELECT t::text FROM entitlements.{t} t ORDER BY 1"), &[]).unwrap() {
            out.push(format!("{t}: {}", r.get::<_, String>(0)));
        }
    }
    out
}

fn decisions(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT w.workspace_id::text || ' ' || d.feature || ' ' || d.enabled || ' ' || coalesce(d.reason, '-') || ' ' || d.tier
           FROM entitlements.workspaces w CROSS JOIN LATERAL entitlements.decide_all(w.workspace_id) d ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn load(pg: &Cluster, c: &mut Client) {
    exec(
        c,
        "INSERT INTO entitlements.tiers VALUES ('team', 5, 'Team plan');
         INSERT INTO entitlements.features VALUES ('ccp-15', 'team', 'Team analytics');
         UPDATE entitlements.features SET min_tier = 'pro' WHERE feature = 'ccp-08';
         UPDATE entitlements.features SET description = 'Dashboard (edited)' WHERE feature = 'ccp-01';
         UPDATE entitlements.tiers SET description = 'Pro (monthly)' WHERE tier = 'pro';
         DELETE FROM entitlements.features WHERE feature = 'ccp-12';
         SELECT entitlements.sync_billing_state('11111111-1111-1111-1111-111111111111', 'pro', 'active', current_period_end => now() + interval '20 days');
         SELECT entitlements.sync_billing_state('22222222-2222-2222-2222-222222222222', 'enterprise', 'past_due');
         SELECT entitlements.sync_billing_state('33333333-3333-3333-3333-333333333333', 'team', 'trialing', now() + interval '3 days');
         SELECT entitlements.register_workspace('44444444-4444-4444-4444-444444444444');
         SELECT entitlements.set_override('44444444-4444-4444-4444-444444444444', 'ccp-13', true, now() + interval '30 days', 'pilot');
         SELECT entitlements.set_override('11111111-1111-1111-1111-111111111111', 'ccp-05', false);
         INSERT INTO entitlements.workspace_members VALUES ('11111111-1111-1111-1111-111111111111', 'alice', 'owner'),
                                                          ('22222222-2222-2222-2222-222222222222', 'bob', 'member');
         INSERT INTO entitlements.stripe_price_tiers VALUES ('price_pro', 'pro'), ('price_team', 'team');
         SELECT entitlements.add_webhook_secret('whsec_dump_test');
         SELECT entitlements.link_stripe_customer('11111111-1111-1111-1111-111111111111', 'cus_dump');
         INSERT INTO entitlements.features (feature, min_tier, kind, reset_period, hard_limit)
         VALUES ('api_calls', 'free', 'metered', 'day', true), ('projects', 'free', 'counted', NULL, true);
         SELECT entitlements.set_feature_limit('api_calls', 'free', 100);
         SELECT entitlements.set_feature_limit('api_calls', 'pro', NULL);
         SELECT entitlements.set_feature_limit('projects', 'free', 3);
         SELECT entitlements.set_limit_override('22222222-2222-2222-2222-222222222222', 'api_calls', 5, now() + interval '1 day');
         SELECT entitlements.consume('22222222-2222-2222-2222-222222222222', 'api_calls', 2, 'req-1');
         INSERT INTO entitlements.usage_periods VALUES
             ('22222222-2222-2222-2222-222222222222', 'api_calls', '2026-01-01', '2026-01-02', 42);
         SELECT entitlements.map_stripe_price_feature('price_reports', 'ccp-10');
         SELECT entitlements.map_stripe_price_feature('price_seat', 'projects', 1);
         SELECT entitlements.map_stripe_feature('sso', 'ccp-13');",
    );
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 - 60;
    for (i, price) in ["price_pro", "price_team"].iter().enumerate() {
        let payload = serde_json::json!({
            "id": format!("evt_dump_{i}"), "object": "event", "type": "customer.subscription.updated",
            "created": created + i as i64,
            "data": {"object": {"id": "sub_dump", "object": "subscription", "customer": "cus_dump",
                "status": "active", "cancel_at_period_end": false,
                "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item",
                    "price": {"id": price, "object": "price", "product": "prod_x"}},
                    {"id": "si_2", "object": "subscription_item", "price": {"id": "price_reports"}},
                    {"id": "si_3", "object": "subscription_item", "quantity": 4, "price": {"id": "price_seat"}}]}}}
        })
        .to_string();
        let header: String = c.query_one("SELECT entitlements.sign_stripe_payload($1, 'whsec_dump_test')", &[&payload]).unwrap().get(0);
        let outcome: String = c.query_one("SELECT outcome FROM entitlements.apply_stripe_event($1, $2)", &[&payload, &header]).unwrap().get(0);
        assert_eq!(outcome, "applied");
    }
    // Stripe Entitlements: the customer's active features.
    let summary = serde_json::json!({
        "id": "evt_dump_summary", "object": "event", "type": "entitlements.active_entitlement_summary.updated",
        "created": created + 5,
        "data": {"object": {"object": "entitlements.active_entitlement_summary", "customer": "cus_dump",
            "entitlements": {"object": "list", "data": [{"object": "entitlements.active_entitlement", "lookup_key": "sso"},
                                                        {"object": "entitlements.active_entitlement", "lookup_key": "not_mapped"}],
                             "has_more": false}}}
    })
    .to_string();
    let header: String = c.query_one("SELECT entitlements.sign_stripe_payload($1, 'whsec_dump_test')", &[&summary]).unwrap().get(0);
    let outcome: String = c.query_one("SELECT outcome FROM entitlements.apply_stripe_event($1, $2)", &[&summary, &header]).unwrap().get(0);
    assert_eq!(outcome, "applied");
    let grants: i64 = c.query_one("SELECT count(*) FROM entitlements.stripe_feature_grants", &[]).unwrap().get(0);
    assert_eq!(grants, 3, "two items and one entitlement grant");
    for ws in ["11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222", "33333333-3333-3333-3333-333333333333"] {
        c.query(&format!("SELECT * FROM entitlements.entitlement_check_all('{ws}')"), &[]).unwrap();
    }
    c.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
    let _ = pg;
}

fn assert_restored(pg: &Cluster, db: &str, before: &[String], decided: &[String]) {
    let mut r = pg.connect_db(db);
    let after = snapshot(&mut r);
    let missing: Vec<&String> = before.iter().filter(|x| !after.contains(x)).collect();
    let extra: Vec<&String> = after.iter().filter(|x| !before.contains(x)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{db}: missing {missing:#?}\nextra {extra:#?}");
    assert_eq!(after.len(), before.len(), "{db}: duplicated rows");
    assert_eq!(decisions(&mut r), decided, "{db}: a decision changed");
    assert!(before.iter().filter(|x| x.starts_with("entitlement_checks:")).count() >= 42);
    // Still append-only, and the id and arrival sequences go on past the restored rows.
    for sql in [
        "DELETE FROM entitlements.entitlement_checks",
        "UPDATE entitlements.entitlement_checks SET result = NOT result",
        "INSERT INTO entitlements.entitlement_checks (checked_at, workspace_id, feature, result, cached) VALUES (now(), gen_random_uuid(), 'ccp-01', true, false)",
    ] {
        assert_eq!(sqlstate(&mut r, sql), "42501", "{db}: {sql}");
    }
    let behind: bool = r
        .query_one(
            "SELECT (SELECT last_value FROM entitlements.entitlement_checks_id_seq) < (SELECT max(id) FROM entitlements.entitlement_checks)
                 OR (SELECT last_value FROM entitlements.stripe_events_arrival_seq) < (SELECT max(arrival) FROM entitlements.stripe_events)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!behind, "{db}: a sequence was not restored");
    // Webhook secrets are not in the dump (re-add them after a restore).
    let secrets: i64 = r.query_one("SELECT count(*) FROM entitlements.webhook_secrets", &[]).unwrap().get(0);
    assert_eq!(secrets, 0);
}

#[test]
fn plain_and_custom_dumps_restore_whole_into_a_preloaded_cluster() {
    let pg = Cluster::start_with("dump", &["pg_entitlements.audit_database = 'app'"]);
    let mut c = pg.connect();
    load(&pg, &mut c);
    let before = snapshot(&mut c);
    let decided = decisions(&mut c);
    assert!(before.iter().any(|r| r.starts_with("features: (ccp-15,team")));
    assert!(!before.iter().any(|r| r.starts_with("features: (ccp-12,")));

    let port = pg.port.to_string();
    let plain = pg.dir.join("app.sql");
    let custom = pg.dir.join("app.dump");
    let conn = ["-h", "127.0.0.1", "-p", &port, "-U", "postgres"];
    run_pg("pg_dump", &[&conn[..], &["-d", "app", "-f", plain.to_str().unwrap()]].concat());
    run_pg("pg_dump", &[&conn[..], &["-d", "app", "-Fc", "-f", custom.to_str().unwrap()]].concat());
    let mut postgres = pg.connect_db("postgres");
    exec(&mut postgres, "CREATE DATABASE restored_plain");
    exec(&mut postgres, "CREATE DATABASE restored_custom");

    let stderr = run_pg(
        "psql",
        &[&conn[..], &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "restored_plain", "-f", plain.to_str().unwrap()]].concat(),
    );
    assert!(!stderr.contains("ERROR"), "{stderr}");
    assert_restored(&pg, "restored_plain", &before, &decided);

    let stderr = run_pg("pg_restore", &[&conn[..], &["--exit-on-error", "-d", "restored_custom", custom.to_str().unwrap()]].concat());
    assert!(!stderr.contains("ERROR"), "{stderr}");
    assert_restored(&pg, "restored_custom", &before, &decided);
}
