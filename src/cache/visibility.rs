//! The transaction-visibility half of the cache: which transactions changed decision inputs
//! (they read their own changes and bypass the cache until they end), what their commit
//! invalidates (everything, or the workspaces they named), the snapshot decisions are read
//! under, and the relcache and namespace callbacks that carry changes to hot standbys and
//! notice a re-created extension. The module comment of `cache` holds the exactness argument.

use super::{bucket_of, database, invalidate_all, invalidate_buckets, MAX_CHANGED_BUCKETS};
use crate::errors;
use pgrx::callbacks::{register_xact_callback, PgXactCallbackEvent};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

const WATCHED_RELATIONS: usize = 9;
/// Where `entitlements.cache_signal` is in WATCHED.
const SIGNAL: usize = WATCHED_RELATIONS - 1;

thread_local! {
    /// This transaction changed an input table: bypass the cache until it ends.
    static DIRTY: Cell<bool> = const { Cell::new(false) };
    /// The input tables' OIDs in this database, once looked up, and last the signal relation's
    /// (`SIGNAL`).
    static WATCHED: Cell<Option<[pg_sys::Oid; WATCHED_RELATIONS]>> = const { Cell::new(None) };
    /// What they were before the last namespace change (a second look-up compares).
    static PREVIOUS: Cell<Option<[pg_sys::Oid; WATCHED_RELATIONS]>> = const { Cell::new(None) };
    /// How many times this backend has looked the tables up.
    static PREVIOUS_LOOKUPS: Cell<u32> = const { Cell::new(0) };
    /// What this transaction's commit invalidates: everything, or these buckets' workspaces.
    static CHANGED: std::cell::RefCell<Changed> = const { std::cell::RefCell::new(Changed::none()) };
}

/// The changes of the current transaction, as the commit callback invalidates them.
struct Changed {
    /// A catalog change, a TRUNCATE, or too many workspaces: invalidate everything.
    everything: bool,
    /// Statements on a per-workspace input table whose AFTER trigger (which names the
    /// workspaces) has not run yet. Not zero at commit (a statement whose workspaces were
    /// never named): invalidate everything.
    unnamed_statements: i64,
    /// Generation buckets of the workspaces named so far (sorted, distinct).
    buckets: Vec<u32>,
}

impl Changed {
    const fn none() -> Changed {
        Changed { everything: false, unnamed_statements: 0, buckets: Vec::new() }
    }
}

/// Whether this transaction changed a decision input (it then reads its own changes,
/// uncached).
pub fn in_changed_transaction() -> bool {
    DIRTY.with(Cell::get)
}

/// Read decision inputs the way the module comment says: from the latest committed state
/// (a snapshot taken now), unless this transaction changed inputs itself, then from its own
/// view. Every read a decision or a membership answer is computed from goes through here.
pub fn read_decision_inputs<R>(read: impl FnOnce(crate::spi_read::Snapshot) -> R) -> R {
    use crate::spi_read::Snapshot;
    if in_changed_transaction() {
        read(Snapshot::OwnChanges)
    } else {
        with_latest_snapshot(|| read(Snapshot::Active))
    }
}

/// Run `f` (decision reads) under a snapshot taken now: see the module comment.
pub fn with_latest_snapshot<R>(f: impl FnOnce() -> R) -> R {
    /// Pops the snapshot when `f` returns; on an unwind the (sub)transaction abort pops it.
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                // SAFETY: pops the snapshot pushed below, still on top of the stack.
                unsafe { pg_sys::PopActiveSnapshot() };
            }
        }
    }
    // SAFETY: pushes a copy of a fresh snapshot, popped by the guard.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let _pop = Pop;
    f()
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // On the primary the writers' commit callbacks already invalidated; the messages matter
    // on a standby only.
    // SAFETY: RecoveryInProgress reads shared state; safe in any backend.
    if !unsafe { pg_sys::RecoveryInProgress() } {
        return;
    }
    // Between a namespace change and the next look-up, the relations known before it stand
    // in (a message that arrives in the same batch as the namespace change is not lost).
    let Some(watched) = WATCHED.with(Cell::get).or_else(|| PREVIOUS.with(Cell::get)) else { return };
    if relid == pg_sys::InvalidOid || watched.contains(&relid) {
        invalidate_all();
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn on_namespace_change(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    // Any namespace change (a GRANT on some schema, too) lands here. Look the tables up again
    // on next use; only if their identity changed (the extension was dropped and created
    // again) does the cache start over.
    if let Some(oids) = WATCHED.with(Cell::take) {
        PREVIOUS.with(|p| p.set(Some(oids)));
    }
}

/// Look up the input tables, once per backend (and again after a schema change).
pub(super) fn ensure_watched() -> bool {
    if WATCHED.with(Cell::get).is_some() {
        return true;
    }
    // SAFETY: syscache lookups inside a transaction, with static NUL-terminated names.
    let oids = unsafe {
        let ns = pg_sys::get_namespace_oid(c"entitlements".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return false;
        }
        // The tables newer than 0.1.0 are missing (InvalidOid) in a database not yet updated.
        [
            c"billing_state",
            c"overrides",
            c"features",
            c"tiers",
            c"workspace_members",
            c"feature_limits",
            c"limit_overrides",
            c"stripe_feature_grants",
            c"cache_signal",
        ]
            .map(|name| pg_sys::get_relname_relid(name.as_ptr(), ns))
    };
    WATCHED.with(|w| w.set(Some(oids)));
    // A standby backend cannot know which messages it missed before it joined; after a
    // namespace change, the tables may belong to a new incarnation of the extension. Either
    // way, start clean; a namespace change that left the tables as they were changes nothing.
    let replaced = PREVIOUS.with(Cell::take).is_some_and(|before| before != oids);
    // SAFETY: as above.
    let first_on_standby = PREVIOUS_LOOKUPS.with(|n| n.replace(n.get() + 1)) == 0
        && unsafe { pg_sys::RecoveryInProgress() };
    if first_on_standby || replaced {
        invalidate_all();
    }
    true
}

/// The writer's side, common to every change: mark the transaction changed (it bypasses the
/// cache until it ends) and queue the relcache message that carries the change to standby
/// backends (WAL-logged with the commit, discarded on rollback). The message names
/// `entitlements.cache_signal`, a relation no statement reads: one naming the input table
/// itself would also make every backend of the primary drop its plans of the statements that
/// read that table, at every write (a schema not yet updated to 0.2.0 has no signal relation,
/// and names the table).
fn mark_changed(relid: pg_sys::Oid) {
    let signal = if ensure_watched() { WATCHED.with(Cell::get).map(|w| w[SIGNAL]) } else { None };
    let target = signal.filter(|&s| s != pg_sys::InvalidOid).unwrap_or(relid);
    // SAFETY: queues an invalidation message in the current transaction.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(target) };
    if DIRTY.with(Cell::get) {
        return;
    }
    DIRTY.with(|d| d.set(true));
    register_xact_callback(PgXactCallbackEvent::Commit, || {
        DIRTY.with(|d| d.set(false));
        let changed = CHANGED.with(|c| c.replace(Changed::none()));
        if changed.everything || changed.unnamed_statements != 0 {
            invalidate_all();
        } else {
            invalidate_buckets(&changed.buckets);
        }
    });
    register_xact_callback(PgXactCallbackEvent::Abort, || {
        DIRTY.with(|d| d.set(false));
        CHANGED.with(|c| *c.borrow_mut() = Changed::none());
    });
    register_xact_callback(PgXactCallbackEvent::PrePrepare, || errors::prepare_after_change());
}

/// A statement is about to change an input of every workspace (the catalog), or rows it
/// will not name (TRUNCATE): its commit invalidates everything.
pub fn note_change(relid: pg_sys::Oid) {
    mark_changed(relid);
    CHANGED.with(|c| c.borrow_mut().everything = true);
}

/// A statement is about to change rows of a per-workspace input (billing_state, overrides,
/// workspace_members); its AFTER trigger will name the workspaces.
pub fn note_workspace_statement(relid: pg_sys::Oid) {
    mark_changed(relid);
    CHANGED.with(|c| c.borrow_mut().unnamed_statements += 1);
}

/// The AFTER trigger of such a statement: the workspaces of the rows it changed (old and new
/// rows), or `None` when there were too many to list.
pub fn note_workspaces(relid: pg_sys::Oid, workspaces: Option<&[[u8; 16]]>) {
    mark_changed(relid);
    let db = database();
    CHANGED.with(|c| {
        let mut c = c.borrow_mut();
        c.unnamed_statements -= 1;
        let Some(workspaces) = workspaces.filter(|w| w.len() <= MAX_CHANGED_BUCKETS) else {
            c.everything = true;
            return;
        };
        if c.everything {
            return;
        }
        c.buckets.extend(workspaces.iter().map(|w| bucket_of(db, w) as u32));
        c.buckets.sort_unstable();
        c.buckets.dedup();
        if c.buckets.len() > MAX_CHANGED_BUCKETS {
            c.everything = true;
            c.buckets = Vec::new();
        }
    });
}

