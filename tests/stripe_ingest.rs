//! Stripe ingestion as a webhook layer meets it: signed deliveries over real connections to a
//! real cluster, checked through the same entitlement checks the application runs.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::uuid_string::Ws;
use common::*;
use serde_json::{json, Value};
use std::sync::{Arc, Barrier};

const SECRET: &str = "whsec_it_3b1f0c9e8d7a6b5c";

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A cluster with one webhook secret and a price catalogue.
fn stripe_cluster(name: &str) -> (Cluster, Client) {
    let pg = Cluster::start(name);
    let mut c = pg.connect();
    c.execute("SELECT entitlements.add_webhook_secret($1)", &[&SECRET]).unwrap();
    exec(
        &mut c,
        "INSERT INTO entitlements.stripe_price_tiers VALUES
             ('price_pro', 'pro'), ('plus_monthly', 'pro_plus'), ('prod_enterprise', 'enterprise')",
    );
    (pg, c)
}

fn sign(c: &mut Client, payload: &str) -> String {
    c.query_one("SELECT entitlements.sign_stripe_payload($1, $2)", &[&payload, &SECRET]).unwrap().get(0)
}

/// (outcome, workspace_id) of one signed delivery.
fn deliver(c: &mut Client, payload: &str) -> (String, Option<String>) {
    let header = sign(c, payload);
    try_deliver(c, payload, &header).unwrap_or_else(|e| panic!("{e}\n{payload}"))
}

fn try_deliver(c: &mut Client, payload: &str, header: &str) -> Result<(String, Option<String>), postgres::Error> {
    let row = c.query_one(
        "SELECT outcome, workspace_id::text FROM entitlements.apply_stripe_event($1, $2)",
        &[&payload, &header],
    )?;
    Ok((row.get(0), row.get(1)))
}

struct Sub<'a> {
    event_id: &'a str,
    event_type: &'a str,
    created: i64,
    subscription: &'a str,
    customer: &'a str,
    status: &'a str,
    price: &'a str,
    workspace: Option<&'a Ws>,
    trial_end: Option<i64>,
}

fn sub_event(s: &Sub<'_>) -> String {
    let metadata = match s.workspace {
        Some(ws) => json!({"workspace_id": ws.0}),
        None => json!({}),
    };
    json!({
        "id": s.event_id, "object": "event", "type": s.event_type, "created": s.created,
        "api_version": "2025-03-31.basil",
        "data": {"object": {
            "id": s.subscription, "object": "subscription", "customer": s.customer,
            "status": s.status, "cancel_at_period_end": false, "trial_end": s.trial_end,
            "metadata": metadata,
            "items": {"object": "list", "data": [{
                "id": "si_1", "object": "subscription_item", "current_period_end": s.created + 30 * 86400,
                "price": {"id": s.price, "object": "price", "product": "prod_x", "lookup_key": null}
            }]}
        }}
    })
    .to_string()
}

fn sub<'a>(event_id: &'a str, created: i64, subscription: &'a str, status: &'a str, ws: &'a Ws) -> Sub<'a> {
    Sub {
        event_id,
        event_type: "customer.subscription.updated",
        created,
        subscription,
        customer: "cus_default",
        status,
        price: "price_pro",
        workspace: Some(ws),
        trial_end: None,
    }
}

fn billing_snapshot(c: &mut Client) -> String {
    c.query_one(
        "SELECT coalesce(string_agg(b::text, E'\\n' ORDER BY workspace_id), '')
           FROM entitlements.billing_state b",
        &[],
    )
    .unwrap()
    .get(0)
}

fn applied(outcome: (String, Option<String>)) -> String {
    outcome.0
}

#[test]
fn upgrade_from_free_to_pro_allows_the_pro_feature_at_once() {
    let (pg, mut webhook) = stripe_cluster("stripe-upgrade");
    let mut app = pg.connect();
    let ws = new_workspace(&mut webhook);
    exec(&mut webhook, &format!("SELECT entitlements.register_workspace({ws})"));
    assert_eq!(check(&mut app, &ws, "ccp-05"), (false, Some("TIER_INSUFFICIENT".into())));

    let e = sub_event(&Sub { event_type: "customer.subscription.created", ..sub("evt_up_1", now(), "sub_up", "active", &ws) });
    assert_eq!(deliver(&mut webhook, &e), ("applied".to_string(), Some(ws.0.clone())));
    assert_eq!(check(&mut app, &ws, "ccp-05"), (true, None));
    assert_eq!(check(&mut app, &ws, "ccp-07"), (false, Some("TIER_INSUFFICIENT".into())));
    let enabled: bool = app
        .query_one(&format!("SELECT enabled FROM entitlements.entitlements WHERE workspace_id = {ws} AND feature = 'ccp-05'"), &[])
        .unwrap()
        .get(0);
    assert!(enabled, "the matrix follows the Stripe write like any other");
    let row = app
        .query_one(&format!("SELECT stripe_customer_id, stripe_subscription_id FROM entitlements.billing_state WHERE workspace_id = {ws}"), &[])
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1)), ("cus_default".into(), "sub_up".into()));

    // Upgrading again through a lookup_key mapping: pro_plus.
    let mut e: Value = serde_json::from_str(&sub_event(&sub("evt_up_2", now() + 1, "sub_up", "active", &ws))).unwrap();
    e["data"]["object"]["items"]["data"][0]["price"] = json!({"id": "price_new", "lookup_key": "plus_monthly"});
    assert_eq!(applied(deliver(&mut webhook, &e.to_string())), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-07"), (true, None));
}

#[test]
fn cancellation_denies_tier_gated_features() {
    let (pg, mut c) = stripe_cluster("stripe-cancel");
    let mut app = pg.connect();
    let ws = new_workspace(&mut c);
    let t = now();
    assert_eq!(applied(deliver(&mut c, &sub_event(&sub("evt_c1", t, "sub_c", "active", &ws)))), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-05"), (true, None));
    // Stripe sends `deleted` with status canceled; the event type alone is enough for us.
    let del = sub_event(&Sub { event_type: "customer.subscription.deleted", ..sub("evt_c2", t + 5, "sub_c", "active", &ws) });
    assert_eq!(applied(deliver(&mut c, &del)), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-05"), (false, Some("SUBSCRIPTION_INACTIVE".into())));
    assert_eq!(check(&mut app, &ws, "ccp-01"), (true, None), "free features stay");
    let status: String = c
        .query_one(&format!("SELECT status FROM entitlements.billing_state WHERE workspace_id = {ws}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(status, "canceled");
}

#[test]
fn trial_end_denies_until_the_subscription_becomes_active() {
    let (pg, mut c) = stripe_cluster("stripe-trial");
    let mut app = pg.connect();
    let ws = new_workspace(&mut c);
    let t = now();
    let trial = Sub { trial_end: Some(t + 3 * 86400), ..sub("evt_t1", t - 100, "sub_t", "trialing", &ws) };
    assert_eq!(applied(deliver(&mut c, &sub_event(&trial))), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-05"), (true, None));

    // trial_will_end reporting a trial that is already over (pay's "trial ended" fixture).
    let over = Sub { event_type: "customer.subscription.trial_will_end", trial_end: Some(t - 10), ..sub("evt_t2", t - 50, "sub_t", "trialing", &ws) };
    assert_eq!(applied(deliver(&mut c, &sub_event(&over))), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-05"), (false, Some("TRIAL_EXPIRED".into())));

    let paid = Sub { trial_end: Some(t - 10), ..sub("evt_t3", t, "sub_t", "active", &ws) };
    assert_eq!(applied(deliver(&mut c, &sub_event(&paid))), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-05"), (true, None));
}

#[test]
fn past_due_within_and_beyond_grace() {
    let (pg, mut c) = stripe_cluster("stripe-past-due");
    let mut app = pg.connect();
    let (within, beyond) = (new_workspace(&mut c), new_workspace(&mut c));
    let t = now();
    // The grace counts from the event's created, not from when it arrived: a retry delivered
    // days late must not extend it.
    let day = 86400;
    assert_eq!(applied(deliver(&mut c, &sub_event(&sub("evt_p1", t - day, "sub_p1", "past_due", &within))),), "applied");
    assert_eq!(applied(deliver(&mut c, &sub_event(&sub("evt_p2", t - 8 * day, "sub_p2", "past_due", &beyond)))), "applied");
    assert_eq!(check(&mut app, &within, "ccp-05"), (true, None));
    assert_eq!(check(&mut app, &beyond, "ccp-05"), (false, Some("PAYMENT_PAST_DUE".into())));
    let since: i64 = c
        .query_one(&format!("SELECT extract(epoch FROM past_due_since)::bigint FROM entitlements.billing_state WHERE workspace_id = {within}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(since, t - day);

    // A second past_due event keeps the start; paying clears it.
    assert_eq!(applied(deliver(&mut c, &sub_event(&sub("evt_p3", t - 10, "sub_p1", "past_due", &within)))), "applied");
    let since2: i64 = c
        .query_one(&format!("SELECT extract(epoch FROM past_due_since)::bigint FROM entitlements.billing_state WHERE workspace_id = {within}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(since2, t - day);
    assert_eq!(applied(deliver(&mut c, &sub_event(&sub("evt_p4", t, "sub_p2", "active", &beyond)))), "applied");
    assert_eq!(check(&mut app, &beyond, "ccp-05"), (true, None));
}

#[test]
fn duplicate_and_out_of_order_deliveries() {
    let (pg, mut c) = stripe_cluster("stripe-order");
    let mut app = pg.connect();
    let ws = new_workspace(&mut c);
    let t = now();
    let newer = sub_event(&Sub { event_type: "customer.subscription.deleted", ..sub("evt_o2", t, "sub_o", "canceled", &ws) });
    let older = sub_event(&sub("evt_o1", t - 60, "sub_o", "active", &ws));
    assert_eq!(applied(deliver(&mut c, &newer)), "applied");
    let before = billing_snapshot(&mut c);
    assert_eq!(deliver(&mut c, &older), ("stale".to_string(), Some(ws.0.clone())));
    assert_eq!(check(&mut app, &ws, "ccp-05"), (false, Some("SUBSCRIPTION_INACTIVE".into())));
    assert_eq!(deliver(&mut c, &newer), ("duplicate".to_string(), Some(ws.0.clone())));
    assert_eq!(deliver(&mut c, &older).0, "duplicate");
    assert_eq!(billing_snapshot(&mut c), before, "stale and duplicate change nothing");
    let n: i64 = c.query_one("SELECT count(*) FROM entitlements.stripe_events", &[]).unwrap().get(0);
    assert_eq!(n, 2, "each event recorded once");

    // Same second as the last applied: applied, in arrival order.
    let same_second = sub_event(&sub("evt_o3", t, "sub_o", "active", &ws));
    assert_eq!(applied(deliver(&mut c, &same_second)), "applied");
    assert_eq!(check(&mut app, &ws, "ccp-05"), (true, None));

    // The late `deleted` of a replaced subscription does not lock out the current one.
    let replaced = sub_event(&Sub { event_type: "customer.subscription.deleted", ..sub("evt_o4", t + 5, "sub_old", "canceled", &ws) });
    assert_eq!(applied(deliver(&mut c, &replaced)), "stale");
    assert_eq!(check(&mut app, &ws, "ccp-05"), (true, None));
}

#[test]
fn two_sessions_racing_the_same_event_id_apply_it_exactly_once() {
    let (pg, mut c) = stripe_cluster("stripe-race");
    let ws = new_workspace(&mut c);
    let payload = sub_event(&sub("evt_race", now(), "sub_race", "active", &ws));
    let header = sign(&mut c, &payload);

    // Deterministic interleaving: A applies inside an open transaction, B delivers the same
    // id and must wait; A commits; B answers duplicate.
    let mut a = pg.connect();
    exec(&mut a, "BEGIN");
    assert_eq!(try_deliver(&mut a, &payload, &header).unwrap().0, "applied");
    let url = pg.url("app");
    let (p2, h2) = (payload.clone(), header.clone());
    let b = std::thread::spawn(move || {
        let mut b = Client::connect(&url, NoTls).unwrap();
        try_deliver(&mut b, &p2, &h2).unwrap().0
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!b.is_finished(), "the second delivery waits for the first");
    exec(&mut a, "COMMIT");
    assert_eq!(b.join().unwrap(), "duplicate");

    // A rollback releases the id: the waiting delivery then applies.
    let payload = sub_event(&sub("evt_race_rb", now() + 1, "sub_race", "past_due", &ws));
    let header = sign(&mut c, &payload);
    exec(&mut a, "BEGIN");
    assert_eq!(try_deliver(&mut a, &payload, &header).unwrap().0, "applied");
    let url = pg.url("app");
    let (p2, h2) = (payload.clone(), header.clone());
    let b = std::thread::spawn(move || {
        let mut b = Client::connect(&url, NoTls).unwrap();
        try_deliver(&mut b, &p2, &h2).unwrap().0
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    exec(&mut a, "ROLLBACK");
    assert_eq!(b.join().unwrap(), "applied");

    // Free-for-all: eight sessions released at once.
    let payload = sub_event(&sub("evt_race_many", now() + 2, "sub_race", "active", &ws));
    let header = sign(&mut c, &payload);
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (url, p, h, barrier) = (pg.url("app"), payload.clone(), header.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut s = Client::connect(&url, NoTls).unwrap();
                barrier.wait();
                try_deliver(&mut s, &p, &h).unwrap().0
            })
        })
        .collect();
    let outcomes: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| *o == "applied").count(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| *o == "duplicate").count(), 7, "{outcomes:?}");
}

#[test]
fn unmapped_events_apply_automatically_once_linked() {
    let (pg, mut c) = stripe_cluster("stripe-unmapped");
    let mut app = pg.connect();
    let (ws, ws2) = (new_workspace(&mut c), new_workspace(&mut c));
    let t = now();
    let before = billing_snapshot(&mut c);

    // No metadata, unknown customer: recorded unmapped, nothing changes.
    let e1 = sub_event(&Sub { workspace: None, customer: "cus_late", ..sub("evt_u1", t - 20, "sub_u", "trialing", &ws) });
    let e2 = sub_event(&Sub { workspace: None, customer: "cus_late", ..sub("evt_u2", t - 10, "sub_u", "active", &ws) });
    assert_eq!(deliver(&mut c, &e2), ("unmapped".to_string(), None));
    assert_eq!(deliver(&mut c, &e1), ("unmapped".to_string(), None));
    assert_eq!(billing_snapshot(&mut c), before);

    // The link applies both, oldest first, so the newer one decides.
    let n: i64 = c.query_one(&format!("SELECT entitlements.link_stripe_customer({ws}, 'cus_late')"), &[]).unwrap().get(0);
    assert_eq!(n, 2);
    assert_eq!(check(&mut app, &ws, "ccp-05"), (true, None));
    let status: String = c.query_one(&format!("SELECT status FROM entitlements.billing_state WHERE workspace_id = {ws}"), &[]).unwrap().get(0);
    assert_eq!(status, "active");
    let outcomes: Vec<String> = c
        .query("SELECT outcome FROM entitlements.stripe_events WHERE event_id IN ('evt_u1', 'evt_u2') ORDER BY event_id", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(outcomes, ["applied", "applied"]);
    // Later events of the customer map directly; linking elsewhere is refused.
    let e3 = sub_event(&Sub { workspace: None, customer: "cus_late", ..sub("evt_u3", t, "sub_u", "active", &ws) });
    assert_eq!(deliver(&mut c, &e3), ("applied".to_string(), Some(ws.0.clone())));
    assert_eq!(sqlstate(&mut c, &format!("SELECT entitlements.link_stripe_customer({ws2}, 'cus_late')")), "22023");

    // Through checkout: the subscription arrives first, the checkout session links it.
    let e4 = sub_event(&Sub { workspace: None, customer: "cus_co", ..sub("evt_u4", t - 5, "sub_co", "active", &ws2) });
    assert_eq!(deliver(&mut c, &e4).0, "unmapped");
    let checkout = json!({
        "id": "evt_u5", "object": "event", "type": "checkout.session.completed", "created": t,
        "data": {"object": {"id": "cs_1", "object": "checkout.session", "mode": "subscription",
                             "customer": "cus_co", "subscription": "sub_co", "client_reference_id": ws2.0}}
    })
    .to_string();
    assert_eq!(deliver(&mut c, &checkout), ("applied".to_string(), Some(ws2.0.clone())));
    assert_eq!(check(&mut app, &ws2, "ccp-05"), (true, None));
    // Invoices of a linked customer are recorded against its workspace.
    let invoice = json!({
        "id": "evt_u6", "object": "event", "type": "invoice.payment_failed", "created": t,
        "data": {"object": {"id": "in_1", "object": "invoice", "customer": "cus_co", "subscription": "sub_co"}}
    })
    .to_string();
    assert_eq!(deliver(&mut c, &invoice), ("applied".to_string(), Some(ws2.0.clone())));
    assert_eq!(check(&mut app, &ws2, "ccp-05"), (true, None), "status comes from subscription events only");
}

#[test]
fn items_that_map_to_no_tier_grant_nothing_but_still_end_access() {
    let (_pg, mut c) = stripe_cluster("stripe-no-tier");
    let ws = new_workspace(&mut c);
    assert_eq!(applied(deliver(&mut c, &sub_event(&sub("evt_n1", now() - 10, "sub_n", "active", &ws)))), "applied");
    let before = billing_snapshot(&mut c);

    // A new subscription whose price maps to no tier: unmapped, never silently a tier.
    let e = sub_event(&Sub { price: "price_unknown", ..sub("evt_n2", now() - 5, "sub_other", "active", &ws) });
    assert_eq!(deliver(&mut c, &e), ("unmapped".to_string(), Some(ws.0.clone())));
    assert_eq!(billing_snapshot(&mut c), before, "nothing changed");
    // Another subscription's cancellation, unmapped: not the one the workspace follows.
    let e = sub_event(&Sub { price: "price_unknown", ..sub("evt_n3", now() - 4, "sub_other", "canceled", &ws) });
    assert_eq!(deliver(&mut c, &e).0, "unmapped");
    assert_eq!(billing_snapshot(&mut c), before);
    assert_eq!(check(&mut c, &ws, "ccp-05"), (true, None));

    // The followed subscription is cancelled, with a price nobody mapped: access still ends,
    // the tier stays what it was.
    let e = sub_event(&Sub { price: "price_unknown", ..sub("evt_n4", now(), "sub_n", "canceled", &ws) });
    assert_eq!(deliver(&mut c, &e), ("applied".to_string(), Some(ws.0.clone())));
    let (tier, status): (String, String) = {
        let r = c.query_one(&format!("SELECT tier, status FROM entitlements.billing_state WHERE workspace_id = {ws}"), &[]).unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((tier.as_str(), status.as_str()), ("pro", "canceled"));
    assert_eq!(check(&mut c, &ws, "ccp-05"), (false, Some("SUBSCRIPTION_INACTIVE".into())), "a cancelled customer never keeps access");

    // Once the price is mapped, a replay applies the other subscription's events too.
    exec(&mut c, "INSERT INTO entitlements.stripe_price_tiers VALUES ('price_unknown', 'pro')");
    let n: i64 = c.query_one(&format!("SELECT entitlements.replay_stripe_events({ws})"), &[]).unwrap().get(0);
    assert_eq!(n, 4);
    let status: String = c.query_one(&format!("SELECT status FROM entitlements.billing_state WHERE workspace_id = {ws}"), &[]).unwrap().get(0);
    assert_eq!(status, "canceled");
}

#[test]
fn replay_rebuilds_billing_state_from_recorded_events() {
    let (_pg, mut c) = stripe_cluster("stripe-replay");
    let ws = new_workspace(&mut c);
    let t = now();
    for (i, status) in ["trialing", "active", "past_due"].iter().enumerate() {
        deliver(&mut c, &sub_event(&sub(&format!("evt_r{i}"), t - 100 + i as i64, "sub_r", status, &ws)));
    }
    let before = billing_snapshot(&mut c);
    exec(&mut c, &format!("SELECT entitlements.sync_billing_state({ws}, 'free', 'canceled')"));
    assert_ne!(billing_snapshot(&mut c), before);
    let n: i64 = c.query_one("SELECT entitlements.replay_stripe_events()", &[]).unwrap().get(0);
    assert_eq!(n, 3);
    let row = c
        .query_one(&format!("SELECT tier, status, extract(epoch FROM past_due_since)::bigint FROM entitlements.billing_state WHERE workspace_id = {ws}"), &[])
        .unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, i64>(2)), ("pro".into(), "past_due".into(), t - 98));
}

/// Event types of the `object-*` fixtures, from the table in SOURCES.md (column 5).
fn fixture_event_type(sources: &str, name: &str) -> String {
    let row = sources.lines().find(|l| l.starts_with(&format!("| {name} |"))).unwrap_or_else(|| panic!("{name} not in SOURCES.md"));
    let cell = row.split('|').nth(5).unwrap().trim();
    cell.split_whitespace().next().unwrap().to_owned()
}

#[test]
fn every_published_fixture_is_applied_or_recorded_without_error() {
    let (_pg, mut c) = stripe_cluster("stripe-fixtures");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stripe");
    let sources = std::fs::read_to_string(dir.join("SOURCES.md")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    // Link one fixture customer so that some fixtures reach a workspace and map a tier.
    let ws = new_workspace(&mut c);
    exec(&mut c, &format!("SELECT entitlements.link_stripe_customer({ws}, 'cus_00000000000000')"));
    exec(&mut c, "INSERT INTO entitlements.stripe_price_tiers VALUES ('FFBEGINNER_00000000000000', 'pro')");
    let mut outcomes = std::collections::BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let payload = if name.starts_with("object-") {
            let data: Value = serde_json::from_str(&text).unwrap();
            json!({"id": format!("evt_fixture_{i}"), "object": "event",
                   "type": fixture_event_type(&sources, name), "created": 1_700_000_000 + i as i64,
                   "data": data})
            .to_string()
        } else {
            text // byte for byte, as Stripe delivered it
        };
        let (outcome, _) = deliver(&mut c, &payload);
        assert!(["applied", "stale", "ignored", "unmapped"].contains(&outcome.as_str()), "{name}: {outcome}");
        outcomes.insert(name.clone(), outcome);
    }
    eprintln!("{outcomes:#?}");
    assert_eq!(outcomes["stripe-sync-engine-invoice_payment.paid.json"], "ignored");
    assert_eq!(outcomes["stripe-sync-engine-entitlements.active_entitlement_summary.updated.json"], "unmapped");
    assert_eq!(outcomes["object-openapi-entitlements.active_entitlement_summary.updated.json"], "unmapped");
    assert_eq!(outcomes["payfuzz-customer.subscription.updated.json"], "unmapped");
    assert_eq!(outcomes["object-pay-customer.subscription.updated.basil-shape.json"], "applied");
    let n: i64 = c.query_one("SELECT count(*) FROM entitlements.stripe_events", &[]).unwrap().get(0);
    assert_eq!(n, names.len() as i64, "each fixture recorded once");
}

/// Malformed payloads (signed, so they reach the parser) and malformed headers.
fn malformed_inputs(c: &mut Client) -> Vec<(Option<String>, Option<String>)> {
    let t = now();
    let good = json!({"id": "evt_good", "object": "event", "type": "customer.subscription.updated", "created": t,
                      "data": {"object": {"id": "sub_m", "object": "subscription", "status": "active",
                                           "customer": "cus_m", "items": {"data": [{"price": {"id": "price_pro"}}]}}}})
    .to_string();
    let mut payloads: Vec<String> = vec![
        String::new(), " ".into(), "null".into(), "[]".into(), "1".into(), "\"evt\"".into(), "{}".into(), "{".into(),
        "nope".into(), "{\"id\":}".into(), "{} {}".into(), "\u{feff}{}".into(),
        r#"{"id":"e\ud800","type":"t","created":1,"data":{"object":{}}}"#.into(),
        r#"{"id":"e\udc00x","type":"t","created":1,"data":{"object":{}}}"#.into(),
        r#"{"id":"e\u0000","type":"t","created":1,"data":{"object":{}}}"#.into(),
        r#"{"id":"e","type":"t","created":1e999,"data":{"object":{}}}"#.into(),
        r#"{"id":"e","type":"t","created":123456789012345678901234567890,"data":{"object":{}}}"#.into(),
        r#"{"id":"e","type":"t","created":-99999999999999999,"data":{"object":{}}}"#.into(),
        r#"{"id":"e_num1","type":"t","created":1,"data":{"object":{"n":1e-99999}}}"#.into(),
        r#"{"id":"e_num2","type":"t","created":1,"data":{"object":{"n":1e99999}}}"#.into(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
        format!(r#"{{"id":"e_deep","type":"t","created":1,"data":{{"object":{}1{}}}}}"#, "{\"a\":".repeat(5000), "}".repeat(5000)),
    ];
    // Truncations of a good event at every 2nd byte.
    for cut in (0..good.len()).step_by(2) {
        payloads.push(good[..cut].to_string());
    }
    // Wrong types in every field we read.
    let wrong: [Value; 7] = [json!(null), json!(1), json!(1.5), json!("x"), json!([]), json!({}), json!(true)];
    let fields: [&[&str]; 9] = [
        &["id"], &["type"], &["created"], &["data"], &["data", "object"], &["data", "object", "status"],
        &["data", "object", "items"], &["data", "object", "customer"], &["data", "object", "items", "data"],
    ];
    for (i, path) in fields.iter().enumerate() {
        for (j, w) in wrong.iter().enumerate() {
            let mut v: Value = serde_json::from_str(&good).unwrap();
            v["id"] = json!(format!("evt_wrong_{i}_{j}"));
            let mut slot = &mut v;
            for key in *path {
                slot = &mut slot[*key];
            }
            *slot = w.clone();
            payloads.push(v.to_string());
        }
    }
    let mut inputs: Vec<(Option<String>, Option<String>)> = Vec::new();
    for p in payloads {
        let h = sign(c, &p);
        inputs.push((Some(p), Some(h)));
    }
    // Headers: broken in every way the parser distinguishes, for the good payload.
    let h = sign(c, &good);
    let v1 = h.split_once(",v1=").unwrap().1.to_owned();
    let headers = [
        String::new(), " ".into(), ",".into(), "t".into(), "v1".into(), format!("v1={v1}"), format!("t={t}"),
        format!("t={t},v0={v1}"), format!("t=abc,v1={v1}"), format!("t=,v1={v1}"), format!("t={t}0,v1={v1}"),
        format!("t={t},v1={}", v1.to_uppercase()), format!("t={t},v1={}", &v1[1..]), format!("t={},v1={v1}", t - 301),
        format!("t=99999999999999999999,v1={v1}"), format!("t={t},v1=\u{0}"), "t=\u{1F600},v1=x".into(),
        format!("t={t},v1={v1}x"), format!(" t={t},v1={v1}"), format!("t={t}, v1={v1}"), "x".repeat(100_000),
    ];
    for hd in headers {
        if hd.contains('\u{0}') {
            continue; // text cannot hold NUL; the driver refuses before the server sees it
        }
        inputs.push((Some(good.clone()), Some(hd)));
    }
    // NULLs, and a payload over the 1 MiB limit.
    inputs.push((None, Some(h.clone())));
    inputs.push((Some(good.clone()), None));
    inputs.push((None, None));
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(1024 * 1024));
    let hh = sign(c, &huge);
    inputs.push((Some(huge), Some(hh)));
    inputs
}

#[test]
fn malformed_headers_and_payloads_fail_cleanly_and_change_nothing() {
    let (pg, mut c) = stripe_cluster("stripe-malformed");
    let ws = new_workspace(&mut c);
    deliver(&mut c, &sub_event(&sub("evt_base", now() - 1000, "sub_base", "active", &ws)));
    let inputs = malformed_inputs(&mut c);
    assert!(inputs.len() >= 200, "{} inputs", inputs.len());
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for (payload, header) in &inputs {
        let before = billing_snapshot(&mut c);
        let r = c.query_one(
            "SELECT outcome FROM entitlements.apply_stripe_event($1, $2)",
            &[payload, header],
        );
        match r {
            Ok(row) => {
                let outcome: String = row.get(0);
                assert!(["ignored", "unmapped", "stale", "applied", "duplicate"].contains(&outcome.as_str()));
            }
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("not a server error: {e}"));
                let code = db.code().code().to_owned();
                assert!(["28000", "22P02", "54000", "22004"].contains(&code.as_str()), "{code}: {}", db.message());
                assert!(!db.message().contains(SECRET) && !format!("{db:?}").contains(SECRET));
                // Long enough not to turn up by chance: the error never echoes its inputs.
                for input in [payload, header].into_iter().flatten().filter(|s| s.len() >= 16) {
                    assert!(!format!("{db:?}").contains(input.as_str()), "{code} echoes its input: {}", db.message());
                }
                assert!(!db.message().is_empty());
                *errors.entry(code).or_default() += 1;
                assert_eq!(billing_snapshot(&mut c), before, "a rejected delivery changed billing_state");
            }
        }
        // The connection (and the backend) survive every input.
        let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1);
    }
    eprintln!("{} inputs, errors by SQLSTATE: {errors:?}", inputs.len());
    for code in ["28000", "22P02", "54000", "22004"] {
        assert!(errors.contains_key(code), "no {code} among {errors:?}");
    }
    assert!(!pg.log().contains(SECRET), "the secret reached the server log");
    assert!(!pg.log().contains("server process") , "a backend crashed:\n{}", pg.log());
}

#[test]
fn secrets_are_privileged_rotatable_and_never_shown() {
    let (pg, mut admin) = stripe_cluster("stripe-secrets");
    let ws = new_workspace(&mut admin);
    exec(&mut admin, "CREATE ROLE webhook LOGIN; GRANT entitlements_webhook TO webhook;");
    let mut hook = pg.connect();
    exec(&mut hook, "SET ROLE webhook");
    let payload = sub_event(&sub("evt_s1", now(), "sub_s", "active", &ws));
    let header = sign(&mut admin, &payload);
    assert_eq!(try_deliver(&mut hook, &payload, &header).unwrap().0, "applied");
    for sql in [
        "SELECT * FROM entitlements.webhook_secrets",
        "SELECT * FROM entitlements.stripe_events",
        "SELECT entitlements.add_webhook_secret('not_a_secret')",
        "SELECT entitlements.revoke_webhook_secret('x')",
        "SELECT entitlements.link_stripe_customer(gen_random_uuid(), 'cus_x')",
        "SELECT entitlements.replay_stripe_events()",
        "SELECT entitlements.sign_stripe_payload('x', 'y')",
        "UPDATE entitlements.billing_state SET tier = 'enterprise'",
    ] {
        assert_eq!(sqlstate(&mut hook, sql), "42501", "{sql}");
    }
    // The webhook role cannot widen the tolerance or the payload limit.
    for sql in ["SET pg_entitlements.stripe_tolerance = 0", "SET pg_entitlements.max_payload_bytes = 1000000000"] {
        assert_eq!(sqlstate(&mut hook, sql), "55P02", "{sql}");
    }

    // Rotation: two active secrets, either verifies; revoked and expired ones do not.
    admin.execute("SELECT entitlements.add_webhook_secret($1)", &[&"whsec_next"]).unwrap();
    admin.execute("SELECT entitlements.add_webhook_secret($1, now() - interval '1 second')", &[&"whsec_expired"]).unwrap();
    let sign_with = |c: &mut Client, p: &str, s: &str| -> String {
        c.query_one("SELECT entitlements.sign_stripe_payload($1, $2)", &[&p, &s]).unwrap().get(0)
    };
    let p2 = sub_event(&sub("evt_s2", now(), "sub_s", "active", &ws));
    let h_next = sign_with(&mut admin, &p2, "whsec_next");
    let h_expired = sign_with(&mut admin, &p2, "whsec_expired");
    let err = try_deliver(&mut hook, &p2, &h_expired).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().message(), "No signatures found matching the expected signature for payload");
    assert_eq!(try_deliver(&mut hook, &p2, &h_next).unwrap().0, "applied");
    let revoked: bool = admin.query_one("SELECT entitlements.revoke_webhook_secret($1)", &[&SECRET]).unwrap().get(0);
    assert!(revoked);
    let p3 = sub_event(&sub("evt_s3", now(), "sub_s", "active", &ws));
    let h_old = sign(&mut admin, &p3);
    assert_eq!(try_deliver(&mut hook, &p3, &h_old).unwrap_err().code().unwrap().code(), "28000");
    // Nothing left: 55000 with a hint, still without any secret in it.
    admin.execute("SELECT entitlements.revoke_webhook_secret($1)", &[&"whsec_next"]).unwrap();
    admin.execute("SELECT entitlements.revoke_webhook_secret($1)", &[&"whsec_expired"]).unwrap();
    let err = try_deliver(&mut hook, &p3, &h_old).unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "55000");
    assert!(db.hint().unwrap().contains("add_webhook_secret"));
    // Adding a secret twice is not an error that could print it.
    admin.execute("SELECT entitlements.add_webhook_secret($1)", &[&SECRET]).unwrap();
    admin.execute("SELECT entitlements.add_webhook_secret($1)", &[&SECRET]).unwrap();
    assert_eq!(sqlstate(&mut admin, "SELECT entitlements.add_webhook_secret('  ')"), "22023");
    let secrets = [SECRET, "whsec_next", "whsec_expired"];
    let leaks: Vec<String> =
        pg.log().lines().filter(|l| secrets.iter().any(|s| l.contains(s))).map(str::to_owned).collect();
    assert!(leaks.is_empty(), "a secret reached the server log: {leaks:#?}");
}

/// A signed payload, otherwise a good subscription event, with `"quantity": <number>` in its
/// subscription object, written as text (serde_json would not print these numbers).
fn with_number(ws: &Ws, event_id: &str, number: &str) -> String {
    let good = sub_event(&sub(event_id, now(), "sub_num", "active", ws));
    let payload = good.replacen("\"status\":\"active\"", &format!("\"status\":\"active\",\"quantity\":{number}"), 1);
    assert_ne!(payload, good);
    payload
}

fn events_recorded(c: &mut Client) -> i64 {
    c.query_one("SELECT count(*) FROM entitlements.stripe_events", &[]).unwrap().get(0)
}

/// A verified payload with a number PostgreSQL's jsonb cannot store (beyond numeric's range)
/// is not a JSON Stripe event: 22P02, like every malformed payload, and nothing is recorded.
/// Numbers jsonb can store, however small or large, go through.
#[test]
fn numbers_beyond_jsonb_range_are_malformed_payloads() {
    let (_pg, mut c) = stripe_cluster("stripe-numbers");
    let ws = new_workspace(&mut c);
    let tiny = format!("0.{}1", "0".repeat(20_000));
    // numeric holds at most 16383 digits after the decimal point.
    for (i, number) in ["1e-99999", "1e99999", "1e-16384", "-1e-20000", tiny.as_str()].iter().enumerate() {
        let payload = with_number(&ws, &format!("evt_num_bad_{i}"), number);
        let header = sign(&mut c, &payload);
        let before = (billing_snapshot(&mut c), events_recorded(&mut c));
        let err = try_deliver(&mut c, &payload, &header).expect_err(number);
        let db = err.as_db_error().unwrap_or_else(|| panic!("{number}: {err}"));
        assert_eq!(db.code().code(), "22P02", "{number}: {}", db.message());
        assert!(db.message().contains("not a Stripe event"), "{}", db.message());
        assert_eq!((billing_snapshot(&mut c), events_recorded(&mut c)), before, "{number} changed something");
    }
    for (i, number) in ["1e-300", "1e-16383", "1.5e3", "-0.0", "123456789012345678901234567890"].iter().enumerate() {
        let payload = with_number(&ws, &format!("evt_num_ok_{i}"), number);
        let header = sign(&mut c, &payload);
        let (outcome, _) = try_deliver(&mut c, &payload, &header).unwrap_or_else(|e| panic!("{number}: {e}"));
        assert!(["applied", "stale"].contains(&outcome.as_str()), "{number}: {outcome}");
    }
    assert_eq!(events_recorded(&mut c), 5);
}

/// A Stripe-Signature header over 8 KiB is refused with 54000 before it is parsed, with a
/// message that names the limit and never the header; one of exactly 8 KiB is verified as usual.
#[test]
fn an_oversized_signature_header_is_refused_before_parsing() {
    const LIMIT: usize = 8192;
    let (pg, mut c) = stripe_cluster("stripe-header-limit");
    let ws = new_workspace(&mut c);
    let marker = "MARKERfeedface";
    // A valid header padded with v0 entries (ignored by verification) to `len` bytes.
    let padded = |c: &mut Client, payload: &str, len: usize| {
        let mut h = sign(c, payload);
        h.push_str(",v0=");
        while h.len() < len {
            h.push_str(marker);
        }
        h.truncate(len);
        h
    };

    let at_limit = sub_event(&sub("evt_hdr_ok", now(), "sub_hdr", "active", &ws));
    let h = padded(&mut c, &at_limit, LIMIT);
    assert_eq!(h.len(), LIMIT);
    assert_eq!(try_deliver(&mut c, &at_limit, &h).unwrap().0, "applied", "a header of exactly the limit");

    for len in [LIMIT + 1, 40 * 1024 * 1024] {
        let payload = sub_event(&sub(&format!("evt_hdr_{len}"), now(), "sub_hdr", "canceled", &ws));
        let h = padded(&mut c, &payload, len);
        let before = (billing_snapshot(&mut c), events_recorded(&mut c));
        let err = try_deliver(&mut c, &payload, &h).expect_err("an oversized header");
        let db = err.as_db_error().unwrap_or_else(|| panic!("{err}"));
        assert_eq!(db.code().code(), "54000", "{}", db.message());
        assert!(db.message().contains(&LIMIT.to_string()), "names the limit: {}", db.message());
        assert!(!format!("{db:?}").contains(marker), "echoes the header: {}", db.message());
        assert_eq!((billing_snapshot(&mut c), events_recorded(&mut c)), before);
    }
    assert!(!pg.log().contains(marker), "the header reached the server log");
}
