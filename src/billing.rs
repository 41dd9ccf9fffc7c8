//! The one writer of `billing_state`. Admins reach it through `sync_billing_state`, Stripe
//! ingestion calls it for every event it applies: both write the same row the same way, so the
//! rule for `past_due_since` and the upsert exist once. The triggers of sql/api.sql keep
//! `past_due_since` (for writes that give none), `updated_at` and the cache right on every path.

use crate::errors;
use crate::pgutil::timestamptz;
use crate::resolver::Status;
use crate::spi_write::{first, run, Stmt, BOOL, TEXT, TIMESTAMPTZ, UUID};
use pgrx::prelude::*;
use pgrx::{search_path, Uuid};

/// One billing_state write.
pub struct BillingWrite<'a> {
    pub workspace: Uuid,
    pub tier: &'a str,
    pub status: &'a str,
    pub trial_end: Option<TimestampWithTimeZone>,
    pub current_period_end: Option<TimestampWithTimeZone>,
    pub current_period_start: Option<TimestampWithTimeZone>,
    pub cancel_at_period_end: bool,
    /// When the row turns past_due: the event's time for Stripe; `None` (the trigger stamps
    /// `now()`) for an admin. A row already past_due keeps its own.
    pub past_due_since: Option<TimestampWithTimeZone>,
    /// The Stripe customer and subscription the state follows; `None` for an admin's write,
    /// which keeps whatever the row had.
    pub customer: Option<&'a str>,
    pub subscription: Option<&'a str>,
}

/// Stripe's unix seconds (already bounded to years 1970-9999 by the event parser) as a
/// timestamptz, exactly as SQL's `to_timestamp` gives them.
pub fn from_unix(secs: i64) -> TimestampWithTimeZone {
    timestamptz(unix_to_pg_micros(secs))
}

/// Unix seconds as PostgreSQL's microseconds since 2000-01-01.
fn unix_to_pg_micros(secs: i64) -> i64 {
    const UNIX_TO_PG_EPOCH_SECS: i64 = 946_684_800;
    secs.saturating_sub(UNIX_TO_PG_EPOCH_SECS).saturating_mul(1_000_000)
}

macro_rules! write_billing_sql {
    ($period_start_column:literal, $period_start_value:literal, $period_start_update:literal) => {
        // past_due_since: kept while the row stays past_due, else the one given (the BEFORE
        // trigger stamps now() when none is, and clears it for any other status). The customer
        // id is written unless another workspace's row holds it (the column is UNIQUE; the
        // first link wins, as in stripe_customers); an admin's write (NULL ids) keeps both ids.
        concat!(
            "INSERT INTO entitlements.billing_state AS b
                 (workspace_id, tier, status, trial_end, current_period_end, cancel_at_period_end,
                  past_due_since, stripe_customer_id, stripe_subscription_id", $period_start_column, ")
          VALUES ($1, $2, $3, $4, $5, $6, $7,
                  CASE WHEN NOT EXISTS (SELECT 1 FROM entitlements.billing_state o
                                         WHERE o.stripe_customer_id = $8 AND o.workspace_id <> $1)
                       THEN $8 END,
                  $9", $period_start_value, ")
          ON CONFLICT ON CONSTRAINT billing_state_pkey DO UPDATE
             SET tier = EXCLUDED.tier, status = EXCLUDED.status, trial_end = EXCLUDED.trial_end,
                 current_period_end = EXCLUDED.current_period_end,
                 cancel_at_period_end = EXCLUDED.cancel_at_period_end,
                 past_due_since = CASE WHEN b.status = 'past_due' THEN b.past_due_since
                                       ELSE EXCLUDED.past_due_since END,
                 stripe_customer_id = coalesce(EXCLUDED.stripe_customer_id, b.stripe_customer_id),
                 stripe_subscription_id = coalesce(EXCLUDED.stripe_subscription_id, b.stripe_subscription_id)",
            $period_start_update
        )
    };
}

static WRITE: Stmt = Stmt {
    sql: write_billing_sql!(", current_period_start", ", $10",
                            ", current_period_start = EXCLUDED.current_period_start"),
    args: &[UUID, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ, BOOL, TIMESTAMPTZ, TEXT, TEXT, TIMESTAMPTZ],
};

/// The same write for a database whose schema predates usage limits (the library replaced,
/// `ALTER EXTENSION ... UPDATE` not yet run): it has no `current_period_start`.
static WRITE_BEFORE_LIMITS: Stmt = Stmt {
    sql: write_billing_sql!("", "", ""),
    args: &[UUID, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ, BOOL, TIMESTAMPTZ, TEXT, TEXT],
};

pub fn write(w: &BillingWrite<'_>) {
    let args = [
        w.workspace.into(),
        w.tier.into(),
        w.status.into(),
        w.trial_end.into(),
        w.current_period_end.into(),
        w.cancel_at_period_end.into(),
        w.past_due_since.into(),
        w.customer.into(),
        w.subscription.into(),
        w.current_period_start.into(),
    ];
    if crate::catalog::schema_has_limits() {
        run(&WRITE, &args, |_| Ok(()))
    } else {
        run(&WRITE_BEFORE_LIMITS, &args[..9], |_| Ok(()))
    }
}

static TIER_EXISTS: Stmt = Stmt {
    sql: "SELECT EXISTS (SELECT 1 FROM entitlements.tiers t WHERE t.tier = $1)",
    args: &[TEXT],
};

/// Sets a workspace's billing state by hand (upsert). SECURITY DEFINER with search_path
/// pinned; EXECUTE goes to entitlements_admin only (sql/security.sql).
#[pg_extern(volatile, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn sync_billing_state(
    workspace_id: Option<Uuid>,
    tier: Option<&str>,
    status: Option<&str>,
    trial_end: default!(Option<TimestampWithTimeZone>, "NULL"),
    current_period_end: default!(Option<TimestampWithTimeZone>, "NULL"),
    cancel_at_period_end: default!(Option<bool>, false),
    current_period_start: default!(Option<TimestampWithTimeZone>, "NULL"),
) {
    let (Some(workspace), Some(tier), Some(status)) = (workspace_id, tier, status) else {
        errors::null_argument("workspace_id, tier and status")
    };
    if !run(&TIER_EXISTS, &[tier.into()], first::<bool>).unwrap_or(false) {
        errors::unknown_tier(tier);
    }
    if Status::parse(status).is_none() {
        errors::unknown_status(status);
    }
    write(&BillingWrite {
        workspace,
        tier,
        status,
        trial_end,
        current_period_end,
        current_period_start,
        cancel_at_period_end: cancel_at_period_end.unwrap_or(false),
        past_due_since: None,
        customer: None,
        subscription: None,
    });
}

#[cfg(test)]
mod tests {
    use super::unix_to_pg_micros;

    #[test]
    fn unix_seconds_become_the_same_instant() {
        // 2000-01-01T00:00:00Z is PostgreSQL's epoch: 0 microseconds.
        assert_eq!(unix_to_pg_micros(946_684_800), 0);
        assert_eq!(unix_to_pg_micros(946_684_801), 1_000_000);
        assert_eq!(unix_to_pg_micros(0), -946_684_800_000_000);
    }
}
