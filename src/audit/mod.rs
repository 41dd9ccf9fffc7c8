//! The audit trail: every audited check becomes one row of `entitlements.entitlement_checks`,
//! written outside the caller's transaction. A check only copies a fixed-size record into a
//! shared-memory queue (`queue`); a background worker per database (`writer`) stores the
//! rows in batches.
//! The table, its append-only guard, policies and views are in sql/audit.sql; docs/AUDIT.md
//! describes the design for DBAs.

mod copy;
mod queue;
pub mod record;
mod rollup;
mod writer;

pub use queue::MAX_WRITERS;

use crate::gucs::{self, AuditMode};
use crate::resolver::Reason;
use crate::{errors, identity};
use pgrx::prelude::*;
use record::{InlineText, Record, IP_MAX, ROLE_MAX, USER_AGENT_MAX};
use std::cell::{Cell, OnceCell};
use std::ffi::CStr;
use std::time::Duration;

/// Shared memory and the writer exist only when the library is preloaded; loaded later (by
/// CREATE EXTENSION or the first call), checks work and their records are counted as dropped.
pub fn init() {
    // SAFETY: a plain global flag, read in _PG_init on the main thread.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    queue::install_hooks();
    writer::install_hooks();
}

/// One answered check as the audit records it (built by the SQL functions).
pub struct Check<'a> {
    /// The time of the check itself (for a cached answer too).
    pub checked_at: i64,
    pub workspace_id: [u8; 16],
    pub feature: &'a str,
    pub enabled: bool,
    pub reason: Option<Reason>,
    pub cached: bool,
    /// The units a `consume` or `refund` moved; None for a check.
    pub quantity: Option<i64>,
}

/// Record one answered check. Never raises and never waits: when the record cannot be
/// queued (audit off for it, no queue, a standby, every writer serving other databases, a
/// full queue) it is dropped and, unless the audit is off for it, counted.
pub fn record(check: &Check<'_>) {
    match gucs::AUDIT.get() {
        AuditMode::Off => return,
        AuditMode::Denied if check.enabled => return,
        _ => {}
    }
    if !queue::available() {
        queue::count_dropped(queue::Cause::NoWriter, 1);
        return;
    }
    if in_recovery() {
        queue::count_dropped(queue::Cause::Standby, 1);
        return;
    }
    // SAFETY: set at backend start, constant afterwards.
    let database_oid = unsafe { pg_sys::MyDatabaseId }.to_u32();
    // The session's own facts are kept per backend as record fields, and the settings are
    // read in place: a record costs no allocation.
    let (session_role, connection_addr) = session_fields();
    let record = Record {
        database_oid,
        result: check.enabled,
        cached: check.cached,
        reason: check.reason.map_or(0, |r| r.ordinal()),
        checked_at: check.checked_at,
        workspace_id: check.workspace_id,
        feature: InlineText::new(Some(check.feature)),
        user_id: identity::with_current_user_id(InlineText::new),
        user_agent: user_agent(),
        ip_address: client_ip().unwrap_or(connection_addr),
        session_role,
        connection_addr,
        quantity: check.quantity.into(),
    };
    queue::push(&record, database_oid, |slot, generation| writer::start(slot, generation, database_oid));
}

fn in_recovery() -> bool {
    // SAFETY: reads shared recovery state; callable in any backend.
    unsafe { pg_sys::RecoveryInProgress() }
}

fn user_agent() -> InlineText<USER_AGENT_MAX> {
    let from_setting = gucs::with_str(&gucs::USER_AGENT, |ua| ua.map(|ua| InlineText::new(Some(&ua.to_string_lossy()))));
    if let Some(ua) = from_setting {
        return ua;
    }
    // SAFETY: application_name is a GUC-owned C string (or NULL), valid until it is next
    // set, which cannot happen while we copy it.
    let app = unsafe { pg_sys::application_name };
    if app.is_null() {
        return InlineText::new(None);
    }
    // SAFETY: non-null and NUL-terminated, as above.
    let app = unsafe { CStr::from_ptr(app) }.to_string_lossy();
    InlineText::new((!app.is_empty()).then_some(&*app))
}

/// `pg_entitlements.client_ip` in canonical form, if set (its check hook admitted it, so it
/// parses; should it not, it is recorded as NULL rather than fail the writer's INSERT).
fn client_ip() -> Option<InlineText<IP_MAX>> {
    gucs::with_str(&gucs::CLIENT_IP, |ip| {
        let ip = ip.filter(|ip| !ip.is_empty())?;
        LAST_CLIENT_IP.with(|last| {
            let mut last = last.borrow_mut();
            if let Some((raw, canonical)) = last.as_ref() {
                if raw.as_c_str() == ip {
                    return *canonical;
                }
            }
            let canonical = canonical_inet(ip).map(|c| InlineText::new(Some(&c)));
            *last = Some((ip.to_owned(), canonical));
            canonical
        })
    })
}

/// `s` as PostgreSQL's own `inet` parser reads it, in `inet_out`'s canonical form (at most 49
/// bytes), or `None` when `inet` refuses it.
pub fn canonical_inet(s: &CStr) -> Option<String> {
    pgrx::PgTryBuilder::new(|| {
        // SAFETY: inet_in takes a C string and returns an inet datum or raises an ERROR,
        // which the catch below turns into None (inet_in holds no resources: only palloc'd
        // memory in the current context); inet_out turns the datum into a C string.
        unsafe {
            let inet = pgrx::direct_function_call_as_datum(pg_sys::inet_in, &[s.into_datum()])?;
            let text = pgrx::direct_function_call::<&CStr>(pg_sys::inet_out, &[Some(inet)])?;
            Some(text.to_string_lossy().into_owned())
        }
    })
    .catch_others(|_| None)
    .execute()
}

thread_local! {
    /// The last client_ip seen and its canonical form: apps set the same value for many checks.
    static LAST_CLIENT_IP: std::cell::RefCell<Option<(std::ffi::CString, Option<InlineText<IP_MAX>>)>> =
        const { std::cell::RefCell::new(None) };
    /// The session role's name with its OID (SET SESSION AUTHORIZATION can change it).
    static SESSION_ROLE: Cell<Option<(pg_sys::Oid, InlineText<ROLE_MAX>)>> = const { Cell::new(None) };
}

/// `session_user` (the database role that authenticated, whatever identity it asserts) and
/// `inet_client_addr()`, as record fields.
fn session_fields() -> (InlineText<ROLE_MAX>, InlineText<IP_MAX>) {
    // SAFETY: the session user is set once the backend has connected.
    let oid = unsafe { pg_sys::GetSessionUserId() };
    let role = match SESSION_ROLE.with(Cell::get) {
        Some((known, name)) if known == oid => name,
        _ => {
            // SAFETY: a syscache lookup inside a transaction; noerr = true returns NULL for a
            // role that does not exist (it cannot, for the session's own role).
            let name = unsafe {
                let p = pg_sys::GetUserNameFromId(oid, true);
                InlineText::new((!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy()).as_deref())
            };
            SESSION_ROLE.with(|c| c.set(Some((oid, name))));
            name
        }
    };
    (role, CONNECTION_ADDRESS.with(|cell| *cell.get_or_init(connection_address)))
}

thread_local! {
    static CONNECTION_ADDRESS: OnceCell<InlineText<IP_MAX>> = const { OnceCell::new() };
}

/// `inet_client_addr()` in canonical text, computed once: a connection's peer does not change.
fn connection_address() -> InlineText<IP_MAX> {
    // SAFETY: inet_client_addr reads MyProcPort and returns NULL when there is no network
    // peer; inet_out turns the inet it returned into a palloc'd C string.
    let text = unsafe {
        pgrx::direct_function_call_as_datum(pg_sys::inet_client_addr, &[]).and_then(|inet| {
            pgrx::direct_function_call::<&CStr>(pg_sys::inet_out, &[Some(inet)])
                .map(|t| t.to_string_lossy().into_owned())
        })
    };
    InlineText::new(text.as_deref())
}

// ---------------------------------------------------------------------------------------
// Who may modify the table: the writer inserts, prune_audit deletes, nobody else does either.
// Process-local flags, so no SQL (and no setting) can grant them.
// ---------------------------------------------------------------------------------------

thread_local! {
    static IS_WRITER: Cell<bool> = const { Cell::new(false) };
    static PRUNING: Cell<bool> = const { Cell::new(false) };
}

fn permit_writer() {
    IS_WRITER.with(|w| w.set(true));
}

/// Allows DELETE for its lifetime; dropped also when an ERROR unwinds through prune_audit.
struct PrunePermit;

impl PrunePermit {
    fn new() -> Self {
        PRUNING.with(|p| p.set(true));
        PrunePermit
    }
}

impl Drop for PrunePermit {
    fn drop(&mut self) {
        PRUNING.with(|p| p.set(false));
    }
}

/// BEFORE ... FOR EACH STATEMENT on entitlement_checks: the append-only guard, which holds
/// for the owner and superusers too (RLS alone would not: they bypass it or own the table).
#[pg_trigger]
fn entitlement_checks_append_only<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, pgrx::AllocatedByPostgres>>, std::convert::Infallible> {
    use pgrx::PgTriggerOperation as Op;
    let op = trigger.op().unwrap_or_else(|e| errors::internal(e));
    let allowed = match op {
        Op::Insert => {
            IS_WRITER.with(Cell::get)
                || PRUNING.with(Cell::get)
                || superuser_loading_an_empty_trail(trigger.relid().unwrap_or_else(|e| errors::internal(e)))
        }
        // Pruning also counts again the day that straddles its cut (in the daily rollups).
        Op::Delete => PRUNING.with(Cell::get),
        // Only the rollups are ever updated, by the writer adding a batch's counts.
        Op::Update => IS_WRITER.with(Cell::get),
        Op::Truncate => false,
    };
    if !allowed {
        errors::audit_append_only(match op {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
        });
    }
    Ok(None)
}

/// A restore (pg_restore, or psql with a plain dump) loads the trail with COPY as a superuser:
/// CREATE EXTENSION made the parent and its DEFAULT partition empty, and the day partitions
/// are created empty by the dump itself (their guard comes after their rows). So a superuser
/// may load rows into the table the statement names while that table is empty (the whole
/// trail, through the parent; one partition, addressed directly). Once it has rows, only the
/// writer adds.
fn superuser_loading_an_empty_trail(relid: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup on the current user.
    let superuser = unsafe { pg_sys::superuser() };
    superuser
        && crate::pgutil::with_pinned_search_path(|| {
            // regclass prints the schema-qualified, quoted name (entitlements is not on the
            // pinned search_path).
            let name = Spi::get_one_with_args::<String>(
                "SELECT $1::pg_catalog.regclass::pg_catalog.text",
                &[relid.into()],
            );
            let Ok(Some(name)) = name else { return false };
            Spi::get_one::<bool>(&format!("SELECT NOT EXISTS (SELECT 1 FROM {name})"))
                .ok()
                .flatten()
                .unwrap_or(false)
        })
}

/// Remove rows older than `older_than`; superusers only. Returns the rows removed.
#[pg_extern(volatile, parallel_unsafe)]
fn prune_audit(older_than: pgrx::datum::Interval) -> i64 {
    // SAFETY: a catalog lookup on the current user, valid in any transaction.
    if !unsafe { pg_sys::superuser() } {
        errors::prune_requires_superuser();
    }
    let cut = crate::pgutil::with_pinned_search_path(|| {
        Spi::get_one_with_args::<pgrx::datum::TimestampWithTimeZone>(
            "SELECT pg_catalog.now() OPERATOR(pg_catalog.-) $1",
            &[older_than.into()],
        )
    })
    .unwrap_or_else(|e| errors::internal(e));
    match cut {
        Some(cut) => prune_before(cut),
        None => 0,
    }
}

/// Remove every row with checked_at before `cut`: the day partitions entirely before it are
/// detached and dropped (no row by row DELETE, no dead tuples), then the rows before it left
/// in the partition that straddles it, and in DEFAULT, are deleted. Returns the rows removed.
/// The caller is a superuser (prune_audit checked; the writer is one).
pub(crate) fn prune_before(cut: pgrx::datum::TimestampWithTimeZone) -> i64 {
    let _permit = PrunePermit::new();
    crate::pgutil::with_pinned_search_path(|| -> Result<i64, pgrx::spi::SpiError> {
        let dropped = Spi::get_one_with_args::<i64>(
            "SELECT entitlements.drop_audit_partitions_before($1)",
            &[cut.into()],
        )?
        .unwrap_or(0);
        let deleted = Spi::get_one_with_args::<i64>(
            "WITH gone AS (DELETE FROM entitlements.entitlement_checks
                            WHERE checked_at OPERATOR(pg_catalog.<) $1 RETURNING 1)
             SELECT pg_catalog.count(*) FROM gone",
            &[cut.into()],
        )?
        .unwrap_or(0);
        // The rollups' hours (and days) that end at or before the cut (the hour and the day
        // that straddle it keep their counts: rollups are by whole hours and days).
        Spi::run_with_args(
            "DELETE FROM entitlements.entitlement_check_rollups
              WHERE hour OPERATOR(pg_catalog.+) '1 hour'::pg_catalog.interval OPERATOR(pg_catalog.<=) $1",
            &[cut.into()],
        )?;
        Spi::run_with_args(
            "DELETE FROM entitlements.entitlement_check_daily
              WHERE day OPERATOR(pg_catalog.+) '24 hours'::pg_catalog.interval OPERATOR(pg_catalog.<=) $1",
            &[cut.into()],
        )?;
        // The day that straddles the cut is counted again from the hours it keeps, so that
        // a day always counts what its hours count (the views read days and hours alike).
        Spi::run_with_args(
            "DELETE FROM entitlements.entitlement_check_daily
              WHERE day OPERATOR(pg_catalog.=) pg_catalog.date_trunc('day', $1, 'UTC')",
            &[cut.into()],
        )?;
        Spi::run_with_args(
            "INSERT INTO entitlements.entitlement_check_daily
                    (workspace_id, day, result, cached, reason, checks, last_checked_at)
             SELECT workspace_id, pg_catalog.date_trunc('day', hour, 'UTC'), result, cached, reason,
                    pg_catalog.sum(checks), pg_catalog.max(last_checked_at)
               FROM entitlements.entitlement_check_rollups
              WHERE hour OPERATOR(pg_catalog.>=) pg_catalog.date_trunc('day', $1, 'UTC')
                AND hour OPERATOR(pg_catalog.<) (pg_catalog.date_trunc('day', $1, 'UTC')
                                                 OPERATOR(pg_catalog.+) '24 hours'::pg_catalog.interval)
              GROUP BY 1, 2, 3, 4, 5",
            &[cut.into()],
        )?;
        Ok(dropped + deleted)
    })
    .unwrap_or_else(|e| errors::internal(e))
}

/// How long flush_audit waits at most: a stopped writer must not hang the caller.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Wait until every record queued before the call is stored (or dropped as unwritable).
/// Returns how many of those records were still pending when called. Without a queue, or
/// with nothing pending, returns 0 at once; after FLUSH_TIMEOUT, warns and returns what was
/// handled by then.
#[pg_extern(volatile, parallel_restricted)]
fn flush_audit() -> i64 {
    let (Some(target), Some(start)) = (queue::enqueued(), queue::handled()) else { return 0 };
    if target <= start {
        return 0;
    }
    // Reservations of idle backends would hold the writers up until their next tick. (Not
    // when nothing is queued or reserved: voiding takes the queue's lock exclusively.)
    queue::void_reservations();
    // Records, not entries: void ones hold none.
    let pending = queue::records_between(start, target);
    let deadline = crate::pgutil::now() + FLUSH_TIMEOUT.as_micros() as i64;
    loop {
        queue::wake_writers();
        let handled = queue::handled().unwrap_or(target);
        if handled >= target {
            // The writer commits asynchronously (docs/AUDIT.md, "Durability"): make what it
            // committed durable before answering, so that a caller who flushed can rely on
            // the rows surviving a crash. Any backend may flush WAL that others inserted.
            // Up to the end of the writers' latest commit record: not to the insert position,
            // which at a page boundary points past a page header not written yet, and
            // XLogFlush then fails ("xlog flush request ... is not satisfied").
            let lsn = queue::last_commit_lsn();
            if lsn != 0 && !in_recovery() {
                // SAFETY: flushes WAL up to an LSN already inserted; outside recovery.
                unsafe { pg_sys::XLogFlush(lsn) };
            }
            return pending as i64;
        }
        if crate::pgutil::now() > deadline {
            let left = queue::records_between(handled, target);
            warning!(
                "pg_entitlements: flush_audit gave up after {}s with {left} records pending (is the audit writer running?)",
                FLUSH_TIMEOUT.as_secs()
            );
            return pending.saturating_sub(left) as i64;
        }
        crate::pgutil::wait_on_latch(10);
    }
}

/// Whether this database's audit records can be stored: its writer runs, or a writer slot
/// is free for it (`pg_entitlements.audit_max_databases`). CREATE EXTENSION warns when not.
/// True without shared_preload_libraries, which CREATE EXTENSION warns about on its own.
#[pg_extern(volatile, parallel_safe)]
fn audit_can_store_here() -> bool {
    // SAFETY: set at backend start, constant afterwards.
    queue::can_serve(unsafe { pg_sys::MyDatabaseId }.to_u32())
}

/// The audit's counters (since server start; a crash restart resets them), with the drops
/// by cause. Without shared_preload_libraries only `dropped` (and `dropped_no_writer`)
/// counts, for this session.
#[pg_extern(volatile, parallel_safe)]
fn audit_statistics() -> TableIterator<
    'static,
    (
        name!(queued, i64),
        name!(written, i64),
        name!(dropped, i64),
        name!(pending, i64),
        name!(last_flush_at, Option<TimestampWithTimeZone>),
        name!(writer_running, bool),
        name!(dropped_queue_full, i64),
        name!(dropped_no_writer, i64),
        name!(dropped_standby, i64),
        name!(dropped_refused, i64),
    ),
> {
    let s = queue::statistics();
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    TableIterator::once((
        as_i64(s.queued),
        as_i64(s.written),
        as_i64(s.dropped_total()),
        as_i64(s.pending),
        s.last_flush_at.and_then(|t| TimestampWithTimeZone::try_from(t).ok()),
        s.writer_running,
        as_i64(s.dropped(queue::Cause::QueueFull)),
        as_i64(s.dropped(queue::Cause::NoWriter)),
        as_i64(s.dropped(queue::Cause::Standby)),
        as_i64(s.dropped(queue::Cause::Refused)),
    ))
}
