//! Every `pg_entitlements.*` setting, registered once from `_PG_init`.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// How long a `past_due` subscription keeps access, in seconds (SHOW prints it with a unit,
/// e.g. `7d`). Reload-time only: a session must not be able to grant itself grace.
pub static PAST_DUE_GRACE: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);

/// The caller's identity for membership checks (`SET LOCAL pg_entitlements.user_id = '...'`).
pub static USER_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Oldest Stripe-Signature timestamp accepted, in seconds before now (0: no age check, as in
/// the SDKs). Reload-time only: a webhook role must not be able to widen the replay window.
pub static STRIPE_TOLERANCE: GucSetting<i32> = GucSetting::<i32>::new(300);

/// Largest webhook payload apply_stripe_event looks at, in bytes. Reload-time only, for the
/// same reason.
pub static MAX_PAYLOAD_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

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
    GucRegistry::define_int_guc(
        c"pg_entitlements.stripe_tolerance",
        c"How old a Stripe-Signature timestamp may be.",
        c"Headers signed longer ago are refused with 28000 (0 turns the check off, as in Stripe's SDKs).",
        &STRIPE_TOLERANCE,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"pg_entitlements.max_payload_bytes",
        c"Largest Stripe webhook payload accepted.",
        c"Larger payloads are refused with 54000 before verification.",
        &MAX_PAYLOAD_BYTES,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_BYTE,
    );
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"pg_entitlements".as_ptr()) };
}

/// The grace in microseconds, the resolver's unit.
pub fn past_due_grace_micros() -> i64 {
    i64::from(PAST_DUE_GRACE.get()) * 1_000_000
}

pub fn stripe_tolerance_secs() -> i64 {
    i64::from(STRIPE_TOLERANCE.get())
}

pub fn max_payload_bytes() -> usize {
    usize::try_from(MAX_PAYLOAD_BYTES.get()).unwrap_or(0)
}
