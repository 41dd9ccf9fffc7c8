//! Every error the extension raises, with its SQLSTATE, in one place.
//! (Errors raised by the SQL functions in sql/api.sql use the same codes; the README lists both.)

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

fn raise(code: PgSqlErrorCode, message: String, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, message, "pg_entitlements");
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// 22004: a NULL where a value is required.
pub fn null_argument(name: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("pg_entitlements: {name} must not be NULL"),
        None,
    )
}

/// 22023: a feature the catalog does not know.
pub fn unknown_feature(feature: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("pg_entitlements: unknown feature \"{feature}\""),
        Some("The catalog is entitlements.features."),
    )
}

/// 22023: a tier the catalog does not know.
pub fn unknown_tier(tier: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("pg_entitlements: unknown tier \"{tier}\""),
        Some("The tiers are in entitlements.tiers."),
    )
}

/// 22023: a billing status outside the resolver's list.
pub fn unknown_status(status: &str) -> ! {
    // Stripe's statuses first, then ours ("none": no subscription).
    let mut names: Vec<&str> =
        crate::resolver::Status::ALL.iter().map(|(name, _)| *name).filter(|n| *n != "none").collect();
    names.push("none");
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("pg_entitlements: unknown status \"{status}\""),
        Some(&format!("One of {}.", names.join(", "))),
    )
}

/// 28000: a non-privileged caller without an identity (the "401").
pub fn no_identity(hint: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        "pg_entitlements: no caller identity".into(),
        Some(hint),
    )
}

/// 42501: a caller who is not a member of the workspace (the "403").
pub fn not_a_member(workspace_id: &str, user_id: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("pg_entitlements: user \"{user_id}\" is not a member of workspace {workspace_id}"),
        Some("Members are the rows of entitlements.workspace_members."),
    )
}

/// 28000: a Stripe-Signature header that does not verify. The message is the Stripe SDKs'
/// text, unprefixed, so a webhook layer can log it as the SDKs would; it never carries the
/// header, the payload or a secret.
pub fn signature_rejected(sdk_message: &'static str) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, sdk_message.into(), None)
}

/// 22P02: a verified payload that is not a JSON Stripe event (the reason names fields only).
pub fn not_a_stripe_event(reason: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
        format!("pg_entitlements: payload is not a Stripe event: {reason}"),
        None,
    )
}

/// 54000: a payload over pg_entitlements.max_payload_bytes, refused before any work on it.
pub fn payload_too_large(bytes: usize, max: usize) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        format!("pg_entitlements: payload of {bytes} bytes exceeds pg_entitlements.max_payload_bytes ({max})"),
        None,
    )
}

/// 54000: a Stripe-Signature header over its fixed limit, refused before it is parsed. The
/// message names the limit and the size, never the header's contents.
pub fn signature_header_too_large(bytes: usize, max: usize) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        format!("pg_entitlements: Stripe-Signature header of {bytes} bytes exceeds the limit of {max} bytes"),
        None,
    )
}

/// 55000: no webhook secret is active, so nothing can be verified.
pub fn no_webhook_secret() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "pg_entitlements: no active Stripe webhook secret".into(),
        Some("A privileged role adds the endpoint's signing secret: SELECT entitlements.add_webhook_secret($1) with the whsec_... value as a parameter."),
    )
}

/// 55000: a check on a hot standby whose replay did not reach pg_entitlements.min_lsn within
/// pg_entitlements.replica_wait_timeout (its answer would not include the writes the token
/// stands for).
pub fn replica_behind(min_lsn: u64, replayed: u64, timeout_ms: i32) -> ! {
    let lsn = |l: u64| format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff);
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "pg_entitlements: this standby has replayed up to {}, not yet to pg_entitlements.min_lsn {} (waited {timeout_ms} ms)",
            lsn(replayed),
            lsn(min_lsn)
        ),
        Some("Retry later or ask the primary; pg_entitlements.replica_wait_timeout sets the wait."),
    )
}

/// 22023: an argument with a value no call can use (an empty customer id).
pub fn invalid_argument(name: &str, why: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("pg_entitlements: {name} {why}"),
        None,
    )
}

/// 22023: link_stripe_customer for a customer that belongs to another workspace.
pub fn customer_linked_elsewhere(customer: &str, workspace: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("pg_entitlements: Stripe customer \"{customer}\" is already linked to workspace {workspace}"),
        Some("A customer belongs to one workspace. To move it, delete its row from entitlements.stripe_customers first."),
    )
}

/// XX000: an internal failure (an SPI error, a catalog row that breaks an invariant).
pub fn internal(what: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("pg_entitlements: {what}"), None)
}

/// 0A000: two-phase commit of a transaction that changed decision inputs. The cache is
/// invalidated by the committing backend; COMMIT PREPARED runs elsewhere and could not.
pub fn prepare_after_change() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "pg_entitlements: cannot PREPARE a transaction that changed billing state, overrides or the catalog".into(),
        Some("Commit it directly."),
    )
}

/// 42501: a privileged-only function called by another role.
pub fn superuser_only(what: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("pg_entitlements: only superusers may call {what}"),
        None,
    )
}

/// 42501: UPDATE, DELETE, TRUNCATE or a direct INSERT on the append-only audit trail.
pub fn audit_append_only(operation: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("pg_entitlements: entitlements.entitlement_checks is append-only ({operation} refused)"),
        Some("Rows are written by the audit writer; old rows are removed with entitlements.prune_audit(interval)."),
    )
}

/// 42501: prune_audit called by a role that is not a superuser.
pub fn prune_requires_superuser() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        "pg_entitlements: only a superuser may prune the audit trail".into(),
        None,
    )
}

/// 55P03: another delivery for the same Stripe customer held its lock past
/// pg_entitlements.stripe_lock_timeout; nothing was changed, the webhook layer retries.
pub fn stripe_customer_busy(customer: &str, timeout_ms: i32) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        format!("pg_entitlements: Stripe customer \"{customer}\" is busy: another transaction held its lock for more than {timeout_ms} ms"),
        Some("Nothing was applied; deliver the event again (Stripe retries failed deliveries). pg_entitlements.stripe_lock_timeout sets the wait."),
    )
}
