//! The SQL API of checks: thin glue between Postgres and the resolver.
//! Order of work for every check: authorize, read the inputs, decide, answer.

use crate::cache::{self, table::{Allowance, Entry, Key}};
use crate::catalog::{self, FeatureInputs};
use crate::resolver::{self, Decision, Usage};
use crate::pgutil::{now, require, timestamptz};
use crate::spi_read::Snapshot;
use crate::{audit, errors, gucs, identity};
use pgrx::prelude::*;
use pgrx::Uuid;

/// One answered check, before it becomes a `check_result` row.
pub struct Checked {
    pub feature: String,
    pub tier: String,
    pub decision: Decision,
    pub cached: bool,
    pub cache_ttl_remaining: Option<i32>,
    pub resolved_at: i64,
    /// The time of the check itself (the clock read that decided it), what the audit records.
    pub checked_at: i64,
    /// The tier a paywall offers (see `required_tier`).
    pub required_tier: Option<String>,
}

/// The feature's min tier when subscribing to it could lift the denial; `None` when allowed or
/// when no tier would (`Reason::lifted_by_a_tier`). `min_tier` is only asked for then.
fn required_tier(decision: &Decision, min_tier: impl FnOnce() -> Option<String>) -> Option<String> {
    match decision.reason {
        Some(reason) if !decision.enabled && reason.lifted_by_a_tier() => min_tier(),
        _ => None,
    }
}

fn resolver_inputs(inputs: &FeatureInputs, now: i64, past_due_grace: i64) -> resolver::Inputs {
    resolver::Inputs {
        feature_min_level: inputs.min_level,
        billing: inputs.billing,
        override_: inputs.override_,
        stripe_grant: inputs.stripe_grant,
        usage: inputs.usage,
        past_due_grace,
        now,
    }
}

pub fn resolve(inputs: &FeatureInputs, now: i64, past_due_grace: i64) -> Decision {
    resolver::decide(&resolver_inputs(inputs, now, past_due_grace))
}

/// The feature's rules without its usage limit (what `consume` decides the limit of itself,
/// under the counter's lock); `None` for a feature the catalog does not know.
pub fn decide_access_uncached(workspace_id: Uuid, feature: &str) -> Option<Decision> {
    let inputs = cache::read_decision_inputs(|s| catalog::feature_access_inputs(workspace_id, feature, s))?;
    Some(resolver::decide_access(&resolver_inputs(&inputs, now(), gucs::past_due_grace_micros())))
}

fn cache_key<'a>(workspace_id: &Uuid, feature: &'a str) -> Key<'a> {
    Key { database: cache::database(), workspace: *workspace_id.as_bytes(), feature }
}

/// A cached entry's decision. A metered or counted feature's entry holds its rules' decision
/// and its limit; the counter, which every consume moves, is read now (latest committed).
fn cached_decision(workspace_id: &Uuid, feature: &str, e: &Entry) -> Decision {
    let access = Decision { enabled: e.enabled, reason: e.reason, valid_until: None };
    match e.usage {
        None => access,
        Some(a) => {
            let used = cache::read_decision_inputs(|s| catalog::used_in_period(*workspace_id, feature, a.period_start, s));
            resolver::within_limit(access, Some(Usage { used, limit: a.limit }))
        }
    }
}

fn from_cache(workspace_id: &Uuid, feature: &str, e: &Entry, now: i64, reader: &cache::Reader) -> Checked {
    let decision = cached_decision(workspace_id, feature, e);
    Checked {
        feature: feature.to_owned(),
        tier: e.tier().to_owned(),
        required_tier: required_tier(&decision, || catalog::min_tier_cached(reader, feature)),
        decision,
        cached: true,
        cache_ttl_remaining: Some(cache::ttl_seconds(e.expires_at, now)),
        resolved_at: e.cached_at,
        checked_at: now,
    }
}

fn computed(inputs: FeatureInputs, decision: Decision, now: i64, reader: Option<&cache::Reader>, workspace_id: &Uuid) -> Checked {
    let ttl = reader.and_then(|r| store(r, workspace_id, &inputs, decision, now, r.grace()));
    Checked {
        required_tier: required_tier(&decision, || Some(inputs.min_tier)),
        feature: inputs.feature,
        tier: inputs.tier,
        decision,
        cached: false,
        cache_ttl_remaining: ttl,
        resolved_at: now,
        checked_at: now,
    }
}

/// Put a decision computed from `inputs` into the cache. A metered or counted feature's
/// decision depends on its counter, which is never cached: its entry holds the rules'
/// decision (rules 1 to 5) with the limit and period instead, valid while both are.
fn store(r: &cache::Reader, workspace_id: &Uuid, inputs: &FeatureInputs, decision: Decision, now: i64, grace: i64) -> Option<i32> {
    let key = cache_key(workspace_id, &inputs.feature);
    match inputs.allowance {
        None => r.put(&key, decision.enabled, decision.reason, &inputs.tier, decision.valid_until, None),
        Some((allowance, allowance_valid_until)) => {
            let access = resolver::decide_access(&resolver_inputs(inputs, now, grace));
            let valid_until = match (access.valid_until, allowance_valid_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            r.put(&key, access.enabled, access.reason, &inputs.tier, valid_until, Some(allowance))
        }
    }
}

/// A metered or counted feature's rules' decision (rules 1 to 5) and its limit and period,
/// through the cache: what `consume` needs besides the counter. `None` when the cache cannot
/// be used in this transaction, or the feature is unknown or boolean (the caller then takes
/// the uncached path, which says why).
pub fn cached_allowance(workspace_id: Uuid, feature: &str) -> Option<(Decision, Allowance)> {
    let now = now();
    let grace = gucs::past_due_grace_micros();
    let reader = cache::reader(now, grace, workspace_id.as_bytes())?;
    if let Some(e) = reader.get(&cache_key(&workspace_id, feature)) {
        let access = Decision { enabled: e.enabled, reason: e.reason, valid_until: None };
        return e.usage.map(|a| (access, a));
    }
    let inputs = cache::read_decision_inputs(|s| catalog::feature_inputs(workspace_id, feature, s))?;
    let (allowance, _) = inputs.allowance?;
    let access = resolver::decide_access(&resolver_inputs(&inputs, now, grace));
    store(&reader, &workspace_id, &inputs, access, now, grace);
    Some((access, allowance))
}

/// Decide one (workspace, feature), through the cache; `None` for a feature the catalog
/// does not know.
pub fn check_one(workspace_id: Uuid, feature: &str) -> Option<Checked> {
    let now = now();
    let grace = gucs::past_due_grace_micros();
    let reader = cache::reader(now, grace, workspace_id.as_bytes());
    if let Some(r) = &reader {
        if let Some(e) = r.get(&cache_key(&workspace_id, feature)) {
            return Some(from_cache(&workspace_id, feature, &e, now, r));
        }
    }
    let inputs = cache::read_decision_inputs(|s| catalog::feature_inputs(workspace_id, feature, s))?;
    let decision = resolve(&inputs, now, grace);
    Some(computed(inputs, decision, now, reader.as_ref(), &workspace_id))
}

/// Decide every catalog feature for a workspace: from the cache when every feature is there,
/// else from one catalog read (which refills the cache).
pub fn check_all(workspace_id: Uuid) -> Vec<Checked> {
    let now = now();
    let grace = gucs::past_due_grace_micros();
    let reader = cache::reader(now, grace, workspace_id.as_bytes());
    if let Some(r) = &reader {
        if let Some(names) = catalog::feature_names_cached(r) {
            let hits: Option<Vec<Checked>> = names
                .iter()
                .map(|f| r.get(&cache_key(&workspace_id, f)).map(|e| from_cache(&workspace_id, f, &e, now, r)))
                .collect();
            if let Some(hits) = hits {
                return hits;
            }
        }
    }
    decide_all_uncached(workspace_id, now, grace)
        .into_iter()
        .map(|(inputs, decision)| computed(inputs, decision, now, reader.as_ref(), &workspace_id))
        .collect()
}

/// Every feature's decision from one catalog read, uncached (with its `valid_until`).
fn decide_all_uncached(workspace_id: Uuid, now: i64, grace: i64) -> Vec<(FeatureInputs, Decision)> {
    cache::read_decision_inputs(|s: Snapshot| catalog::all_feature_inputs(workspace_id, s))
        .into_iter()
        .map(|inputs| {
            let d = resolve(&inputs, now, grace);
            (inputs, d)
        })
        .collect()
}

/// The `check_result` row as a composite datum, formed directly (the hot path: no per-call
/// type lookup, one tuple formation).
///
/// # Safety
/// `tupdesc` must describe `entitlements.check_result`.
unsafe fn check_result_datum(tupdesc: pg_sys::TupleDesc, c: &Checked) -> pg_sys::Datum {
    let text = |s: &str| s.into_datum().unwrap_or(pg_sys::Datum::from(0));
    let reason = c.decision.reason.map(|r| r.code());
    let mut values = [
        text(&c.feature),
        pg_sys::Datum::from(c.decision.enabled),
        text(&c.tier),
        reason.map_or(pg_sys::Datum::from(0), text),
        pg_sys::Datum::from(c.cached),
        pg_sys::Datum::from(c.resolved_at),
        pg_sys::Datum::from(c.cache_ttl_remaining.unwrap_or(0)),
        c.required_tier.as_deref().map_or(pg_sys::Datum::from(0), text),
    ];
    let mut nulls = [
        false,
        false,
        false,
        reason.is_none(),
        false,
        false,
        c.cache_ttl_remaining.is_none(),
        c.required_tier.is_none(),
    ];
    // SAFETY: values and nulls have one element per attribute of check_result, with the
    // attribute's type; none is toasted, so the header is a valid composite datum as is.
    unsafe {
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::Datum::from((*tuple).t_data)
    }
}

/// The result row's descriptor, from the function's declared result type.
///
/// # Safety
/// `fcinfo` must be the current call's.
unsafe fn result_tupdesc(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
    // SAFETY: as the caller promises.
    let kind = unsafe { pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc) };
    if kind != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE || tupdesc.is_null() {
        errors::internal("check_result is not a composite type");
    }
    tupdesc
}

/// A formed `check_result` datum, returned as is.
pub struct CheckResultRow(pg_sys::Datum);

pgrx::impl_sql_translatable!(CheckResultRow, "entitlements.check_result");

// SAFETY: the datum is a complete composite value allocated in the call's memory context.
unsafe impl pgrx::callconv::BoxRet for CheckResultRow {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut pgrx::callconv::FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        // SAFETY: as above.
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

/// What the audit records of one answered check, at the time of the check (not the time
/// its cached decision was made).
fn audited(workspace_id: Uuid, c: &Checked) -> audit::Check<'_> {
    audit::Check {
        checked_at: c.checked_at,
        workspace_id: *workspace_id.as_bytes(),
        feature: &c.feature,
        enabled: c.decision.enabled,
        reason: c.decision.reason,
        cached: c.cached,
        quantity: None,
    }
}

/// The audited check: one row for one feature.
#[pg_extern(volatile, parallel_restricted)]
fn entitlement_check(
    workspace_id: Option<Uuid>,
    feature: Option<&str>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> CheckResultRow {
    crate::replica::await_min_lsn();
    let workspace_id = require(workspace_id, "workspace_id");
    let feature = require(feature, "feature");
    identity::authorize(workspace_id);
    let checked = check_one(workspace_id, feature).unwrap_or_else(|| errors::unknown_feature(feature));
    audit::record(&audited(workspace_id, &checked));
    // SAFETY: fcinfo is this call's; the descriptor is check_result's.
    unsafe { CheckResultRow(check_result_datum(call_site_tupdesc(fcinfo), &checked)) }
}

/// The result row's descriptor of a function returning one composite, built once per call
/// site and kept in fn_extra (in fn_mcxt, which lives as long as the call site), so a hot call
/// forms one tuple and nothing else.
///
/// # Safety
/// `fcinfo` must be the current call's, of a function that uses fn_extra for nothing else.
pub(crate) unsafe fn call_site_tupdesc(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::TupleDesc {
    // SAFETY: as the caller promises.
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        if (*flinfo).fn_extra.is_null() {
            let desc = result_tupdesc(fcinfo);
            let old = pg_sys::MemoryContextSwitchTo((*flinfo).fn_mcxt);
            (*flinfo).fn_extra = pg_sys::CreateTupleDescCopy(desc).cast();
            pg_sys::MemoryContextSwitchTo(old);
        }
        (*flinfo).fn_extra.cast()
    }
}

/// Every catalog feature, one row each.
#[pg_extern(volatile, parallel_restricted)]
fn entitlement_check_all(
    workspace_id: Option<Uuid>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> SetOfIterator<'static, CheckResultRow> {
    crate::replica::await_min_lsn();
    let workspace_id = require(workspace_id, "workspace_id");
    identity::authorize(workspace_id);
    // SAFETY: fcinfo is this call's; the descriptor is copied into this (first) call's
    // context, which pgrx keeps for the whole set.
    let tupdesc = unsafe { pg_sys::CreateTupleDescCopy(result_tupdesc(fcinfo)) };
    // Each row is recorded as it is returned (rows a LIMIT never fetches are not checks).
    SetOfIterator::new(check_all(workspace_id).into_iter().map(move |checked| {
        audit::record(&audited(workspace_id, &checked));
        // SAFETY: tupdesc is check_result's, from this function's declared result type.
        CheckResultRow(unsafe { check_result_datum(tupdesc, &checked) })
    }))
}

/// The check for several features at once: one row per feature, in the order given (a
/// feature given twice is answered twice), each audited as it is returned. Every feature is
/// decided before the first row goes out, so an unknown one fails the call (22023) before
/// the caller has seen, or the audit recorded, any row.
#[pg_extern(volatile, parallel_restricted)]
fn entitlement_check_many(
    workspace_id: Option<Uuid>,
    features: Option<Vec<Option<String>>>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> SetOfIterator<'static, CheckResultRow> {
    crate::replica::await_min_lsn();
    let workspace_id = require(workspace_id, "workspace_id");
    let features = require(features, "features");
    identity::authorize(workspace_id);
    let checked: Vec<Checked> = features
        .iter()
        .map(|f| {
            let feature = require(f.as_deref(), "feature");
            check_one(workspace_id, feature).unwrap_or_else(|| errors::unknown_feature(feature))
        })
        .collect();
    // SAFETY: as in entitlement_check_all.
    let tupdesc = unsafe { pg_sys::CreateTupleDescCopy(result_tupdesc(fcinfo)) };
    SetOfIterator::new(checked.into_iter().map(move |checked| {
        audit::record(&audited(workspace_id, &checked));
        // SAFETY: tupdesc is check_result's, from this function's declared result type.
        CheckResultRow(unsafe { check_result_datum(tupdesc, &checked) })
    }))
}

/// The predicate for RLS policies: the same decision, no audit. NULL input, an unknown feature
/// or a workspace the caller is not a member of all answer false (a policy filters rows; it
/// should not fail the query). A non-privileged caller without any identity still gets 28000:
/// that is a misconfigured connection, and silence would hide it.
#[pg_extern(stable, parallel_restricted)]
fn has_entitlement(workspace_id: Option<Uuid>, feature: Option<&str>) -> bool {
    crate::replica::await_min_lsn();
    let (Some(workspace_id), Some(feature)) = (workspace_id, feature) else { return false };
    identity::may_ask(workspace_id) && check_one(workspace_id, feature).is_some_and(|c| c.decision.enabled)
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
    crate::replica::await_min_lsn();
    identity::authorize(workspace_id);
    TableIterator::new(decide_all_uncached(workspace_id, now(), gucs::past_due_grace_micros()).into_iter().map(|(inputs, d)| {
        (inputs.feature, d.enabled, inputs.tier, d.reason.map(|r| r.code()), d.valid_until.map(timestamptz))
    }))
}

/// The paywall's list: every feature the workspace is denied, with the reason and the tier
/// that unlocks it (NULL when no tier would, e.g. an admin revoked it). Unaudited, uncached,
/// authorized as the checks are.
#[pg_extern(stable, parallel_restricted)]
fn upgrade_options(
    workspace_id: Option<Uuid>,
) -> TableIterator<
    'static,
    (name!(feature, String), name!(reason, Option<&'static str>), name!(required_tier, Option<String>)),
> {
    let workspace_id = require(workspace_id, "workspace_id");
    identity::authorize(workspace_id);
    let rows: Vec<_> = decide_all_uncached(workspace_id, now(), gucs::past_due_grace_micros())
        .into_iter()
        .filter(|(_, d)| !d.enabled)
        .map(|(inputs, d)| {
            let tier = required_tier(&d, || Some(inputs.min_tier));
            (inputs.feature, d.reason.map(|r| r.code()), tier)
        })
        .collect();
    TableIterator::new(rows)
}

/// The grace as an interval, for views (`SHOW` prints the GUC in its own unit form).
#[pg_extern(stable, parallel_safe)]
fn past_due_grace() -> pgrx::datum::Interval {
    pgrx::datum::Interval::new(0, 0, gucs::past_due_grace_micros())
        .unwrap_or_else(|e| errors::internal(e))
}
