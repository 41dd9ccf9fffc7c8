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

/// An `integer[]` argument, built directly (no per-call lookup of the array type).
pub fn int4_array(values: &[i32]) -> pgrx::datum::DatumWithOid<'static> {
    let elems = values.iter().map(|v| pg_sys::Datum::from(*v)).collect();
    // SAFETY: int4 is 4 bytes, passed by value, int-aligned.
    unsafe { by_value_array(elems, pg_sys::INT4OID, pg_sys::INT4ARRAYOID, 4, b'i') }
}

/// A `bigint[]` argument, built directly.
pub fn int8_array(values: &[i64]) -> pgrx::datum::DatumWithOid<'static> {
    let elems = values.iter().map(|v| pg_sys::Datum::from(*v)).collect();
    // SAFETY: int8 is 8 bytes, passed by value on the 64-bit platforms pgrx builds for,
    // double-aligned.
    unsafe { by_value_array(elems, pg_sys::INT8OID, pg_sys::INT8ARRAYOID, 8, b'd') }
}

/// An array of a pass-by-value type, palloc'd in the current memory context; an empty one is
/// PostgreSQL's canonical empty array (no dimensions), as `'{}'` reads.
///
/// # Safety
/// `len`, `align` must be `elem`'s, `elem` passed by value, and `array` its array type.
unsafe fn by_value_array(
    mut elems: Vec<pg_sys::Datum>,
    elem: pg_sys::Oid,
    array: pg_sys::Oid,
    len: i32,
    align: u8,
) -> pgrx::datum::DatumWithOid<'static> {
    // SAFETY: as the caller promises; construct_array copies the elements.
    unsafe {
        let value = if elems.is_empty() {
            pg_sys::construct_empty_array(elem)
        } else {
            pg_sys::construct_array(elems.as_mut_ptr(), elems.len() as i32, elem, len, true, align as std::ffi::c_char)
        };
        pgrx::datum::DatumWithOid::new(pg_sys::Datum::from(value), array)
    }
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

/// Run `f` with name lookups confined to `pg_catalog` (relations, functions, operators, types),
/// as the hot paths' statements need (every other name they use is qualified): PostgreSQL's
/// override search path, pushed and popped around `f`. It has the effect of
/// [`with_pinned_search_path`] on what the statements resolve (temporary relations are not
/// searched at all) without the `search_path` setting's save, parse and restore, and without
/// making the caller's own path be computed again afterwards. The plans prepared and run under
/// it record this path, so they stay valid from call to call. An ERROR inside `f` aborts the
/// (sub)transaction, which pops the override itself.
pub fn with_catalog_lookups<R>(f: impl FnOnce() -> R) -> R {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                // SAFETY: pops exactly the override pushed below.
                unsafe { pg_sys::PopOverrideSearchPath() };
            }
        }
    }
    let mut path = pg_sys::OverrideSearchPath {
        schemas: CATALOG_ONLY.with(|l| {
            *l.get_or_init(|| {
                // SAFETY: a one-element list made once per backend in TopMemoryContext,
                // which lives as long as the backend.
                unsafe {
                    let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
                    let list = pg_sys::lappend_oid(std::ptr::null_mut(), pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE));
                    pg_sys::MemoryContextSwitchTo(old);
                    list
                }
            })
        }),
        addCatalog: false,
        addTemp: false,
        generation: 0,
    };
    // SAFETY: inside a transaction; PushOverrideSearchPath copies the path (and its list) into
    // its own memory, so the local struct may go when this returns.
    unsafe { pg_sys::PushOverrideSearchPath(&mut path) };
    let _pop = Pop;
    f()
}

thread_local! {
    static CATALOG_ONLY: std::cell::OnceCell<*mut pg_sys::List> = const { std::cell::OnceCell::new() };
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
