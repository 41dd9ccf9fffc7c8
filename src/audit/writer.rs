//! The audit writers: one dynamic background worker per database with audited checks,
//! started by that database's first check, that stores its database's records from the
//! queue into `entitlements.entitlement_checks`, a whole batch per transaction through the bulk
//! path COPY uses (`copy`), in its own transactions (so the callers' rollbacks and read-only
//! transactions do not matter). Postgres restarts a writer a second after it is terminated or
//! fails; a writer leaves by itself when its database has had no records for a while, loses
//! the extension, or is being dropped.
//!
//! It connects as the bootstrap superuser (a background worker cannot log in as a NOLOGIN
//! role on PostgreSQL 15), but stores rows as the role `entitlements_audit_writer`, which may
//! only INSERT into the audit table, under a pinned search_path and with every name
//! qualified: nothing a database user creates can run with the writer's rights.

use super::queue;
use super::record::Record;
use crate::resolver::Reason;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use crate::spi_write::{self, Stmt, INT8_ARRAY, TEXT_ARRAY};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{BuiltinOid, PgOid};
use pgrx::prelude::*;
use std::time::Duration;

/// How often the writer looks at the queue when nobody wakes it: the bound on how long a
/// record waits under normal load.
const TICK: Duration = Duration::from_millis(200);
/// Rows per COPY (and per transaction): about what a busy database queues between two ticks,
/// so that the fixed cost of a batch (its transaction, the COPY's set-up, the rollups'
/// statements) is shared by many rows.
const BATCH: usize = 16384;
/// After a batch, the writer goes on at once only while at least this many entries of the
/// queue wait; fewer wait for the next tick (or wake-up). Without it, the records that
/// arrived while a batch was stored would make a smaller batch at once, and the records of
/// that one a smaller one again: many small transactions, each paying the fixed cost.
const BACKLOG_TO_CONTINUE: u64 = BATCH as u64 / 4;
/// A batch whose INSERT failed this many times for a reason other than its data (each
/// failure ends the worker, which restarts) is dropped and counted, so nothing can stop the
/// audit for good.
const MAX_ATTEMPTS: u32 = 3;
/// The role the rows are stored as (sql/security.sql creates it).
const WRITER_ROLE: &std::ffi::CStr = c"entitlements_audit_writer";

/// The INSERT for a table of 0.1.0's shape (before `ALTER EXTENSION ... UPDATE` added the
/// session_role and connection_addr columns and renamed reason_code to reason): a server running this library keeps the audit
/// of a database whose schema has not been updated yet.
const INSERT_0_1: &str = "
INSERT INTO entitlements.entitlement_checks
       (checked_at, workspace_id, user_id, feature, result, reason_code, cached, user_agent, ip_address)
SELECT pg_catalog.unnest($1::pg_catalog.timestamptz[]), pg_catalog.unnest($2::pg_catalog.uuid[]),
       pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]),
       pg_catalog.unnest($5::pg_catalog.bool[]), pg_catalog.unnest($6::pg_catalog.text[]),
       pg_catalog.unnest($7::pg_catalog.bool[]), pg_catalog.unnest($8::pg_catalog.text[]),
       pg_catalog.unnest($9::pg_catalog.inet[])";

/// The batch's hour groups (counted by `rollup::aggregate`, one row each, so no two rows of
/// the statement meet the same rollup row) added to the rollups.
const ROLLUP: &str = "
INSERT INTO entitlements.entitlement_check_rollups AS r
       (workspace_id, hour, result, cached, reason, checks, last_checked_at, feature)
SELECT pg_catalog.unnest($1::pg_catalog.uuid[]), pg_catalog.unnest($2::pg_catalog.timestamptz[]),
       pg_catalog.unnest($3::pg_catalog.bool[]), pg_catalog.unnest($4::pg_catalog.bool[]),
       pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.int8[]),
       pg_catalog.unnest($7::pg_catalog.timestamptz[]), pg_catalog.unnest($8::pg_catalog.text[])
ON CONFLICT ON CONSTRAINT entitlement_check_rollups_key DO UPDATE
   SET checks = r.checks OPERATOR(pg_catalog.+) EXCLUDED.checks,
       last_checked_at = GREATEST(r.last_checked_at, EXCLUDED.last_checked_at)";
/// The batch's day groups (`rollup::days`) added to the daily rollups.
const DAILY: &str = "
INSERT INTO entitlements.entitlement_check_daily AS r
       (workspace_id, day, result, cached, reason, checks, last_checked_at)
SELECT pg_catalog.unnest($1::pg_catalog.uuid[]), pg_catalog.unnest($2::pg_catalog.timestamptz[]),
       pg_catalog.unnest($3::pg_catalog.bool[]), pg_catalog.unnest($4::pg_catalog.bool[]),
       pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.int8[]),
       pg_catalog.unnest($7::pg_catalog.timestamptz[])
ON CONFLICT ON CONSTRAINT entitlement_check_daily_key DO UPDATE
   SET checks = r.checks OPERATOR(pg_catalog.+) EXCLUDED.checks,
       last_checked_at = GREATEST(r.last_checked_at, EXCLUDED.last_checked_at)";
// (unnest in the select list zips the arrays without materialising them: about 20% less
// CPU per row than `SELECT * FROM unnest(...)`, measured.)

const TIMESTAMPTZ_ARRAY: PgOid = PgOid::BuiltIn(BuiltinOid::TIMESTAMPTZARRAYOID);
const UUID_ARRAY: PgOid = PgOid::BuiltIn(BuiltinOid::UUIDARRAYOID);
const BOOL_ARRAY: PgOid = PgOid::BuiltIn(BuiltinOid::BOOLARRAYOID);

static INSERT_0_1_STMT: Stmt = Stmt {
    sql: INSERT_0_1,
    args: &[TIMESTAMPTZ_ARRAY, UUID_ARRAY, TEXT_ARRAY, TEXT_ARRAY, BOOL_ARRAY, TEXT_ARRAY, BOOL_ARRAY, TEXT_ARRAY, TEXT_ARRAY],
};
static ROLLUP_STMT: Stmt = Stmt {
    sql: ROLLUP,
    args: &[UUID_ARRAY, TIMESTAMPTZ_ARRAY, BOOL_ARRAY, BOOL_ARRAY, TEXT_ARRAY, INT8_ARRAY, TIMESTAMPTZ_ARRAY, TEXT_ARRAY],
};
static DAILY_STMT: Stmt = Stmt {
    sql: DAILY,
    args: &[UUID_ARRAY, TIMESTAMPTZ_ARRAY, BOOL_ARRAY, BOOL_ARRAY, TEXT_ARRAY, INT8_ARRAY, TIMESTAMPTZ_ARRAY],
};


/// How long a writer stays without a record of its database before it leaves (freeing its
/// slot and its connection; the next check there starts it again).
const IDLE_EXIT: Duration = Duration::from_secs(10);
/// How long DROP DATABASE waits for the database's writer to leave.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// `bgw_main_arg`: the slot, the claim's generation and the database, so that a worker the
/// postmaster restarts (after a termination, or a crash restart) finds out whether the slot
/// is still its own.
fn encode(slot: usize, generation: u32, db: u32) -> pg_sys::Datum {
    pg_sys::Datum::from(((db as u64) << 32) | ((generation as u64 & 0xff_ffff) << 8) | slot as u64)
}

fn decode(arg: pg_sys::Datum) -> (usize, u32, u32) {
    let v = arg.value() as u64;
    ((v & 0xff) as usize, ((v >> 8) & 0xff_ffff) as u32, (v >> 32) as u32)
}

/// Register the writer of database `db` for `slot` (a backend calls it, under the queue
/// lock, for the first check of a database without a writer). False when PostgreSQL has no
/// background worker slot left (`max_worker_processes`).
pub fn start(slot: usize, generation: u32, db: u32) -> bool {
    let started = BackgroundWorkerBuilder::new(&format!("pg_entitlements audit writer for database {db}"))
        .set_type("pg_entitlements audit writer")
        .set_library("pg_entitlements")
        .set_function("pg_entitlements_audit_writer")
        .enable_spi_access()
        .set_start_time(pgrx::bgworkers::BgWorkerStartTime::RecoveryFinished)
        // A writer that exits with status 1 (terminated, or an ERROR) is started again by
        // the postmaster a second later; status 0 (it left) ends it for good.
        .set_restart_time(Some(Duration::from_secs(1)))
        .set_argument(Some(encode(slot, generation & 0xff_ffff, db)))
        .load_dynamic()
        .is_ok();
    if !started {
        warning!(
            "pg_entitlements: could not start the audit writer of database {db}: no background worker slot is free; raise max_worker_processes"
        );
    }
    started
}

thread_local! {
    /// The slot this process serves, once it attached; None when it must not touch it.
    static SERVING: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    static CONNECTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_entitlements_audit_writer(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let (slot, generation, db) = decode(arg);
    // SAFETY: MyLatch and MyProcPid are set at process start; MyLatch is this process's
    // PGPROC latch, in shared memory. The exit callback, registered before anything can
    // fail, takes the latch back before the PGPROC can be handed to another process.
    let attached = unsafe {
        pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0));
        queue::attach(slot, generation, db, pg_sys::MyLatch, pg_sys::MyProcPid)
    };
    if !attached {
        // Started for an earlier claim of the slot (the postmaster restarts a terminated
        // writer, and registered workers survive a crash restart): not ours any more.
        // SAFETY: ends the process; status 0 unregisters the worker.
        unsafe { pg_sys::proc_exit(0) };
    }
    SERVING.with(|s| s.set(Some(slot)));
    // A database dropped meanwhile ends the worker here with a FATAL: the exit callback
    // then frees the slot, and the restarted worker finds it is not its own and leaves.
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    CONNECTED.with(|c| c.set(true));
    // The writer's whole life runs with search_path pinned (the statements are qualified
    // too): a function or operator planted in a schema of the database is never chosen.
    // SAFETY: the documented way to set a GUC for this process; static NUL-terminated values.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            crate::pgutil::PINNED_SEARCH_PATH.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
        // Asynchronous commit for the writer's own transactions: its records wait in shared
        // memory until they are stored, so a crash loses whatever is queued either way; a
        // commit that is not yet flushed loses nothing more than that (at most
        // wal_writer_delay's worth, which the WAL writer flushes), never a committed check
        // of a caller, and it spares the writer a WAL flush per batch (docs/AUDIT.md).
        pg_sys::SetConfigOption(
            c"synchronous_commit".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    super::permit_writer();
    log!("pg_entitlements audit writer started for database {db}");

    let mut batch = Vec::with_capacity(BATCH);
    let mut last_record = std::time::Instant::now();
    let mut held_up_by = None;
    while BackgroundWorker::wait_latch(Some(TICK)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: the documented way for a worker to re-read postgresql.conf on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // A backend that reserved entries and went idle holds up everything queued after
        // them: still held up by the same reservation a tick (or a wake-up) later, the
        // writer voids the reservations.
        if held_up_by.is_some() && queue::held_up_by_reservation(slot) == held_up_by {
            queue::void_reservations();
        }
        let drained = drain(slot, db, &mut batch, BACKLOG_TO_CONTINUE);
        held_up_by = queue::held_up_by_reservation(slot);
        queue::report_drops();
        if drained.stored_any {
            last_record = std::time::Instant::now();
        }
        let why = if drained.extension_missing {
            // Nothing of this database can be stored until the extension is created again,
            // which starts a writer again on the first check.
            Some(("the extension is not installed in its database", true))
        } else if queue::leave_requested(slot) {
            Some(("its database is being dropped", true))
        } else if last_record.elapsed() >= IDLE_EXIT {
            Some(("it had no records to store", false))
        } else {
            None
        };
        if let Some((why, force)) = why {
            if queue::release(slot, force) {
                SERVING.with(|s| s.set(None));
                log!("pg_entitlements audit writer for database {db} leaving: {why}");
                // SAFETY: status 0: the postmaster forgets the worker.
                unsafe { pg_sys::proc_exit(0) };
            }
        }
    }
    // SIGTERM: a shutdown, or pg_terminate_backend (maintenance scripts, DROP DATABASE ...
    // WITH (FORCE)). Store what is already queued, then exit with status 1: PostgreSQL
    // restarts the worker after its restart time, and starts none while it shuts down, so
    // a terminated writer comes back (its slot keeps its cursor meanwhile) and a shutdown
    // still ends it.
    queue::void_reservations();
    drain(slot, db, &mut batch, 1);
    log!("pg_entitlements audit writer for database {db} stopping (terminated); it restarts unless the server is shutting down");
    // SAFETY: proc_exit runs the exit callbacks (on_exit below) and ends the process.
    unsafe { pg_sys::proc_exit(1) };
}

/// Every exit of a writer that holds its slot: one that connected keeps the slot for its
/// restart (terminated, or an ERROR); one that could not connect (its database is gone)
/// frees it.
#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    let Some(slot) = SERVING.with(|s| s.take()) else { return };
    if CONNECTED.with(|c| c.get()) {
        queue::detach(slot);
    } else {
        queue::release(slot, true);
    }
}

struct Drained {
    stored_any: bool,
    extension_missing: bool,
}

/// Write the records of our database queued now, batch by batch, skipping the others', until
/// fewer than `continue_from` entries wait (1: until none does; `queue::waiting`).
fn drain(slot: usize, db: u32, batch: &mut Vec<Record>, continue_from: u64) -> Drained {
    let mut out = Drained { stored_any: false, extension_missing: false };
    loop {
        let spanned = queue::peek(slot, BATCH, batch);
        if spanned == 0 {
            return out;
        }
        // Usually every record is ours (one database): then the batch is used as it is.
        let ours = |r: &Record| r.database_oid == db;
        let rows: std::borrow::Cow<[Record]> = if batch.iter().all(ours) {
            std::borrow::Cow::Borrowed(&batch[..])
        } else {
            std::borrow::Cow::Owned(batch.iter().filter(|r| ours(r)).copied().collect())
        };
        let (written, dropped, cause) = if rows.is_empty() {
            // Only other databases' records, or void entries.
            (0, 0, queue::Cause::NoWriter)
        } else if queue::note_attempt(slot) > MAX_ATTEMPTS {
            warning!(
                "pg_entitlements: dropping {} audit records whose INSERT failed {MAX_ATTEMPTS} times",
                rows.len()
            );
            (0, rows.len() as u64, queue::Cause::Refused)
        } else {
            out.stored_any = true;
            match BackgroundWorker::transaction(|| write(&rows)) {
                Some(written) => (written, rows.len() as u64 - written, queue::Cause::Refused),
                None => {
                    out.extension_missing = true;
                    (0, rows.len() as u64, queue::Cause::NoWriter)
                }
            }
        };
        // SAFETY: a backend-local global, set by this process's latest commit (0 before any).
        let commit_lsn = unsafe { pg_sys::XactLastCommitEnd };
        queue::consume(slot, spanned, written, dropped, cause, crate::pgutil::now(), commit_lsn);
        if queue::waiting(slot) < continue_from {
            return out;
        }
    }
}

/// Ask the writer of the database DROP DATABASE is about to drop to leave, and wait for it
/// (at most LEAVE_TIMEOUT): an idle writer must not hold the database open.
fn before_drop_database(dbname: *const std::ffi::c_char) {
    // SAFETY: a catalog lookup inside the DROP's transaction; missing_ok returns InvalidOid.
    let db = unsafe { pg_sys::get_database_oid(dbname, true) }.to_u32();
    if db == 0 || !queue::ask_to_leave(db) {
        return;
    }
    let deadline = std::time::Instant::now() + LEAVE_TIMEOUT;
    while queue::serving(db) && std::time::Instant::now() < deadline {
        crate::pgutil::wait_on_latch(10);
    }
}

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// Install the DROP DATABASE hook; only from `_PG_init` during shared_preload_libraries.
pub fn install_hooks() {
    // SAFETY: _PG_init runs once per process, single-threaded; the previous hook is kept
    // and called from ours.
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: PostgreSQL passes a valid PlannedStmt whose utilityStmt is a Node; a node
    // tagged T_DropdbStmt is a DropdbStmt. The previous hook (or the standard function) gets
    // the arguments unchanged.
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_DropdbStmt {
            before_drop_database((*stmt.cast::<pg_sys::DropdbStmt>()).dbname);
        }
        match PREV_PROCESS_UTILITY {
            Some(prev) => prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc),
            None => pg_sys::standard_ProcessUtility(
                pstmt, query_string, read_only_tree, context, params, query_env, dest, qc,
            ),
        }
    }
}

/// Store a batch as the writer role; returns the rows stored, None when the extension is not
/// installed in this database (the records are then counted as dropped). A row PostgreSQL
/// refuses for its data is set apart (logged, counted as dropped) and the others are stored;
/// any other failure is an ERROR: the worker exits, the batch stays queued and the restarted
/// worker retries it (MAX_ATTEMPTS times).
fn write(rows: &[Record]) -> Option<u64> {
    let table = trail_oid()?;
    // SAFETY: syscache lookups inside the transaction; missing_ok / InvalidAttrNumber.
    let (shape, role) = unsafe {
        let current = pg_sys::get_attnum(table, c"connection_addr".as_ptr()) != pg_sys::InvalidAttrNumber as i16;
        (if current { Shape::Current } else { Shape::V0_1 }, pg_sys::get_role_oid(WRITER_ROLE.as_ptr(), true))
    };
    if shape == Shape::Current {
        maintain();
    }
    Some(if role == pg_sys::InvalidOid {
        // Only until ALTER EXTENSION ... UPDATE creates the role: the statement is qualified
        // and runs under a pinned search_path either way.
        store(rows, table, shape)
    } else {
        as_role(role, || store(rows, table, shape))
    })
}

thread_local! {
    /// When the writer next makes sure the day partitions ahead exist (PG microseconds): the
    /// next UTC midnight once they do, an hour later when that failed. Checked once per batch,
    /// an integer comparison; the partitions made are remembered this way, not looked up.
    static NEXT_PARTITION_CHECK: std::cell::Cell<i64> = const { std::cell::Cell::new(i64::MIN) };
    /// When the writer next applies pg_entitlements.audit_retention (at most once an hour).
    static NEXT_PRUNE: std::cell::Cell<i64> = const { std::cell::Cell::new(i64::MIN) };
}

use super::rollup::{DAY_US, HOUR_US};
/// Days of partitions kept ready: today and the next two (a writer idle over a midnight, or
/// restarted just before one, still finds the day's partition).
const DAYS_AHEAD: i32 = 3;

/// Partitions ahead and retention, as the superuser the writer connects as (creating and
/// dropping partitions needs the table's owner), before the batch is stored in the same
/// transaction, so that its rows land in their day's partition. Each step runs in a
/// subtransaction of its own: a failure is logged and retried later, the batch is stored
/// regardless.
fn maintain() {
    let now = crate::pgutil::now();
    if now >= NEXT_PARTITION_CHECK.with(|c| c.get()) {
        // PostgreSQL timestamps count from 2000-01-01 00:00 UTC, a midnight.
        let next = match with_short_lock_timeout(|| {
            Spi::get_one_with_args::<i32>(
                "SELECT entitlements.create_audit_partitions(
                     (pg_catalog.now() AT TIME ZONE 'UTC')::pg_catalog.date, $1)",
                &[DAYS_AHEAD.into()],
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        }) {
            Ok(()) => now.div_euclid(DAY_US) * DAY_US + DAY_US,
            Err(message) => {
                warning!("pg_entitlements: could not create the audit partitions ahead (rows go to the DEFAULT partition meanwhile): {message}");
                now + HOUR_US
            }
        };
        NEXT_PARTITION_CHECK.with(|c| c.set(next));
    }
    let retention = crate::gucs::AUDIT_RETENTION.get();
    if retention > 0 && now >= NEXT_PRUNE.with(|c| c.get()) {
        NEXT_PRUNE.with(|c| c.set(now + HOUR_US));
        let cut = crate::pgutil::timestamptz(now - retention as i64 * 60_000_000);
        match with_short_lock_timeout(|| Ok(super::prune_before(cut))) {
            Ok(0) => {}
            Ok(n) => log!("pg_entitlements: audit retention removed {n} rows"),
            Err(message) => warning!("pg_entitlements: audit retention failed, retried in an hour: {message}"),
        }
    }
}

/// How long the writer's partition maintenance waits for a lock on the trail (creating and
/// detaching partitions lock the parent exclusively): behind a long query on the trail, the
/// writer gives up and retries later instead of leaving the queue to fill up.
const MAINTENANCE_LOCK_TIMEOUT: &std::ffi::CStr = c"1s";

/// `f` in a subtransaction with lock_timeout = MAINTENANCE_LOCK_TIMEOUT, put back after it.
fn with_short_lock_timeout<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    in_subtransaction(|| crate::pgutil::with_setting(c"lock_timeout", MAINTENANCE_LOCK_TIMEOUT, f))
}

/// How a subtransaction failed: `f` returned an error, or raised one (kept, to be raised
/// again or reported).
enum Failed {
    Returned(String),
    Raised(pg_sys::panic::CaughtError),
}

impl Failed {
    fn message(&self) -> String {
        match self {
            Failed::Returned(m) => m.clone(),
            Failed::Raised(
                pg_sys::panic::CaughtError::PostgresError(e) | pg_sys::panic::CaughtError::ErrorReport(e),
            ) => e.message().to_owned(),
            Failed::Raised(_) => "an internal error".to_owned(),
        }
    }
}

/// Run `f` in a subtransaction: released when it returns `Ok`, rolled back when it returns
/// `Err` or raises an ERROR (which is caught and returned).
fn subtransaction<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, Failed> {
    // The error is caught and the subtransaction rolled back: nothing f touched is used after.
    let f = std::panic::AssertUnwindSafe(f);
    // SAFETY: the subtransaction pattern of PL/pgSQL's exception blocks: begin, and on success
    // release, on error roll back, restoring the memory context and resource owner the caller
    // had either way.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        PgTryBuilder::new(|| {
            let r = f();
            if r.is_ok() {
                pg_sys::ReleaseCurrentSubTransaction();
            } else {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            r.map_err(Failed::Returned)
        })
        .catch_others(|caught| {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            Err(Failed::Raised(caught))
        })
        .execute()
    }
}

/// Run `f` in a subtransaction; any error rolls it back and is returned as its message.
fn in_subtransaction<R>(f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    subtransaction(f).map_err(|e| e.message())
}

/// `entitlements.entitlement_checks`, None when the extension is not installed. Syscache
/// lookups rather than a statement parsed and planned for every batch.
fn trail_oid() -> Option<pg_sys::Oid> {
    // SAFETY: catalog lookups inside the transaction; missing_ok, InvalidOid when absent.
    let table = unsafe {
        let schema = pg_sys::get_namespace_oid(c"entitlements".as_ptr(), true);
        if schema == pg_sys::InvalidOid {
            return None;
        }
        pg_sys::get_relname_relid(c"entitlement_checks".as_ptr(), schema)
    };
    (table != pg_sys::InvalidOid).then_some(table)
}

/// Which INSERT the database's audit table takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    V0_1,
    Current,
}

/// Run `f` as `role` with restricted operations, as PostgreSQL runs maintenance commands as a
/// table's owner; an ERROR inside is undone by the transaction abort, which restores the user.
fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: plain reads and writes of this backend's current user, inside a transaction.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let r = f();
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    r
}

/// Insert `rows`; if PostgreSQL refuses them for their data, halve and retry each half, down
/// to the single rows it refuses (each logged and left out).
fn store(rows: &[Record], table: pg_sys::Oid, shape: Shape) -> u64 {
    match try_insert(rows, table, shape) {
        Ok(()) => rows.len() as u64,
        Err(message) if rows.len() == 1 => {
            warning!("pg_entitlements: an audit record was refused and dropped: {message}");
            0
        }
        Err(_) => {
            let (a, b) = rows.split_at(rows.len() / 2);
            store(a, table, shape) + store(b, table, shape)
        }
    }
}

/// One INSERT in a subtransaction. A data error (SQLSTATE classes 22 and 23) rolls the
/// subtransaction back and is returned; anything else is raised again.
fn try_insert(rows: &[Record], table: pg_sys::Oid, shape: Shape) -> Result<(), String> {
    let failed = match subtransaction(|| {
        insert(rows, table, shape);
        Ok(())
    }) {
        Ok(()) => return Ok(()),
        Err(failed) => failed,
    };
    // The class is the first two characters of the SQLSTATE, packed in the low 12 bits.
    let class = |c0: u8, c1: u8| i32::from(c0 - b'0') | (i32::from(c1 - b'0') << 6);
    let data_error = match &failed {
        Failed::Raised(pg_sys::panic::CaughtError::PostgresError(e) | pg_sys::panic::CaughtError::ErrorReport(e)) => {
            let code = e.sql_error_code() as i32 & 0xfff;
            code == class(b'2', b'2') || code == class(b'2', b'3')
        }
        _ => false,
    };
    match failed {
        Failed::Raised(caught) if !data_error => caught.rethrow(),
        other => Err(other.message()),
    }
}

fn insert(rows: &[Record], table: pg_sys::Oid, shape: Shape) {
    match shape {
        Shape::Current => {
            copy_rows(rows, table);
            // In the COPY's subtransaction: rows refused and rolled back are not counted.
            let hours = super::rollup::aggregate(rows);
            let days = super::rollup::days(&hours);
            spi_write::run(&ROLLUP_STMT, &group_args(&hours, true), |_| Ok(()));
            spi_write::run(&DAILY_STMT, &group_args(&days, false), |_| Ok(()));
        }
        Shape::V0_1 => insert_0_1(rows),
    }
}

thread_local! {
    /// The binary COPY stream of the batch being stored and how far PostgreSQL has read it;
    /// kept for the writer's life, so a batch costs no allocation.
    static COPY_STREAM: std::cell::RefCell<(Vec<u8>, usize)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// COPY's data source: the next bytes of COPY_STREAM (0 at its end).
#[pg_guard]
unsafe extern "C-unwind" fn read_copy_stream(outbuf: *mut std::ffi::c_void, _minread: i32, maxread: i32) -> i32 {
    COPY_STREAM.with(|s| {
        let mut s = s.borrow_mut();
        let (stream, read) = &mut *s;
        let n = (stream.len() - *read).min(maxread.max(0) as usize);
        // SAFETY: COPY passes a buffer of at least maxread bytes; n <= maxread and n bytes
        // remain in the stream from `read`.
        unsafe { std::ptr::copy_nonoverlapping(stream.as_ptr().add(*read), outbuf.cast::<u8>(), n) };
        *read += n;
        n as i32
    })
}

/// Store `rows` through PostgreSQL's COPY FROM machinery (BeginCopyFrom with a data source,
/// then CopyFrom): the bulk path that routes each row to its day partition, fills its
/// defaults (the identity), runs the table's statement triggers (the append-only guard, which
/// admits the writer) and inserts the rows a page at a time with their index entries. As
/// `COPY` does, and unlike a COPY statement, it checks no privileges and applies no policy:
/// the writer is the trail's one producer, and it runs as the writer role all the same.
fn copy_rows(rows: &[Record], table: pg_sys::Oid) {
    COPY_STREAM.with(|s| {
        let mut s = s.borrow_mut();
        super::copy::encode(rows, reason, &mut s.0);
        s.1 = 0;
    });
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    // SAFETY: inside the batch's (sub)transaction. The relation is opened and locked as an
    // INSERT would; the parse state carries its range-table entry, which CopyFrom's executor
    // state is built from. The column and option lists are palloc'd nodes in the current
    // context. A snapshot is active while the statement trigger runs. An ERROR anywhere rolls
    // back the subtransaction, which releases the lock, the snapshot and the memory.
    unsafe {
        let rel = pg_sys::table_open(table, lock);
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        pg_sys::addRangeTableEntryForRelation(pstate, rel, lock, std::ptr::null_mut(), false, false);
        let mut columns: *mut pg_sys::List = std::ptr::null_mut();
        for column in super::copy::COLUMNS {
            columns = pg_sys::lappend(columns, pg_sys::makeString(pg_sys::pstrdup(column.as_ptr())).cast());
        }
        let binary = pg_sys::makeString(pg_sys::pstrdup(c"binary".as_ptr()));
        let format = pg_sys::makeDefElem(pg_sys::pstrdup(c"format".as_ptr()), binary.cast(), -1);
        let options = pg_sys::lappend(std::ptr::null_mut(), format.cast());
        let cstate = pg_sys::BeginCopyFrom(
            pstate,
            rel,
            std::ptr::null_mut(),
            std::ptr::null(),
            false,
            Some(read_copy_stream),
            columns,
            options,
        );
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::CopyFrom(cstate);
        pg_sys::PopActiveSnapshot();
        pg_sys::EndCopyFrom(cstate);
        pg_sys::free_parsestate(pstate);
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
}

/// The 0.1.0 table, until ALTER EXTENSION ... UPDATE: one INSERT of the batch's arrays.
fn insert_0_1(rows: &[Record]) {
    let checked_at: Vec<TimestampWithTimeZone> =
        rows.iter().map(|r| crate::pgutil::timestamptz(r.checked_at)).collect();
    let workspace: Vec<pgrx::Uuid> = rows.iter().map(|r| pgrx::Uuid::from_bytes(r.workspace_id)).collect();
    let text = |f: fn(&Record) -> Option<&str>| -> Vec<Option<&str>> { rows.iter().map(f).collect() };
    let result: Vec<bool> = rows.iter().map(|r| r.result).collect();
    let cached: Vec<bool> = rows.iter().map(|r| r.cached).collect();
    let args: Vec<DatumWithOid> = vec![
        checked_at.into(),
        workspace.into(),
        text(|r| r.user_id.get()).into(),
        text(|r| r.feature.get()).into(),
        result.into(),
        rows.iter().map(|r| reason(r.reason)).collect::<Vec<_>>().into(),
        cached.into(),
        text(|r| r.user_agent.get()).into(),
        text(|r| r.ip_address.get()).into(),
    ];
    spi_write::run(&INSERT_0_1_STMT, &args, |_| Ok(()));
}

/// The code a record stores for its reason ordinal (none for 0).
fn reason(ordinal: u8) -> Option<&'static str> {
    Reason::from_ordinal(ordinal).map(Reason::code)
}

/// The arrays of ROLLUP (or, without the features, of DAILY).
fn group_args<'a>(groups: &'a [super::rollup::Group<'a>], with_feature: bool) -> Vec<DatumWithOid<'a>> {
    let ts = |t: i64| crate::pgutil::timestamptz(t);
    let mut args: Vec<DatumWithOid> = vec![
        groups.iter().map(|g| pgrx::Uuid::from_bytes(g.workspace_id)).collect::<Vec<_>>().into(),
        groups.iter().map(|g| ts(g.start)).collect::<Vec<_>>().into(),
        groups.iter().map(|g| g.result).collect::<Vec<_>>().into(),
        groups.iter().map(|g| g.cached).collect::<Vec<_>>().into(),
        groups.iter().map(|g| reason(g.reason)).collect::<Vec<_>>().into(),
        groups.iter().map(|g| g.checks).collect::<Vec<_>>().into(),
        groups.iter().map(|g| ts(g.last_checked_at)).collect::<Vec<_>>().into(),
    ];
    if with_feature {
        args.push(groups.iter().map(|g| g.feature).collect::<Vec<_>>().into());
    }
    args
}
