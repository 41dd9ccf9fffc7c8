//! Every `pg_entitlements.*` setting, registered once from `_PG_init`.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// How long a `past_due` subscription keeps access, in seconds (SHOW prints it with a unit,
/// e.g. `7d`). Reload-time only: a session must not be able to grant itself grace.
pub static PAST_DUE_GRACE: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);

/// The caller's identity for membership checks (`SET LOCAL pg_entitlements.user_id = '...'`).
pub static USER_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn init() {
    GucRegistry::define_int_guc(
        c"pg_entitlements.past_due_grace",
        c"How long a past_due subscription keeps access.",
        c"After past_due_since + this interval, tier-gated features are denied with PAYMENT_PAST_DUE.",
        &PAST_DUE_GRACE,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_string_guc(
        c"pg_entitlements.user_id",
        c"The identity of the user the application acts for.",
        c"Checks by non-privileged roles need it (else the sub claim of request.jwt.claims).",
        &USER_ID,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"pg_entitlements".as_ptr()) };
}

/// The grace in microseconds, the resolver's unit.
pub fn past_due_grace_micros() -> i64 {
    i64::from(PAST_DUE_GRACE.get()) * 1_000_000
}
