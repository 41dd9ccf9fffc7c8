//! Usage limits: `consume`, `refund`, `usage` and `usage_all`. The library authorizes the
//! caller (as the checks do) and decides the feature's rules; the counter itself is SQL
//! (`entitlements.usage_apply` in sql/limits.sql), run as the extension's owner because the
//! caller may read usage but never write it.

use crate::pgutil::require;
use crate::spi_read::{self, Snapshot, Stmt};
use crate::{api, errors, identity};
use pgrx::pg_sys::{self, BuiltinOid};
use pgrx::prelude::*;
use pgrx::Uuid;

const UUID: pg_sys::Oid = BuiltinOid::UUIDOID.value();
const TEXT: pg_sys::Oid = BuiltinOid::TEXTOID.value();
const INT8: pg_sys::Oid = BuiltinOid::INT8OID.value();

static APPLY: Stmt = Stmt {
    sql: "SELECT entitlements.usage_apply($1, $2, $3, $4, $5, $6)",
    args: &[UUID, TEXT, INT8, TEXT, TEXT, TEXT],
};
static OWNER: Stmt = Stmt {
    sql: "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'pg_entitlements'",
    args: &[],
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

/// Run `f` as the extension's owner, as a SECURITY DEFINER function would: the usage tables
/// are written by no other role. An ERROR inside `f` aborts the (sub)transaction, which
/// restores the caller's user id itself.
fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = spi_read::query(&OWNER, &[], Snapshot::Active, 1, |r| r.get::<pg_sys::Oid>(1))
        .pop()
        .flatten()
        .unwrap_or_else(|| errors::internal("the extension pg_entitlements has no owner"));
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

/// Authorize, decide the feature's other rules, then apply `op` to the counter.
fn apply(workspace_id: Uuid, feature: &str, quantity: Option<i64>, idempotency_key: Option<&str>, op: Op) -> UsageResultRow {
    identity::authorize(workspace_id);
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
) -> UsageResultRow {
    let workspace_id = require(workspace_id, "workspace_id");
    let feature = require(feature, "feature");
    let quantity = require(quantity, "quantity");
    apply(workspace_id, feature, Some(quantity), idempotency_key, Op::Consume)
}

/// Give units back to the current period (never below 0).
#[pg_extern(volatile, parallel_unsafe)]
fn refund(
    workspace_id: Option<Uuid>,
    feature: Option<&str>,
    quantity: Option<i64>,
    idempotency_key: default!(Option<&str>, "NULL"),
) -> UsageResultRow {
    let workspace_id = require(workspace_id, "workspace_id");
    let feature = require(feature, "feature");
    let quantity = require(quantity, "quantity");
    apply(workspace_id, feature, Some(quantity), idempotency_key, Op::Refund)
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
