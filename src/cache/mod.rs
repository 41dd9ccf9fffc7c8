//! The shared-memory decision cache: one table for every backend of the cluster, sized by
//! `pg_entitlements.cache_size` and loaded with `shared_preload_libraries`.
//!
//! Exactness rests on counters in shared memory that only grow, and one ordering rule
//! (docs/ARCHITECTURE.md has the whole argument):
//! - An entry carries its workspace's version: the global epoch plus the generation of the
//!   workspace's bucket. A change bumps a counter *after* its commit is visible: on the
//!   primary the writing backend does it in a commit callback, before its client hears
//!   COMMIT (the generations of the workspaces it changed, which the AFTER triggers name from
//!   the statements' transition tables; the epoch for a catalog change, a TRUNCATE or too
//!   many workspaces); on a hot standby the writer's trigger also queued a relcache
//!   invalidation of the changed table, which travels in the commit record's WAL and reaches
//!   standby backends after replay; the first to process it bumps the epoch. A standby
//!   backend that joins after such a message cannot know what it missed, so it bumps once
//!   when it starts using the cache. Every reader processes pending invalidation messages
//!   before a lookup.
//! - A reader reads its workspace's version *before* it takes the snapshot its decision is
//!   computed from (a fresh one, `GetLatestSnapshot`, not the statement's, which may predate
//!   a commit), and stores the decision with that version, only if it has not moved
//!   meanwhile. A decision computed from a snapshot taken before a commit therefore carries
//!   a version older than that commit's bump (stale from then on) or is refused.
//! - A transaction that changed an input bypasses the cache until it ends: its own
//!   uncommitted change must decide its checks and must not reach other sessions.
//! So a check answers from the latest committed state (or its own transaction's changes),
//! also inside a REPEATABLE READ transaction: entitlements are "now" decisions.

pub mod functions;
pub mod table;

use crate::{errors, gucs};
use pgrx::callbacks::{register_xact_callback, PgXactCallbackEvent};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};
use table::{Entry, Inserted, Key, Slot, Validity};

const PARTITIONS: usize = 16;
/// Invalidation generations, one per bucket of workspaces (by hash): a committed change to
/// one workspace's inputs bumps its bucket's generation only. 128 KiB of counters; with
/// fewer workspaces than buckets, a change invalidates about one workspace.
const GENERATIONS: usize = 16_384;
/// A transaction that changed more workspaces than this invalidates everything instead.
const MAX_CHANGED_BUCKETS: usize = 1024;
const SEGMENT: &CStr = c"pg_entitlements cache";
const TRANCHE: &CStr = c"pg_entitlements cache";

/// The shared header; `capacity` slots follow it.
#[repr(C)]
pub struct Shared {
    epoch: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    invalidations: AtomicU64,
    evictions: AtomicU64,
    capacity: usize,
    locks: *mut pg_sys::LWLockPadded,
    generations: [AtomicU64; GENERATIONS],
}

// Process-local pointers into shared memory, set by the startup hook in the postmaster and
// inherited by every backend it forks (and set again after a crash-restart reinitialises
// shared memory). Null when the library was not preloaded: the cache is off.
static mut SHARED: *mut Shared = std::ptr::null_mut();
static mut SLOTS: *mut Slot = std::ptr::null_mut();
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;

thread_local! {
    /// This transaction changed an input table: bypass the cache until it ends.
    static DIRTY: Cell<bool> = const { Cell::new(false) };
    /// The input tables' OIDs in this database, once looked up.
    static WATCHED: Cell<Option<[pg_sys::Oid; 5]>> = const { Cell::new(None) };
    /// What they were before the last namespace change (a second look-up compares).
    static PREVIOUS: Cell<Option<[pg_sys::Oid; 5]>> = const { Cell::new(None) };
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

fn capacity_for(size: i32) -> usize {
    (size.max(0) as usize).max(PARTITIONS * table::PROBE).next_power_of_two()
}

fn segment_size(capacity: usize) -> usize {
    std::mem::size_of::<Shared>().next_multiple_of(std::mem::align_of::<Slot>())
        + capacity * std::mem::size_of::<Slot>()
}

/// Bytes of shared memory per entry at a given size (header amortised): for the docs.
pub fn bytes_per_entry(size: i32) -> f64 {
    let c = capacity_for(size);
    segment_size(c) as f64 / c as f64
}

/// Called from `_PG_init` while shared_preload_libraries is being processed.
pub fn init() {
    if gucs::CACHE_SIZE.get() <= 0 {
        return;
    }
    // SAFETY: _PG_init runs once, single-threaded, in the postmaster; chaining the previous
    // hooks keeps other extensions' shared memory working.
    unsafe {
        PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
        pg_sys::CacheRegisterRelcacheCallback(Some(on_relcache_invalidation), pg_sys::Datum::from(0));
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
            Some(on_namespace_change),
            pg_sys::Datum::from(0),
        );
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called by the postmaster once, in the shmem-request phase.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(segment_size(capacity_for(gucs::CACHE_SIZE.get())));
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), PARTITIONS as i32);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: the postmaster (or a standalone backend) calls this with shared memory mapped;
    // shmem::init_segment creates the segment under AddinShmemInitLock.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            prev();
        }
        let capacity = capacity_for(gucs::CACHE_SIZE.get());
        let base = crate::shmem::init_segment(SEGMENT, segment_size(capacity), |base| {
            // All-zero is an empty slot and a zero counter.
            let shared = base.cast::<Shared>();
            (*shared).capacity = capacity;
            (*shared).locks = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
        });
        let shared = base.cast::<Shared>();
        let slots = base
            .add(std::mem::size_of::<Shared>().next_multiple_of(std::mem::align_of::<Slot>()))
            .cast::<Slot>();
        SHARED = shared;
        SLOTS = slots;
    }
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: SHARED is either null or points at the initialised header for the life of the
    // process (shared memory is never unmapped while a backend runs).
    unsafe { SHARED.as_ref() }
}

pub fn enabled() -> bool {
    shared().is_some()
}

fn bucket_of(database: u32, workspace: &[u8; 16]) -> usize {
    table::generation_bucket(database, workspace, GENERATIONS)
}

/// The version an entry of a workspace in `bucket` must carry to be live: the global epoch
/// plus the bucket's generation. Both only grow, so the sum equals an earlier reading only
/// if neither moved (docs/ARCHITECTURE.md has the argument).
fn version(shared: &Shared, bucket: usize) -> u64 {
    shared.epoch.load(Ordering::SeqCst).wrapping_add(shared.generations[bucket].load(Ordering::SeqCst))
}

/// Every entry stored so far is stale.
fn invalidate_all() {
    if let Some(s) = shared() {
        s.epoch.fetch_add(1, Ordering::SeqCst);
        s.invalidations.fetch_add(1, Ordering::Relaxed);
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
    // SAFETY: pushes a copy of a fresh snapshot; popped below. Should `f` raise an ERROR,
    // (sub)transaction abort pops it.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let r = f();
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // On the primary the writers' commit callbacks already invalidated; the messages matter
    // on a standby only.
    // SAFETY: RecoveryInProgress reads shared state; safe in any backend.
    if !unsafe { pg_sys::RecoveryInProgress() } {
        return;
    }
    let Some(watched) = WATCHED.with(Cell::get) else { return };
    if relid == pg_sys::InvalidOid || watched.contains(&relid) {
        invalidate_all();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_namespace_change(_arg: pg_sys::Datum, _cacheid: i32, _hash: u32) {
    // Any namespace change (a GRANT on some schema, too) lands here. Look the tables up again
    // on next use; only if their identity changed (the extension was dropped and created
    // again) does the cache start over.
    if let Some(oids) = WATCHED.with(Cell::take) {
        PREVIOUS.with(|p| p.set(Some(oids)));
    }
}

/// Look up the input tables, once per backend (and again after a schema change).
fn ensure_watched() -> bool {
    if WATCHED.with(Cell::get).is_some() {
        return true;
    }
    // SAFETY: syscache lookups inside a transaction, with static NUL-terminated names.
    let oids = unsafe {
        let ns = pg_sys::get_namespace_oid(c"entitlements".as_ptr(), true);
        if ns == pg_sys::InvalidOid {
            return false;
        }
        [c"billing_state", c"overrides", c"features", c"tiers", c"workspace_members"]
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
/// backends (WAL-logged with the commit, discarded on rollback).
fn mark_changed(relid: pg_sys::Oid) {
    // SAFETY: queues an invalidation message in the current transaction.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
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

/// Entries of these buckets' workspaces are stale (the commit callback, after the commit is
/// visible).
fn invalidate_buckets(buckets: &[u32]) {
    if let Some(s) = shared() {
        for &b in buckets {
            s.generations[b as usize].fetch_add(1, Ordering::SeqCst);
        }
        s.invalidations.fetch_add(1, Ordering::Relaxed);
    }
}

/// A reader's view of the cache for one check, or `None` when the cache must be bypassed
/// (off, or this transaction changed inputs, or it would read under an old transaction
/// snapshot: a REPEATABLE READ transaction that has written elsewhere, whose catalog reads
/// SPI runs under the transaction snapshot).
pub struct Reader {
    shared: &'static Shared,
    /// `validity.epoch` is the version of this reader's workspace, read before its snapshot.
    validity: Validity,
    ttl_micros: i64,
    /// The global epoch alone (per-backend memos of the catalog follow it).
    epoch: u64,
    bucket: usize,
}

/// A reader for checks of one workspace.
pub fn reader(now: i64, grace: i64, workspace: &[u8; 16]) -> Option<Reader> {
    if gucs::CACHE_TTL.get() <= 0 {
        return None;
    }
    let (shared, epoch) = current_epoch()?;
    let bucket = bucket_of(database(), workspace);
    Some(Reader {
        shared,
        validity: Validity { epoch: version(shared, bucket), grace, now },
        ttl_micros: i64::from(gucs::CACHE_TTL.get()) * 1_000_000,
        epoch,
        bucket,
    })
}

/// The version a per-backend memo about `workspace` (membership) may rely on now, or `None`
/// when this check must bypass the cache.
pub fn workspace_version(workspace: &[u8; 16]) -> Option<u64> {
    let (shared, _) = current_epoch()?;
    Some(version(shared, bucket_of(database(), workspace)))
}

/// The epoch a reader may rely on now (pending invalidations processed first), or `None`
/// when this check must bypass the cache. Per-backend memos (membership, feature names) are
/// valid while it stays the same.
pub fn current_epoch() -> Option<(&'static Shared, u64)> {
    let shared = shared()?;
    if !gucs::CACHE_ENABLED.get() || DIRTY.with(Cell::get) {
        return None;
    }
    // SAFETY: reads backend-local transaction state.
    let old_snapshot = unsafe {
        pg_sys::GetCurrentTransactionIdIfAny() != pg_sys::InvalidTransactionId
            && pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32
    };
    if old_snapshot || !ensure_watched() {
        return None;
    }
    // A backend inside a long transaction may not have processed pending messages yet.
    // SAFETY: plain invalidation processing, valid inside a transaction.
    unsafe { pg_sys::AcceptInvalidationMessages() };
    Some((shared, shared.epoch.load(Ordering::SeqCst)))
}

/// Holds one partition's LWLock; released on drop (also on unwind; an ERROR between acquire
/// and release is released by the abort's LWLockReleaseAll).
struct Locked {
    lock: *mut pg_sys::LWLock,
}

impl Locked {
    fn new(shared: &Shared, partition: usize, mode: pg_sys::LWLockMode::Type) -> Locked {
        // SAFETY: `locks` points at PARTITIONS LWLocks of our named tranche.
        let lock = unsafe { &raw mut (*shared.locks.add(partition)).lock };
        unsafe { pg_sys::LWLockAcquire(lock, mode) };
        Locked { lock }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: we hold this lock (acquired in `new`).
        unsafe { pg_sys::LWLockRelease(self.lock) };
    }
}

fn partition_slots(shared: &Shared, partition: usize) -> *mut [Slot] {
    let len = shared.capacity / PARTITIONS;
    // SAFETY: SLOTS has `capacity` slots; partitions are disjoint ranges of `len`.
    unsafe { std::ptr::slice_from_raw_parts_mut(SLOTS.add(partition * len), len) }
}

fn key_partition(key: &Key) -> usize {
    table::partition(key.database, &key.workspace, PARTITIONS)
}

pub fn database() -> u32 {
    // SAFETY: MyDatabaseId is set once the backend has connected.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

impl Reader {
    pub fn get(&self, key: &Key) -> Option<Entry> {
        let p = key_partition(key);
        let found = {
            let _lock = Locked::new(self.shared, p, pg_sys::LWLockMode::LW_SHARED);
            // SAFETY: shared lock held: no writer mutates the partition; readers only touch
            // the atomic clock bit.
            table::lookup(unsafe { &*partition_slots(self.shared, p) }, key, &self.validity)
        };
        let counter = if found.is_some() { &self.shared.hits } else { &self.shared.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Store a decision computed in this statement; returns the entry's TTL in seconds, or
    /// `None` when it was not stored.
    pub fn put(&self, key: &Key, enabled: bool, reason: Option<crate::resolver::Reason>, tier: &str, valid_until: Option<i64>) -> Option<i32> {
        let now = self.validity.now;
        let expires_at = now.saturating_add(self.ttl_micros).min(valid_until.unwrap_or(i64::MAX));
        let entry = Entry::new(enabled, reason, tier, now, expires_at)?;
        let p = key_partition(key);
        debug_assert_eq!(bucket_of(key.database, &key.workspace), self.bucket);
        let _lock = Locked::new(self.shared, p, pg_sys::LWLockMode::LW_EXCLUSIVE);
        // An invalidation of this workspace (or of everything) since this reader read its
        // version: the decision may be stale.
        if version(self.shared, self.bucket) != self.validity.epoch {
            return None;
        }
        // SAFETY: exclusive lock held: no other reference into this partition exists.
        let slots = unsafe { &mut *partition_slots(self.shared, p) };
        let shared = self.shared;
        let current = |s: &Slot| version(shared, bucket_of(s.database, &s.workspace));
        match table::insert_with(slots, key, &entry, &self.validity, current) {
            Inserted::Skipped => None,
            Inserted::Stored => Some(ttl_seconds(expires_at, now)),
            Inserted::Evicted => {
                self.shared.evictions.fetch_add(1, Ordering::Relaxed);
                Some(ttl_seconds(expires_at, now))
            }
        }
    }
}

/// Whole seconds left, rounded up.
pub fn ttl_seconds(expires_at: i64, now: i64) -> i32 {
    let left = expires_at.saturating_sub(now).max(0);
    i32::try_from((left + 999_999) / 1_000_000).unwrap_or(i32::MAX)
}

/// Remove the entries matching `which` in the partitions given; how many live ones went.
fn remove(partitions: impl Iterator<Item = usize>, which: impl Fn(&Slot) -> bool) -> i64 {
    let Some(shared) = shared() else { return 0 };
    let v = now_validity();
    let mut removed = 0;
    for p in partitions {
        let _lock = Locked::new(shared, p, pg_sys::LWLockMode::LW_EXCLUSIVE);
        // SAFETY: exclusive lock held.
        for s in unsafe { &mut *partition_slots(shared, p) }.iter_mut() {
            if !s.is_empty() && which(s) {
                removed += i64::from(is_live(shared, s, &v));
                s.clear();
            }
        }
    }
    shared.invalidations.fetch_add(1, Ordering::Relaxed);
    removed
}

/// Whether a slot would be served now (for listings and counts): `v` is the grace and the
/// time, its version is the slot's own workspace's.
fn is_live(shared: &Shared, s: &Slot, v: &Validity) -> bool {
    s.is_live(&Validity { epoch: version(shared, bucket_of(s.database, &s.workspace)), ..*v })
}

/// The grace and the time of a listing or count (the epoch is per slot: see `is_live`).
fn now_validity() -> Validity {
    Validity { epoch: 0, grace: gucs::past_due_grace_micros(), now: crate::pgutil::now() }
}

pub fn invalidate_workspace(workspace: [u8; 16]) -> i64 {
    let db = database();
    remove(std::iter::once(table::partition(db, &workspace, PARTITIONS)), |s| s.workspace_is(db, &workspace))
}

pub fn clear() -> i64 {
    remove(0..PARTITIONS, |_| true)
}

/// A live entry, as the `entitlement_cache` view shows it.
pub struct Listed {
    pub workspace: [u8; 16],
    pub feature: String,
    pub entry: Entry,
}

/// Live entries of this database.
pub fn list() -> Vec<Listed> {
    let Some(shared) = shared() else { return Vec::new() };
    let db = database();
    let v = now_validity();
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let _lock = Locked::new(shared, p, pg_sys::LWLockMode::LW_SHARED);
        // SAFETY: shared lock held.
        for s in unsafe { &*partition_slots(shared, p) }.iter() {
            if s.database == db && is_live(shared, s, &v) {
                out.push(Listed { workspace: s.workspace, feature: s.feature().to_owned(), entry: s.entry() });
            }
        }
    }
    out
}

pub struct Statistics {
    pub enabled: bool,
    pub entries: i64,
    pub capacity: i64,
    pub hits: i64,
    pub misses: i64,
    pub invalidations: i64,
    pub evictions: i64,
}

pub fn statistics() -> Statistics {
    let Some(shared) = shared() else {
        return Statistics { enabled: false, entries: 0, capacity: 0, hits: 0, misses: 0, invalidations: 0, evictions: 0 };
    };
    let v = now_validity();
    let mut entries = 0i64;
    for p in 0..PARTITIONS {
        let _lock = Locked::new(shared, p, pg_sys::LWLockMode::LW_SHARED);
        // SAFETY: shared lock held.
        entries += unsafe { &*partition_slots(shared, p) }.iter().filter(|s| is_live(shared, s, &v)).count() as i64;
    }
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as i64;
    Statistics {
        enabled: true,
        entries,
        capacity: shared.capacity as i64,
        hits: load(&shared.hits),
        misses: load(&shared.misses),
        invalidations: load(&shared.invalidations),
        evictions: load(&shared.evictions),
    }
}

impl Reader {
    /// The global epoch this reader read (catalog changes move it).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}
