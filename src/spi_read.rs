//! The SPI statements of the extension's hot paths: one plan cache for them, safe against
//! re-entry, and the two guarantees a shared decision cache needs from every read it is filled
//! from. (The writes here, `consume`'s counter statements, run with `Snapshot::OwnChanges`,
//! the read-write path.)
//! - Immune to the caller's `search_path`: plans are prepared and executed with name lookups
//!   confined to `pg_catalog` (`pgutil::with_catalog_lookups`), so an operator or function a
//!   caller plants in a schema of their own can never take part in a decision that other roles
//!   then read.
//! - Under the snapshot the caller chose: `Snapshot::Active` executes read-only, with the
//!   snapshot on top of the active-snapshot stack (the cache pushes the latest committed one;
//!   see `cache::read_decision_inputs`), whatever the transaction's isolation level or whether it holds
//!   a transaction id. `Snapshot::OwnChanges` executes as a read-write statement does, after a
//!   command-counter increment, so a transaction that changed decision inputs reads them.

use crate::pgutil::{self, or_internal};
use pgrx::datum::{DatumWithOid, FromDatum};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

/// One statement with its parameter types; its address keys the plan cache.
pub struct Stmt {
    pub sql: &'static str,
    pub args: &'static [pg_sys::Oid],
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Snapshot {
    /// Read-only, under the active snapshot (what the caller pushed).
    Active,
    /// This transaction's own view, including its uncommitted changes; also the only mode a
    /// statement that writes (`UPDATE ... RETURNING`) may run in.
    OwnChanges,
}

thread_local! {
    /// Plans kept for the backend's life (SPI_keepplan). Only the pointer is copied out, so
    /// no borrow is held while a plan runs: a re-entrant call (a trigger, a policy) finds
    /// the cache free, and PostgreSQL allows a kept plan to run re-entrantly.
    static PLANS: RefCell<HashMap<usize, pg_sys::SPIPlanPtr>> = RefCell::new(HashMap::new());
}

/// One result row, decoded while SPI's memory is still there.
pub struct Row {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl Row {
    /// Column `n` (1-based) as `T`; `None` for SQL NULL.
    pub fn get<T: FromDatum>(&self, n: i32) -> Option<T> {
        let mut is_null = false;
        // SAFETY: tuple and desc come from SPI_tuptable of the statement just executed,
        // valid until SPI_finish, which runs after every Row is dropped.
        unsafe {
            let datum = pg_sys::SPI_getbinval(self.tuple, self.desc, n, &mut is_null);
            T::from_datum(datum, is_null)
        }
    }
}

impl Row {
    /// Column `n` (1-based) as a datum copied out of SPI's memory into the caller's context
    /// (a composite result returned as is); `None` for SQL NULL.
    pub fn datum_transferred(&self, n: i32, by_value: bool, len: i32) -> Option<pg_sys::Datum> {
        let mut is_null = false;
        // SAFETY: as in `get`; SPI_datumTransfer runs while SPI is connected (inside `query`'s
        // closure) and copies into the context that was current at SPI_connect.
        unsafe {
            let datum = pg_sys::SPI_getbinval(self.tuple, self.desc, n, &mut is_null);
            (!is_null).then(|| pg_sys::SPI_datumTransfer(datum, by_value, len))
        }
    }
}

fn plan(stmt: &'static Stmt) -> pg_sys::SPIPlanPtr {
    let key = stmt as *const Stmt as usize;
    if let Some(p) = PLANS.with(|p| p.borrow().get(&key).copied()) {
        return p;
    }
    let sql = or_internal(std::ffi::CString::new(stmt.sql));
    // SAFETY: inside an SPI connection; argtypes has `args.len()` elements. SPI_keepplan
    // moves the plan out of the procedure context so it outlives this connection.
    // A generic plan, planned once: the statements are lookups by key whose best plan does not
    // depend on the values, and the plan cache would otherwise re-plan the larger ones (the
    // usage reads inline their SQL functions) on every call when it estimates a custom plan
    // cheaper.
    let p = unsafe {
        let p = pg_sys::SPI_prepare_cursor(
            sql.as_ptr(),
            stmt.args.len() as i32,
            stmt.args.as_ptr().cast_mut(),
            pg_sys::CURSOR_OPT_GENERIC_PLAN as i32,
        );
        if p.is_null() {
            let code = pg_sys::SPI_result;
            crate::errors::internal(format!("SPI_prepare failed: {code}"));
        }
        pg_sys::SPI_keepplan(p);
        p
    };
    PLANS.with(|plans| {
        // A re-entrant call may have prepared it meanwhile: keep one, free the other.
        let mut plans = plans.borrow_mut();
        match plans.get(&key) {
            Some(&existing) => {
                // SAFETY: `p` is ours, kept above and referenced nowhere else.
                unsafe { pg_sys::SPI_freeplan(p) };
                existing
            }
            None => {
                plans.insert(key, p);
                p
            }
        }
    })
}

/// Run `stmt` with `args` and map each row with `read` (at most `limit` rows; 0 = all).
pub fn query<R>(
    stmt: &'static Stmt,
    args: &[DatumWithOid<'_>],
    snapshot: Snapshot,
    limit: i64,
    mut read: impl FnMut(&Row) -> R,
) -> Vec<R> {
    pgutil::with_catalog_lookups(|| {
        let result: Result<Vec<R>, pgrx::spi::SpiError> = Spi::connect(|_client| {
            let plan = plan(stmt);
            let (mut values, mut nulls): (Vec<pg_sys::Datum>, Vec<std::ffi::c_char>) = args
                .iter()
                .map(|a| match a.datum() {
                    Some(d) => (d.sans_lifetime(), b' ' as std::ffi::c_char),
                    None => (pg_sys::Datum::from(0usize), b'n' as std::ffi::c_char),
                })
                .unzip();
            // SAFETY: the plan was prepared for exactly these argument types (the Stmt says
            // so); values and nulls have one element per argument. read_only = true makes
            // SPI use the active snapshot as is, without a command-counter increment.
            let status = unsafe {
                pg_sys::SPI_execute_plan(
                    plan,
                    values.as_mut_ptr(),
                    nulls.as_mut_ptr(),
                    snapshot == Snapshot::Active,
                    limit,
                )
            };
            let returned_rows = status == pg_sys::SPI_OK_SELECT as i32
                || (snapshot == Snapshot::OwnChanges
                    && [pg_sys::SPI_OK_UPDATE_RETURNING, pg_sys::SPI_OK_INSERT_RETURNING].contains(&(status as u32)));
            if !returned_rows {
                crate::errors::internal(format!("SPI_execute_plan returned {status}"));
            }
            // SAFETY: SPI_tuptable describes the result of the statement just executed.
            let out = unsafe {
                let table = pg_sys::SPI_tuptable;
                let n = pg_sys::SPI_processed as usize;
                let mut out = Vec::with_capacity(n);
                for i in 0..n {
                    let row = Row { tuple: *(*table).vals.add(i), desc: (*table).tupdesc };
                    out.push(read(&row));
                }
                out
            };
            Ok(out)
        });
        or_internal(result)
    })
}
