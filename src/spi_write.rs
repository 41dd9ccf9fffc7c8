//! The plan cache of the statements that write (Stripe ingestion, the billing writer, the audit
//! writer): each statement is planned once per backend (a generic plan) and runs in SPI's
//! read-write mode, so it takes a fresh snapshot and sees what sessions that held a lock it
//! waited for committed. The checks' reads have their own cache with snapshot rules of their
//! own (`spi_read`).

use crate::errors;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{BuiltinOid, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiResult, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;

pub const TEXT: PgOid = PgOid::BuiltIn(BuiltinOid::TEXTOID);
pub const TEXT_ARRAY: PgOid = PgOid::BuiltIn(BuiltinOid::TEXTARRAYOID);
pub const INT8: PgOid = PgOid::BuiltIn(BuiltinOid::INT8OID);
pub const INT8_ARRAY: PgOid = PgOid::BuiltIn(BuiltinOid::INT8ARRAYOID);
pub const UUID: PgOid = PgOid::BuiltIn(BuiltinOid::UUIDOID);
pub const BOOL: PgOid = PgOid::BuiltIn(BuiltinOid::BOOLOID);
pub const JSONB: PgOid = PgOid::BuiltIn(BuiltinOid::JSONBOID);
pub const TIMESTAMPTZ: PgOid = PgOid::BuiltIn(BuiltinOid::TIMESTAMPTZOID);

/// One SQL statement with its parameter types; its address keys the plan cache.
pub struct Stmt {
    pub sql: &'static str,
    pub args: &'static [PgOid],
}

thread_local! {
    static PLANS: RefCell<HashMap<usize, OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// Run `stmt` (planned on first use, kept for the backend's life) and read its result.
/// The plan is taken out of the cache while it runs, so a statement reached again from inside
/// (a trigger) plans its own copy instead of finding the cache borrowed; an ERROR while it runs
/// drops it, and the next call plans it again.
pub fn run<R>(
    stmt: &'static Stmt,
    args: &[DatumWithOid<'_>],
    read: impl FnOnce(SpiTupleTable<'_>) -> SpiResult<R>,
) -> R {
    let key = stmt as *const Stmt as usize;
    let result = Spi::connect_mut(|client| {
        let plan = match PLANS.with(|p| p.borrow_mut().remove(&key)) {
            Some(plan) => plan,
            None => client.prepare_mut(stmt.sql, stmt.args)?.keep(),
        };
        // A generic plan, as the checks' reads use: PostgreSQL would otherwise plan the
        // statements whose parameters are arrays (the tier lookup, the rollups) again on every
        // call, estimating a custom plan cheaper for each new array.
        let out = crate::pgutil::with_setting(c"plan_cache_mode", c"force_generic_plan", || {
            client.update(&plan, None, args)
        })
        .and_then(read);
        PLANS.with(|p| p.borrow_mut().insert(key, plan));
        out
    });
    result.unwrap_or_else(|e| errors::internal(e))
}

/// The first column of the first row, `None` when there is no row (or it is NULL).
pub fn first<T: IntoDatum + FromDatum>(table: SpiTupleTable<'_>) -> SpiResult<Option<T>> {
    if table.is_empty() {
        return Ok(None);
    }
    table.first().get_one::<T>()
}
