//! Usage limits: `consume`, `refund`, `usage` and `usage_all`. The library authorizes the
//! caller (as the checks do) and decides the feature's rules; the counter is written as the
//! owner of the usage tables (the extension's owner), because the caller may read usage but
//! never write it.
//!
//! A `consume` without an idempotency key takes the fast path when the decision cache holds
//! the feature's rules' decision, limit and period for the workspace (`api::cached_allowance`):
//! one conditional UPDATE of the counter row, which takes the quantity only if the row is in
//! the current period, the hard limit allows it and no usage threshold is reached for the
//! first time (and for the workspace's first consume, one INSERT of the row on the same
//! conditions). Below the first threshold that UPDATE compares `used` with one bound; at or
//! past it, a second UPDATE looks at the thresholds already announced. Anything else (a new
//! period, a refusal, a threshold to announce, a key, a refund, a read) goes to
//! `entitlements.usage_apply` in sql/limits.sql, which holds the whole rule set; the fast
//! path only ever does what it would have done.

use crate::pgutil::{require, timestamptz};
use crate::cache::table::Allowance;
use crate::spi_read::{self, Snapshot, Stmt};
use crate::resolver::Reason;
use crate::{api, audit, errors, identity};
use pgrx::pg_sys::{self, BuiltinOid};
use pgrx::prelude::*;
use pgrx::Uuid;

const UUID: pg_sys::Oid = BuiltinOid::UUIDOID.value();
const TEXT: pg_sys::Oid = BuiltinOid::TEXTOID.value();
const INT8: pg_sys::Oid = BuiltinOid::INT8OID.value();
const TIMESTAMPTZ: pg_sys::Oid = BuiltinOid::TIMESTAMPTZOID.value();
const INT4_ARRAY: pg_sys::Oid = BuiltinOid::INT4ARRAYOID.value();
const INT8_ARRAY: pg_sys::Oid = BuiltinOid::INT8ARRAYOID.value();

static APPLY: Stmt = Stmt {
    sql: "SELECT entitlements.usage_apply($1, $2, $3, $4, $5, $6)",
    args: &[UUID, TEXT, INT8, TEXT, TEXT, TEXT],
};
/// The fast path's common case: the counter's new `used` when the quantity fits under $5, the
/// highest `used` to which it may be added without reaching the hard limit or the first usage
/// threshold (`below_first_threshold`); no row otherwise, and TAKE decides. The same shape as
/// a bare conditional UPDATE of a counter.
static TAKE_BELOW: Stmt = Stmt {
    sql: "UPDATE entitlements.usage_counters uc
             SET used = uc.used + $3
           WHERE uc.workspace_id = $1 AND uc.feature = $2 AND uc.period_start = $4 AND uc.used <= $5
       RETURNING uc.used",
    args: &[UUID, TEXT, INT8, TIMESTAMPTZ, INT8],
};
/// The fast path of `consume` (see the module comment): the counter's new `used`, or no row.
/// $4: the period's start; $5: the highest `used` the hard limit lets the quantity be added
/// to (the limit minus the quantity; the largest bigint when no hard limit applies); $6: the
/// thresholds (ascending) and $7 the lowest use that reaches each (both empty when no use can
/// announce anything). The thresholds a use reaches are the first width_bucket(use, $7) of
/// $6; the UPDATE takes the quantity only if they have all been announced already. The
/// conditions are computed by the caller as far as they can be, so that the statement's
/// expressions stay few: they are prepared again by every execution. The row is locked by
/// the UPDATE, and in READ COMMITTED the conditions are checked again on the latest version
/// when it waits for another consumer, so a hard limit is never exceeded.
static TAKE: Stmt = Stmt {
    sql: "UPDATE entitlements.usage_counters uc
             SET used = uc.used + $3
           WHERE uc.workspace_id = $1 AND uc.feature = $2 AND uc.period_start = $4
             AND uc.used <= $5
             AND uc.thresholds_notified @> $6[1:width_bucket(uc.used + $3, $7)]
       RETURNING uc.used",
    args: &[UUID, TEXT, INT8, TIMESTAMPTZ, INT8, INT4_ARRAY, INT8_ARRAY, TIMESTAMPTZ],
};
/// The workspace's first consume of the feature: the counter row, created with the quantity
/// when TAKE's conditions hold for a row at 0 (nothing announced yet), as usage_apply would
/// leave it. A row another transaction created meanwhile is left to usage_apply.
static OPEN: Stmt = Stmt {
    sql: "INSERT INTO entitlements.usage_counters AS uc (workspace_id, feature, period_start, period_end, used)
          SELECT $1, $2, $4, $8, $3
           WHERE 0 <= $5 AND width_bucket($3, $7) = 0
          ON CONFLICT ON CONSTRAINT usage_counters_pkey DO NOTHING
       RETURNING uc.used",
    args: &[UUID, TEXT, INT8, TIMESTAMPTZ, INT8, INT4_ARRAY, INT8_ARRAY, TIMESTAMPTZ],
};
static METERED: Stmt = Stmt {
    sql: "SELECT f.feature FROM entitlements.features f
           WHERE f.kind <> 'boolean' ORDER BY f.feature",
    args: &[],
};

/// An `entitlements.usage_result` datum, returned as is.
pub struct UsageResultRow(pg_sys::Datum);

pgrx::impl_sql_translatable!(UsageResultRow, "entitlements.usage_result");

// SAFETY: the datum is a complete composite value, copied into the call's memory context.
unsafe impl pgrx::callconv::BoxRet for UsageResultRow {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut pgrx::callconv::FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        // SAFETY: as above.
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Consume,
    Refund,
    Read,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Consume => "consume",
            Op::Refund => "refund",
            Op::Read => "read",
        }
    }
}

/// The owner of `entitlements.usage_counters`: the extension's owner, the one role that
/// writes usage. From the syscache, so it follows an owner change exactly and costs no query:
/// the table's and its schema's OIDs are remembered, and each call reads the table's pg_class
/// row by OID and checks that it is still `usage_counters` in that schema (a dropped and
/// re-created extension gives both new OIDs, and the names are looked up again).
fn usage_owner() -> pg_sys::Oid {
    thread_local! {
        static TABLE: std::cell::Cell<(pg_sys::Oid, pg_sys::Oid)> =
            const { std::cell::Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
    }
    // SAFETY: syscache lookups inside a transaction; each tuple is read only while pinned and
    // released before returning.
    unsafe {
        let owner_of = |(ns, rel): (pg_sys::Oid, pg_sys::Oid)| {
            if rel == pg_sys::InvalidOid {
                return None;
            }
            let tuple = pg_sys::SearchSysCache1(pg_sys::SysCacheIdentifier::RELOID as i32, pg_sys::Datum::from(rel));
            if tuple.is_null() {
                return None;
            }
            let class = &*pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_class>(tuple);
            let same = class.relnamespace == ns && std::ffi::CStr::from_ptr(class.relname.data.as_ptr()) == c"usage_counters";
            let owner = class.relowner;
            pg_sys::ReleaseSysCache(tuple);
            same.then_some(owner)
        };
        if let Some(owner) = owner_of(TABLE.get()) {
            return owner;
        }
        let ns = pg_sys::get_namespace_oid(c"entitlements".as_ptr(), true);
        let rel = if ns == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            pg_sys::get_relname_relid(c"usage_counters".as_ptr(), ns)
        };
        TABLE.set((ns, rel));
        owner_of((ns, rel)).unwrap_or_else(|| errors::internal("entitlements.usage_counters does not exist"))
    }
}

/// Run `f` as the owner of the usage tables, as a SECURITY DEFINER function would: they are
/// written by no other role. An ERROR inside `f` aborts the (sub)transaction, which restores
/// the caller's user id itself.
fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = usage_owner();
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads and sets the backend's current user id, exactly as fmgr does for a
    // SECURITY DEFINER call; the guard puts the caller's back.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(owner, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                // SAFETY: restores what was read above.
                unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
            }
        }
    }
    let _restore = Restore(user, context);
    f()
}

/// `pg_entitlements.usage_thresholds` as usage_apply reads it: the distinct percentages,
/// ascending. Parsed again only when the setting's text changes.
fn usage_thresholds() -> std::rc::Rc<[i32]> {
    thread_local! {
        static PARSED: std::cell::RefCell<(Vec<u8>, std::rc::Rc<[i32]>)> =
            std::cell::RefCell::new((Vec::new(), std::rc::Rc::from([])));
    }
    crate::gucs::with_usage_thresholds_text(|text| {
        PARSED.with_borrow_mut(|(seen, thresholds)| {
            if seen.as_slice() != text.to_bytes() {
                let mut parsed: Vec<i32> =
                    text.to_string_lossy().split(',').filter_map(|t| t.trim().parse().ok()).collect();
                parsed.sort_unstable();
                parsed.dedup();
                *seen = text.to_bytes().to_vec();
                *thresholds = parsed.into();
            }
            thresholds.clone()
        })
    })
}

/// For each threshold (ascending), the lowest use of `limit` that reaches it (used * 100 >=
/// t * limit, as usage_apply compares); `None` when no use can announce anything (unlimited,
/// a zero limit, no thresholds), as usage_apply announces nothing then.
fn threshold_uses(limit: Option<i64>, thresholds: &[i32]) -> Option<Vec<i64>> {
    let limit = i128::from(limit.filter(|l| *l > 0)?);
    let uses: Vec<i64> = thresholds
        .iter()
        .map(|t| i64::try_from((i128::from(*t) * limit + 99) / 100).unwrap_or(i64::MAX))
        .collect();
    (!uses.is_empty()).then_some(uses)
}

/// The highest `used` to which `quantity` may be added under a hard `limit` (`used + quantity
/// <= limit`, as usage_apply compares); the largest bigint when no hard limit applies.
fn room(hard_limit: Option<i64>, quantity: i64) -> i64 {
    hard_limit.map_or(i64::MAX, |l| l.saturating_sub(quantity))
}

/// TAKE_BELOW's bound: the highest `used` to which `quantity` may be added while staying
/// within `room` and below the first threshold's use (`uses`, ascending; `None`: no use
/// announces anything). Below the first threshold no threshold is reached, whatever has been
/// announced, so nothing else needs to be looked at.
fn below_first_threshold(room: i64, uses: Option<&[i64]>, quantity: i64) -> i64 {
    match uses.and_then(|u| u.first()) {
        Some(first) => room.min(first.saturating_sub(quantity).saturating_sub(1)),
        None => room,
    }
}

/// The `usage_result` of a consume that took its quantity, formed as usage_apply forms it.
///
/// # Safety
/// `fcinfo` must be `consume`'s current call.
unsafe fn taken(fcinfo: pg_sys::FunctionCallInfo, feature: &str, used: i64, a: &Allowance) -> UsageResultRow {
    let remaining = a.limit.map(|l| (l - used).max(0));
    let period_start = (a.period_start != i64::MIN).then_some(a.period_start);
    let int8 = |v: Option<i64>| v.map_or(pg_sys::Datum::from(0), pg_sys::Datum::from);
    let mut values = [
        feature.into_datum().unwrap_or(pg_sys::Datum::from(0)),
        pg_sys::Datum::from(true),
        pg_sys::Datum::from(0),
        pg_sys::Datum::from(used),
        int8(a.limit),
        int8(remaining),
        int8(period_start),
        int8(a.period_end),
    ];
    let mut nulls =
        [false, false, true, false, a.limit.is_none(), remaining.is_none(), period_start.is_none(), a.period_end.is_none()];
    // SAFETY: the descriptor is usage_result's (consume's declared result type); values and
    // nulls have one element per attribute, of its type (timestamptz is an int8 by value);
    // the text is not toasted, so the tuple's header is a valid composite datum as is.
    unsafe {
        let tuple = pg_sys::heap_form_tuple(api::call_site_tupdesc(fcinfo), values.as_mut_ptr(), nulls.as_mut_ptr());
        UsageResultRow(pg_sys::Datum::from((*tuple).t_data))
    }
}

/// `consume` through the cache and one UPDATE (module comment); `None` when it cannot take
/// the fast path, and usage_apply decides.
fn consume_fast(workspace_id: Uuid, feature: &str, quantity: i64, fcinfo: pg_sys::FunctionCallInfo) -> Option<UsageResultRow> {
    if quantity <= 0 {
        return None;
    }
    let (access, allowance) = api::cached_allowance(workspace_id, feature)?;
    if !access.enabled || !allowance.metered {
        return None;
    }
    let thresholds = usage_thresholds();
    let uses = threshold_uses(allowance.limit, &thresholds);
    let room = room(allowance.limit.filter(|_| allowance.hard_limit), quantity);
    let at = |t: i64| timestamptz(t);
    let (workspace, feature_arg, quantity_arg, period_start) =
        (|| workspace_id.into(), || feature.into(), || quantity.into(), || at(allowance.period_start).into());
    let run = |stmt, args: &[pgrx::datum::DatumWithOid<'_>]| {
        spi_read::query(stmt, args, Snapshot::OwnChanges, 1, |r| r.get::<i64>(1)).pop().flatten()
    };
    let used = as_extension_owner(|| {
        // Usage below the first threshold (or no thresholds): one comparison decides.
        let bound = below_first_threshold(room, uses.as_deref(), quantity);
        let below = [workspace(), feature_arg(), quantity_arg(), period_start(), bound.into()];
        run(&TAKE_BELOW, &below).or_else(|| {
            let (thresholds, uses): (&[i32], &[i64]) = match &uses {
                Some(uses) => (&thresholds, uses),
                None => (&[], &[]),
            };
            let args = [
                workspace(),
                feature_arg(),
                quantity_arg(),
                period_start(),
                room.into(),
                crate::pgutil::int4_array(thresholds),
                crate::pgutil::int8_array(uses),
                allowance.period_end.map(at).into(),
            ];
            // At or past the first threshold: the announced ones decide (a row that does not
            // exist yet makes both UPDATEs find nothing).
            if !uses.is_empty() { run(&TAKE, &args) } else { None }.or_else(|| run(&OPEN, &args))
        })
    })?;
    // SAFETY: fcinfo is consume's current call.
    Some(unsafe { taken(fcinfo, feature, used, &allowance) })
}

/// Authorize, decide the feature's other rules, then apply `op` to the counter.
fn apply(workspace_id: Uuid, feature: &str, quantity: Option<i64>, idempotency_key: Option<&str>, op: Op) -> UsageResultRow {
    identity::authorize(workspace_id);
    apply_authorized(workspace_id, feature, quantity, idempotency_key, op)
}

/// `apply` for a caller already authorized: usage_apply does the work.
fn apply_authorized(workspace_id: Uuid, feature: &str, quantity: Option<i64>, idempotency_key: Option<&str>, op: Op) -> UsageResultRow {
    let access = api::decide_access_uncached(workspace_id, feature).unwrap_or_else(|| errors::unknown_feature(feature));
    let denied_by = access.reason.filter(|_| !access.enabled).map(|r| r.code());
    let datum = as_extension_owner(|| {
        spi_read::query(
            &APPLY,
            &[
                workspace_id.into(),
                feature.into(),
                quantity.into(),
                idempotency_key.into(),
                op.name().into(),
                denied_by.into(),
            ],
            Snapshot::OwnChanges,
            1,
            |r| r.datum_transferred(1, false, -1),
        )
    })
    .pop()
    .flatten()
    .unwrap_or_else(|| errors::internal("usage_apply returned no row"));
    UsageResultRow(datum)
}

/// Take `quantity` of a metered feature in the caller's transaction; refused (nothing taken)
/// past a hard limit or when the feature's rules deny it.
#[pg_extern(volatile, parallel_unsafe)]
fn consume(
    workspace_id: Option<Uuid>,
    feature: Option<&str>,
    quantity: default!(Option<i64>, 1),
    idempotency_key: default!(Option<&str>, "NULL"),
    fcinfo: pg_sys::FunctionCallInfo,
) -> UsageResultRow {
    let checked_at = crate::pgutil::now();
    let workspace_id = require(workspace_id, "workspace_id");
    let feature = require(feature, "feature");
    let quantity = require(quantity, "quantity");
    if idempotency_key.is_none() {
        identity::authorize(workspace_id);
        if let Some(row) = consume_fast(workspace_id, feature, quantity, fcinfo) {
            // Taken on the short path: allowed, with the rules and the limit from the cache.
            record(checked_at, workspace_id, feature, (true, None), true, quantity);
            return row;
        }
        let row = apply_authorized(workspace_id, feature, Some(quantity), None, Op::Consume);
        record(checked_at, workspace_id, feature, outcome(&row), false, quantity);
        return row;
    }
    let row = apply(workspace_id, feature, Some(quantity), idempotency_key, Op::Consume);
    record(checked_at, workspace_id, feature, outcome(&row), false, quantity);
    row
}

/// Record a consume or a refund in the audit trail as a check of the feature, with the units
/// it asked to move (negative for a refund). Bad input never gets here: it raised before.
fn record(checked_at: i64, workspace_id: Uuid, feature: &str, (allowed, reason): (bool, Option<Reason>), cached: bool, quantity: i64) {
    audit::record(&audit::Check {
        checked_at,
        workspace_id: *workspace_id.as_bytes(),
        feature,
        enabled: allowed,
        reason,
        cached,
        quantity: Some(quantity),
    });
}

/// `allowed` and `reason` of a `usage_result`.
fn outcome(row: &UsageResultRow) -> (bool, Option<Reason>) {
    // SAFETY: the datum is a usage_result composite formed in this call (by usage_apply or by
    // `taken`), whose header carries its row type; attributes 2 and 3 are allowed (bool) and
    // reason (text), per sql/limits.sql.
    unsafe {
        let tuple = row.0.cast_mut_ptr::<pg_sys::HeapTupleHeaderData>();
        let mut null = false;
        let allowed = pg_sys::GetAttributeByNum(tuple, 2, &mut null);
        let allowed = !null && bool::from_datum(allowed, false).unwrap_or(false);
        let reason = pg_sys::GetAttributeByNum(tuple, 3, &mut null);
        let reason = String::from_datum(reason, null).and_then(|code| Reason::from_code(&code));
        (allowed, reason)
    }
}

/// Give units back to the current period (never below 0).
#[pg_extern(volatile, parallel_unsafe)]
fn refund(
    workspace_id: Option<Uuid>,
    feature: Option<&str>,
    quantity: Option<i64>,
    idempotency_key: default!(Option<&str>, "NULL"),
) -> UsageResultRow {
    let checked_at = crate::pgutil::now();
    let workspace_id = require(workspace_id, "workspace_id");
    let feature = require(feature, "feature");
    let quantity = require(quantity, "quantity");
    let row = apply(workspace_id, feature, Some(quantity), idempotency_key, Op::Refund);
    record(checked_at, workspace_id, feature, outcome(&row), false, quantity.saturating_neg());
    row
}

/// The current period's usage of a metered or counted feature.
#[pg_extern(volatile, parallel_restricted)]
fn usage(workspace_id: Option<Uuid>, feature: Option<&str>) -> UsageResultRow {
    let workspace_id = require(workspace_id, "workspace_id");
    let feature = require(feature, "feature");
    apply(workspace_id, feature, None, None, Op::Read)
}

/// `usage` of every metered and counted feature, by feature name.
#[pg_extern(volatile, parallel_restricted)]
fn usage_all(workspace_id: Option<Uuid>) -> SetOfIterator<'static, UsageResultRow> {
    let workspace_id = require(workspace_id, "workspace_id");
    identity::authorize(workspace_id);
    let features = spi_read::query(&METERED, &[], Snapshot::Active, 0, |r| r.get::<String>(1).unwrap_or_default());
    let rows: Vec<UsageResultRow> =
        features.iter().map(|f| apply(workspace_id, f, None, None, Op::Read)).collect();
    SetOfIterator::new(rows)
}

#[cfg(test)]
mod tests {
    use super::{below_first_threshold, room, threshold_uses};

    #[test]
    fn below_first_threshold_keeps_the_new_use_under_the_first_threshold_and_the_limit() {
        // Limit 1000, thresholds at 800 and 1000: a use of 799 announces nothing.
        assert_eq!(below_first_threshold(999, Some(&[800, 1000]), 1), 798, "798 + 1 = 799 < 800");
        assert_eq!(below_first_threshold(990, Some(&[800, 1000]), 10), 789);
        assert_eq!(below_first_threshold(500, Some(&[800, 1000]), 1), 500, "the hard limit is lower");
        assert_eq!(below_first_threshold(999, Some(&[1, 15]), 5), -5, "no use is below: TAKE decides");
        assert_eq!(below_first_threshold(999, None, 1), 999);
        assert_eq!(below_first_threshold(i64::MAX, Some(&[i64::MIN]), 1), i64::MIN);
    }

    #[test]
    fn room_is_the_highest_use_a_hard_limit_lets_the_quantity_be_added_to() {
        assert_eq!(room(Some(1000), 1), 999);
        assert_eq!(room(Some(1000), 1000), 0);
        assert_eq!(room(Some(3), 5), -2, "more than the limit: no use allows it");
        assert_eq!(room(Some(0), 1), -1);
        assert_eq!(room(None, 7), i64::MAX);
        assert_eq!(room(Some(i64::MIN + 1), 5), i64::MIN, "saturates instead of overflowing");
    }

    #[test]
    fn threshold_uses_are_the_lowest_uses_that_reach_each_threshold() {
        assert_eq!(threshold_uses(Some(1000), &[80, 100]), Some(vec![800, 1000]));
        // 80% of 3 is 2.4: a use of 2 is below it, 3 reaches it (and 100% too).
        assert_eq!(threshold_uses(Some(3), &[80, 100]), Some(vec![3, 3]));
        assert_eq!(threshold_uses(Some(10), &[1, 150]), Some(vec![1, 15]));
        // Past bigint: clamped, so only a use of i64::MAX counts as reaching it (and takes the
        // full path, which announces nothing).
        assert_eq!(threshold_uses(Some(i64::MAX), &[1000]), Some(vec![i64::MAX]));
    }

    #[test]
    fn nothing_to_announce_without_a_positive_limit_or_thresholds() {
        assert_eq!(threshold_uses(None, &[80, 100]), None);
        assert_eq!(threshold_uses(Some(0), &[80, 100]), None);
        assert_eq!(threshold_uses(Some(1000), &[]), None);
    }
}
