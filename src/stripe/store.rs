//! The tables of Stripe ingestion (sql/stripe.sql), one function per question or write.
//! Every statement is planned once per backend and runs in SPI's read-write mode, so each one
//! takes a fresh snapshot: after waiting for a lock, a statement sees what the session that
//! held it committed (the customer lock below depends on that). Everything is
//! schema-qualified: the callers run with search_path pinned to pg_catalog, pg_temp.

use super::decide::{Outcome, Tier};
use crate::errors;
use crate::spi_write::{first, run, Stmt, BOOL, INT8, INT8_ARRAY, JSONB, TEXT, TEXT_ARRAY, UUID};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::collections::HashMap;
use std::ffi::CString;

// ---------------------------------------------------------------------------------------
// Secrets.

static ACTIVE_SECRETS: Stmt = Stmt {
    sql: "SELECT secret FROM entitlements.webhook_secrets
           WHERE expires_at IS NULL OR expires_at > clock_timestamp()",
    args: &[],
};

/// The secrets a header may be signed with now.
pub fn active_secrets() -> Vec<String> {
    run(&ACTIVE_SECRETS, &[], |table| {
        let mut out = Vec::with_capacity(table.len());
        for row in table {
            if let Some(s) = row.get::<String>(1)? {
                out.push(s);
            }
        }
        Ok(out)
    })
}

// ---------------------------------------------------------------------------------------
// The event log.

/// What identifies an event in the log, beside its payload.
pub struct EventKeys<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    pub created: i64,
    pub customer: Option<&'a str>,
    pub subscription: Option<&'a str>,
}

/// A verified payload as the jsonb it is recorded as, valid for the current call.
pub struct PayloadJsonb(pg_sys::Datum);

impl PayloadJsonb {
    /// Converts before anything is written. serde_json (event.rs) accepts a few texts that
    /// PostgreSQL's jsonb refuses, a number beyond `numeric`'s range such as `1e-99999`
    /// (22003) above all; any data exception (class 22) from the conversion therefore means a
    /// malformed payload and answers 22P02 like every other one, naming no content. Other
    /// errors (out of memory, a cancel) pass through unchanged. Either way an ERROR follows
    /// the caught one at once and aborts the transaction, as the original would have.
    pub fn convert(payload: &str) -> PayloadJsonb {
        // A text value cannot hold NUL, so this never fails; if it did, the payload is bad.
        let Ok(text) = CString::new(payload) else {
            errors::not_a_stripe_event("event payload contains a NUL byte")
        };
        let datum = PgTryBuilder::new(|| {
            // SAFETY: jsonb_in takes one cstring argument; `text` outlives the call, and
            // jsonb_in only reads it. It returns a jsonb palloc'd in the current memory
            // context (which lasts for this function call) or raises an ERROR.
            unsafe { pgrx::direct_function_call_as_datum(pg_sys::jsonb_in, &[Some(text.as_ptr().into())]) }
        })
        .catch_others(|e| match e {
            CaughtError::PostgresError(ref report) if is_data_exception(report.sql_error_code()) => {
                errors::not_a_stripe_event("event payload holds a value PostgreSQL's jsonb cannot store (such as a number beyond numeric's range)")
            }
            other => other.rethrow(),
        })
        .execute();
        PayloadJsonb(datum.unwrap_or_else(|| errors::internal("jsonb_in returned NULL")))
    }
}

/// SQLSTATE class 22: the low 12 bits of a packed SQLSTATE are its two class characters.
fn is_data_exception(code: PgSqlErrorCode) -> bool {
    const CLASS_BITS: isize = 0xFFF;
    (code as isize) & CLASS_BITS == (PgSqlErrorCode::ERRCODE_DATA_EXCEPTION as isize) & CLASS_BITS
}

static RECORD: Stmt = Stmt {
    sql: "INSERT INTO entitlements.stripe_events
                 (event_id, event_type, created, outcome, payload, stripe_customer_id,
                  stripe_subscription_id)
          VALUES ($1, $2, to_timestamp($3), $4, $5, $6, $7)
          ON CONFLICT (event_id) DO NOTHING
          RETURNING true",
    args: &[TEXT, TEXT, INT8, TEXT, JSONB, TEXT, TEXT],
};

/// Claims the event id. `false`: the id is already recorded (or was recorded by a session
/// that committed while this one waited on the unique index): a duplicate.
pub fn record(keys: &EventKeys<'_>, provisional: Outcome, payload: &PayloadJsonb) -> bool {
    // SAFETY: the datum is a jsonb made by `PayloadJsonb::convert` in this function call's
    // memory context, still alive while the statement runs.
    let payload = unsafe { DatumWithOid::new(payload.0, pg_sys::JSONBOID) };
    let args = [
        keys.event_id.into(),
        keys.event_type.into(),
        keys.created.into(),
        provisional.as_str().into(),
        payload,
        keys.customer.into(),
        keys.subscription.into(),
    ];
    run(&RECORD, &args, first::<bool>).unwrap_or(false)
}

static RECORDED_WORKSPACE: Stmt = Stmt {
    sql: "SELECT workspace_id FROM entitlements.stripe_events WHERE event_id = $1",
    args: &[TEXT],
};

pub fn recorded_workspace(event_id: &str) -> Option<Uuid> {
    run(&RECORDED_WORKSPACE, &[event_id.into()], first::<Uuid>)
}

static SET_OUTCOME: Stmt = Stmt {
    sql: "UPDATE entitlements.stripe_events SET outcome = $2, workspace_id = $3
           WHERE event_id = $1 AND (outcome, workspace_id) IS DISTINCT FROM ($2, $3)",
    args: &[TEXT, TEXT, UUID],
};

pub fn set_outcome(event_id: &str, outcome: Outcome, workspace: Option<Uuid>) {
    run(&SET_OUTCOME, &[event_id.into(), outcome.as_str().into(), workspace.into()], |_| Ok(()))
}

/// Recorded events as (event_id, payload), oldest `created` first, then arrival order.
fn events(stmt: &'static Stmt, args: &[DatumWithOid<'_>]) -> Vec<(String, String)> {
    run(stmt, args, |table| {
        let mut out = Vec::with_capacity(table.len());
        for row in table {
            if let (Some(id), Some(payload)) = (row.get::<String>(1)?, row.get::<String>(2)?) {
                out.push((id, payload));
            }
        }
        Ok(out)
    })
}

static PENDING: Stmt = Stmt {
    sql: "SELECT event_id, payload::text FROM entitlements.stripe_events
           WHERE outcome = 'unmapped'
             AND (stripe_customer_id = $1 OR stripe_subscription_id = $2)
             AND event_id <> $3
           ORDER BY created, arrival",
    args: &[TEXT, TEXT, TEXT],
};

/// Unmapped events of a customer or subscription, in order, except `current` (the event
/// being applied, recorded `unmapped` until it finishes).
pub fn pending(customer: Option<&str>, subscription: Option<&str>, current: &str) -> Vec<(String, String)> {
    events(&PENDING, &[customer.into(), subscription.into(), current.into()])
}

static REPLAY_SET: Stmt = Stmt {
    sql: "SELECT e.event_id, e.payload::text FROM entitlements.stripe_events e
           WHERE e.outcome <> 'ignored'
             AND ($1::uuid IS NULL
                  OR e.workspace_id = $1
                  OR e.stripe_customer_id IN (SELECT c.customer_id FROM entitlements.stripe_customers c
                                               WHERE c.workspace_id = $1)
                  OR e.stripe_subscription_id IN (SELECT s.subscription_id
                                                    FROM entitlements.stripe_subscriptions s
                                                   WHERE s.workspace_id = $1))
           ORDER BY e.created, e.arrival",
    args: &[UUID],
};

static REPLAY_START: Stmt = Stmt {
    // Replay must not interleave with live deliveries: ingestion writes this table (ROW
    // EXCLUSIVE), which SHARE ROW EXCLUSIVE excludes until the replay commits.
    sql: "LOCK TABLE entitlements.stripe_subscriptions IN SHARE ROW EXCLUSIVE MODE",
    args: &[],
};

static REPLAY_RESET: Stmt = Stmt {
    sql: "UPDATE entitlements.stripe_subscriptions SET last_created = NULL, last_event_id = NULL
           WHERE subscription_id IN (SELECT e.stripe_subscription_id FROM entitlements.stripe_events e
                                      WHERE e.event_id = ANY ($1))",
    args: &[TEXT_ARRAY],
};

/// The events a replay goes through, after forgetting the ordering state of their
/// subscriptions (the replay re-establishes it).
pub fn start_replay(workspace: Option<Uuid>) -> Vec<(String, String)> {
    run(&REPLAY_START, &[], |_| Ok(()));
    let set = events(&REPLAY_SET, &[workspace.into()]);
    let ids: Vec<String> = set.iter().map(|(id, _)| id.clone()).collect();
    if schema_has_grants() {
        run(&REPLAY_RESET_SUMMARIES, &[ids.clone().into()], |_| Ok(()));
    }
    run(&REPLAY_RESET, &[ids.into()], |_| Ok(()));
    set
}

// ---------------------------------------------------------------------------------------
// Links: which workspace a customer or subscription belongs to.

static ENSURE_CUSTOMER_LOCK: Stmt = Stmt {
    sql: "INSERT INTO entitlements.stripe_customer_locks (customer_id) VALUES ($1)
          ON CONFLICT (customer_id) DO NOTHING",
    args: &[TEXT],
};

static LOCK_CUSTOMER: Stmt = Stmt {
    sql: "SELECT 1 FROM entitlements.stripe_customer_locks WHERE customer_id = $1 FOR UPDATE",
    args: &[TEXT],
};

/// Serialises everything that maps or links one customer (events, link_stripe_customer), so
/// an event recorded `unmapped` is always seen by the link that would map it. The lock is a
/// row of a table only the extension writes (locking a row takes UPDATE rights, which no
/// other role has), not an advisory key any role could compute and hold. Waiting is bounded
/// by `pg_entitlements.stripe_lock_timeout`: a stuck holder fails the call with 55P03.
pub fn lock_customer(customer: &str) {
    with_lock_timeout(customer, || {
        if run(&HAS_CUSTOMER_LOCKS, &[], first::<bool>).unwrap_or(false) {
            // A first delivery for a customer inserts its row; a concurrent one waits on that
            // insert.
            run(&ENSURE_CUSTOMER_LOCK, &[customer.into()], |_| Ok(()));
            run(&LOCK_CUSTOMER, &[customer.into()], |_| Ok(()));
        } else {
            // A database whose schema is still 0.1.0's (the package was upgraded, ALTER
            // EXTENSION ... UPDATE not run yet) has no lock table: 0.1.0's advisory lock.
            run(&LOCK_CUSTOMER_0_1, &[customer.into()], |_| Ok(()));
        }
    });
}

static HAS_CUSTOMER_LOCKS: Stmt = Stmt {
    sql: "SELECT pg_catalog.to_regclass('entitlements.stripe_customer_locks') IS NOT NULL",
    args: &[],
};

static LOCK_CUSTOMER_0_1: Stmt = Stmt {
    sql: "SELECT pg_catalog.pg_advisory_xact_lock(21332, pg_catalog.hashtext($1))",
    args: &[TEXT],
};

/// Run `f` with `lock_timeout` set to the Stripe lock timeout for its duration only (the
/// caller's own setting is back afterwards); a lock timeout becomes a clear 55P03.
fn with_lock_timeout(customer: &str, f: impl FnOnce()) {
    let timeout = std::ffi::CString::new(format!("{}ms", crate::gucs::STRIPE_LOCK_TIMEOUT.get()))
        .unwrap_or_else(|e| errors::internal(e));
    crate::pgutil::with_setting(c"lock_timeout", &timeout, || {
        PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
            .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |_| {
                errors::stripe_customer_busy(customer, crate::gucs::STRIPE_LOCK_TIMEOUT.get())
            })
            .execute()
    });
}

static LINKS: Stmt = Stmt {
    sql: "SELECT (SELECT c.workspace_id FROM entitlements.stripe_customers c WHERE c.customer_id = $1),
                 (SELECT s.workspace_id FROM entitlements.stripe_subscriptions s
                   WHERE s.subscription_id = $2)",
    args: &[TEXT, TEXT],
};

/// (workspace of the customer, workspace of the subscription).
pub fn links(customer: Option<&str>, subscription: Option<&str>) -> (Option<Uuid>, Option<Uuid>) {
    run(&LINKS, &[customer.into(), subscription.into()], |table| {
        let row = table.first();
        Ok((row.get::<Uuid>(1)?, row.get::<Uuid>(2)?))
    })
}

static LINK_CUSTOMER: Stmt = Stmt {
    sql: "INSERT INTO entitlements.stripe_customers (customer_id, workspace_id, linked_by)
          VALUES ($1, $2, $3) ON CONFLICT (customer_id) DO NOTHING RETURNING true",
    args: &[TEXT, UUID, TEXT],
};

/// Links a customer that is not linked yet; `true` when this call linked it. The first link
/// wins: a customer is never moved to another workspace by an event.
pub fn link_customer(customer: &str, workspace: Uuid, linked_by: &str) -> bool {
    run(&LINK_CUSTOMER, &[customer.into(), workspace.into(), linked_by.into()], first::<bool>)
        .unwrap_or(false)
}

static LINK_SUBSCRIPTION: Stmt = Stmt {
    sql: "INSERT INTO entitlements.stripe_subscriptions AS s (subscription_id, customer_id, workspace_id)
          VALUES ($1, $2, $3)
          ON CONFLICT (subscription_id) DO UPDATE
             SET workspace_id = coalesce(s.workspace_id, EXCLUDED.workspace_id),
                 customer_id = coalesce(s.customer_id, EXCLUDED.customer_id)",
    args: &[TEXT, TEXT, UUID],
};

pub fn link_subscription(subscription: &str, customer: Option<&str>, workspace: Uuid) {
    run(&LINK_SUBSCRIPTION, &[subscription.into(), customer.into(), workspace.into()], |_| Ok(()))
}

// ---------------------------------------------------------------------------------------
// Tiers.

static TIER_CANDIDATES: Stmt = Stmt {
    sql: "SELECT p.stripe_id, t.tier, t.level
            FROM entitlements.stripe_price_tiers p JOIN entitlements.tiers t ON t.tier = p.tier
           WHERE p.stripe_id = ANY ($1)
          UNION ALL
          SELECT NULL, t.tier, t.level FROM entitlements.tiers t WHERE t.tier = ANY ($2)",
    args: &[TEXT_ARRAY, TEXT_ARRAY],
};

/// (stripe_price_tiers rows among `ids`, catalog tiers among `names`), for `decide::pick_tier`.
pub fn tier_candidates(ids: Vec<String>, names: Vec<String>) -> (HashMap<String, Tier>, HashMap<String, Tier>) {
    run(&TIER_CANDIDATES, &[ids.into(), names.into()], |table| {
        let (mut mapped, mut known) = (HashMap::new(), HashMap::new());
        for row in table {
            let (Some(tier), Some(level)) = (row.get::<String>(2)?, row.get::<i32>(3)?) else { continue };
            let t = Tier { tier: tier.clone(), level };
            match row.get::<String>(1)? {
                Some(id) => mapped.insert(id, t),
                None => known.insert(tier, t),
            };
        }
        Ok((mapped, known))
    })
}

// ---------------------------------------------------------------------------------------
// Ordering and billing state.

static ADVANCE: Stmt = Stmt {
    // One statement: creates or locks the subscription's row and moves its clock forward
    // unless the event is older than the last one applied. No row back = stale (the row is
    // locked either way until commit, which orders concurrent deliveries).
    sql: "INSERT INTO entitlements.stripe_subscriptions AS s
                 (subscription_id, customer_id, workspace_id, last_created, last_event_id)
          VALUES ($1, $2, $3, to_timestamp($4), $5)
          ON CONFLICT (subscription_id) DO UPDATE
             SET last_created = EXCLUDED.last_created, last_event_id = EXCLUDED.last_event_id,
                 workspace_id = EXCLUDED.workspace_id,
                 customer_id = coalesce(EXCLUDED.customer_id, s.customer_id), updated_at = now()
           WHERE s.last_created IS NULL OR s.last_created <= EXCLUDED.last_created
          RETURNING true",
    args: &[TEXT, TEXT, UUID, INT8, TEXT],
};

/// `false` when the event is stale for its subscription.
pub fn advance(subscription: &str, customer: Option<&str>, workspace: Uuid, created: i64, event_id: &str) -> bool {
    let args = [subscription.into(), customer.into(), workspace.into(), created.into(), event_id.into()];
    run(&ADVANCE, &args, first::<bool>).unwrap_or(false)
}

static CURRENT_SUBSCRIPTION: Stmt = Stmt {
    sql: "SELECT b.stripe_subscription_id, b.status, b.tier FROM entitlements.billing_state b
           WHERE b.workspace_id = $1 FOR UPDATE",
    args: &[UUID],
};

static PEEK_SUBSCRIPTION: Stmt = Stmt {
    sql: "SELECT b.stripe_subscription_id, b.status, b.tier FROM entitlements.billing_state b
           WHERE b.workspace_id = $1",
    args: &[UUID],
};

/// What a workspace's billing state follows now.
pub struct Current {
    /// The Stripe subscription id; empty when the state was set by hand.
    pub subscription: String,
    pub status: String,
    pub tier: String,
}

/// The subscription a workspace's billing state follows, its status and tier (row locked:
/// call after `advance`, which locks the subscription first; replay takes them in that order).
pub fn current_subscription(workspace: Uuid) -> Option<Current> {
    read_current(&CURRENT_SUBSCRIPTION, workspace)
}

/// The same, without a lock, for decisions taken before `advance`.
pub fn peek_subscription(workspace: Uuid) -> Option<Current> {
    read_current(&PEEK_SUBSCRIPTION, workspace)
}

fn read_current(stmt: &'static Stmt, workspace: Uuid) -> Option<Current> {
    run(stmt, &[workspace.into()], |table| {
        if table.is_empty() {
            return Ok(None);
        }
        let row = table.first();
        Ok(match (row.get::<String>(1)?, row.get::<String>(2)?, row.get::<String>(3)?) {
            (id, Some(status), Some(tier)) => Some(Current { subscription: id.unwrap_or_default(), status, tier }),
            _ => None,
        })
    })
}

// ---------------------------------------------------------------------------------------
// Stripe's catalog beyond the tier: item features (add-ons, quantities) and entitlement
// summaries. A database whose schema predates them (the library replaced, ALTER EXTENSION
// ... UPDATE not yet run) has none of these tables: ingestion then behaves as before them.

/// Does this database's schema have Stripe grants? Syscache lookups, no SPI.
pub fn schema_has_grants() -> bool {
    // SAFETY: catalog cache lookups by name, valid in any transaction; missing objects
    // answer InvalidOid.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"entitlements".as_ptr(), true);
        nsp != pg_sys::InvalidOid
            && pg_sys::get_relname_relid(c"stripe_feature_grants".as_ptr(), nsp) != pg_sys::InvalidOid
    }
}

static PRICE_FEATURES: Stmt = Stmt {
    sql: "SELECT p.stripe_id, p.feature, p.per_unit FROM entitlements.stripe_price_features p
           WHERE p.stripe_id = ANY ($1)",
    args: &[TEXT_ARRAY],
};

/// The stripe_price_features rows among `ids`: id -> [(feature, per_unit)].
pub fn price_features(ids: Vec<String>) -> HashMap<String, Vec<(String, Option<i64>)>> {
    run(&PRICE_FEATURES, &[ids.into()], |table| {
        let mut out: HashMap<String, Vec<(String, Option<i64>)>> = HashMap::new();
        for row in table {
            let (Some(id), Some(feature)) = (row.get::<String>(1)?, row.get::<String>(2)?) else { continue };
            out.entry(id).or_default().push((feature, row.get::<i64>(3)?));
        }
        for features in out.values_mut() {
            features.sort();
        }
        Ok(out)
    })
}

static HAS_ITEM_GRANTS: Stmt = Stmt {
    sql: "SELECT EXISTS (SELECT 1 FROM entitlements.stripe_feature_grants g
                          WHERE g.workspace_id = $1 AND g.via = 'item')",
    args: &[UUID],
};

static CLEAR_ITEM_GRANTS: Stmt = Stmt {
    sql: "DELETE FROM entitlements.stripe_feature_grants g WHERE g.workspace_id = $1 AND g.via = 'item'",
    args: &[UUID],
};

static ADD_ITEM_GRANTS: Stmt = Stmt {
    sql: "INSERT INTO entitlements.stripe_feature_grants
                 (workspace_id, feature, via, grant_key, stripe_id, customer_id, subscription_id,
                  quantity, per_unit, units, event_id)
          SELECT $1, i.feature, 'item', i.item, i.stripe_id, $2, $3, i.quantity, i.per_unit, i.units, $4
            FROM unnest($5::text[], $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[])
                 AS i(item, stripe_id, feature, quantity, per_unit, units)",
    args: &[UUID, TEXT, TEXT, TEXT, TEXT_ARRAY, TEXT_ARRAY, TEXT_ARRAY, INT8_ARRAY, INT8_ARRAY, INT8_ARRAY],
};

/// The features the items of the subscription a workspace follows grant, replacing the
/// previous event's (a removed item takes its part with it).
pub fn replace_item_grants(
    workspace: Uuid,
    customer: Option<&str>,
    subscription: &str,
    event_id: &str,
    grants: &[super::decide::ItemGrant],
) {
    // Most subscriptions' items grant no feature: then there is nothing to clear, and the
    // DELETE (whose statement triggers mark the transaction as changing decision inputs) is
    // skipped.
    if run(&HAS_ITEM_GRANTS, &[workspace.into()], first::<bool>) == Some(true) {
        run(&CLEAR_ITEM_GRANTS, &[workspace.into()], |_| Ok(()));
    }
    if grants.is_empty() {
        return;
    }
    let col = |f: fn(&super::decide::ItemGrant) -> String| grants.iter().map(f).collect::<Vec<String>>();
    let num = |f: fn(&super::decide::ItemGrant) -> Option<i64>| grants.iter().map(f).collect::<Vec<Option<i64>>>();
    let args = [
        workspace.into(),
        customer.into(),
        subscription.into(),
        event_id.into(),
        col(|g| g.item.clone()).into(),
        col(|g| g.stripe_id.clone()).into(),
        col(|g| g.feature.clone()).into(),
        num(|g| g.quantity).into(),
        num(|g| g.per_unit).into(),
        num(|g| g.units).into(),
    ];
    run(&ADD_ITEM_GRANTS, &args, |_| Ok(()))
}

static FEATURE_MAP: Stmt = Stmt {
    sql: "SELECT m.lookup_key, m.feature FROM entitlements.stripe_feature_map m WHERE m.lookup_key = ANY ($1)",
    args: &[TEXT_ARRAY],
};

/// The stripe_feature_map rows among `lookup_keys`.
pub fn feature_map(lookup_keys: Vec<String>) -> HashMap<String, String> {
    run(&FEATURE_MAP, &[lookup_keys.into()], |table| {
        let mut out = HashMap::new();
        for row in table {
            if let (Some(k), Some(f)) = (row.get::<String>(1)?, row.get::<String>(2)?) {
                out.insert(k, f);
            }
        }
        Ok(out)
    })
}

static ADVANCE_SUMMARY: Stmt = Stmt {
    // As ADVANCE for subscriptions: creates or locks the customer's row and moves its clock
    // forward unless the summary is older than the last one applied (no row back = stale).
    sql: "INSERT INTO entitlements.stripe_entitlement_summaries AS s
                 (customer_id, workspace_id, last_created, last_event_id, complete)
          VALUES ($1, $2, to_timestamp($3), $4, $5)
          ON CONFLICT (customer_id) DO UPDATE
             SET workspace_id = EXCLUDED.workspace_id, last_created = EXCLUDED.last_created,
                 last_event_id = EXCLUDED.last_event_id, complete = EXCLUDED.complete,
                 updated_at = now()
           WHERE s.last_created IS NULL OR s.last_created <= EXCLUDED.last_created
          RETURNING true",
    args: &[TEXT, UUID, INT8, TEXT, BOOL],
};

/// `false` when the summary is stale for its customer.
pub fn advance_summary(customer: &str, workspace: Uuid, created: i64, event_id: &str, complete: bool) -> bool {
    let args = [customer.into(), workspace.into(), created.into(), event_id.into(), complete.into()];
    run(&ADVANCE_SUMMARY, &args, first::<bool>).unwrap_or(false)
}

static REVOKE_ENTITLEMENTS: Stmt = Stmt {
    sql: "DELETE FROM entitlements.stripe_feature_grants g
           WHERE g.via = 'entitlement' AND g.customer_id = $1
             AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::text[]) AS k(lookup_key, feature)
                              WHERE k.lookup_key = g.stripe_id AND k.feature = g.feature
                                AND g.workspace_id = $4)",
    args: &[TEXT, TEXT_ARRAY, TEXT_ARRAY, UUID],
};

static GRANT_ENTITLEMENTS: Stmt = Stmt {
    sql: "INSERT INTO entitlements.stripe_feature_grants AS g
                 (workspace_id, feature, via, grant_key, stripe_id, customer_id, event_id)
          SELECT $1, k.feature, 'entitlement', $4 || '/' || k.lookup_key, k.lookup_key, $4, $5
            FROM unnest($2::text[], $3::text[]) AS k(lookup_key, feature)
          ON CONFLICT ON CONSTRAINT stripe_feature_grants_pkey DO NOTHING",
    args: &[UUID, TEXT_ARRAY, TEXT_ARRAY, TEXT, TEXT],
};

/// Grants the customer's workspace the mapped features of a summary; `complete`: also ends
/// the customer's entitlement grants the summary no longer lists. A grant is keyed by customer
/// and lookup_key, so two customers of one workspace granting one feature keep it apart.
pub fn apply_entitlements(workspace: Uuid, customer: &str, event_id: &str, grants: &[(String, String)], complete: bool) {
    let keys: Vec<String> = grants.iter().map(|(k, _)| k.clone()).collect();
    let features: Vec<String> = grants.iter().map(|(_, f)| f.clone()).collect();
    if complete {
        let args = [customer.into(), keys.clone().into(), features.clone().into(), workspace.into()];
        run(&REVOKE_ENTITLEMENTS, &args, |_| Ok(()));
    }
    if !grants.is_empty() {
        let args = [workspace.into(), keys.into(), features.into(), customer.into(), event_id.into()];
        run(&GRANT_ENTITLEMENTS, &args, |_| Ok(()));
    }
}

static SET_DETAIL: Stmt = Stmt {
    sql: "UPDATE entitlements.stripe_events SET outcome_detail = $2::jsonb WHERE event_id = $1
             AND outcome_detail IS DISTINCT FROM $2::jsonb",
    args: &[TEXT, TEXT],
};

/// What an entitlement summary's application counted (mapped and unknown lookup_keys), on
/// its row of the event log.
pub fn set_summary_detail(event_id: &str, granted: usize, unknown: &[String]) {
    let detail = format!(
        "{{\"granted\": {granted}, \"unknown_lookup_keys\": {}}}",
        unknown.len()
    );
    run(&SET_DETAIL, &[event_id.into(), detail.into()], |_| Ok(()))
}

static REPLAY_RESET_SUMMARIES: Stmt = Stmt {
    sql: "UPDATE entitlements.stripe_entitlement_summaries SET last_created = NULL, last_event_id = NULL
           WHERE customer_id IN (SELECT e.stripe_customer_id FROM entitlements.stripe_events e
                                  WHERE e.event_id = ANY ($1))",
    args: &[TEXT_ARRAY],
};

#[cfg(test)]
mod tests {
    use super::is_data_exception;
    use pgrx::prelude::PgSqlErrorCode::*;

    #[test]
    fn data_exceptions_are_class_22_only() {
        for code in [ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE, ERRCODE_UNTRANSLATABLE_CHARACTER,
                     ERRCODE_INVALID_TEXT_REPRESENTATION, ERRCODE_DATA_EXCEPTION] {
            assert!(is_data_exception(code), "{code:?}");
        }
        for code in [ERRCODE_PROGRAM_LIMIT_EXCEEDED, ERRCODE_QUERY_CANCELED, ERRCODE_OUT_OF_MEMORY,
                     ERRCODE_INTERNAL_ERROR, ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION] {
            assert!(!is_data_exception(code), "{code:?}");
        }
    }
}
