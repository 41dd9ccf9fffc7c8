//! The SQL API of checks: thin glue between Postgres and the resolver.
//! Order of work for every check: authorize, read the inputs, decide, answer.

use crate::catalog::{self, FeatureInputs};
use crate::resolver::{self, Decision};
use crate::{audit, errors, gucs, identity};
use pgrx::prelude::*;
use pgrx::{composite_type, Uuid};

/// One answered check, before it becomes a `check_result` row.
pub struct Checked {
    pub feature: String,
    pub tier: String,
    pub decision: Decision,
    pub cached: bool,
    pub cache_ttl_remaining: Option<i32>,
    pub resolved_at: i64,
}

pub fn now() -> i64 {
    // SAFETY: reads the clock; no preconditions.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

pub fn resolve(inputs: &FeatureInputs, now: i64) -> Decision {
    resolver::decide(&resolver::Inputs {
        feature_min_level: inputs.min_level,
        billing: inputs.billing,
        override_: inputs.override_,
        past_due_grace: gucs::past_due_grace_micros(),
        now,
    })
}

/// Decide one (workspace, feature); raises 22023 for an unknown feature.
pub fn check_one(workspace_id: Uuid, feature: &str) -> Checked {
    let now = now();
    let Some(inputs) = catalog::feature_inputs(workspace_id, feature) else {
        errors::unknown_feature(feature)
    };
    let decision = resolve(&inputs, now);
    Checked {
        feature: inputs.feature,
        tier: inputs.tier,
        decision,
        cached: false,
        cache_ttl_remaining: None,
        resolved_at: now,
    }
}

/// Decide every catalog feature for a workspace.
pub fn check_all(workspace_id: Uuid) -> Vec<Checked> {
    let now = now();
    catalog::all_feature_inputs(workspace_id)
        .into_iter()
        .map(|inputs| {
            let decision = resolve(&inputs, now);
            Checked {
                feature: inputs.feature,
                tier: inputs.tier,
                decision,
                cached: false,
                cache_ttl_remaining: None,
                resolved_at: now,
            }
        })
        .collect()
}

fn timestamptz(t: i64) -> TimestampWithTimeZone {
    or_internal(TimestampWithTimeZone::try_from(t))
}

fn or_internal<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| errors::internal(e))
}

fn check_result(c: Checked) -> composite_type!('static, "check_result") {
    let mut row = or_internal(PgHeapTuple::new_composite_type("entitlements.check_result"));
    or_internal(row.set_by_name("feature", c.feature));
    or_internal(row.set_by_name("enabled", c.decision.enabled));
    or_internal(row.set_by_name("tier", c.tier));
    or_internal(row.set_by_name("reason", c.decision.reason.map(|r| r.code())));
    or_internal(row.set_by_name("cached", c.cached));
    or_internal(row.set_by_name("resolved_at", timestamptz(c.resolved_at)));
    or_internal(row.set_by_name("cache_ttl_remaining", c.cache_ttl_remaining));
    row
}

fn require<T>(value: Option<T>, name: &str) -> T {
    value.unwrap_or_else(|| errors::null_argument(name))
}

/// The audited check: one row for one feature.
#[pg_extern(volatile, parallel_restricted)]
fn entitlement_check(
    workspace_id: Option<Uuid>,
    feature: Option<&str>,
) -> composite_type!('static, "check_result") {
    let workspace_id = require(workspace_id, "workspace_id");
    let feature = require(feature, "feature");
    identity::authorize(workspace_id);
    let checked = check_one(workspace_id, feature);
    audit::record(workspace_id, &checked);
    check_result(checked)
}

/// Every catalog feature, one row each.
#[pg_extern(volatile, parallel_restricted)]
fn entitlement_check_all(
    workspace_id: Option<Uuid>,
) -> SetOfIterator<'static, composite_type!('static, "check_result")> {
    let workspace_id = require(workspace_id, "workspace_id");
    identity::authorize(workspace_id);
    SetOfIterator::new(check_all(workspace_id).into_iter().map(move |checked| {
        audit::record(workspace_id, &checked);
        check_result(checked)
    }))
}

/// The predicate for RLS policies: the same decision, no audit. NULL input, an unknown feature
/// or a workspace the caller is not a member of all answer false (a policy filters rows; it
/// should not fail the query). A non-privileged caller without any identity still gets 28000:
/// that is a misconfigured connection, and silence would hide it.
#[pg_extern(stable, parallel_restricted)]
fn has_entitlement(workspace_id: Option<Uuid>, feature: Option<&str>) -> bool {
    let (Some(workspace_id), Some(feature)) = (workspace_id, feature) else { return false };
    match identity::may_ask(workspace_id) {
        None => errors::no_identity(),
        Some(false) => return false,
        Some(true) => {}
    }
    match catalog::feature_inputs(workspace_id, feature) {
        Some(inputs) => resolve(&inputs, now()).enabled,
        None => false,
    }
}

/// The caller identity that RLS policies compare with `workspace_members.user_id`.
#[pg_extern(stable, parallel_safe)]
fn current_user_id() -> Option<String> {
    identity::current_user_id()
}

/// Uncached, unaudited decisions for every feature: what the matrix table and the views are
/// built from. Same authorization as the checks.
#[pg_extern(stable, parallel_restricted)]
fn decide_all(
    workspace_id: Uuid,
) -> TableIterator<
    'static,
    (
        name!(feature, String),
        name!(enabled, bool),
        name!(tier, String),
        name!(reason, Option<&'static str>),
        name!(valid_until, Option<TimestampWithTimeZone>),
    ),
> {
    identity::authorize(workspace_id);
    TableIterator::new(check_all(workspace_id).into_iter().map(|c| {
        (
            c.feature,
            c.decision.enabled,
            c.tier,
            c.decision.reason.map(|r| r.code()),
            c.decision.valid_until.map(timestamptz),
        )
    }))
}

/// The grace as an interval, for views (`SHOW` prints the GUC in its own unit form).
#[pg_extern(stable, parallel_safe)]
fn past_due_grace() -> pgrx::datum::Interval {
    pgrx::datum::Interval::new(0, 0, gucs::past_due_grace_micros())
        .unwrap_or_else(|e| errors::internal(e))
}
