//! Published Stripe payloads (`tests/fixtures/stripe/`, with SOURCES.md saying where each
//! comes from) through `parse_event` and the fact extractors.

use serde_json::Value;
use std::path::PathBuf;
use super::event::{
    checkout_facts, invoice_facts, parse_event, subscription_facts, EventError, InvoiceFacts,
};

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stripe")
}

/// Event types of the `object-*` files, from SOURCES.md.
fn object_file_type(name: &str) -> &'static str {
    match name {
        "object-pay-checkout.session.completed.json" => "checkout.session.completed",
        "object-pay-invoice.payment_failed.json" => "invoice.payment_failed",
        "object-pay-customer.subscription.deleted.json"
        | "object-pay-customer.subscription.deleted.alt.json" => "customer.subscription.deleted",
        "object-pay-customer.subscription.trial_will_end.json"
        | "object-pay-customer.subscription.trial_will_end.trial-ended.json" => {
            "customer.subscription.trial_will_end"
        }
        "object-pay-customer.subscription.updated.json"
        | "object-pay-customer.subscription.updated.alt.json"
        | "object-pay-customer.subscription.updated.basil-shape.json" => {
            "customer.subscription.updated"
        }
        "object-openapi-entitlements.active_entitlement_summary.updated.json" => {
            "entitlements.active_entitlement_summary.updated"
        }
        other => panic!("object-* fixture {other} missing from the type table"),
    }
}

/// The payload as a webhook would deliver it: full events as they are, `object-*`
/// files wrapped in an event envelope.
fn load(name: &str) -> String {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    if !name.starts_with("object-") {
        return text;
    }
    let data: Value = serde_json::from_str(&text).expect("fixture is JSON");
    serde_json::json!({
        "id": format!("evt_fixture_{}", name.trim_end_matches(".json")),
        "object": "event",
        "type": object_file_type(name),
        "created": 1_700_000_000,
        "data": data,
    })
    .to_string()
}

/// Every fixture a test below names, by what it is: a subscription event (its facts must
/// come out) or another object.
const SUBSCRIPTION_FIXTURES: [&str; 10] = [
    "object-pay-customer.subscription.deleted.alt.json",
    "object-pay-customer.subscription.deleted.json",
    "object-pay-customer.subscription.trial_will_end.json",
    "object-pay-customer.subscription.trial_will_end.trial-ended.json",
    "object-pay-customer.subscription.updated.alt.json",
    "object-pay-customer.subscription.updated.basil-shape.json",
    "object-pay-customer.subscription.updated.json",
    "payfuzz-customer.subscription.deleted.json",
    "payfuzz-customer.subscription.updated.json",
    "stripe-sync-engine-customer.subscription.created.json",
];
const OTHER_FIXTURES: [&str; 6] = [
    "object-pay-checkout.session.completed.json",
    "object-pay-invoice.payment_failed.json",
    "stripe-sync-engine-checkout.session.completed.json",
    "stripe-sync-engine-entitlements.active_entitlement_summary.updated.json",
    "stripe-sync-engine-invoice.updated.json",
    "stripe-sync-engine-invoice_payment.paid.json",
];

fn all_fixture_names() -> Vec<String> {
    let dir = fixtures_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixtures dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// Each fixture the tests name is there, and every fixture there (named or added later)
/// parses as the event its name says.
#[test]
fn every_fixture_parses() {
    let names = all_fixture_names();
    for named in SUBSCRIPTION_FIXTURES.iter().chain(&OTHER_FIXTURES) {
        assert!(names.iter().any(|n| n == named), "{named} missing from {}", fixtures_dir().display());
    }
    for name in &names {
        let e = parse_event(&load(name)).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert!(e.id.starts_with("evt_"), "{name}");
        assert!(e.object.is_object(), "{name}");
        if name.starts_with("object-") {
            assert_eq!(e.event_type, object_file_type(name));
        } else {
            assert!(name.contains(&e.event_type), "{name} vs {}", e.event_type);
        }
    }
}

/// Every subscription fixture yields facts with items and a period end: the named ones
/// (which must be subscription events) and any other there.
#[test]
fn every_subscription_fixture_yields_facts() {
    for name in all_fixture_names() {
        let e = parse_event(&load(&name)).unwrap();
        let is_subscription = e.event_type.starts_with("customer.subscription.");
        if SUBSCRIPTION_FIXTURES.contains(&name.as_str()) {
            assert!(is_subscription, "{name} is a {} event", e.event_type);
        }
        if is_subscription {
            let f = subscription_facts(&e.object).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert!(!f.items.is_empty(), "{name}");
            assert!(f.current_period_end.is_some(), "{name}");
        }
    }
}

#[test]
fn sync_engine_subscription_created_old_shape() {
    let e = parse_event(&load(
        "stripe-sync-engine-customer.subscription.created.json",
    ))
    .unwrap();
    assert_eq!(e.id, "evt_1J02NfJDPojXS6LNawmt1X8q");
    assert_eq!(e.created, 1623148918);
    assert_eq!(e.api_version.as_deref(), Some("2020-03-02"));
    let f = subscription_facts(&e.object).unwrap();
    assert_eq!(f.id, "sub_JdIzvfy6o5GZRd");
    assert_eq!(f.customer.as_deref(), Some("cus_IhGfebO16cMIGN"));
    assert_eq!(f.status, "active");
    assert_eq!(f.current_period_end, Some(1625740918));
    assert_eq!(f.trial_end, None);
    assert!(!f.cancel_at_period_end);
    assert_eq!(f.metadata_workspace_id, None);
    assert_eq!(f.metadata_tier, None);
    // Two items although items.total_count says 1 (hand-edited upstream).
    assert_eq!(f.items.len(), 2);
    for item in &f.items {
        assert_eq!(
            item.price_id.as_deref(),
            Some("price_1IDQm5JDPojXS6LNM31hxKzp")
        );
        assert_eq!(item.product_id.as_deref(), Some("prod_Ip4vqwv3EJ7Mi0"));
        assert_eq!(item.lookup_key, None);
    }
}

#[test]
fn payfuzz_dahlia_period_comes_from_item() {
    let e = parse_event(&load("payfuzz-customer.subscription.updated.json")).unwrap();
    assert_eq!(e.api_version.as_deref(), Some("2026-06-24.dahlia"));
    assert!(e.object.get("current_period_end").is_none());
    let f = subscription_facts(&e.object).unwrap();
    assert_eq!(f.id, "sub_1Tsk6U2fVmBzG7em2SW1Pnox");
    assert_eq!(f.customer.as_deref(), Some("cus_UsV6bblNTiPV0B"));
    assert_eq!(f.status, "active");
    assert_eq!(f.current_period_end, Some(1786628462));
    assert_eq!(f.items.len(), 1);
    assert_eq!(
        f.items[0].price_id.as_deref(),
        Some("price_1Tsk6S2fVmBzG7em44DW3Qvr")
    );
    assert_eq!(
        f.items[0].product_id.as_deref(),
        Some("prod_UsV64akjhbSsRP")
    );

    let e = parse_event(&load("payfuzz-customer.subscription.deleted.json")).unwrap();
    let f = subscription_facts(&e.object).unwrap();
    assert_eq!(f.id, "sub_1Tsk6c2fVmBzG7emSj6bpdd7");
    assert_eq!(f.customer.as_deref(), Some("cus_UsV69VpWwIJqjF"));
    assert_eq!(f.status, "canceled");
    assert_eq!(f.current_period_end, Some(1786628470));
}

#[test]
fn pay_basil_shape_period_comes_from_item() {
    let e = parse_event(&load(
        "object-pay-customer.subscription.updated.basil-shape.json",
    ))
    .unwrap();
    assert!(e.object.get("current_period_end").is_none());
    let f = subscription_facts(&e.object).unwrap();
    assert_eq!(f.status, "canceled");
    assert_eq!(f.current_period_end, Some(1488987924));
    assert_eq!(f.trial_end, Some(1467992724));
    assert_eq!(
        f.items[0].price_id.as_deref(),
        Some("FFBEGINNER_00000000000000")
    );
}

#[test]
fn pay_legacy_plan_only_item_falls_back_to_plan() {
    for name in [
        "object-pay-customer.subscription.updated.json",
        "object-pay-customer.subscription.deleted.alt.json",
    ] {
        let e = parse_event(&load(name)).unwrap();
        let item = &e.object["items"]["data"][0];
        assert!(item.get("price").is_none(), "{name}");
        let f = subscription_facts(&e.object).unwrap();
        assert_eq!(f.id, "sub_00000000000000");
        assert_eq!(f.customer.as_deref(), Some("cus_00000000000000"));
        assert_eq!(f.status, "canceled");
        assert_eq!(f.current_period_end, Some(1488987924));
        assert_eq!(
            f.items[0].price_id.as_deref(),
            Some("FFBEGINNER_00000000000000")
        );
        assert_eq!(
            f.items[0].product_id.as_deref(),
            Some("prod_00000000000000")
        );
        assert_eq!(f.items[0].lookup_key, None);
    }
}

#[test]
fn pay_price_wins_over_disagreeing_plan() {
    let e = parse_event(&load("object-pay-customer.subscription.updated.alt.json")).unwrap();
    let f = subscription_facts(&e.object).unwrap();
    assert_eq!(
        f.items[0].price_id.as_deref(),
        Some("price_000000000000000000000000")
    );
}

#[test]
fn pay_trial_fixtures() {
    let e = parse_event(&load(
        "object-pay-customer.subscription.trial_will_end.json",
    ))
    .unwrap();
    let f = subscription_facts(&e.object).unwrap();
    assert_eq!(f.status, "active");
    assert_eq!(f.trial_end, Some(1668971983));
    assert_eq!(f.items[0].price_id.as_deref(), Some("some-plan"));

    let e = parse_event(&load(
        "object-pay-customer.subscription.trial_will_end.trial-ended.json",
    ))
    .unwrap();
    let f = subscription_facts(&e.object).unwrap();
    assert_eq!(f.trial_end, Some(1668631967));
}

#[test]
fn pay_deleted_has_plan_shaped_price() {
    let e = parse_event(&load("object-pay-customer.subscription.deleted.json")).unwrap();
    let f = subscription_facts(&e.object).unwrap();
    assert_eq!(f.status, "canceled");
    assert_eq!(f.current_period_end, Some(1488987924));
    assert_eq!(
        f.items[0].price_id.as_deref(),
        Some("FFBEGINNER_00000000000000")
    );
}

#[test]
fn checkout_fixtures() {
    let e = parse_event(&load("object-pay-checkout.session.completed.json")).unwrap();
    let f = checkout_facts(&e.object).unwrap();
    assert_eq!(
        f.id,
        "cs_test_a1UejXx8ebIdTzFolicVypUAZpOBVkoQKDbaarXoPlPVtj8p0zujPEEhjT"
    );
    assert_eq!(f.customer.as_deref(), Some("cus_M5wW9RPFk9xNZ5"));
    assert_eq!(
        f.subscription.as_deref(),
        Some("sub_1LNkeSKXBGcbgpbZ7jMqOPSi")
    );
    assert_eq!(f.mode.as_deref(), Some("subscription"));
    assert_eq!(f.client_reference_id, None);
    assert_eq!(f.metadata_workspace_id, None);

    let e = parse_event(&load("stripe-sync-engine-checkout.session.completed.json")).unwrap();
    let f = checkout_facts(&e.object).unwrap();
    assert_eq!(
        f.id,
        "cs_live_9RBjcHiy2i5p99Tf1MYM90c3SHK1grU0E6Ae6pKWR2KPA4ZiuKiB2X1Y3X"
    );
    assert_eq!(f.customer.as_deref(), Some("cus_IhGfebO16cMIGN"));
    assert_eq!(f.subscription, None);
    assert_eq!(f.mode.as_deref(), Some("payment"));
}

#[test]
fn invoice_fixtures() {
    let e = parse_event(&load("object-pay-invoice.payment_failed.json")).unwrap();
    assert_eq!(
        invoice_facts(&e.object),
        InvoiceFacts {
            id: Some("in_1DoPCn41RYaNOitnmAtgZ7CO".into()),
            customer: Some("cus_EGxhkjisExwTh7".into()),
            // The invoice's own field; its line item names another (sub_8hLB...).
            subscription: Some("sub_E5L5apALvTUyYW".into()),
        }
    );
    let e = parse_event(&load("stripe-sync-engine-invoice.updated.json")).unwrap();
    assert_eq!(
        invoice_facts(&e.object),
        InvoiceFacts {
            id: Some("in_1KJrLsJDPojXS6LN8xJ2QLQt".into()),
            customer: Some("cus_JVhbiWW9p3F6wq".into()),
            subscription: Some("sub_JW4ilEI1mm5j4X".into()),
        }
    );
}

#[test]
fn non_subscription_objects_are_refused_by_subscription_facts() {
    for name in [
        "stripe-sync-engine-invoice_payment.paid.json",
        "stripe-sync-engine-entitlements.active_entitlement_summary.updated.json",
        "stripe-sync-engine-invoice.updated.json",
    ] {
        let e = parse_event(&load(name)).unwrap();
        assert_eq!(
            subscription_facts(&e.object),
            Err(EventError::WrongObject {
                expected: "subscription"
            }),
            "{name}"
        );
    }
    // invoice_payment is not an invoice: no customer or subscription on it.
    let e = parse_event(&load("stripe-sync-engine-invoice_payment.paid.json")).unwrap();
    let f = invoice_facts(&e.object);
    assert_eq!(f.customer, None);
    assert_eq!(f.subscription, None);
}

/// Both published summaries yield their customer and lookup_keys: Stripe's OpenAPI example
/// (an expanded `feature`, `has_more` true) and stripe-sync-engine's recorded event.
#[test]
fn entitlement_summaries_yield_lookup_keys_and_has_more() {
    use super::event::entitlement_summary_facts;
    let e = parse_event(&load("object-openapi-entitlements.active_entitlement_summary.updated.json")).unwrap();
    let f = entitlement_summary_facts(&e.object).unwrap();
    assert_eq!((f.customer.as_str(), f.lookup_keys.clone(), f.has_more), ("customer", vec!["lookup_key".to_string()], true));

    let e = parse_event(&load("stripe-sync-engine-entitlements.active_entitlement_summary.updated.json")).unwrap();
    let f = entitlement_summary_facts(&e.object).unwrap();
    assert_eq!((f.customer.as_str(), f.lookup_keys.clone(), f.has_more), ("cus_Sll319ReSxCmEi", vec!["journeys".to_string()], false));
}

/// The items of a real subscription carry their id and quantity.
#[test]
fn payfuzz_items_have_an_id_and_a_quantity() {
    let e = parse_event(&load("payfuzz-customer.subscription.updated.json")).unwrap();
    let f = subscription_facts(&e.object).unwrap();
    assert_eq!(f.items[0].id.as_deref(), Some("si_UsV6FV9BtJA7xC"));
    assert_eq!(f.items[0].quantity, Some(1));
}
