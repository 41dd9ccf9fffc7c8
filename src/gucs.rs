//! Every `pg_entitlements.*` setting, registered once from `_PG_init`.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::ffi::{CStr, CString};

/// `f` of a string setting's current value, borrowed rather than copied (`get()` allocates a
/// copy; the audit reads several settings per check).
pub fn with_str<R>(setting: &GucSetting<Option<CString>>, f: impl FnOnce(Option<&CStr>) -> R) -> R {
    // SAFETY: the GUC machinery keeps a NUL-terminated string (or NULL) in the variable and
    // replaces it only when the setting changes, which nothing inside `f` (building a record
    // or comparing a value) can do.
    let raw = unsafe { *setting.as_ptr() };
    f((!raw.is_null()).then(|| unsafe { CStr::from_ptr(raw) }))
}

/// How long a `past_due` subscription keeps access, in seconds (SHOW prints it with a unit,
/// e.g. `7d`). Reload-time only: a session must not be able to grant itself grace.
pub static PAST_DUE_GRACE: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);

/// The caller's identity for membership checks (`SET LOCAL pg_entitlements.user_id = '...'`).
/// Superuser-context: only roles granted SET on it (`entitlements_app` is, by the extension)
/// may assert an identity, so a role that merely connects cannot claim to be a user.
pub static USER_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Where the caller's identity may come from.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum IdentitySource {
    /// `pg_entitlements.user_id` only.
    #[name = c"setting"]
    Setting,
    /// The `sub` of `request.jwt.claims` only (PostgREST, Supabase).
    #[name = c"jwt"]
    Jwt,
    /// `pg_entitlements.user_id`, else the JWT's `sub`.
    #[name = c"both"]
    Both,
}

/// Superuser-only: which identity sources count.
pub static IDENTITY_SOURCE: GucSetting<IdentitySource> = GucSetting::<IdentitySource>::new(IdentitySource::Both);

/// How long apply_stripe_event waits for another delivery of the same customer, in
/// milliseconds, before it fails with 55P03 (so a stuck transaction fails fast).
pub static STRIPE_LOCK_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// Entries in the shared decision cache (0: no cache). Sizes shared memory: restart to change.
pub static CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(65536);

/// Seconds a cached decision may be served (it never outlives its own time boundary).
pub static CACHE_TTL: GucSetting<i32> = GucSetting::<i32>::new(300);

/// Read and fill the cache (a superuser may turn it off for a session, e.g. to compare).
pub static CACHE_ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Oldest Stripe-Signature timestamp accepted, in seconds before now (0: no age check, as in
/// the SDKs). Reload-time only: a webhook role must not be able to widen the replay window.
pub static STRIPE_TOLERANCE: GucSetting<i32> = GucSetting::<i32>::new(300);

/// Largest webhook payload apply_stripe_event looks at, in bytes. Reload-time only, for the
/// same reason.
pub static MAX_PAYLOAD_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);
/// Which checks the audit trail records.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum AuditMode {
    #[name = c"all"]
    All,
    #[name = c"denied"]
    Denied,
    #[name = c"off"]
    Off,
}

/// Superuser-only: a session must not be able to switch off the record of its own checks.
pub static AUDIT: GucSetting<AuditMode> = GucSetting::<AuditMode>::new(AuditMode::All);

/// Records the audit queue holds (576 bytes each with its stamp, 18.9 MB at the default: about half a second
/// of checks at full speed on a 2-core machine), fixed at server start.
pub static AUDIT_QUEUE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(32768);

/// How many databases the audit can serve at once: one writer (a background worker) each.
pub static AUDIT_MAX_DATABASES: GucSetting<i32> = GucSetting::<i32>::new(8);

/// Rows older than this are pruned by the writers, at most once an hour (0: never; minutes,
/// SHOW prints it with a unit, e.g. `90d`). Reload-time: retention is the DBA's decision.
pub static AUDIT_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(0);

/// No longer used (every database's records are stored in that database); still defined so
/// that a postgresql.conf that sets it keeps starting (the prefix is reserved).
pub static AUDIT_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);

/// What the application says its client is; recorded as user_agent (else application_name).
pub static USER_AGENT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The end user's address as the application saw it; recorded as ip_address (else the
/// connection's address). Validated by PostgreSQL's own `inet` parser when it is set, so no
/// value that reaches the audit writer can fail its INSERT.
pub static CLIENT_IP: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// On a hot standby, checks first wait until replay has passed this WAL position (a token
/// from `entitlements.write_token()` on the primary); empty: no wait.
pub static MIN_LSN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// How long a check on a standby waits for `min_lsn`, in milliseconds, before it fails with
/// 55000.
pub static REPLICA_WAIT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Percentages of a usage limit whose crossing `consume` announces with
/// `NOTIFY pg_entitlements_usage`, comma-separated; empty: none.
pub static USAGE_THRESHOLDS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"80,100"));

/// The current `pg_entitlements.usage_thresholds` text, read in place (no copy: `consume`
/// looks at it on every call).
pub fn with_usage_thresholds_text<R>(f: impl FnOnce(&std::ffi::CStr) -> R) -> R {
    // SAFETY: the setting's value is a NUL-terminated string owned by the GUC machinery (or
    // NULL), which changes it only between statements; it is read before returning.
    let raw = unsafe { *USAGE_THRESHOLDS.as_ptr() };
    if raw.is_null() {
        f(c"")
    } else {
        // SAFETY: as above.
        f(unsafe { std::ffi::CStr::from_ptr(raw) })
    }
}

/// A valid `pg_entitlements.usage_thresholds`: comma-separated whole percentages, 1 to 1000
/// (above 100: an overage of a soft limit), or empty.
pub fn valid_usage_thresholds(v: &str) -> bool {
    v.trim().is_empty()
        || v.split(',').all(|t| t.trim().parse::<i32>().is_ok_and(|n| (1..=1000).contains(&n)))
}

/// The check hook of `pg_entitlements.usage_thresholds`.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_usage_thresholds(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the proposed value.
    let valid = proposed(unsafe { *newval }).is_none_or(valid_usage_thresholds);
    if !valid {
        // SAFETY: the GUC machinery reads this palloc'd message right after we return.
        unsafe {
            pgrx::pg_sys::GUC_check_errdetail_string = pgrx::pg_sys::pstrdup(
                c"pg_entitlements.usage_thresholds must be comma-separated whole percentages from 1 to 1000 (e.g. '80,100'), or empty.".as_ptr(),
            );
        }
    }
    valid
}

fn proposed(newval: *const std::ffi::c_char) -> Option<&'static str> {
    // SAFETY: PostgreSQL passes the proposed value, a C string or NULL, that outlives the hook.
    unsafe { newval.as_ref().map(|p| std::ffi::CStr::from_ptr(p)) }.map(|v| v.to_str().unwrap_or("?"))
}

/// The check hook of `pg_entitlements.min_lsn`: empty, or what `pg_lsn` accepts.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_min_lsn(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to the proposed value.
    let valid = proposed(unsafe { *newval }).is_none_or(|v| v.is_empty() || crate::replica::parse_lsn(v).is_some());
    if !valid {
        // SAFETY: the GUC machinery reads this palloc'd message right after we return.
        unsafe {
            pgrx::pg_sys::GUC_check_errdetail_string = pgrx::pg_sys::pstrdup(
                c"pg_entitlements.min_lsn must be a pg_lsn value such as the one entitlements.write_token() returns (e.g. 16/B374D848).".as_ptr(),
            );
        }
    }
    valid
}

/// The assign hook of `pg_entitlements.min_lsn`: keep the parsed position for the checks.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn assign_min_lsn(newval: *const std::ffi::c_char, _extra: *mut std::ffi::c_void) {
    crate::replica::set_min_lsn(proposed(newval).and_then(crate::replica::parse_lsn).unwrap_or(0));
}

/// The check hook of `pg_entitlements.client_ip`: what `inet` accepts, nothing else (and no
/// longer than an audit record holds).
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_client_ip(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pgrx::pg_sys::GucSource::Type,
) -> bool {
    // SAFETY: PostgreSQL passes a pointer to the proposed value (a C string or NULL).
    let value = unsafe { (*newval).as_ref().map(|p| std::ffi::CStr::from_ptr(p)) };
    match value {
        None => true,
        Some(v) if v.is_empty() => true,
        Some(v) => {
            let valid = crate::audit::canonical_inet(v).is_some();
            if !valid {
                // SAFETY: the GUC machinery reads this palloc'd message right after we return.
                unsafe {
                    pgrx::pg_sys::GUC_check_errdetail_string = pgrx::pg_sys::pstrdup(
                        c"pg_entitlements.client_ip must be an inet value (an IPv4 or IPv6 address, optionally with a /netmask).".as_ptr(),
                    );
                }
            }
            valid
        }
    }
}

pub fn init() {
    // A postmaster-context setting can only be defined while the postmaster loads us
    // (elsewhere PostgreSQL raises FATAL): without preload there is no cache to size.
    // SAFETY: a plain flag of the postmaster's startup, read-only here.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        define_cache_size();
    }
    define_the_rest();
}

fn define_cache_size() {
    GucRegistry::define_int_guc(
        c"pg_entitlements.cache_size",
        c"Entries in the shared decision cache (0 turns it off).",
        c"Needs shared_preload_libraries = 'pg_entitlements' and a restart.",
        &CACHE_SIZE,
        0,
        64 * 1024 * 1024,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

fn define_the_rest() {
    GucRegistry::define_int_guc(
        c"pg_entitlements.cache_ttl",
        c"How long a cached decision may be served.",
        c"An entry also expires at its decision's own time boundary (trial end, grace end, override expiry).",
        &CACHE_TTL,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_bool_guc(
        c"pg_entitlements.cache_enabled",
        c"Whether checks read and fill the shared decision cache.",
        c"Off bypasses the cache in this session; decisions are the same either way.",
        &CACHE_ENABLED,
        GucContext::Suset,
        GucFlags::default(),
    );
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
        c"Checks by non-privileged roles need it (else the sub claim of request.jwt.claims). Settable by roles granted SET on it, such as members of entitlements_app.",
        &USER_ID,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"pg_entitlements.identity_source",
        c"Where the caller's identity comes from: setting, jwt or both.",
        c"setting: pg_entitlements.user_id; jwt: the sub of request.jwt.claims; both: the setting, else the JWT.",
        &IDENTITY_SOURCE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_entitlements.stripe_lock_timeout",
        c"How long apply_stripe_event waits for another delivery of the same customer.",
        c"Past it the call fails with SQLSTATE 55P03 and changes nothing; the webhook layer retries.",
        &STRIPE_LOCK_TIMEOUT,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
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
    define_replica_gucs();
    define_audit_gucs();
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"pg_entitlements".as_ptr()) };
}

fn define_replica_gucs() {
    // SAFETY: a static setting and hooks that are valid #[pg_guard] functions.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"pg_entitlements.min_lsn",
            c"On a hot standby, checks wait until replay has passed this WAL position.",
            c"Set it (SET LOCAL) to the token entitlements.write_token() returned on the primary after a write; a primary satisfies it at once.",
            &MIN_LSN,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_min_lsn),
            Some(assign_min_lsn),
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"pg_entitlements.replica_wait_timeout",
        c"How long a check on a standby waits for replay to reach pg_entitlements.min_lsn.",
        c"Past it the check fails with SQLSTATE 55000; the app retries or asks the primary.",
        &REPLICA_WAIT_TIMEOUT,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
}

fn define_audit_gucs() {
    GucRegistry::define_enum_guc(
        c"pg_entitlements.audit",
        c"Which checks are recorded in entitlements.entitlement_checks: all, denied or off.",
        c"has_entitlement is never recorded.",
        &AUDIT,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_entitlements.user_agent",
        c"The client the application acts for, recorded with each audited check.",
        c"Defaults to application_name.",
        &USER_AGENT,
        GucContext::Userset,
        GucFlags::default(),
    );
    // SAFETY: a static setting and a check hook that is a valid #[pg_guard] function.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"pg_entitlements.client_ip",
            c"The end user's IP address, recorded with each audited check.",
            c"Defaults to the connection's address. Must be an inet value.",
            &CLIENT_IP,
            GucContext::Userset,
            GucFlags::default(),
            Some(check_client_ip),
            None,
            None,
        );
    }
    // SAFETY: a static setting and a check hook that is a valid #[pg_guard] function.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"pg_entitlements.usage_thresholds",
            c"Percentages of a usage limit whose crossing consume() announces with NOTIFY pg_entitlements_usage.",
            c"Comma-separated, 1 to 1000; empty: no notifications. Each threshold is announced once per period.",
            &USAGE_THRESHOLDS,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_usage_thresholds),
            None,
            None,
        );
    }
    // Server-start settings can only be defined while the library is preloaded (Postgres
    // refuses them later, e.g. when CREATE EXTENSION loads it); without preload there is no
    // queue and no writer for them to size or direct.
    // SAFETY: a plain global flag, read in _PG_init on the main thread.
    if !unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    GucRegistry::define_int_guc(
        c"pg_entitlements.audit_queue_size",
        c"Audit records held in shared memory before the writer stores them.",
        c"When the queue is full, records are dropped (and counted), never waited for.",
        &AUDIT_QUEUE_SIZE,
        8,
        1 << 20,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_entitlements.audit_max_databases",
        c"Databases the audit serves at once, one writer (a background worker) each.",
        c"Records of further databases are dropped and counted. Each writer takes a max_worker_processes slot.",
        &AUDIT_MAX_DATABASES,
        1,
        crate::audit::MAX_WRITERS as i32,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_entitlements.audit_retention",
        c"Audit rows older than this are removed by the audit writers, at most once an hour.",
        c"0 keeps every row. Whole day partitions are dropped; the partition that straddles the cut is deleted from.",
        &AUDIT_RETENTION,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MIN,
    );
    GucRegistry::define_string_guc(
        c"pg_entitlements.audit_database",
        c"WARNING: deprecated and ignored; every database's audit records are stored in that database.",
        c"Kept so that a postgresql.conf that sets it still starts.",
        &AUDIT_DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
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

#[cfg(test)]
mod tests {
    use super::valid_usage_thresholds;

    #[test]
    fn usage_thresholds_are_whole_percentages_or_empty() {
        for ok in ["80,100", "50", " 80 , 100 ", "", "1,1000", "100,80"] {
            assert!(valid_usage_thresholds(ok), "{ok:?}");
        }
        for bad in ["0", "1001", "80,", "eighty", "80;100", "-5", "12.5"] {
            assert!(!valid_usage_thresholds(bad), "{bad:?}");
        }
    }
}
