//! Small Postgres helpers every layer uses (the clock, argument checks, conversions, a pinned
//! search_path). A leaf: it imports nothing of the crate but `errors`, so lower layers need
//! not reach up into `api`.

use crate::errors;
use pgrx::prelude::*;
use std::ffi::CStr;

/// The wall clock (`clock_timestamp()`), in Postgres microseconds.
pub fn now() -> i64 {
    // SAFETY: reads the clock; no preconditions.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// An internal failure (XX000) instead of a panic for errors that should never happen.
pub fn or_internal<T, E: std::fmt::Display>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| errors::internal(e))
}

pub fn timestamptz(t: i64) -> TimestampWithTimeZone {
    or_internal(TimestampWithTimeZone::try_from(t))
}

/// A required argument: NULL raises 22004 naming it.
pub fn require<T>(value: Option<T>, name: &str) -> T {
    value.unwrap_or_else(|| errors::null_argument(name))
}

/// The search_path every statement of the extension runs under: objects a caller plants in
/// a schema of their own (functions, operators, types) can never be chosen over
/// `pg_catalog`'s, and `pg_temp` is searched for relations only (and last).
pub const PINNED_SEARCH_PATH: &CStr = c"pg_catalog, pg_temp";

/// Run `f` with `search_path` pinned to [`PINNED_SEARCH_PATH`], restored afterwards.
pub fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    with_setting(c"search_path", PINNED_SEARCH_PATH, f)
}

/// Run `f` with the setting `name` at `value`, restored afterwards: the GUC nest level a
/// function's `SET` clause uses. An ERROR inside `f` aborts the (sub)transaction, which
/// restores the setting itself.
pub fn with_setting<R>(name: &CStr, value: &CStr, f: impl FnOnce() -> R) -> R {
    struct Restore(i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // On unwind the (sub)transaction abort pops the nest level.
            if !std::thread::panicking() {
                // SAFETY: pops exactly the nest level pushed below, in this transaction.
                unsafe { pg_sys::AtEOXact_GUC(true, self.0) };
            }
        }
    }
    // SAFETY: NewGUCNestLevel and set_config_option are valid inside a transaction, which
    // every caller (an SQL function, the writer's transaction) is in. GUC_ACTION_SAVE ties
    // the value to the nest level, so AtEOXact_GUC restores the caller's value.
    let _restore = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        Restore(level)
    };
    f()
}

/// Sleep on this backend's latch for up to `ms` milliseconds (a wake-up ends it sooner), then
/// honour interrupts (cancel, terminate). Postmaster death ends the process.
pub fn wait_on_latch(ms: i64) {
    // SAFETY: waits on this backend's own latch with a timeout; WL_EXIT_ON_PM_DEATH ends the
    // backend if the postmaster dies.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    pg_sys::check_for_interrupts!();
}
