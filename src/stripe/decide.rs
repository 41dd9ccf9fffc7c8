//! The rules of Stripe ingestion that need no database: which events we act on, which tier a
//! subscription's items buy, whether an event is too old for its subscription, and whether a
//! subscription may replace the one a workspace's billing state follows. `ingest` asks the
//! tables for the inputs and writes the answers; the rules themselves live here so they can
//! be read against docs/STRIPE.md line by line and tested with plain `#[test]`s.

use super::event::ItemFacts;

/// What an event type means to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// `customer.subscription.*`: carries the subscription's state.
    Subscription { deleted: bool },
    /// `checkout.session.completed`: links a customer (and subscription) to a workspace.
    Checkout,
    /// `invoice.paid`, `invoice.payment_failed`: recorded against the workspace; the status
    /// change itself arrives as a subscription event.
    Invoice,
    /// `entitlements.active_entitlement_summary.updated`: the customer's active Stripe
    /// Entitlements features, granted through `stripe_feature_map`.
    EntitlementSummary,
    /// Everything else: recorded `ignored`.
    Ignored,
}

pub fn handling(event_type: &str) -> Handling {
    match event_type {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.paused"
        | "customer.subscription.resumed"
        | "customer.subscription.trial_will_end" => Handling::Subscription { deleted: false },
        "customer.subscription.deleted" => Handling::Subscription { deleted: true },
        "checkout.session.completed" => Handling::Checkout,
        "invoice.paid" | "invoice.payment_failed" => Handling::Invoice,
        "entitlements.active_entitlement_summary.updated" => Handling::EntitlementSummary,
        _ => Handling::Ignored,
    }
}

/// The outcome of one delivery, as `stripe_event_result.outcome` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Stale,
    Ignored,
    Unmapped,
    /// An entitlement summary whose list has more pages: what it lists is granted, nothing
    /// is revoked until the full list arrives (`apply_stripe_entitlements`).
    Partial,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Ignored => "ignored",
            Outcome::Unmapped => "unmapped",
            Outcome::Partial => "partial",
        }
    }
}

/// The status written to billing_state. A deleted subscription is canceled whatever the
/// object says (Stripe sends `canceled` there, but the event type is the stronger fact).
pub fn billing_status(deleted: bool, stripe_status: &str) -> &str {
    if deleted {
        "canceled"
    } else {
        stripe_status
    }
}

/// A tier known to the catalog, with its level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub tier: String,
    pub level: i32,
}

/// The ids of an item that `stripe_price_tiers` may name, most specific first: a price id
/// beats its lookup_key, which beats the product.
pub fn mapping_keys(item: &ItemFacts) -> impl Iterator<Item = &str> {
    [&item.price_id, &item.lookup_key, &item.product_id].into_iter().flatten().map(String::as_str)
}

/// The metadata tiers of an item, price before product.
pub fn metadata_tiers(item: &ItemFacts) -> impl Iterator<Item = &str> {
    [&item.price_metadata_tier, &item.product_metadata_tier]
        .into_iter()
        .flatten()
        .map(String::as_str)
}

/// The tier a subscription buys: per item, the first of its ids that `stripe_price_tiers`
/// maps (`mapped`), else the first metadata tier the catalog knows (`known`); over all items
/// the highest level wins. `None` when no item maps: the event changes nothing (a
/// subscription is never silently free).
pub fn pick_tier(
    items: &[ItemFacts],
    mapped: impl Fn(&str) -> Option<Tier>,
    known: impl Fn(&str) -> Option<Tier>,
) -> Option<Tier> {
    items
        .iter()
        .filter_map(|item| {
            mapping_keys(item)
                .find_map(&mapped)
                .or_else(|| metadata_tiers(item).find_map(&known))
        })
        .max_by_key(|t| t.level)
}

/// One feature an item of a subscription grants (`stripe_price_features`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemGrant {
    /// What identifies the item: its id, else its position (`item#0`, ...).
    pub item: String,
    /// The mapped id that granted it (price id, lookup_key or product).
    pub stripe_id: String,
    pub feature: String,
    pub quantity: Option<i64>,
    pub per_unit: Option<i64>,
    /// What the item adds to the feature's limit: quantity x per_unit (a missing quantity
    /// counts as 1), saturating; `None` without a per_unit.
    pub units: Option<i64>,
}

/// The features every item of a subscription grants: per item and feature, the most specific
/// of its ids that `stripe_price_features` maps (`mapped`: the (feature, per_unit) rows of one
/// id) decides, as for tiers. Two items granting one feature give two grants (the feature is
/// granted once; both add to its limit).
pub fn item_grants(items: &[ItemFacts], mapped: impl Fn(&str) -> Vec<(String, Option<i64>)>) -> Vec<ItemGrant> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = item.id.clone().unwrap_or_else(|| format!("item#{i}"));
        let mut seen: Vec<String> = Vec::new();
        for id in mapping_keys(item) {
            for (feature, per_unit) in mapped(id) {
                if seen.contains(&feature) {
                    continue;
                }
                seen.push(feature.clone());
                let units = per_unit.map(|p| item.quantity.unwrap_or(1).saturating_mul(p));
                out.push(ItemGrant {
                    item: key.clone(),
                    stripe_id: id.to_owned(),
                    feature,
                    quantity: item.quantity,
                    per_unit,
                    units,
                });
            }
        }
    }
    out
}

/// An entitlement summary's lookup_keys split by `stripe_feature_map` (`mapped`): the
/// (lookup_key, feature) grants, and the keys we do not know (Stripe may know features we do
/// not: counted, not an error). A key listed twice counts once.
pub fn summary_grants(lookup_keys: &[String], mapped: impl Fn(&str) -> Option<String>) -> (Vec<(String, String)>, Vec<String>) {
    let mut grants = Vec::new();
    let mut unknown = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for key in lookup_keys {
        if seen.contains(&key.as_str()) {
            continue;
        }
        seen.push(key);
        match mapped(key) {
            Some(feature) => grants.push((key.clone(), feature)),
            None => unknown.push(key.clone()),
        }
    }
    (grants, unknown)
}

/// Per subscription: an event older than the last one applied changes nothing. Equal seconds
/// are not stale: Stripe's `created` has one-second resolution, so same-second events are
/// applied in the order they arrive (serialised by the subscription's row lock).
pub fn is_stale(created: i64, last_applied: Option<i64>) -> bool {
    last_applied.is_some_and(|last| created < last)
}

/// Statuses under which a subscription gives access (subject to the resolver's rules): its
/// items' features are granted only then.
pub fn holds_access(status: &str) -> bool {
    matches!(status, "trialing" | "active" | "past_due")
}

/// A workspace follows one subscription (billing_state.stripe_subscription_id). An event of
/// another subscription takes over unless it would replace one that holds access with one
/// that does not: the late `deleted` of a replaced subscription, or a new subscription still
/// `incomplete`, must not lock out a workspace that pays through its current one.
pub fn takes_over(current: Option<(&str, &str)>, subscription_id: &str, status: &str) -> bool {
    match current {
        None => true,
        Some((current_id, _)) if current_id == subscription_id => true,
        Some((_, current_status)) => holds_access(status) || !holds_access(current_status),
    }
}

/// A subscription event whose items map to no tier changes nothing (`unmapped`: never a
/// tier by default), with one exception: an event of the very subscription the workspace
/// follows, with a status that gives no access, still ends that access. The workspace keeps
/// the tier it has and takes the status, so a cancelled customer never keeps access because
/// a price was never mapped. Returns the tier to write, if any.
pub fn tier_without_mapping<'a>(current: Option<(&str, &'a str)>, subscription_id: &str, status: &str) -> Option<&'a str> {
    match current {
        Some((current_id, tier)) if current_id == subscription_id && !holds_access(status) => Some(tier),
        _ => None,
    }
}

/// When a past_due period began: the event's `created` (a late delivery must not extend the
/// grace), but never in the future of the database clock.
pub fn past_due_since(created: i64, now: i64) -> i64 {
    created.min(now)
}

/// A workspace id from the payload (metadata or client_reference_id): a UUID, else nothing.
/// Not an error: a malformed reference falls through to the other mappings.
pub fn workspace_ref(text: Option<&str>) -> Option<[u8; 16]> {
    let hex: String = text?.trim().chars().filter(|c| *c != '-').collect();
    let canonical = text?.trim();
    let dashes_ok = canonical.len() == 32
        || (canonical.len() == 36
            && canonical.char_indices().all(|(i, c)| (c == '-') == matches!(i, 8 | 13 | 18 | 23)));
    if hex.len() != 32 || !dashes_ok || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(price: Option<&str>, lookup: Option<&str>, product: Option<&str>) -> ItemFacts {
        ItemFacts {
            price_id: price.map(Into::into),
            lookup_key: lookup.map(Into::into),
            product_id: product.map(Into::into),
            ..ItemFacts::default()
        }
    }

    fn catalog(name: &str) -> Option<Tier> {
        let level = ["free", "pro", "pro_plus", "portfolio", "enterprise"].iter().position(|t| *t == name)?;
        Some(Tier { tier: name.into(), level: level as i32 })
    }

    fn table(id: &str) -> Option<Tier> {
        match id {
            "price_pro" => catalog("pro"),
            "pro_monthly" => catalog("pro_plus"),
            "prod_ent" => catalog("enterprise"),
            _ => None,
        }
    }

    #[test]
    fn event_types() {
        assert_eq!(handling("customer.subscription.deleted"), Handling::Subscription { deleted: true });
        for t in ["created", "updated", "paused", "resumed", "trial_will_end"] {
            assert_eq!(
                handling(&format!("customer.subscription.{t}")),
                Handling::Subscription { deleted: false }
            );
        }
        assert_eq!(handling("checkout.session.completed"), Handling::Checkout);
        assert_eq!(handling("invoice.paid"), Handling::Invoice);
        assert_eq!(handling("invoice.payment_failed"), Handling::Invoice);
        for t in ["invoice.updated", "invoice_payment.paid", "customer.subscription.", ""] {
            assert_eq!(handling(t), Handling::Ignored, "{t}");
        }
    }

    #[test]
    fn deleted_is_canceled() {
        assert_eq!(billing_status(true, "active"), "canceled");
        assert_eq!(billing_status(false, "past_due"), "past_due");
    }

    #[test]
    fn price_id_beats_lookup_key_beats_product() {
        let t = pick_tier(&[item(Some("price_pro"), Some("pro_monthly"), Some("prod_ent"))], table, catalog);
        assert_eq!(t.unwrap().tier, "pro");
        let t = pick_tier(&[item(Some("price_x"), Some("pro_monthly"), Some("prod_ent"))], table, catalog);
        assert_eq!(t.unwrap().tier, "pro_plus");
        let t = pick_tier(&[item(Some("price_x"), None, Some("prod_ent"))], table, catalog);
        assert_eq!(t.unwrap().tier, "enterprise");
    }

    #[test]
    fn metadata_only_when_the_table_does_not_map_the_item() {
        let mut i = item(Some("price_pro"), None, None);
        i.price_metadata_tier = Some("enterprise".into());
        assert_eq!(pick_tier(&[i.clone()], table, catalog).unwrap().tier, "pro");
        i.price_id = Some("price_unknown".into());
        assert_eq!(pick_tier(&[i.clone()], table, catalog).unwrap().tier, "enterprise");
        i.price_metadata_tier = Some("gold".into()); // not in the catalog
        i.product_metadata_tier = Some("portfolio".into());
        assert_eq!(pick_tier(&[i], table, catalog).unwrap().tier, "portfolio");
    }

    #[test]
    fn highest_tier_over_items_wins() {
        let items = [item(Some("price_pro"), None, None), item(None, None, Some("prod_ent")), item(Some("x"), None, None)];
        assert_eq!(pick_tier(&items, table, catalog).unwrap().tier, "enterprise");
    }

    #[test]
    fn no_mapping_is_none_never_free() {
        assert_eq!(pick_tier(&[item(Some("x"), Some("y"), Some("z"))], table, catalog), None);
        assert_eq!(pick_tier(&[], table, catalog), None);
    }

    #[test]
    fn staleness_is_strictly_older() {
        assert!(!is_stale(10, None));
        assert!(!is_stale(10, Some(10)), "same second applies in arrival order");
        assert!(!is_stale(11, Some(10)));
        assert!(is_stale(9, Some(10)));
    }

    #[test]
    fn takeover_rules() {
        assert!(takes_over(None, "sub_b", "canceled"));
        assert!(takes_over(Some(("sub_a", "active")), "sub_a", "canceled"), "own events always apply");
        assert!(takes_over(Some(("sub_a", "active")), "sub_b", "active"), "a paying replacement takes over");
        assert!(takes_over(Some(("sub_a", "canceled")), "sub_b", "incomplete"));
        assert!(!takes_over(Some(("sub_a", "active")), "sub_b", "canceled"), "late end of an old subscription");
        assert!(!takes_over(Some(("sub_a", "trialing")), "sub_b", "incomplete"));
        assert!(!takes_over(Some(("sub_a", "past_due")), "sub_b", "incomplete_expired"));
    }

    #[test]
    fn unmapped_items_still_end_access_of_the_followed_subscription_only() {
        assert_eq!(tier_without_mapping(Some(("sub_1", "pro")), "sub_1", "canceled"), Some("pro"));
        assert_eq!(tier_without_mapping(Some(("sub_1", "pro")), "sub_1", "unpaid"), Some("pro"));
        assert_eq!(tier_without_mapping(Some(("sub_1", "pro")), "sub_1", "active"), None, "no tier is granted");
        assert_eq!(tier_without_mapping(Some(("sub_1", "pro")), "sub_2", "canceled"), None, "not the followed one");
        assert_eq!(tier_without_mapping(None, "sub_1", "canceled"), None);
    }

    #[test]
    fn past_due_since_is_created_capped_at_now() {
        assert_eq!(past_due_since(100, 200), 100);
        assert_eq!(past_due_since(300, 200), 200);
    }

    #[test]
    fn workspace_refs() {
        let id = workspace_ref(Some("0196c1a2-7b3d-7c4e-8f90-123456789abc")).unwrap();
        assert_eq!(id[0], 0x01);
        assert_eq!(id[15], 0xbc);
        assert_eq!(workspace_ref(Some("0196C1A27B3D7C4E8F90123456789ABC")), Some(id));
        for bad in ["", "ws_1", "0196c1a2-7b3d-7c4e-8f90-123456789ab", "0196c1a2-7b3d-7c4e-8f90-123456789abz",
                    "0196c1a27-b3d-7c4e-8f90-123456789abc", "é196c1a2-7b3d-7c4e-8f90-123456789abc"] {
            assert_eq!(workspace_ref(Some(bad)), None, "{bad}");
        }
        assert_eq!(workspace_ref(None), None);
    }

    fn price_features(id: &str) -> Vec<(String, Option<i64>)> {
        match id {
            "price_seat" => vec![("seats".into(), Some(1))],
            "price_reports" => vec![("ccp-08".into(), None)],
            "prod_reports" => vec![("ccp-08".into(), None), ("ccp-09".into(), None)],
            "price_calls_pack" => vec![("api_calls".into(), Some(1000))],
            _ => vec![],
        }
    }

    #[test]
    fn every_item_grants_its_features_most_specific_mapping_first() {
        let mut base = item(Some("price_pro"), None, None);
        base.id = Some("si_base".into());
        let mut seats = item(Some("price_seat"), None, None);
        seats.id = Some("si_seats".into());
        seats.quantity = Some(7);
        let reports = item(Some("price_reports"), None, Some("prod_reports"));
        let mut pack = item(Some("price_calls_pack"), None, None);
        pack.quantity = Some(3);
        let grants = item_grants(&[base, seats, reports, pack], price_features);
        let got: Vec<(&str, &str, &str, Option<i64>)> = grants
            .iter()
            .map(|g| (g.item.as_str(), g.stripe_id.as_str(), g.feature.as_str(), g.units))
            .collect();
        assert_eq!(
            got,
            vec![
                ("si_seats", "price_seat", "seats", Some(7)),
                // The price maps ccp-08; the product adds ccp-09 and does not grant ccp-08 twice.
                ("item#2", "price_reports", "ccp-08", None),
                ("item#2", "prod_reports", "ccp-09", None),
                ("item#3", "price_calls_pack", "api_calls", Some(3000)),
            ]
        );
    }

    #[test]
    fn the_same_feature_from_two_items_is_two_grants_and_quantities_saturate() {
        let mut a = item(Some("price_seat"), None, None);
        a.quantity = Some(i64::MAX);
        let b = item(Some("price_seat"), None, None);
        let grants = item_grants(&[a, b], |id| price_features(id));
        assert_eq!(grants.len(), 2);
        assert_eq!(grants[0].units, Some(i64::MAX));
        assert_eq!(grants[1].units, Some(1), "a missing quantity counts as 1");
    }

    #[test]
    fn summaries_split_known_and_unknown_lookup_keys() {
        let keys: Vec<String> = ["journeys", "sso", "journeys", "beta_x"].iter().map(|s| s.to_string()).collect();
        let (grants, unknown) = summary_grants(&keys, |k| match k {
            "journeys" => Some("ccp-07".into()),
            "sso" => Some("ccp-10".into()),
            _ => None,
        });
        assert_eq!(grants, vec![("journeys".into(), "ccp-07".into()), ("sso".into(), "ccp-10".into())]);
        assert_eq!(unknown, vec!["beta_x".to_string()]);
    }

    #[test]
    fn entitlement_summaries_are_handled() {
        assert_eq!(handling("entitlements.active_entitlement_summary.updated"), Handling::EntitlementSummary);
        assert_eq!(Outcome::Partial.as_str(), "partial");
    }
}
