//! The SQL functions of Stripe ingestion. Order of work for one delivery: bound the sizes of
//! the payload and the header, find the active secrets, verify the header, and only then read
//! the payload (parse it, and convert it to the jsonb it is recorded as); claim the event id
//! (a duplicate stops there); map it to a workspace and a tier; apply it under the
//! subscription's row lock. Linking a customer later, and replaying, go through the same
//! `apply` as a live delivery.

use super::decide::{self, Handling, Outcome, Tier};
use super::event::{
    self, CheckoutFacts, EntitlementSummaryFacts, Event, EventError, InvoiceFacts, SubscriptionFacts,
};
use super::{signature, store};
use crate::pgutil::{or_internal, require};
use crate::{billing, errors, gucs};
use pgrx::prelude::*;
use pgrx::{composite_type, search_path, Uuid};

extension_sql!(
    r#"
-- What apply_stripe_event answers for one delivery.
CREATE TYPE entitlements.stripe_event_result AS (
    event_id text,
    event_type text,
    workspace_id uuid,
    outcome text
);
"#,
    name = "stripe_event_result"
);

extension_sql_file!(
    "../../sql/stripe.sql",
    name = "stripe",
    requires = [
        "stripe_event_result",
        "api",
        apply_stripe_event,
        apply_stripe_entitlements,
        link_stripe_customer,
        replay_stripe_events,
        sign_stripe_payload
    ]
);

/// The facts of one event, by what we do with it.
enum Facts {
    Subscription { facts: SubscriptionFacts, deleted: bool },
    Checkout(CheckoutFacts),
    Invoice(InvoiceFacts),
    EntitlementSummary(EntitlementSummaryFacts),
    Ignored,
}

impl Facts {
    fn of(event: &Event) -> Result<Facts, EventError> {
        Ok(match decide::handling(&event.event_type) {
            Handling::Subscription { deleted } => {
                Facts::Subscription { facts: event::subscription_facts(&event.object)?, deleted }
            }
            Handling::Checkout => Facts::Checkout(event::checkout_facts(&event.object)?),
            Handling::Invoice => Facts::Invoice(event::invoice_facts(&event.object)),
            // A schema without Stripe grants (not updated yet) records summaries as before.
            Handling::EntitlementSummary if !store::schema_has_grants() => Facts::Ignored,
            Handling::EntitlementSummary => {
                Facts::EntitlementSummary(event::entitlement_summary_facts(&event.object)?)
            }
            Handling::Ignored => Facts::Ignored,
        })
    }

    fn customer(&self) -> Option<&str> {
        match self {
            Facts::Subscription { facts, .. } => facts.customer.as_deref(),
            Facts::Checkout(f) => f.customer.as_deref(),
            Facts::Invoice(f) => f.customer.as_deref(),
            Facts::EntitlementSummary(f) => Some(&f.customer),
            Facts::Ignored => None,
        }
    }

    fn subscription(&self) -> Option<&str> {
        match self {
            Facts::Subscription { facts, .. } => Some(&facts.id),
            Facts::Checkout(f) => f.subscription.as_deref(),
            Facts::Invoice(f) => f.subscription.as_deref(),
            Facts::EntitlementSummary(_) => None,
            Facts::Ignored => None,
        }
    }
}

/// Seconds since the Unix epoch by the server's clock (not the transaction's start: a long
/// transaction must not stretch the tolerance).
fn unix_now() -> i64 {
    // PostgreSQL timestamps count microseconds from 2000-01-01.
    const UNIX_TO_PG_EPOCH_SECS: i64 = 946_684_800;
    crate::pgutil::now().div_euclid(1_000_000) + UNIX_TO_PG_EPOCH_SECS
}

/// Verifies, records and applies one webhook delivery. SECURITY DEFINER (the webhook role
/// may not read the secrets or write billing state) with search_path pinned; EXECUTE is
/// revoked from PUBLIC in sql/stripe.sql.
#[pg_extern(volatile, security_definer, requires = ["stripe_event_result"])]
#[search_path(pg_catalog, pg_temp)]
fn apply_stripe_event(
    payload: Option<&str>,
    signature: Option<&str>,
) -> composite_type!('static, "stripe_event_result") {
    let payload = require(payload, "payload");
    let max = gucs::max_payload_bytes();
    if payload.len() > max {
        errors::payload_too_large(payload.len(), max);
    }
    // A NULL header is a request without Stripe-Signature: nothing to extract.
    let header = signature.unwrap_or("");
    // Bounded like the payload, before any parsing: splitting a huge header costs memory
    // many times its size.
    if header.len() > signature::MAX_HEADER_BYTES {
        errors::signature_header_too_large(header.len(), signature::MAX_HEADER_BYTES);
    }
    let secrets = store::active_secrets();
    if secrets.is_empty() {
        errors::no_webhook_secret();
    }
    let keys: Vec<&[u8]> = secrets.iter().map(|s| s.as_bytes()).collect();
    if let Err(e) = signature::verify(
        payload.as_bytes(),
        header,
        &keys,
        gucs::stripe_tolerance_secs(),
        unix_now(),
    ) {
        errors::signature_rejected(e.message());
    }
    drop(secrets);

    // Verified: from here on the payload is Stripe's.
    let event = event::parse_event(payload).unwrap_or_else(|e| errors::not_a_stripe_event(e));
    let facts = Facts::of(&event).unwrap_or_else(|e| errors::not_a_stripe_event(e));
    let recorded = store::PayloadJsonb::convert(payload);
    let (workspace, outcome) = deliver(&recorded, &event, &facts);
    result_row(&event, workspace, outcome)
}

fn result_row(
    event: &Event,
    workspace: Option<Uuid>,
    outcome: Outcome,
) -> composite_type!('static, "stripe_event_result") {
    let mut row = or_internal(PgHeapTuple::new_composite_type("entitlements.stripe_event_result"));
    or_internal(row.set_by_name("event_id", event.id.clone()));
    or_internal(row.set_by_name("event_type", event.event_type.clone()));
    or_internal(row.set_by_name("workspace_id", workspace));
    or_internal(row.set_by_name("outcome", outcome.as_str()));
    row
}

/// Claims the event id, then applies. Exactly one of several concurrent deliveries of one id
/// gets past `record` (the others wait on the unique index and then see it taken).
fn deliver(payload: &store::PayloadJsonb, event: &Event, facts: &Facts) -> (Option<Uuid>, Outcome) {
    let keys = store::EventKeys {
        event_id: &event.id,
        event_type: &event.event_type,
        created: event.created,
        customer: facts.customer(),
        subscription: facts.subscription(),
    };
    let provisional = match facts {
        Facts::Ignored => Outcome::Ignored,
        _ => Outcome::Unmapped,
    };
    if !store::record(&keys, provisional, payload) {
        return (store::recorded_workspace(&event.id), Outcome::Duplicate);
    }
    if let Facts::Ignored = facts {
        return (None, Outcome::Ignored);
    }
    let (workspace, outcome) = apply(event, facts, true);
    if (workspace, outcome) != (None, provisional) {
        store::set_outcome(&event.id, outcome, workspace);
    }
    (workspace, outcome)
}

/// Applies an event already recorded. `catch_up`: also apply the unmapped events a link made
/// by this one now reaches (off while catching up or replaying, which go in order anyway).
fn apply(event: &Event, facts: &Facts, catch_up: bool) -> (Option<Uuid>, Outcome) {
    match facts {
        Facts::Subscription { facts, deleted } => apply_subscription(event, facts, *deleted, catch_up),
        Facts::Checkout(f) => apply_checkout(event, f, catch_up),
        Facts::Invoice(f) => apply_invoice(f),
        Facts::EntitlementSummary(f) => apply_entitlement_summary(event, f),
        Facts::Ignored => (None, Outcome::Ignored),
    }
}

fn workspace_ref(text: Option<&str>) -> Option<Uuid> {
    decide::workspace_ref(text).map(Uuid::from_bytes)
}

fn apply_subscription(
    event: &Event,
    f: &SubscriptionFacts,
    deleted: bool,
    catch_up: bool,
) -> (Option<Uuid>, Outcome) {
    let customer = f.customer.as_deref();
    if let Some(c) = customer {
        store::lock_customer(c);
    }
    let (by_customer, by_subscription) = store::links(customer, Some(&f.id));
    let Some(workspace) =
        workspace_ref(f.metadata_workspace_id.as_deref()).or(by_customer).or(by_subscription)
    else {
        return (None, Outcome::Unmapped);
    };
    let outcome = apply_to_workspace(event, f, deleted, workspace);
    // A customer met first through subscription metadata (or a linked subscription) is
    // linked now, like checkout links it; its earlier unmapped events follow.
    if let (Some(c), None) = (customer, by_customer) {
        if store::link_customer(c, workspace, &event.id) && catch_up {
            apply_pending(Some(c), None, &event.id);
        }
    }
    (Some(workspace), outcome)
}

fn apply_to_workspace(event: &Event, f: &SubscriptionFacts, deleted: bool, workspace: Uuid) -> Outcome {
    let status = decide::billing_status(deleted, &f.status);
    let tier = match subscription_tier(f) {
        Some(t) => t.tier,
        None => {
            let peek = store::peek_subscription(workspace);
            let followed = peek.as_ref().map(|c| (c.subscription.as_str(), c.tier.as_str()));
            match decide::tier_without_mapping(followed, &f.id, status) {
                Some(t) => t.to_owned(),
                None => return Outcome::Unmapped,
            }
        }
    };
    if !store::advance(&f.id, f.customer.as_deref(), workspace, event.created, &event.id) {
        return Outcome::Stale;
    }
    let current = store::current_subscription(workspace);
    if !decide::takes_over(current.as_ref().map(|c| (c.subscription.as_str(), c.status.as_str())), &f.id, status) {
        return Outcome::Stale;
    }
    billing::write(&billing::BillingWrite {
        workspace,
        tier: &tier,
        status,
        trial_end: f.trial_end.map(billing::from_unix),
        current_period_end: f.current_period_end.map(billing::from_unix),
        current_period_start: f.current_period_start.map(billing::from_unix),
        cancel_at_period_end: f.cancel_at_period_end,
        past_due_since: (status == "past_due")
            .then(|| billing::from_unix(decide::past_due_since(event.created, unix_now()))),
        customer: f.customer.as_deref(),
        subscription: Some(&f.id),
    });
    if store::schema_has_grants() {
        // Every item's features, while the subscription grants access; none otherwise (a
        // cancellation ends them, and their part of any limit).
        let grants = if decide::holds_access(status) { item_grants(f) } else { Vec::new() };
        store::replace_item_grants(workspace, f.customer.as_deref(), &f.id, &event.id, &grants);
    }
    Outcome::Applied
}

/// One query for every id of the items, then `decide::item_grants`.
fn item_grants(f: &SubscriptionFacts) -> Vec<decide::ItemGrant> {
    let ids = f.items.iter().flat_map(decide::mapping_keys).map(str::to_owned).collect();
    let mapped = store::price_features(ids);
    decide::item_grants(&f.items, |id| mapped.get(id).cloned().unwrap_or_default())
}

/// The customer's workspace is granted exactly the mapped features of the summary (a partial
/// one, `has_more`, grants what it lists and ends nothing), in `created` order per customer.
fn apply_entitlement_summary(event: &Event, f: &EntitlementSummaryFacts) -> (Option<Uuid>, Outcome) {
    store::lock_customer(&f.customer);
    let Some(workspace) = store::links(Some(&f.customer), None).0 else {
        return (None, Outcome::Unmapped);
    };
    let complete = !f.has_more;
    if !store::advance_summary(&f.customer, workspace, event.created, &event.id, complete) {
        return (Some(workspace), Outcome::Stale);
    }
    let mapped = store::feature_map(f.lookup_keys.clone());
    let (grants, unknown) = decide::summary_grants(&f.lookup_keys, |k| mapped.get(k).cloned());
    store::apply_entitlements(workspace, &f.customer, &event.id, &grants, complete);
    store::set_summary_detail(&event.id, grants.len(), &unknown);
    (Some(workspace), if complete { Outcome::Applied } else { Outcome::Partial })
}

/// One query for every id and metadata tier of the items, then `decide::pick_tier`.
fn subscription_tier(f: &SubscriptionFacts) -> Option<Tier> {
    let ids = f.items.iter().flat_map(decide::mapping_keys).map(str::to_owned).collect();
    let names = f.items.iter().flat_map(decide::metadata_tiers).map(str::to_owned).collect();
    let (mapped, known) = store::tier_candidates(ids, names);
    decide::pick_tier(&f.items, |id| mapped.get(id).cloned(), |name| known.get(name).cloned())
}

fn apply_checkout(event: &Event, f: &CheckoutFacts, catch_up: bool) -> (Option<Uuid>, Outcome) {
    let customer = f.customer.as_deref();
    let subscription = f.subscription.as_deref();
    if let Some(c) = customer {
        store::lock_customer(c);
    }
    let referenced = workspace_ref(f.client_reference_id.as_deref())
        .or_else(|| workspace_ref(f.metadata_workspace_id.as_deref()));
    let (by_customer, by_subscription) = store::links(customer, subscription);
    let Some(workspace) = referenced.or(by_customer).or(by_subscription) else {
        return (None, Outcome::Unmapped);
    };
    if let Some(s) = subscription {
        store::link_subscription(s, customer, workspace);
    }
    if let Some(c) = customer {
        store::link_customer(c, workspace, &event.id);
    }
    if catch_up {
        apply_pending(customer, subscription, &event.id);
    }
    (Some(workspace), Outcome::Applied)
}

/// Invoices only record: the status they lead to arrives as a subscription event.
fn apply_invoice(f: &InvoiceFacts) -> (Option<Uuid>, Outcome) {
    if let Some(c) = f.customer.as_deref() {
        store::lock_customer(c);
    }
    match store::links(f.customer.as_deref(), f.subscription.as_deref()) {
        (Some(w), _) | (None, Some(w)) => (Some(w), Outcome::Applied),
        (None, None) => (None, Outcome::Unmapped),
    }
}

/// Re-applies a recorded event from its stored payload and records the new outcome.
fn apply_recorded(event_id: &str, payload: &str) -> Outcome {
    // A recorded payload was verified and parsed when it arrived; failing now means the row
    // was edited by hand.
    let event = event::parse_event(payload)
        .unwrap_or_else(|e| errors::internal(format!("recorded Stripe event {event_id}: {e}")));
    let facts = Facts::of(&event)
        .unwrap_or_else(|e| errors::internal(format!("recorded Stripe event {event_id}: {e}")));
    let (workspace, outcome) = apply(&event, &facts, false);
    store::set_outcome(event_id, outcome, workspace);
    outcome
}

/// Re-applies recorded events in the order given; returns how many applied.
fn apply_all(events: &[(String, String)]) -> i64 {
    let applied = events.iter().filter(|(id, payload)| apply_recorded(id, payload) == Outcome::Applied);
    i64::try_from(applied.count()).unwrap_or(i64::MAX)
}

/// Applies, in order, the unmapped events a new link reaches; returns how many applied.
fn apply_pending(customer: Option<&str>, subscription: Option<&str>, current: &str) -> i64 {
    apply_all(&store::pending(customer, subscription, current))
}

/// The full list of a customer's active Stripe Entitlements, for the webhook layer to pass
/// after a summary answered `partial` (it fetched the remaining pages from Stripe's API).
/// Recorded in the event log like a summary event (id `apply_stripe_entitlements:<customer>:
/// <as_of>`, created = `as_of`) and applied the same way: ordered with the customer's
/// summaries by `as_of`, `unmapped` until the customer is linked. Privileged (EXECUTE
/// revoked from PUBLIC, granted to entitlements_webhook).
#[pg_extern(volatile, security_definer, requires = ["stripe_event_result"])]
#[search_path(pg_catalog, pg_temp)]
fn apply_stripe_entitlements(
    customer_id: Option<&str>,
    lookup_keys: Option<Vec<Option<String>>>,
    as_of: Option<TimestampWithTimeZone>,
) -> composite_type!('static, "stripe_event_result") {
    let customer = require(customer_id, "customer_id");
    if customer.trim().is_empty() {
        errors::invalid_argument("customer_id", "must not be empty");
    }
    let keys: Vec<String> = require(lookup_keys, "lookup_keys")
        .into_iter()
        .map(|k| k.unwrap_or_else(|| errors::null_argument("an element of lookup_keys")))
        .collect();
    let as_of = i64::from(require(as_of, "as_of"));
    // PostgreSQL microseconds since 2000 to Stripe's Unix seconds (rounded down).
    const UNIX_TO_PG_EPOCH_SECS: i64 = 946_684_800;
    let created = as_of.div_euclid(1_000_000).saturating_add(UNIX_TO_PG_EPOCH_SECS);
    let payload = serde_json::json!({
        "id": format!("apply_stripe_entitlements:{customer}:{as_of}"),
        "object": "event",
        "type": "entitlements.active_entitlement_summary.updated",
        "created": created,
        "data": {"object": {
            "object": "entitlements.active_entitlement_summary",
            "customer": customer,
            "entitlements": {
                "object": "list",
                "data": keys.iter().map(|k| serde_json::json!({
                    "object": "entitlements.active_entitlement", "lookup_key": k
                })).collect::<Vec<_>>(),
                "has_more": false,
            },
        }},
    })
    .to_string();
    let event = event::parse_event(&payload).unwrap_or_else(|e| errors::invalid_argument("as_of", &e.to_string()));
    let facts = Facts::of(&event).unwrap_or_else(|e| errors::invalid_argument("lookup_keys", &e.to_string()));
    let recorded = store::PayloadJsonb::convert(&payload);
    let (workspace, outcome) = deliver(&recorded, &event, &facts);
    result_row(&event, workspace, outcome)
}

/// Links a Stripe customer to a workspace and applies, in order, the events recorded
/// `unmapped` for it. Returns how many of them applied. Privileged (EXECUTE revoked from
/// PUBLIC).
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn link_stripe_customer(workspace_id: Option<Uuid>, customer_id: Option<&str>) -> i64 {
    let workspace = require(workspace_id, "workspace_id");
    let customer = require(customer_id, "customer_id");
    if customer.trim().is_empty() {
        errors::invalid_argument("customer_id", "must not be empty");
    }
    store::lock_customer(customer);
    match store::links(Some(customer), None).0 {
        Some(other) if other != workspace => errors::customer_linked_elsewhere(customer, other),
        Some(_) => {}
        None => {
            store::link_customer(customer, workspace, "link_stripe_customer");
        }
    }
    apply_pending(Some(customer), None, "")
}

/// Rebuilds billing state from the recorded events (of one workspace, or all), oldest
/// `created` first, then arrival order. Returns how many applied. Privileged.
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn replay_stripe_events(workspace_id: default!(Option<Uuid>, "NULL")) -> i64 {
    apply_all(&store::start_replay(workspace_id))
}

/// The Stripe-Signature header Stripe would send for `payload` signed with `secret` at
/// `timestamp` (default: now). For tests, replays from other systems and the SDK
/// cross-check; privileged, since it takes a secret.
#[pg_extern(volatile)]
fn sign_stripe_payload(
    payload: Option<&str>,
    secret: Option<&str>,
    timestamp: default!(Option<i64>, "NULL"),
) -> String {
    let payload = require(payload, "payload");
    let secret = require(secret, "secret");
    signature::sign_header(payload.as_bytes(), secret.as_bytes(), timestamp.unwrap_or_else(unix_now))
}
