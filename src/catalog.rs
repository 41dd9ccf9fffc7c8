//! Reads what the resolver needs from the catalog tables. The queries are planned once per
//! backend (spi_read); they run as the caller (so RLS applies), with search_path pinned, and
//! under the snapshot `cache::read_decision_inputs` chooses.

use crate::cache::table::Allowance;
use crate::resolver::{Billing, Override, Status, Usage};
use crate::spi_read::{self, Row, Snapshot, Stmt};
use pgrx::pg_sys::{self, BuiltinOid};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

/// One catalog feature with the workspace's billing state and override for it.
pub struct FeatureInputs {
    pub feature: String,
    pub min_level: i32,
    /// The workspace's effective tier (`free` without a billing row).
    pub tier: String,
    /// The feature's min tier: the lowest tier whose level allows it.
    pub min_tier: String,
    pub billing: Billing,
    pub override_: Option<Override>,
    /// Stripe grants the feature to the workspace (entitlements.stripe_feature_grants).
    pub stripe_grant: bool,
    /// The current period's usage and limit, for a metered or counted feature.
    pub usage: Option<Usage>,
    /// The same feature's limit and period as the cache keeps them, and until when they hold
    /// (the period's end, a future billing period's start, a limit override's expiry).
    pub allowance: Option<(Allowance, Option<i64>)>,
}


const UUID: pg_sys::Oid = BuiltinOid::UUIDOID.value();
const TEXT: pg_sys::Oid = BuiltinOid::TEXTOID.value();
const TIMESTAMPTZ: pg_sys::Oid = BuiltinOid::TIMESTAMPTZOID.value();

/// Whether Stripe grants the feature to the workspace (an item or an active entitlement).
macro_rules! STRIPE_GRANT {
    () => {
        "EXISTS (SELECT 1 FROM entitlements.stripe_feature_grants g
                  WHERE g.workspace_id = $1 AND g.feature = f.feature)"
    };
}

macro_rules! inputs_query {
    ($grant:expr, $usage_columns:expr, $tail:expr) => {
        concat!(
            "SELECT f.feature, ft.level, coalesce(b.tier, 'free'), coalesce(t.level, 0),
                    coalesce(b.status, 'none'), b.trial_end, b.past_due_since, o.enabled, o.expires_at,
                    f.min_tier, ",
            $usage_columns,
            ", ",
            $grant,
            "
               FROM entitlements.features f
               JOIN entitlements.tiers ft ON ft.tier = f.min_tier
               LEFT JOIN entitlements.billing_state b ON b.workspace_id = $1
               LEFT JOIN entitlements.tiers t ON t.tier = b.tier
               LEFT JOIN entitlements.overrides o ON o.workspace_id = $1 AND o.feature = f.feature ",
            $tail
        )
    };
}

/// The usage columns of the checks' reads: whether the feature has usage (metered or
/// counted), whether it is metered and hard, the rest NULL. Its usage is read apart
/// (`USAGE`), for those features only: planning `usage_state` into every read would make
/// each uncached boolean check initialise that plan too, for nothing.
macro_rules! KIND_ONLY {
    () => {
        "f.kind <> 'boolean', NULL::bigint, NULL::bigint, f.kind = 'metered', f.hard_limit,
         NULL::timestamptz, NULL::timestamptz, NULL::timestamptz"
    };
}

/// The usage columns of a query that reads no usage.
macro_rules! NO_USAGE {
    () => {
        "false, NULL::bigint, NULL::bigint, false, true, NULL::timestamptz, NULL::timestamptz,
         NULL::timestamptz"
    };
}

/// The same reads without usage: for a database whose schema predates usage limits and
/// Stripe grants (a library already replaced, `ALTER EXTENSION ... UPDATE` not yet run: every
/// feature is boolean there, nothing is granted by Stripe).
macro_rules! inputs_query_before_limits {
    ($tail:literal) => {
        inputs_query!("false", NO_USAGE!(), $tail)
    };
}

static ONE_FEATURE: Stmt = Stmt {
    sql: inputs_query!(STRIPE_GRANT!(), KIND_ONLY!(), "WHERE f.feature = $2"),
    args: &[UUID, TEXT],
};
static ALL_FEATURES: Stmt = Stmt {
    sql: inputs_query!(STRIPE_GRANT!(), KIND_ONLY!(), "ORDER BY ft.level, f.feature"),
    args: &[UUID],
};
/// A metered or counted feature's usage and limit, and until when they hold with the clock
/// alone (the period ends, a billing period that has not begun begins, a limit override
/// expires). The clock comes as a parameter: a volatile argument would keep PostgreSQL from
/// inlining usage_state, which then costs a plan per call.
static USAGE: Stmt = Stmt {
    sql: "SELECT s.used, s.limit_value, s.period_start, s.period_end,
                 least(s.period_end,
                       (SELECT b.current_period_start FROM entitlements.billing_state b
                         WHERE b.workspace_id = $1 AND b.current_period_start > $3),
                       (SELECT lo.expires_at FROM entitlements.limit_overrides lo
                         WHERE lo.workspace_id = $1 AND lo.feature = $2 AND lo.expires_at > $3))
            FROM entitlements.usage_state($1, $2, $3) s",
    args: &[UUID, TEXT, TIMESTAMPTZ],
};
/// One feature's rules without its usage, for `consume`, which reads usage itself.
static ONE_FEATURE_ACCESS: Stmt = Stmt {
    sql: inputs_query!(STRIPE_GRANT!(), NO_USAGE!(), "WHERE f.feature = $2"),
    args: &[UUID, TEXT],
};
static ONE_FEATURE_BEFORE_LIMITS: Stmt =
    Stmt { sql: inputs_query_before_limits!("WHERE f.feature = $2"), args: &[UUID, TEXT] };
static ALL_FEATURES_BEFORE_LIMITS: Stmt =
    Stmt { sql: inputs_query_before_limits!("ORDER BY ft.level, f.feature"), args: &[UUID] };

/// Does this database's schema have usage limits (`features.kind`)? Three syscache lookups.
pub fn schema_has_limits() -> bool {
    // SAFETY: catalog cache lookups by name, valid in any transaction; missing objects
    // answer InvalidOid / InvalidAttrNumber.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"entitlements".as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return false;
        }
        let features = pg_sys::get_relname_relid(c"features".as_ptr(), nsp);
        features != pg_sys::InvalidOid
            && pg_sys::get_attnum(features, c"kind".as_ptr()) != pg_sys::InvalidAttrNumber as pg_sys::AttrNumber
    }
}
static IS_MEMBER: Stmt = Stmt {
    sql: "SELECT EXISTS (SELECT 1 FROM entitlements.workspace_members
                          WHERE workspace_id = $1 AND user_id = $2)",
    args: &[UUID, TEXT],
};
static FEATURE_NAMES: Stmt = Stmt {
    sql: "SELECT f.feature, f.min_tier FROM entitlements.features f
            JOIN entitlements.tiers t ON t.tier = f.min_tier
           ORDER BY t.level, f.feature",
    args: &[],
};

fn feature_inputs_of(row: &Row) -> FeatureInputs {
    let status: String = row.get(5).unwrap_or_default();
    let billing = Billing {
        tier_level: row.get(4).unwrap_or(0),
        // The CHECK constraint admits only known statuses; should another ever appear,
        // deny as inactive rather than guess.
        status: Status::parse(&status).unwrap_or(Status::Canceled),
        trial_end: row.get::<TimestampWithTimeZone>(6).map(i64::from),
        past_due_since: row.get::<TimestampWithTimeZone>(7).map(i64::from),
    };
    let override_ = row.get::<bool>(8).map(|enabled| Override {
        enabled,
        expires_at: row.get::<TimestampWithTimeZone>(9).map(i64::from),
    });
    FeatureInputs {
        feature: row.get(1).unwrap_or_default(),
        min_level: row.get(2).unwrap_or(0),
        tier: row.get(3).unwrap_or_default(),
        min_tier: row.get(10).unwrap_or_default(),
        billing,
        override_,
        stripe_grant: row.get::<bool>(19).unwrap_or(false),
        usage: row.get::<bool>(11).unwrap_or(false).then(|| Usage {
            used: row.get(12).unwrap_or(0),
            limit: row.get(13),
        }),
        allowance: row.get::<bool>(11).unwrap_or(false).then(|| {
            let at = |n| row.get::<TimestampWithTimeZone>(n).map(i64::from);
            let allowance = Allowance {
                metered: row.get(14).unwrap_or(false),
                hard_limit: row.get(15).unwrap_or(true),
                limit: row.get(13),
                period_start: at(16).unwrap_or(i64::MIN),
                period_end: at(17),
            };
            (allowance, at(18))
        }),
    }
}

/// The inputs for one feature, or `None` if the catalog has no such feature.
pub fn feature_inputs(workspace_id: pgrx::Uuid, feature: &str, snapshot: Snapshot) -> Option<FeatureInputs> {
    if !schema_has_limits() {
        let args = [workspace_id.into(), feature.into()];
        return spi_read::query(&ONE_FEATURE_BEFORE_LIMITS, &args, snapshot, 1, feature_inputs_of).pop();
    }
    let args = [workspace_id.into(), feature.into()];
    let mut inputs = spi_read::query(&ONE_FEATURE, &args, snapshot, 1, feature_inputs_of).pop()?;
    read_usage(workspace_id, &mut inputs, snapshot, crate::pgutil::now());
    Some(inputs)
}

/// Fill in a metered or counted feature's usage, limit and period (its base read left them
/// out), under the same snapshot.
fn read_usage(workspace_id: pgrx::Uuid, inputs: &mut FeatureInputs, snapshot: Snapshot, now: i64) {
    let Some((allowance, _)) = inputs.allowance.as_mut() else { return };
    let now = crate::pgutil::timestamptz(now);
    let args = [workspace_id.into(), inputs.feature.as_str().into(), now.into()];
    let row = spi_read::query(&USAGE, &args, snapshot, 1, |r| {
        let at = |n| r.get::<TimestampWithTimeZone>(n).map(i64::from);
        (r.get::<i64>(1).unwrap_or(0), r.get::<i64>(2), at(3), at(4), at(5))
    })
    .pop();
    // The feature row was read under this snapshot, so usage_state has its row; were it
    // missing, the allowance is 0, never unlimited.
    let (used, limit, period_start, period_end, valid_until) = row.unwrap_or((0, Some(0), None, None, None));
    allowance.limit = limit;
    allowance.period_start = period_start.unwrap_or(i64::MIN);
    allowance.period_end = period_end;
    inputs.usage = Some(Usage { used, limit });
    if let Some(a) = inputs.allowance.as_mut() {
        a.1 = valid_until;
    }
}

/// The inputs for one feature without its usage (`usage` is `None`): what `consume` decides
/// the feature's other rules from, before it reads the counter under its lock.
pub fn feature_access_inputs(workspace_id: pgrx::Uuid, feature: &str, snapshot: Snapshot) -> Option<FeatureInputs> {
    let args = [workspace_id.into(), feature.into()];
    spi_read::query(&ONE_FEATURE_ACCESS, &args, snapshot, 1, feature_inputs_of).pop()
}

/// The inputs for every catalog feature, lowest tier first.
pub fn all_feature_inputs(workspace_id: pgrx::Uuid, snapshot: Snapshot) -> Vec<FeatureInputs> {
    if !schema_has_limits() {
        return spi_read::query(&ALL_FEATURES_BEFORE_LIMITS, &[workspace_id.into()], snapshot, 0, feature_inputs_of);
    }
    let mut all = spi_read::query(&ALL_FEATURES, &[workspace_id.into()], snapshot, 0, feature_inputs_of);
    // One clock for every feature of the workspace, as one statement had.
    let now = crate::pgutil::now();
    for inputs in &mut all {
        read_usage(workspace_id, inputs, snapshot, now);
    }
    all
}

static COUNTER: Stmt = Stmt {
    sql: "SELECT c.used, c.period_start FROM entitlements.usage_counters c
           WHERE c.workspace_id = $1 AND c.feature = $2",
    args: &[UUID, TEXT],
};

/// What the counter of a metered or counted feature says was used in the period starting at
/// `period_start` (0 when the counter is still on an earlier period, or there is none).
pub fn used_in_period(workspace_id: pgrx::Uuid, feature: &str, period_start: i64, snapshot: Snapshot) -> i64 {
    spi_read::query(&COUNTER, &[workspace_id.into(), feature.into()], snapshot, 1, |r| {
        let start = r.get::<TimestampWithTimeZone>(2).map(i64::from);
        if start == Some(period_start) { r.get::<i64>(1).unwrap_or(0) } else { 0 }
    })
    .pop()
    .unwrap_or(0)
}

pub fn is_member(workspace_id: pgrx::Uuid, user: &str, snapshot: Snapshot) -> bool {
    spi_read::query(&IS_MEMBER, &[workspace_id.into(), user.into()], snapshot, 1, |r| r.get::<bool>(1))
        .pop()
        .flatten()
        .unwrap_or(false)
}

/// What a backend keeps of the catalog for cached answers: the feature names in
/// `entitlement_check_all` order and each feature's min tier (for `required_tier`).
struct CatalogMemo {
    epoch: u64,
    names: Vec<String>,
    min_tiers: HashMap<String, String>,
}

thread_local! {
    /// The catalog memo with the cache epoch it was read in.
    static NAMES: RefCell<Option<CatalogMemo>> = const { RefCell::new(None) };
}

/// `read` on the catalog memo, valid for as long as no invalidation has happened since it was
/// read (a catalog edit invalidates); read again otherwise.
fn with_catalog_memo<R>(reader: &crate::cache::Reader, read: impl Fn(&CatalogMemo) -> R) -> R {
    let fresh = NAMES.with(|n| n.borrow().as_ref().filter(|m| m.epoch == reader.epoch()).map(&read));
    if let Some(fresh) = fresh {
        return fresh;
    }
    let rows: Vec<(String, String)> = crate::cache::with_latest_snapshot(|| {
        spi_read::query(&FEATURE_NAMES, &[], Snapshot::Active, 0, |r| {
            (r.get::<String>(1).unwrap_or_default(), r.get::<String>(2).unwrap_or_default())
        })
    });
    let memo = CatalogMemo {
        epoch: reader.epoch(),
        names: rows.iter().map(|(f, _)| f.clone()).collect(),
        min_tiers: rows.into_iter().collect(),
    };
    let answer = read(&memo);
    NAMES.with(|n| *n.borrow_mut() = Some(memo));
    answer
}

/// The catalog's feature names in `entitlement_check_all` order, kept per backend (see
/// `with_catalog_memo`).
pub fn feature_names_cached(reader: &crate::cache::Reader) -> Option<Vec<String>> {
    Some(with_catalog_memo(reader, |m| m.names.clone()))
}

/// A feature's min tier, kept per backend like the names: what a cached denial needs for
/// its `required_tier` without another catalog read.
pub fn min_tier_cached(reader: &crate::cache::Reader, feature: &str) -> Option<String> {
    with_catalog_memo(reader, |m| m.min_tiers.get(feature).cloned())
}
