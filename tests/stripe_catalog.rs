//! Stripe's catalog beyond the tier: Entitlements API summaries (stripe_feature_map), add-on
//! items (stripe_price_features), quantities that set limits, and the precedence between an
//! admin override, a Stripe grant and the tier. Every event is signed and goes through
//! apply_stripe_event, built from published payloads (tests/fixtures/stripe).
#![cfg(not(feature = "pg_test"))]

mod common;
use common::uuid_string::Ws;
use common::*;
use postgres::fallible_iterator::FallibleIterator;
use serde_json::{json, Value};

const SECRET: &str = "whsec_it_catalog_7c1e0b9d";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stripe").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A cluster with a webhook secret and the worked catalog of docs/STRIPE.md: a base plan, a
/// reports add-on (as a price and as a second price of the same feature), a support add-on
/// mapped by product, a seat price and a usage pack; two Stripe Entitlements features.
fn catalog_cluster(name: &str) -> (Cluster, Client) {
    let pg = Cluster::start(name);
    let mut c = pg.connect();
    c.execute("SELECT entitlements.add_webhook_secret($1)", &[&SECRET]).unwrap();
    exec(
        &mut c,
        "INSERT INTO entitlements.features (feature, min_tier, description, kind)
              VALUES ('seats', 'free', 'Members of the workspace', 'counted');
         INSERT INTO entitlements.features (feature, min_tier, description, kind, reset_period)
              VALUES ('api_calls', 'free', 'API calls', 'metered', 'month');
         SELECT entitlements.set_feature_limit('api_calls', 'pro', 1000);
         INSERT INTO entitlements.stripe_price_tiers VALUES ('price_pro', 'pro'), ('price_team', 'pro_plus');
         SELECT entitlements.map_stripe_price_feature('price_reports', 'ccp-10');
         SELECT entitlements.map_stripe_price_feature('price_reports_yearly', 'ccp-10');
         SELECT entitlements.map_stripe_price_feature('prod_support', 'ccp-12');
         SELECT entitlements.map_stripe_price_feature('price_seat', 'seats', 1);
         SELECT entitlements.map_stripe_price_feature('price_calls_pack', 'api_calls', 1000);
         SELECT entitlements.map_stripe_feature('sso', 'ccp-13');
         SELECT entitlements.map_stripe_feature('journeys', 'ccp-11');",
    );
    (pg, c)
}

fn sign(c: &mut Client, payload: &str) -> String {
    c.query_one("SELECT entitlements.sign_stripe_payload($1, $2)", &[&payload, &SECRET]).unwrap().get(0)
}

/// The outcome of one signed delivery.
fn deliver(c: &mut Client, payload: &str) -> String {
    let header = sign(c, payload);
    c.query_one("SELECT outcome FROM entitlements.apply_stripe_event($1, $2)", &[&payload, &header])
        .unwrap_or_else(|e| panic!("{e}\n{payload}"))
        .get(0)
}

/// One item of a subscription: (item id, price id, product id, quantity).
type Item<'a> = (&'a str, &'a str, &'a str, i64);

/// A subscription event in the shape of a real one (payfuzz's captured
/// customer.subscription.updated, API 2026-06-24.dahlia), with our ids, status and items.
fn sub_event(event_id: &str, event_type: &str, created: i64, customer: &str, status: &str, items: &[Item<'_>]) -> String {
    let mut e = fixture("payfuzz-customer.subscription.updated.json");
    e["id"] = json!(event_id);
    e["type"] = json!(event_type);
    e["created"] = json!(created);
    let o = &mut e["data"]["object"];
    o["id"] = json!("sub_catalog");
    o["customer"] = json!(customer);
    o["status"] = json!(status);
    let template = o["items"]["data"][0].clone();
    let data: Vec<Value> = items
        .iter()
        .map(|(id, price, product, quantity)| {
            let mut item = template.clone();
            item["id"] = json!(id);
            item["quantity"] = json!(quantity);
            item["price"]["id"] = json!(price);
            item["price"]["product"] = json!(product);
            item["plan"]["id"] = json!(price);
            item["plan"]["product"] = json!(product);
            item["current_period_start"] = json!(created);
            item["current_period_end"] = json!(created + 30 * 86400);
            item
        })
        .collect();
    o["items"]["data"] = json!(data);
    e.to_string()
}

/// An entitlements.active_entitlement_summary.updated event in the shape of Stripe's OpenAPI
/// example object (tests/fixtures/stripe/object-openapi-...), with our customer and features.
fn summary_event(event_id: &str, created: i64, customer: &str, lookup_keys: &[&str], has_more: bool) -> String {
    let mut data = fixture("object-openapi-entitlements.active_entitlement_summary.updated.json");
    let summary = &mut data["object"];
    summary["customer"] = json!(customer);
    summary["livemode"] = json!(false);
    let template = summary["entitlements"]["data"][0].clone();
    let entitlements: Vec<Value> = lookup_keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let mut e = template.clone();
            e["id"] = json!(format!("ent_test_{i}"));
            e["lookup_key"] = json!(key);
            e["feature"]["lookup_key"] = json!(key);
            e["feature"]["id"] = json!(format!("feat_test_{key}"));
            e
        })
        .collect();
    summary["entitlements"]["data"] = json!(entitlements);
    summary["entitlements"]["has_more"] = json!(has_more);
    json!({"id": event_id, "object": "event", "api_version": "2025-03-31.basil", "created": created,
           "type": "entitlements.active_entitlement_summary.updated", "data": data})
    .to_string()
}

fn linked_workspace(c: &mut Client, customer: &str) -> Ws {
    let ws = new_workspace(c);
    exec(c, &format!("SELECT entitlements.register_workspace({ws}); SELECT entitlements.link_stripe_customer({ws}, '{customer}')"));
    ws
}

fn tier_insufficient() -> (bool, Option<String>) {
    (false, Some("TIER_INSUFFICIENT".into()))
}

/// The limit of a metered or counted feature as `usage` answers it.
fn limit(c: &mut Client, ws: &Ws, feature: &str) -> Option<i64> {
    c.query_one(&format!("SELECT limit_value FROM entitlements.usage({ws}, '{feature}')"), &[]).unwrap().get(0)
}

/// (feature, via, stripe_id, adds_to_limit) of the workspace's rows of stripe_grants.
fn grants(c: &mut Client, ws: &Ws) -> Vec<(String, String, String, Option<i64>)> {
    c.query(
        &format!("SELECT feature, via, stripe_id, adds_to_limit FROM entitlements.stripe_grants
                   WHERE workspace_id = {ws} ORDER BY feature, stripe_id"),
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[test]
fn summaries_grant_and_revoke_and_a_stale_summary_changes_nothing() {
    let (pg, mut c) = catalog_cluster("catalog-summaries");
    let mut app = pg.connect();
    let ws = linked_workspace(&mut c, "cus_sum");
    let t = now();
    // Denied, and the second answer comes from the shared cache: the grant below must reach it.
    assert_eq!(check(&mut app, &ws, "ccp-13"), tier_insufficient());
    let cached: bool = app
        .query_one(&format!("SELECT cached FROM entitlements.entitlement_check({ws}, 'ccp-13')"), &[])
        .unwrap()
        .get(0);
    assert!(cached, "the denial is served from the cache before the grant");
    let mut listener = pg.connect();
    exec(&mut listener, "LISTEN pg_entitlements_changed");

    assert_eq!(deliver(&mut c, &summary_event("evt_sum_1", t, "cus_sum", &["sso", "journeys", "beta_x"], false)), "applied");
    // Application caches hear of it like of an override (blocks until the commit's notification).
    let n = listener.notifications().blocking_iter().next().unwrap().unwrap();
    let v: Value = serde_json::from_str(n.payload()).unwrap();
    assert_eq!((v["workspace_id"].as_str(), v["changed"].as_str()), (Some(ws.0.as_str()), Some("stripe_grant")));
    assert_eq!(check(&mut app, &ws, "ccp-13"), (true, None));
    assert_eq!(check(&mut app, &ws, "ccp-11"), (true, None));
    let detail: String = c
        .query_one("SELECT outcome_detail::text FROM entitlements.stripe_events WHERE event_id = 'evt_sum_1'", &[])
        .unwrap()
        .get(0);
    assert_eq!(detail, r#"{"granted": 2, "unknown_lookup_keys": 1}"#, "an unknown lookup_key is counted, not an error");

    // A newer summary without sso: that grant ends, journeys stays.
    assert_eq!(deliver(&mut c, &summary_event("evt_sum_2", t + 10, "cus_sum", &["journeys"], false)), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-13"), tier_insufficient());
    assert_eq!(check(&mut app, &ws, "ccp-11"), (true, None));
    // An older summary arriving late, and a duplicate delivery, change nothing.
    assert_eq!(deliver(&mut c, &summary_event("evt_sum_0", t + 5, "cus_sum", &["sso"], false)), "stale");
    assert_eq!(deliver(&mut c, &summary_event("evt_sum_2", t + 10, "cus_sum", &["journeys"], false)), "duplicate");
    assert_eq!(check(&mut app, &ws, "ccp-13"), tier_insufficient());
    assert_eq!(grants(&mut c, &ws), vec![("ccp-11".into(), "entitlement".into(), "journeys".into(), None)]);
    // An empty summary ends every entitlement grant.
    assert_eq!(deliver(&mut c, &summary_event("evt_sum_3", t + 20, "cus_sum", &[], false)), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-11"), tier_insufficient());
    assert!(grants(&mut c, &ws).is_empty());
}

#[test]
fn a_has_more_summary_is_partial_until_apply_stripe_entitlements_completes_it() {
    let (_pg, mut c) = catalog_cluster("catalog-partial");
    let t = now();
    exec(&mut c, "CREATE ROLE hook LOGIN; GRANT entitlements_webhook TO hook");
    // Before the customer is linked, the full list is recorded `unmapped`...
    let row = c
        .query_one("SELECT outcome, workspace_id::text FROM entitlements.apply_stripe_entitlements('cus_more', ARRAY['sso'], to_timestamp($1::float8))", &[&((t - 100) as f64)])
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, Option<String>>(1)), ("unmapped".into(), None));
    // ... and applied when it is.
    let ws = linked_workspace(&mut c, "cus_more");
    assert_eq!(check(&mut c, &ws, "ccp-13"), (true, None));

    // A first page: what it lists is granted, nothing is revoked.
    assert_eq!(deliver(&mut c, &summary_event("evt_more_1", t, "cus_more", &["journeys"], true)), "partial");
    assert_eq!(check(&mut c, &ws, "ccp-11"), (true, None));
    assert_eq!(check(&mut c, &ws, "ccp-13"), (true, None), "a partial list revokes nothing");

    // The webhook layer fetched every page and passes the full list for the same instant.
    let as_of = t as f64;
    let webhook = _pg.connect_as("hook", "app");
    let mut webhook = webhook;
    let outcome: String = webhook
        .query_one("SELECT outcome FROM entitlements.apply_stripe_entitlements('cus_more', ARRAY['journeys'], to_timestamp($1::float8))", &[&as_of])
        .unwrap()
        .get(0);
    assert_eq!(outcome, "applied");
    assert_eq!(check(&mut c, &ws, "ccp-13"), tier_insufficient());
    assert_eq!(check(&mut c, &ws, "ccp-11"), (true, None));
    // An older full list is stale, like an older summary.
    let outcome: String = c
        .query_one("SELECT outcome FROM entitlements.apply_stripe_entitlements('cus_more', ARRAY['sso', 'journeys'], to_timestamp($1::float8))", &[&((t - 50) as f64)])
        .unwrap()
        .get(0);
    assert_eq!(outcome, "stale");
    assert_eq!(check(&mut c, &ws, "ccp-13"), tier_insufficient());
    let partial: i64 = c
        .query_one("SELECT count(*) FROM entitlements.stripe_events WHERE outcome = 'partial'", &[])
        .unwrap()
        .get(0);
    assert_eq!(partial, 1);
}

#[test]
fn a_base_plan_with_two_add_ons_and_the_same_feature_from_two_items() {
    let (pg, mut c) = catalog_cluster("catalog-addons");
    let mut app = pg.connect();
    let ws = linked_workspace(&mut c, "cus_addons");
    let t = now();
    let base = ("si_base", "price_pro", "prod_plan", 1);
    let reports = ("si_reports", "price_reports", "prod_reports", 1);
    let support = ("si_support", "price_support_monthly", "prod_support", 1);
    let e = sub_event("evt_add_1", "customer.subscription.created", t, "cus_addons", "active", &[base, reports, support]);
    assert_eq!(deliver(&mut c, &e), "applied");
    let tier: String = c.query_one(&format!("SELECT tier FROM entitlements.billing_state WHERE workspace_id = {ws}"), &[]).unwrap().get(0);
    assert_eq!(tier, "pro", "the add-ons map no tier: the base plan's is the tier");
    assert_eq!(check(&mut app, &ws, "ccp-05"), (true, None), "the tier's features");
    assert_eq!(check(&mut app, &ws, "ccp-10"), (true, None), "the reports add-on (a price)");
    assert_eq!(check(&mut app, &ws, "ccp-12"), (true, None), "the support add-on (its product)");
    assert_eq!(check(&mut app, &ws, "ccp-11"), tier_insufficient(), "nothing else above the tier");

    // The highest mapped tier among the items is the tier.
    let team = ("si_team", "price_team", "prod_team", 1);
    assert_eq!(deliver(&mut c, &sub_event("evt_add_2", "customer.subscription.updated", t + 1, "cus_addons", "active", &[base, team, reports])), "applied");
    let tier: String = c.query_one(&format!("SELECT tier FROM entitlements.billing_state WHERE workspace_id = {ws}"), &[]).unwrap().get(0);
    assert_eq!(tier, "pro_plus");
    assert_eq!(check(&mut app, &ws, "ccp-12"), tier_insufficient(), "a removed add-on's feature ends");

    // Two items granting ccp-10: granted once, and removing one of them keeps it.
    let yearly = ("si_reports_yearly", "price_reports_yearly", "prod_reports", 1);
    assert_eq!(deliver(&mut c, &sub_event("evt_add_3", "customer.subscription.updated", t + 2, "cus_addons", "active", &[base, reports, yearly])), "applied");
    let rows: i64 = app
        .query_one(&format!("SELECT count(*) FROM entitlements.entitlement_check_all({ws}) WHERE feature = 'ccp-10' AND enabled"), &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1, "one feature, one answer");
    let ccp10: Vec<_> = grants(&mut c, &ws).into_iter().filter(|g| g.0 == "ccp-10").map(|g| g.2).collect();
    assert_eq!(ccp10, vec!["price_reports".to_string(), "price_reports_yearly".to_string()], "stripe_grants says why, item by item");
    assert_eq!(deliver(&mut c, &sub_event("evt_add_4", "customer.subscription.updated", t + 3, "cus_addons", "active", &[base, yearly])), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-10"), (true, None));
    assert_eq!(deliver(&mut c, &sub_event("evt_add_5", "customer.subscription.updated", t + 4, "cus_addons", "active", &[base])), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-10"), tier_insufficient());
}

#[test]
fn seat_quantity_7_then_5_with_6_members_refuses_inserts_until_under_the_limit() {
    let (_pg, mut c) = catalog_cluster("catalog-seats");
    let ws = linked_workspace(&mut c, "cus_seats");
    let t = now();
    // No tier includes seats (no feature_limits row): the seat item's quantity is the limit.
    exec(&mut c, "SELECT entitlements.attach_limit('entitlements.workspace_members', 'workspace_id', 'seats')");
    assert_eq!(limit(&mut c, &ws, "seats"), Some(0));
    let base = ("si_base", "price_pro", "prod_plan", 1);
    let e = sub_event("evt_seat_1", "customer.subscription.created", t, "cus_seats", "active", &[base, ("si_seats", "price_seat", "prod_seat", 7)]);
    assert_eq!(deliver(&mut c, &e), "applied");
    assert_eq!(limit(&mut c, &ws, "seats"), Some(7));
    for member in ["m1", "m2", "m3", "m4", "m5", "m6"] {
        exec(&mut c, &format!("SELECT entitlements.add_member({ws}, '{member}')"));
    }
    // 7 seats down to 5 with 6 members: nobody is removed, new members are refused.
    let e = sub_event("evt_seat_2", "customer.subscription.updated", t + 1, "cus_seats", "active", &[base, ("si_seats", "price_seat", "prod_seat", 5)]);
    assert_eq!(deliver(&mut c, &e), "applied");
    assert_eq!(limit(&mut c, &ws, "seats"), Some(5), "a quantity change changes the limit at once");
    assert_eq!(sqlstate(&mut c, &format!("SELECT entitlements.add_member({ws}, 'm7')")), "PT402");
    assert_eq!(check(&mut c, &ws, "seats"), (false, Some("LIMIT_EXCEEDED".into())));
    exec(&mut c, &format!("SELECT entitlements.remove_member({ws}, 'm6'); SELECT entitlements.remove_member({ws}, 'm5')"));
    exec(&mut c, &format!("SELECT entitlements.add_member({ws}, 'm7')"));
    assert_eq!(sqlstate(&mut c, &format!("SELECT entitlements.add_member({ws}, 'm8')")), "PT402");

    // A usage pack adds on top of what the tier includes (pro: 1,000 API calls).
    assert_eq!(limit(&mut c, &ws, "api_calls"), Some(1000));
    let pack = ("si_pack", "price_calls_pack", "prod_pack", 3);
    let e = sub_event("evt_seat_3", "customer.subscription.updated", t + 2, "cus_seats", "active", &[base, ("si_seats", "price_seat", "prod_seat", 5), pack]);
    assert_eq!(deliver(&mut c, &e), "applied");
    assert_eq!(limit(&mut c, &ws, "api_calls"), Some(4000));
    // A removed item removes its part.
    let e = sub_event("evt_seat_4", "customer.subscription.updated", t + 3, "cus_seats", "active", &[base, ("si_seats", "price_seat", "prod_seat", 5)]);
    assert_eq!(deliver(&mut c, &e), "applied");
    assert_eq!(limit(&mut c, &ws, "api_calls"), Some(1000));
    // An admin's limit override replaces everything.
    exec(&mut c, &format!("SELECT entitlements.set_limit_override({ws}, 'seats', 2)"));
    assert_eq!(limit(&mut c, &ws, "seats"), Some(2));
}

#[test]
fn a_cancellation_ends_every_grant() {
    let (pg, mut c) = catalog_cluster("catalog-cancel");
    let mut app = pg.connect();
    let ws = linked_workspace(&mut c, "cus_cancel");
    let t = now();
    let items = [("si_base", "price_pro", "prod_plan", 1), ("si_reports", "price_reports", "prod_reports", 1), ("si_seats", "price_seat", "prod_seat", 7)];
    assert_eq!(deliver(&mut c, &sub_event("evt_can_1", "customer.subscription.created", t, "cus_cancel", "active", &items)), "applied");
    assert_eq!(deliver(&mut c, &summary_event("evt_can_s", t, "cus_cancel", &["sso"], false)), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-10"), (true, None));
    assert_eq!(check(&mut app, &ws, "ccp-13"), (true, None));
    assert_eq!(limit(&mut c, &ws, "seats"), Some(7));

    assert_eq!(deliver(&mut c, &sub_event("evt_can_2", "customer.subscription.deleted", t + 1, "cus_cancel", "canceled", &items)), "applied");
    let inactive = (false, Some("SUBSCRIPTION_INACTIVE".to_string()));
    assert_eq!(check(&mut app, &ws, "ccp-10"), inactive, "an add-on's feature ends");
    assert_eq!(check(&mut app, &ws, "ccp-13"), inactive, "an entitlement's grant ends: the status rules apply");
    assert_eq!(limit(&mut c, &ws, "seats"), Some(0), "the seats bought end");
    assert!(grants(&mut c, &ws).iter().all(|g| g.1 == "entitlement"), "no item grants remain");
    // Unregistering the workspace removes what Stripe grants it, like its overrides.
    exec(&mut c, &format!("SELECT entitlements.unregister_workspace({ws})"));
    assert!(grants(&mut c, &ws).is_empty());
}

#[test]
fn an_admin_override_beats_a_stripe_grant_which_beats_the_tier() {
    let (pg, mut c) = catalog_cluster("catalog-precedence");
    let mut app = pg.connect();
    let ws = linked_workspace(&mut c, "cus_prec");
    let t = now();
    let base = ("si_base", "price_pro", "prod_plan", 1);
    assert_eq!(deliver(&mut c, &sub_event("evt_prec_1", "customer.subscription.created", t, "cus_prec", "active", &[base])), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-13"), tier_insufficient(), "the tier rule alone");
    assert_eq!(deliver(&mut c, &summary_event("evt_prec_s", t, "cus_prec", &["sso"], false)), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-13"), (true, None), "a Stripe grant beats the tier");
    exec(&mut c, &format!("SELECT entitlements.set_override({ws}, 'ccp-13', false)"));
    assert_eq!(check(&mut app, &ws, "ccp-13"), (false, Some("FEATURE_DISABLED".into())), "an admin override beats a Stripe grant");
    exec(&mut c, &format!("SELECT entitlements.clear_override({ws}, 'ccp-13')"));
    assert_eq!(check(&mut app, &ws, "ccp-13"), (true, None));
    // The subscription's status still applies to a Stripe grant, not to an admin's grant.
    exec(&mut c, &format!("SELECT entitlements.set_override({ws}, 'ccp-14', true)"));
    assert_eq!(deliver(&mut c, &sub_event("evt_prec_2", "customer.subscription.updated", t + 1, "cus_prec", "unpaid", &[base])), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-13"), (false, Some("SUBSCRIPTION_INACTIVE".into())));
    assert_eq!(check(&mut app, &ws, "ccp-14"), (true, None));
}

#[test]
fn bad_mappings_and_arguments_get_clear_sqlstates() {
    let (_pg, mut c) = catalog_cluster("catalog-bad-input");
    for (sql, code) in [
        ("SELECT entitlements.map_stripe_price_feature('price_x', 'nope')", "22023"),
        ("INSERT INTO entitlements.stripe_price_features VALUES ('price_x', 'nope')", "22023"),
        ("SELECT entitlements.map_stripe_price_feature('price_x', 'seats', -1)", "22023"),
        ("INSERT INTO entitlements.stripe_price_features VALUES ('price_x', 'seats', -1)", "22023"),
        ("SELECT entitlements.map_stripe_feature('some_key', 'nope')", "22023"),
        ("INSERT INTO entitlements.stripe_feature_map VALUES ('some_key', 'nope')", "22023"),
        ("SELECT entitlements.map_stripe_feature(NULL, 'ccp-10')", "22004"),
        ("SELECT entitlements.map_stripe_price_feature('price_x', NULL)", "22004"),
        ("SELECT entitlements.apply_stripe_entitlements(NULL, ARRAY['sso'], now())", "22004"),
        ("SELECT entitlements.apply_stripe_entitlements('cus_x', ARRAY[NULL]::text[], now())", "22004"),
        ("SELECT entitlements.apply_stripe_entitlements('cus_x', ARRAY['sso'], NULL)", "22004"),
        ("SELECT entitlements.apply_stripe_entitlements(' ', ARRAY['sso'], now())", "22023"),
        ("SELECT entitlements.apply_stripe_entitlements('cus_x', ARRAY['sso'], '1960-01-01')", "22023"),
    ] {
        assert_eq!(sqlstate(&mut c, sql), code, "{sql}");
    }
    let mapped: i64 = c
        .query_one("SELECT (SELECT count(*) FROM entitlements.stripe_price_features) + (SELECT count(*) FROM entitlements.stripe_feature_map)", &[])
        .unwrap()
        .get(0);
    assert_eq!(mapped, 7, "nothing written by the refused mappings");
}

#[test]
fn support_staff_read_stripe_grants_and_the_app_reads_only_its_own_workspaces() {
    let (pg, mut c) = catalog_cluster("catalog-roles");
    let (ws, other) = (linked_workspace(&mut c, "cus_roles"), linked_workspace(&mut c, "cus_other"));
    let t = now();
    assert_eq!(deliver(&mut c, &summary_event("evt_roles_1", t, "cus_roles", &["sso"], false)), "applied");
    assert_eq!(deliver(&mut c, &summary_event("evt_roles_2", t, "cus_other", &["journeys"], false)), "applied");
    exec(
        &mut c,
        &format!(
            "CREATE ROLE support LOGIN; GRANT entitlements_reader TO support;
             CREATE ROLE billing LOGIN; GRANT entitlements_admin TO billing;
             CREATE ROLE app_login LOGIN; GRANT entitlements_app TO app_login;
             SELECT entitlements.add_member({ws}, 'alice');"
        ),
    );
    for role in ["support", "billing"] {
        let mut s = pg.connect_as(role, "app");
        let n: i64 = s.query_one("SELECT count(*) FROM entitlements.stripe_grants", &[]).unwrap().get(0);
        assert_eq!(n, 2, "{role} reads every workspace's grants");
    }
    let mut billing = pg.connect_as("billing", "app");
    exec(&mut billing, "SELECT entitlements.map_stripe_feature('beta', 'ccp-09')");
    assert_eq!(sqlstate(&mut billing, "DELETE FROM entitlements.stripe_feature_grants"), "42501", "only ingestion writes grants");
    let mut app = pg.connect_as("app_login", "app");
    assert_eq!(sqlstate(&mut app, "SELECT * FROM entitlements.stripe_grants"), "42501");
    assert_eq!(sqlstate(&mut app, "SELECT * FROM entitlements.stripe_feature_map"), "42501");
    exec(&mut app, "SET pg_entitlements.user_id = 'alice'");
    let rows: Vec<String> = app
        .query("SELECT workspace_id::text FROM entitlements.stripe_feature_grants", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, vec![ws.0.clone()], "a member reads the grants of its own workspaces only, not {other}");
    assert_eq!(check(&mut app, &ws, "ccp-13"), (true, None), "the app's check reads the grant as the caller");
}

#[test]
fn a_mapping_added_later_applies_on_replay_and_replay_rebuilds_every_grant() {
    let (pg, mut c) = catalog_cluster("catalog-replay");
    let mut app = pg.connect();
    let ws = linked_workspace(&mut c, "cus_replay");
    let t = now();
    let items = [("si_base", "price_pro", "prod_plan", 1), ("si_new", "price_new_addon", "prod_new", 2)];
    assert_eq!(deliver(&mut c, &sub_event("evt_rep_1", "customer.subscription.created", t, "cus_replay", "active", &items)), "applied");
    assert_eq!(deliver(&mut c, &summary_event("evt_rep_2", t, "cus_replay", &["sso", "later"], false)), "applied");
    let before = grants(&mut c, &ws);
    // Mappings added after the events apply from a replay of the recorded events.
    exec(&mut c, "SELECT entitlements.map_stripe_price_feature('prod_new', 'ccp-12'); SELECT entitlements.map_stripe_feature('later', 'ccp-14')");
    assert_eq!(check(&mut app, &ws, "ccp-12"), tier_insufficient(), "a mapping alone changes nothing");
    let applied: i64 = c.query_one(&format!("SELECT entitlements.replay_stripe_events({ws})"), &[]).unwrap().get(0);
    assert_eq!(applied, 2);
    assert_eq!(check(&mut app, &ws, "ccp-12"), (true, None));
    assert_eq!(check(&mut app, &ws, "ccp-14"), (true, None));
    // Grants lost by hand come back the same from a replay.
    let after = grants(&mut c, &ws);
    exec(&mut c, "DELETE FROM entitlements.stripe_feature_grants");
    let applied: i64 = c.query_one(&format!("SELECT entitlements.replay_stripe_events({ws})"), &[]).unwrap().get(0);
    assert_eq!(applied, 2);
    assert_eq!(grants(&mut c, &ws), after);
    assert_eq!(after.len(), before.len() + 2);
}
