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

/// 28000: a non-privileged caller without an identity (the "401").
pub fn no_identity() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        "pg_entitlements: no caller identity".into(),
        Some("SET LOCAL pg_entitlements.user_id = '<user>' (or request.jwt.claims with a \"sub\") before checking."),
    )
}

/// 42501: a caller who is not a member of the workspace (the "403").
pub fn not_a_member(workspace_id: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("pg_entitlements: caller is not a member of workspace {workspace_id}"),
        None,
    )
}

/// XX000: an internal failure (an SPI error, a catalog row that breaks an invariant).
pub fn internal(what: impl std::fmt::Display) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("pg_entitlements: {what}"), None)
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
