//! Turns a verified Stripe event payload into the facts the extension acts on.
//!
//! Only the fields read here are checked. A field that is present, non-null and of
//! the wrong JSON type is an error rather than `None`, so a malformed payload
//! cannot silently lose an entitlement fact. Error messages name fields, never
//! payload contents.

use serde_json::{Map, Value};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub created: i64,
    /// `data.object`, always a JSON object.
    pub object: Value,
    pub api_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionFacts {
    pub id: String,
    pub customer: Option<String>,
    pub status: String,
    pub trial_end: Option<i64>,
    pub current_period_end: Option<i64>,
    /// The start of the period that ends at `current_period_end` (what usage limits reset on).
    pub current_period_start: Option<i64>,
    pub cancel_at_period_end: bool,
    pub metadata_workspace_id: Option<String>,
    pub metadata_tier: Option<String>,
    pub items: Vec<ItemFacts>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemFacts {
    /// The subscription item's id (`si_...`).
    pub id: Option<String>,
    /// How many units of the price the item is for (absent for metered prices).
    pub quantity: Option<i64>,
    pub price_id: Option<String>,
    pub lookup_key: Option<String>,
    pub product_id: Option<String>,
    pub price_metadata_tier: Option<String>,
    pub product_metadata_tier: Option<String>,
}

/// Facts of an `entitlements.active_entitlement_summary`: the customer's active features.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntitlementSummaryFacts {
    pub customer: String,
    /// The `lookup_key` of every active entitlement in the list, in order.
    pub lookup_keys: Vec<String>,
    /// The list is a first page only (`entitlements.has_more`).
    pub has_more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutFacts {
    pub id: String,
    pub customer: Option<String>,
    pub subscription: Option<String>,
    pub client_reference_id: Option<String>,
    pub metadata_workspace_id: Option<String>,
    pub mode: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceFacts {
    pub id: Option<String>,
    pub customer: Option<String>,
    pub subscription: Option<String>,
}


#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    /// serde_json's message: a position and a reason (including "recursion limit
    /// exceeded"), never input text.
    NotJson(String),
    NotAnObject,
    /// Dotted path of a required field that is absent or null.
    Missing(&'static str),
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    /// `object` is not the kind the extractor handles.
    WrongObject {
        expected: &'static str,
    },
    UnknownStatus,
    /// A `\u0000` escape: valid JSON, but PostgreSQL's jsonb (where events are recorded)
    /// cannot hold it.
    NulCharacter,
}

impl EventError {
    pub fn message(&self) -> String {
        match self {
            EventError::NotJson(e) => format!("event payload is not valid JSON: {e}"),
            EventError::NotAnObject => "event payload is not a JSON object".to_string(),
            EventError::Missing(f) => format!("event field `{f}` is missing"),
            EventError::WrongType { field, expected } => {
                format!("event field `{field}` is not {expected}")
            }
            EventError::WrongObject { expected } => {
                format!("object is not a Stripe `{expected}`")
            }
            EventError::UnknownStatus => {
                "subscription `status` is not one of Stripe's subscription statuses".to_string()
            }
            EventError::NulCharacter => {
                "event payload contains \\u0000, which PostgreSQL cannot store".to_string()
            }
        }
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for EventError {}

/// Parses an event envelope. serde_json's default recursion limit (128) stays on,
/// so deeply nested input is `NotJson`, not a stack overflow.
pub fn parse_event(payload: &str) -> Result<Event, EventError> {
    let value: Value =
        serde_json::from_str(payload).map_err(|e| EventError::NotJson(e.to_string()))?;
    if contains_nul(&value) {
        return Err(EventError::NulCharacter);
    }
    let Value::Object(mut root) = value else {
        return Err(EventError::NotAnObject);
    };
    let id = required_str(&root, "id", "id")?;
    let event_type = required_str(&root, "type", "type")?;
    let created = match root.get("created") {
        None | Some(Value::Null) => return Err(EventError::Missing("created")),
        Some(v) => v.as_i64().ok_or(EventError::WrongType {
            field: "created",
            expected: "an integer",
        })?,
    };
    let created = unix_time(created, "created")?;
    // `null` happens on events of accounts without a pinned version; tolerate it.
    let api_version = optional_str(&root, "api_version", "api_version")?;
    let object = match root.get_mut("data") {
        None | Some(Value::Null) => return Err(EventError::Missing("data")),
        Some(Value::Object(data)) => match data.remove("object") {
            None | Some(Value::Null) => return Err(EventError::Missing("data.object")),
            Some(obj @ Value::Object(_)) => obj,
            Some(_) => {
                return Err(EventError::WrongType {
                    field: "data.object",
                    expected: "an object",
                })
            }
        },
        Some(_) => {
            return Err(EventError::WrongType {
                field: "data",
                expected: "an object",
            })
        }
    };
    Ok(Event {
        id,
        event_type,
        created,
        object,
        api_version,
    })
}

/// Whether any string or key holds U+0000. Recursion is bounded by serde_json's nesting
/// limit (128), which `parse_event` keeps on.
fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Facts of a `subscription` object (`customer.subscription.*` events).
pub fn subscription_facts(obj: &Value) -> Result<SubscriptionFacts, EventError> {
    let o = expect_object(obj, "subscription")?;
    let id = required_str(o, "id", "id")?;
    let customer = optional_id(o, "customer", "customer")?;
    let status = required_str(o, "status", "status")?;
    // The resolver's list is the one list of statuses (Stripe's, plus our `none`).
    if crate::resolver::Status::parse_stripe(&status).is_none() {
        return Err(EventError::UnknownStatus);
    }
    let trial_end = optional_time(o, "trial_end", "trial_end")?;
    let cancel_at_period_end = match o.get("cancel_at_period_end") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(EventError::WrongType {
                field: "cancel_at_period_end",
                expected: "a boolean",
            })
        }
    };
    let metadata = optional_obj(o, "metadata", "metadata")?;
    let (metadata_workspace_id, metadata_tier) = match metadata {
        Some(m) => (
            optional_str(m, "workspace_id", "metadata.workspace_id")?,
            optional_str(m, "tier", "metadata.tier")?,
        ),
        None => (None, None),
    };

    let mut items = Vec::new();
    let mut item_period_end: Option<i64> = None;
    let mut item_period_start: Option<i64> = None;
    if let Some(list) = optional_obj(o, "items", "items")? {
        let data = match list.get("data") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => {
                return Err(EventError::WrongType {
                    field: "items.data",
                    expected: "an array",
                })
            }
        };
        for item in data {
            let item = item.as_object().ok_or(EventError::WrongType {
                field: "items.data[]",
                expected: "an object",
            })?;
            // Since API 2025-03-31 ("basil") the period sits on each item.
            if let Some(end) = optional_time(
                item,
                "current_period_end",
                "items.data[].current_period_end",
            )? {
                // The latest-ending item's period, start and end together.
                if item_period_end.is_none_or(|m| end > m) {
                    item_period_end = Some(end);
                    item_period_start =
                        optional_time(item, "current_period_start", "items.data[].current_period_start")?;
                }
            }
            let mut facts = item_facts(item)?;
            facts.id = optional_str(item, "id", "items.data[].id")?;
            facts.quantity = match optional_i64(item, "quantity", "items.data[].quantity")? {
                Some(q) if q < 0 => {
                    return Err(EventError::WrongType {
                        field: "items.data[].quantity",
                        expected: "a non-negative integer",
                    })
                }
                q => q,
            };
            items.push(facts);
        }
    }
    // Pre-basil payloads carry it on the subscription itself.
    let (current_period_end, current_period_start) =
        match optional_time(o, "current_period_end", "current_period_end")? {
            Some(end) => (Some(end), optional_time(o, "current_period_start", "current_period_start")?),
            None => (item_period_end, item_period_start),
        };

    Ok(SubscriptionFacts {
        id,
        customer,
        status,
        trial_end,
        current_period_end,
        current_period_start,
        cancel_at_period_end,
        metadata_workspace_id,
        metadata_tier,
        items,
    })
}

/// Field paths for error messages, per source (`price` or legacy `plan`).
struct PriceFields {
    object: &'static str,
    id: &'static str,
    metadata: &'static str,
    tier: &'static str,
    product: &'static str,
    product_id: &'static str,
    product_metadata: &'static str,
    product_tier: &'static str,
}

const PRICE_FIELDS: PriceFields = PriceFields {
    object: "items.data[].price",
    id: "items.data[].price.id",
    metadata: "items.data[].price.metadata",
    tier: "items.data[].price.metadata.tier",
    product: "items.data[].price.product",
    product_id: "items.data[].price.product.id",
    product_metadata: "items.data[].price.product.metadata",
    product_tier: "items.data[].price.product.metadata.tier",
};

const PLAN_FIELDS: PriceFields = PriceFields {
    object: "items.data[].plan",
    id: "items.data[].plan.id",
    metadata: "items.data[].plan.metadata",
    tier: "items.data[].plan.metadata.tier",
    product: "items.data[].plan.product",
    product_id: "items.data[].plan.product.id",
    product_metadata: "items.data[].plan.product.metadata",
    product_tier: "items.data[].plan.product.metadata.tier",
};

/// `price` first; legacy payloads may only have `plan` (no lookup_key there).
fn item_facts(item: &Map<String, Value>) -> Result<ItemFacts, EventError> {
    if let Some(price) = item.get("price").filter(|v| !v.is_null()) {
        return price_like(price, &PRICE_FIELDS, true);
    }
    if let Some(plan) = item.get("plan").filter(|v| !v.is_null()) {
        return price_like(plan, &PLAN_FIELDS, false);
    }
    Ok(ItemFacts::default())
}

fn price_like(v: &Value, f: &PriceFields, has_lookup_key: bool) -> Result<ItemFacts, EventError> {
    // An unexpanded reference is just the id string.
    if let Value::String(id) = v {
        return Ok(ItemFacts { price_id: Some(id.clone()), ..ItemFacts::default() });
    }
    let p = v.as_object().ok_or(EventError::WrongType {
        field: f.object,
        expected: "an object or an id string",
    })?;
    let lookup_key = if has_lookup_key {
        optional_str(p, "lookup_key", "items.data[].price.lookup_key")?
    } else {
        None
    };
    let (product_id, product_metadata_tier) = match p.get("product") {
        None | Some(Value::Null) => (None, None),
        Some(Value::String(s)) => (Some(s.clone()), None),
        Some(Value::Object(prod)) => (
            optional_str(prod, "id", f.product_id)?,
            match optional_obj(prod, "metadata", f.product_metadata)? {
                Some(m) => optional_str(m, "tier", f.product_tier)?,
                None => None,
            },
        ),
        Some(_) => {
            return Err(EventError::WrongType {
                field: f.product,
                expected: "an object or an id string",
            })
        }
    };
    let price_metadata_tier = match optional_obj(p, "metadata", f.metadata)? {
        Some(m) => optional_str(m, "tier", f.tier)?,
        None => None,
    };
    Ok(ItemFacts {
        price_id: optional_str(p, "id", f.id)?,
        lookup_key,
        product_id,
        price_metadata_tier,
        product_metadata_tier,
        ..ItemFacts::default()
    })
}

/// Facts of an `entitlements.active_entitlement_summary` object (Stripe's OpenAPI
/// specification: `customer` a string, `entitlements` a list object of
/// `entitlements.active_entitlement`, each with a `lookup_key`). An entitlement without a
/// lookup_key is an error, not a feature silently lost.
pub fn entitlement_summary_facts(obj: &Value) -> Result<EntitlementSummaryFacts, EventError> {
    let o = expect_object(obj, "entitlements.active_entitlement_summary")?;
    let customer = optional_id(o, "customer", "customer")?.ok_or(EventError::Missing("customer"))?;
    let list = optional_obj(o, "entitlements", "entitlements")?.ok_or(EventError::Missing("entitlements"))?;
    let data = match list.get("data") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(EventError::WrongType { field: "entitlements.data", expected: "an array" }),
    };
    let mut lookup_keys = Vec::with_capacity(data.len());
    for entitlement in data {
        let e = entitlement.as_object().ok_or(EventError::WrongType {
            field: "entitlements.data[]",
            expected: "an object",
        })?;
        lookup_keys.push(required_str(e, "lookup_key", "entitlements.data[].lookup_key")?);
    }
    let has_more = match list.get("has_more") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(EventError::WrongType { field: "entitlements.has_more", expected: "a boolean" }),
    };
    Ok(EntitlementSummaryFacts { customer, lookup_keys, has_more })
}

/// Facts of a `checkout.session` object. A `Result`, unlike `invoice_facts`: a session
/// without an `id` has no sensible default.
pub fn checkout_facts(obj: &Value) -> Result<CheckoutFacts, EventError> {
    let o = expect_object(obj, "checkout.session")?;
    let metadata_workspace_id = match optional_obj(o, "metadata", "metadata")? {
        Some(m) => optional_str(m, "workspace_id", "metadata.workspace_id")?,
        None => None,
    };
    Ok(CheckoutFacts {
        id: required_str(o, "id", "id")?,
        customer: optional_id(o, "customer", "customer")?,
        subscription: optional_id(o, "subscription", "subscription")?,
        client_reference_id: optional_str(o, "client_reference_id", "client_reference_id")?,
        metadata_workspace_id,
        mode: optional_str(o, "mode", "mode")?,
    })
}

/// Facts of an `invoice` object; lenient (every fact optional, wrong types read
/// as absent) because an invoice only ever points at a subscription to re-read.
/// The subscription is `subscription` before API 2025-03-31 and
/// `parent.subscription_details.subscription` from then on; both are read.
pub fn invoice_facts(obj: &Value) -> InvoiceFacts {
    let id_of = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) => Some(s.clone()),
            Value::Object(m) => m.get("id")?.as_str().map(str::to_owned),
            _ => None,
        }
    };
    let subscription = id_of(obj.get("subscription")).or_else(|| {
        id_of(
            obj.get("parent")
                .and_then(|p| p.get("subscription_details"))
                .and_then(|d| d.get("subscription")),
        )
    });
    InvoiceFacts {
        id: obj.get("id").and_then(Value::as_str).map(str::to_owned),
        customer: id_of(obj.get("customer")),
        subscription,
    }
}

fn expect_object<'a>(
    obj: &'a Value,
    kind: &'static str,
) -> Result<&'a Map<String, Value>, EventError> {
    let o = obj.as_object().ok_or(EventError::NotAnObject)?;
    match o.get("object") {
        Some(Value::String(s)) if s == kind => Ok(o),
        _ => Err(EventError::WrongObject { expected: kind }),
    }
}

fn required_str(
    o: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<String, EventError> {
    optional_str(o, key, field)?.ok_or(EventError::Missing(field))
}

fn optional_str(
    o: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<String>, EventError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(EventError::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn optional_i64(
    o: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<i64>, EventError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or(EventError::WrongType {
            field,
            expected: "an integer",
        }),
    }
}

/// Times become timestamptz: Unix seconds from 1970 to the end of 9999, which PostgreSQL
/// holds and no real Stripe event leaves.
const MAX_UNIX_TIME: i64 = 253_402_300_799;

fn unix_time(t: i64, field: &'static str) -> Result<i64, EventError> {
    if (0..=MAX_UNIX_TIME).contains(&t) {
        Ok(t)
    } else {
        Err(EventError::WrongType {
            field,
            expected: "a Unix time between 1970 and 9999",
        })
    }
}

fn optional_time(
    o: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<i64>, EventError> {
    optional_i64(o, key, field)?
        .map(|t| unix_time(t, field))
        .transpose()
}

fn optional_obj<'a>(
    o: &'a Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<&'a Map<String, Value>>, EventError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(EventError::WrongType {
            field,
            expected: "an object",
        }),
    }
}

/// A reference Stripe sends either as an id string or, expanded, as an object
/// with `id`.
fn optional_id(
    o: &Map<String, Value>,
    key: &str,
    field: &'static str,
) -> Result<Option<String>, EventError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(m)) => match m.get("id") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(EventError::WrongType {
                field,
                expected: "an id string or an object with a string `id`",
            }),
        },
        Some(_) => Err(EventError::WrongType {
            field,
            expected: "an id string or an object with a string `id`",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(object: Value) -> String {
        json!({"id": "evt_1", "object": "event", "type": "customer.subscription.updated",
               "created": 1_700_000_000, "api_version": "2025-03-31.basil",
               "data": {"object": object}})
        .to_string()
    }

    fn sub(extra: Value) -> Value {
        let mut base = json!({"id": "sub_1", "object": "subscription", "status": "active"});
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            b.extend(e);
        }
        base
    }

    #[test]
    fn parses_minimal_event() {
        let e = parse_event(&envelope(json!({"object": "subscription"}))).unwrap();
        assert_eq!(e.id, "evt_1");
        assert_eq!(e.event_type, "customer.subscription.updated");
        assert_eq!(e.created, 1_700_000_000);
        assert_eq!(e.api_version.as_deref(), Some("2025-03-31.basil"));
        assert_eq!(e.object, json!({"object": "subscription"}));
    }

    #[test]
    fn null_or_missing_api_version_is_none() {
        let p = r#"{"id":"e","type":"t","created":1,"api_version":null,"data":{"object":{}}}"#;
        assert_eq!(parse_event(p).unwrap().api_version, None);
        let p = r#"{"id":"e","type":"t","created":1,"data":{"object":{}}}"#;
        assert_eq!(parse_event(p).unwrap().api_version, None);
    }

    #[test]
    fn not_json_is_error() {
        for p in ["", "{", "nope", "{\"id\":}", "{} {}"] {
            assert!(
                matches!(parse_event(p), Err(EventError::NotJson(_))),
                "{p:?}"
            );
        }
    }

    #[test]
    fn not_json_message_does_not_echo_payload() {
        let p = "{\"id\": \"evt_secretish\", oops}";
        let msg = parse_event(p).unwrap_err().message();
        assert!(!msg.contains("secretish"), "{msg}");
    }

    #[test]
    fn nul_escapes_are_refused_anywhere() {
        for p in [
            r#"{"id":"e\u0000","type":"t","created":1,"data":{"object":{}}}"#,
            r#"{"id":"e","type":"t","created":1,"data":{"object":{"k\u0000":1}}}"#,
            r#"{"id":"e","type":"t","created":1,"data":{"object":{"a":["\u0000"]}}}"#,
        ] {
            assert_eq!(parse_event(p), Err(EventError::NulCharacter), "{p}");
        }
    }

    #[test]
    fn lone_surrogate_escape_is_not_json() {
        let p = r#"{"id":"e\ud800","type":"t","created":1,"data":{"object":{}}}"#;
        assert!(matches!(parse_event(p), Err(EventError::NotJson(_))));
    }

    #[test]
    fn non_object_json_is_error() {
        for p in ["[]", "1", "\"s\"", "null", "true"] {
            assert_eq!(parse_event(p), Err(EventError::NotAnObject), "{p:?}");
        }
    }

    #[test]
    fn missing_or_non_string_id_and_type() {
        let cases = [
            (
                r#"{"type":"t","created":1,"data":{"object":{}}}"#,
                EventError::Missing("id"),
            ),
            (
                r#"{"id":null,"type":"t","created":1,"data":{"object":{}}}"#,
                EventError::Missing("id"),
            ),
            (
                r#"{"id":5,"type":"t","created":1,"data":{"object":{}}}"#,
                EventError::WrongType {
                    field: "id",
                    expected: "a string",
                },
            ),
            (
                r#"{"id":"e","created":1,"data":{"object":{}}}"#,
                EventError::Missing("type"),
            ),
            (
                r#"{"id":"e","type":[],"created":1,"data":{"object":{}}}"#,
                EventError::WrongType {
                    field: "type",
                    expected: "a string",
                },
            ),
        ];
        for (p, want) in cases {
            assert_eq!(parse_event(p), Err(want), "{p}");
        }
    }

    #[test]
    fn missing_or_non_integer_created() {
        assert_eq!(
            parse_event(r#"{"id":"e","type":"t","data":{"object":{}}}"#),
            Err(EventError::Missing("created"))
        );
        for c in ["1.5", "\"1\"", "1e3", "18446744073709551615", "true"] {
            let p = format!(r#"{{"id":"e","type":"t","created":{c},"data":{{"object":{{}}}}}}"#);
            assert_eq!(
                parse_event(&p),
                Err(EventError::WrongType {
                    field: "created",
                    expected: "an integer"
                }),
                "{c}"
            );
        }
        for c in ["-5", "253402300800", "9223372036854775807"] {
            let p = format!(r#"{{"id":"e","type":"t","created":{c},"data":{{"object":{{}}}}}}"#);
            assert_eq!(
                parse_event(&p),
                Err(EventError::WrongType {
                    field: "created",
                    expected: "a Unix time between 1970 and 9999"
                }),
                "{c}"
            );
        }
        let p = r#"{"id":"e","type":"t","created":0,"data":{"object":{}}}"#;
        assert_eq!(parse_event(p).unwrap().created, 0);
    }

    #[test]
    fn missing_or_bad_data_object() {
        let base = r#""id":"e","type":"t","created":1"#;
        let cases = [
            (format!("{{{base}}}"), EventError::Missing("data")),
            (
                format!("{{{base},\"data\":{{}}}}"),
                EventError::Missing("data.object"),
            ),
            (
                format!("{{{base},\"data\":{{\"object\":null}}}}"),
                EventError::Missing("data.object"),
            ),
            (
                format!("{{{base},\"data\":{{\"object\":\"sub_1\"}}}}"),
                EventError::WrongType {
                    field: "data.object",
                    expected: "an object",
                },
            ),
            (
                format!("{{{base},\"data\":[]}}"),
                EventError::WrongType {
                    field: "data",
                    expected: "an object",
                },
            ),
        ];
        for (p, want) in cases {
            assert_eq!(parse_event(&p), Err(want), "{p}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let depth = 100_000;
        let p = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let err = parse_event(&p).unwrap_err();
        assert!(err.message().contains("recursion limit"), "{err}");
        let inner = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let p = format!(r#"{{"id":"e","type":"t","created":1,"data":{{"object":{inner}}}}}"#);
        assert!(matches!(parse_event(&p), Err(EventError::NotJson(_))));
    }

    #[test]
    fn subscription_old_shape_period_on_subscription() {
        let f = subscription_facts(&sub(json!({
            "customer": "cus_1", "current_period_end": 200, "trial_end": 150,
            "cancel_at_period_end": true,
            "metadata": {"workspace_id": "ws_9", "tier": "pro"},
            "items": {"object": "list", "data": [
                {"id": "si_1", "price": {"id": "price_1", "lookup_key": "pro_monthly",
                  "product": "prod_1", "metadata": {"tier": "pro"}}}
            ]}
        })))
        .unwrap();
        assert_eq!(
            f,
            SubscriptionFacts {
                id: "sub_1".into(),
                customer: Some("cus_1".into()),
                status: "active".into(),
                trial_end: Some(150),
                current_period_end: Some(200),
                current_period_start: None,
                cancel_at_period_end: true,
                metadata_workspace_id: Some("ws_9".into()),
                metadata_tier: Some("pro".into()),
                items: vec![ItemFacts {
                    id: Some("si_1".into()),
                    quantity: None,
                    price_id: Some("price_1".into()),
                    lookup_key: Some("pro_monthly".into()),
                    product_id: Some("prod_1".into()),
                    price_metadata_tier: Some("pro".into()),
                    product_metadata_tier: None,
                }],
            }
        );
    }

    #[test]
    fn subscription_basil_shape_takes_max_item_period() {
        let f = subscription_facts(&sub(json!({
            "items": {"data": [
                {"current_period_start": 100, "current_period_end": 300, "price": {"id": "p1"}},
                {"current_period_start": 400, "current_period_end": 500, "price": {"id": "p2"}},
                {"price": {"id": "p3"}}
            ]}
        })))
        .unwrap();
        assert_eq!(f.current_period_end, Some(500));
        assert_eq!(f.current_period_start, Some(400), "the start of the same item's period");
        assert_eq!(f.items.len(), 3);
    }

    #[test]
    fn subscription_old_shape_period_start_pairs_with_its_end() {
        let f = subscription_facts(&sub(json!({
            "current_period_start": 50, "current_period_end": 100,
            "items": {"data": [{"current_period_start": 400, "current_period_end": 500}]}
        })))
        .unwrap();
        assert_eq!((f.current_period_start, f.current_period_end), (Some(50), Some(100)));
    }

    #[test]
    fn subscription_period_prefers_subscription_field() {
        let f = subscription_facts(&sub(json!({
            "current_period_end": 100,
            "items": {"data": [{"current_period_end": 500}]}
        })))
        .unwrap();
        assert_eq!(f.current_period_end, Some(100));
    }

    #[test]
    fn expanded_customer_and_product() {
        let f = subscription_facts(&sub(json!({
            "customer": {"id": "cus_x", "object": "customer"},
            "items": {"data": [{"price": {"id": "p", "product":
                {"id": "prod_x", "metadata": {"tier": "team"}}}}]}
        })))
        .unwrap();
        assert_eq!(f.customer.as_deref(), Some("cus_x"));
        assert_eq!(f.items[0].product_id.as_deref(), Some("prod_x"));
        assert_eq!(f.items[0].product_metadata_tier.as_deref(), Some("team"));
        assert_eq!(f.items[0].price_metadata_tier, None);
    }

    #[test]
    fn plan_is_fallback_when_price_missing() {
        let f = subscription_facts(&sub(json!({
            "items": {"data": [
                {"plan": {"id": "plan_1", "product": "prod_p", "metadata": {"tier": "basic"}}},
                {"price": {"id": "price_2"}, "plan": {"id": "plan_2"}}
            ]}
        })))
        .unwrap();
        assert_eq!(
            f.items[0],
            ItemFacts {
                price_id: Some("plan_1".into()),
                lookup_key: None,
                product_id: Some("prod_p".into()),
                price_metadata_tier: Some("basic".into()),
                product_metadata_tier: None,
                ..ItemFacts::default()
            }
        );
        assert_eq!(f.items[1].price_id.as_deref(), Some("price_2"));
    }

    #[test]
    fn plan_errors_name_the_plan_field() {
        let f = subscription_facts(&sub(json!({"items": {"data": [{"plan": {"id": 7}}]}})));
        assert_eq!(
            f,
            Err(EventError::WrongType {
                field: "items.data[].plan.id",
                expected: "a string"
            })
        );
        let f = subscription_facts(&sub(
            json!({"items": {"data": [{"price": {"product": 7}}]}}),
        ));
        assert_eq!(
            f,
            Err(EventError::WrongType {
                field: "items.data[].price.product",
                expected: "an object or an id string"
            })
        );
    }

    #[test]
    fn every_stripe_status_accepted_and_others_rejected() {
        let stripe_statuses = crate::resolver::Status::ALL.iter().map(|(n, _)| *n).filter(|n| *n != "none");
        assert_eq!(stripe_statuses.clone().count(), 8, "Stripe's subscription statuses (API reference)");
        for s in stripe_statuses {
            let f =
                subscription_facts(&json!({"id": "sub", "object": "subscription", "status": s}));
            assert_eq!(f.unwrap().status, s);
        }
        for s in ["", "Active", "cancelled", "ended", "none"] {
            let f =
                subscription_facts(&json!({"id": "sub", "object": "subscription", "status": s}));
            assert_eq!(f, Err(EventError::UnknownStatus), "{s}");
        }
        let f = subscription_facts(&json!({"id": "sub", "object": "subscription"}));
        assert_eq!(f, Err(EventError::Missing("status")));
    }

    #[test]
    fn subscription_errors() {
        assert_eq!(subscription_facts(&json!([])), Err(EventError::NotAnObject));
        assert_eq!(
            subscription_facts(&json!({"id": "in_1", "object": "invoice", "status": "active"})),
            Err(EventError::WrongObject {
                expected: "subscription"
            })
        );
        assert_eq!(
            subscription_facts(&json!({"object": "subscription", "status": "active"})),
            Err(EventError::Missing("id"))
        );
        assert_eq!(
            subscription_facts(&sub(json!({"trial_end": "soon"}))),
            Err(EventError::WrongType {
                field: "trial_end",
                expected: "an integer"
            })
        );
        assert_eq!(
            subscription_facts(&sub(json!({"cancel_at_period_end": "yes"}))),
            Err(EventError::WrongType {
                field: "cancel_at_period_end",
                expected: "a boolean"
            })
        );
        assert_eq!(
            subscription_facts(&sub(json!({"metadata": {"tier": 3}}))),
            Err(EventError::WrongType {
                field: "metadata.tier",
                expected: "a string"
            })
        );
        assert_eq!(
            subscription_facts(&sub(json!({"items": {"data": {}}}))),
            Err(EventError::WrongType {
                field: "items.data",
                expected: "an array"
            })
        );
        assert_eq!(
            subscription_facts(&sub(json!({"customer": 1}))),
            Err(EventError::WrongType {
                field: "customer",
                expected: "an id string or an object with a string `id`"
            })
        );
    }

    #[test]
    fn subscription_times_out_of_range_are_errors() {
        assert_eq!(
            subscription_facts(&sub(json!({"trial_end": -1}))),
            Err(EventError::WrongType {
                field: "trial_end",
                expected: "a Unix time between 1970 and 9999"
            })
        );
        let f = subscription_facts(&sub(
            json!({"items": {"data": [{"current_period_end": i64::MAX}]}}),
        ));
        assert!(matches!(f, Err(EventError::WrongType { field: "items.data[].current_period_end", .. })));
    }

    #[test]
    fn subscription_optional_fields_default() {
        let f = subscription_facts(&sub(json!({"customer": null, "trial_end": null}))).unwrap();
        assert_eq!(f.customer, None);
        assert_eq!(f.trial_end, None);
        assert_eq!(f.current_period_end, None);
        assert!(!f.cancel_at_period_end);
        assert!(f.items.is_empty());
    }

    #[test]
    fn checkout_facts_reads_fields() {
        let f = checkout_facts(&json!({
            "id": "cs_1", "object": "checkout.session", "customer": "cus_1",
            "subscription": {"id": "sub_1"}, "client_reference_id": "ws_ref",
            "metadata": {"workspace_id": "ws_1"}, "mode": "subscription"
        }))
        .unwrap();
        assert_eq!(
            f,
            CheckoutFacts {
                id: "cs_1".into(),
                customer: Some("cus_1".into()),
                subscription: Some("sub_1".into()),
                client_reference_id: Some("ws_ref".into()),
                metadata_workspace_id: Some("ws_1".into()),
                mode: Some("subscription".into()),
            }
        );
        assert_eq!(
            checkout_facts(&json!({"object": "checkout.session"})),
            Err(EventError::Missing("id"))
        );
        assert_eq!(
            checkout_facts(&json!({"id": "x", "object": "subscription"})),
            Err(EventError::WrongObject {
                expected: "checkout.session"
            })
        );
    }

    #[test]
    fn invoice_subscription_old_and_new_locations() {
        let old =
            invoice_facts(&json!({"id": "in_1", "customer": "cus_1", "subscription": "sub_old"}));
        assert_eq!(old.subscription.as_deref(), Some("sub_old"));
        let new = invoice_facts(&json!({"id": "in_2", "customer": {"id": "cus_2"},
            "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": "sub_new"}}}));
        assert_eq!(
            new,
            InvoiceFacts {
                id: Some("in_2".into()),
                customer: Some("cus_2".into()),
                subscription: Some("sub_new".into()),
            }
        );
        let none = invoice_facts(&json!({"parent": null, "subscription": null}));
        assert_eq!(
            none,
            InvoiceFacts {
                id: None,
                customer: None,
                subscription: None
            }
        );
        assert_eq!(invoice_facts(&json!("str")), none);
    }

    /// Each error the parser and the extractors produce, from a payload whose offending value
    /// is a marker: the message names the field and never carries the value.
    #[test]
    fn error_messages_name_fields_not_values() {
        const MARK: &str = "MARKER_c0ffee";
        let event = |created: Value, data: Value| {
            json!({"id": "evt_1", "type": "t", "created": created, "data": data}).to_string()
        };
        let envelope_errors = [
            (event(json!(MARK), json!({"object": {}})), "`created`"),
            (event(json!(1), json!(MARK)), "`data`"),
            (event(json!(1), json!({"object": MARK})), "`data.object`"),
            (json!({"id": {"k": MARK}, "type": "t", "created": 1, "data": {"object": {}}}).to_string(), "`id`"),
            (format!("{{\"id\": \"{MARK}\", oops}}"), "not valid JSON"),
        ];
        for (payload, names) in envelope_errors {
            let msg = parse_event(&payload).unwrap_err().to_string();
            assert!(msg.contains(names), "{msg} should name {names}");
            assert!(!msg.contains(MARK), "{msg} echoes the payload");
        }
        let object_errors = [
            (sub(json!({"status": MARK})), "`status`"),
            (sub(json!({"customer": [MARK]})), "`customer`"),
            (sub(json!({"trial_end": MARK})), "`trial_end`"),
            (sub(json!({"items": {"data": [MARK]}})), "`items.data[]`"),
            (sub(json!({"items": {"data": [{"price": {"id": [MARK]}}]}})), "`items.data[].price.id`"),
            (sub(json!({"metadata": {"workspace_id": [MARK]}})), "`metadata.workspace_id`"),
        ];
        for (object, names) in object_errors {
            let e = parse_event(&envelope(object)).unwrap();
            let msg = subscription_facts(&e.object).unwrap_err().to_string();
            assert!(msg.contains(names), "{msg} should name {names}");
            assert!(!msg.contains(MARK), "{msg} echoes the payload");
        }
    }
}
