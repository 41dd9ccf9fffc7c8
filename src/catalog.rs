//! Reads what the resolver needs from the catalog tables. The hot queries are SPI plans
//! prepared once per backend; they run as the caller (so RLS applies) and with the caller's
//! snapshot (so a transaction sees its own uncommitted changes).

use crate::errors;
use crate::resolver::{Billing, Override, Status};
use pgrx::pg_sys::{BuiltinOid, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiResult, SpiTupleTable};
use std::cell::RefCell;

/// One catalog feature with the workspace's billing state and override for it.
pub struct FeatureInputs {
    pub feature: String,
    pub min_level: i32,
    /// The workspace's effective tier (`free` without a billing row).
    pub tier: String,
    pub billing: Billing,
    pub override_: Option<Override>,
}

const INPUTS: &str = "
SELECT f.feature, ft.level, coalesce(b.tier, 'free'), coalesce(t.level, 0),
       coalesce(b.status, 'none'), b.trial_end, b.past_due_since, o.enabled, o.expires_at
  FROM entitlements.features f
  JOIN entitlements.tiers ft ON ft.tier = f.min_tier
  LEFT JOIN entitlements.billing_state b ON b.workspace_id = $1
  LEFT JOIN entitlements.tiers t ON t.tier = b.tier
  LEFT JOIN entitlements.overrides o ON o.workspace_id = $1 AND o.feature = f.feature";

const MEMBER: &str = "SELECT EXISTS (SELECT 1 FROM entitlements.workspace_members
                                       WHERE workspace_id = $1 AND user_id = $2)";

thread_local! {
    static ONE_FEATURE: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static ALL_FEATURES: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    static IS_MEMBER: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

const UUID: PgOid = PgOid::BuiltIn(BuiltinOid::UUIDOID);
const TEXT: PgOid = PgOid::BuiltIn(BuiltinOid::TEXTOID);

/// Run a plan prepared on first use and kept for the backend's life.
fn with_plan<R>(
    slot: &'static std::thread::LocalKey<RefCell<Option<OwnedPreparedStatement>>>,
    sql: impl FnOnce() -> String,
    types: &[PgOid],
    run: impl FnOnce(&SpiClient<'_>, &OwnedPreparedStatement) -> SpiResult<R>,
) -> R {
    let result = Spi::connect(|client| {
        slot.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                *cell = Some(client.prepare(sql().as_str(), types)?.keep());
            }
            run(&client, cell.as_ref().expect("plan prepared above"))
        })
    });
    result.unwrap_or_else(|e| errors::internal(e))
}

fn read_rows(table: SpiTupleTable<'_>) -> SpiResult<Vec<FeatureInputs>> {
    let mut rows = Vec::with_capacity(table.len());
    for row in table {
        let status: String = row.get(5)?.unwrap_or_default();
        let billing = Billing {
            tier_level: row.get(4)?.unwrap_or(0),
            // The CHECK constraint admits only known statuses; should another ever appear,
            // deny as inactive rather than guess.
            status: Status::parse(&status).unwrap_or(Status::Canceled),
            trial_end: row.get::<TimestampWithTimeZone>(6)?.map(i64::from),
            past_due_since: row.get::<TimestampWithTimeZone>(7)?.map(i64::from),
        };
        let override_ = row.get::<bool>(8)?.map(|enabled| Override {
            enabled,
            expires_at: row.get::<TimestampWithTimeZone>(9).ok().flatten().map(i64::from),
        });
        rows.push(FeatureInputs {
            feature: row.get(1)?.unwrap_or_default(),
            min_level: row.get(2)?.unwrap_or(0),
            tier: row.get(3)?.unwrap_or_default(),
            billing,
            override_,
        });
    }
    Ok(rows)
}

/// The inputs for one feature, or `None` if the catalog has no such feature.
pub fn feature_inputs(workspace_id: pgrx::Uuid, feature: &str) -> Option<FeatureInputs> {
    with_plan(
        &ONE_FEATURE,
        || format!("{INPUTS} WHERE f.feature = $2"),
        &[UUID, TEXT],
        |client, plan| {
            let table = client.select(plan, Some(1), &[workspace_id.into(), feature.into()])?;
            Ok(read_rows(table)?.pop())
        },
    )
}

/// The inputs for every catalog feature, lowest tier first.
pub fn all_feature_inputs(workspace_id: pgrx::Uuid) -> Vec<FeatureInputs> {
    with_plan(
        &ALL_FEATURES,
        || format!("{INPUTS} ORDER BY ft.level, f.feature"),
        &[UUID],
        |client, plan| read_rows(client.select(plan, None, &[workspace_id.into()])?),
    )
}

pub fn is_member(workspace_id: pgrx::Uuid, user: &str) -> bool {
    with_plan(&IS_MEMBER, || MEMBER.to_owned(), &[UUID, TEXT], |client, plan| {
        let table = client.select(plan, Some(1), &[workspace_id.into(), user.into()])?;
        Ok(table.first().get_one::<bool>()?.unwrap_or(false))
    })
}

const FEATURE_NAMES: &str = "SELECT f.feature FROM entitlements.features f
                               JOIN entitlements.tiers t ON t.tier = f.min_tier
                              ORDER BY t.level, f.feature";

thread_local! {
    static NAMES_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    /// The catalog's feature names with the cache epoch they were read in.
    static NAMES: RefCell<Option<(u64, Vec<String>)>> = const { RefCell::new(None) };
}

/// The catalog's feature names in `entitlement_check_all` order, kept per backend for as
/// long as no invalidation has happened since they were read (a catalog edit invalidates).
pub fn feature_names_cached(reader: &crate::cache::Reader) -> Option<Vec<String>> {
    let fresh = NAMES.with(|n| {
        n.borrow().as_ref().filter(|(epoch, _)| *epoch == reader.epoch()).map(|(_, v)| v.clone())
    });
    if fresh.is_some() {
        return fresh;
    }
    let names: Vec<String> = crate::cache::with_latest_snapshot(|| {
        with_plan(&NAMES_PLAN, || FEATURE_NAMES.to_owned(), &[], |client, plan| {
            client.select(plan, None, &[])?.map(|row| row.get::<String>(1).map(Option::unwrap_or_default)).collect()
        })
    });
    NAMES.with(|n| *n.borrow_mut() = Some((reader.epoch(), names.clone())));
    Some(names)
}
