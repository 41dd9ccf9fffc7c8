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
mod visibility;

pub use visibility::{
    in_changed_transaction, note_change, note_workspace_statement, note_workspaces, read_decision_inputs,
    with_latest_snapshot,
};

use crate::gucs;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};
use table::{Entry, Inserted, Key, Slot, Validity};

const PARTITIONS: usize = 16;
/// Invalidation generations, one per bucket of workspaces (by hash): a committed change to
/// one workspace's inputs bumps its bucket's generation only. 128 KiB of counters; with
/// fewer workspaces than buckets, a change invalidates about one workspace.
const GENERATIONS: usize = 16_384;
/// A transaction that changed more workspaces than this invalidates everything instead.
pub(super) const MAX_CHANGED_BUCKETS: usize = 1024;
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
        pg_sys::CacheRegisterRelcacheCallback(Some(visibility::on_relcache_invalidation), pg_sys::Datum::from(0));
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
            Some(visibility::on_namespace_change),
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

pub(super) fn bucket_of(database: u32, workspace: &[u8; 16]) -> usize {
    table::generation_bucket(database, workspace, GENERATIONS)
}

/// The version an entry of a workspace in `bucket` must carry to be live: the global epoch
/// plus the bucket's generation. Both only grow, so the sum equals an earlier reading only
/// if neither moved (docs/ARCHITECTURE.md has the argument).
fn version(shared: &Shared, bucket: usize) -> u64 {
    shared.epoch.load(Ordering::SeqCst).wrapping_add(shared.generations[bucket].load(Ordering::SeqCst))
}

/// Every entry stored so far is stale.
pub(super) fn invalidate_all() {
    if let Some(s) = shared() {
        s.epoch.fetch_add(1, Ordering::SeqCst);
        s.invalidations.fetch_add(1, Ordering::Relaxed);
    }
}

/// Entries of these buckets' workspaces are stale (the commit callback, after the commit is
/// visible).
pub(super) fn invalidate_buckets(buckets: &[u32]) {
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
    if !gucs::CACHE_ENABLED.get() || in_changed_transaction() {
        return None;
    }
    // SAFETY: reads backend-local transaction state.
    let old_snapshot = unsafe {
        pg_sys::GetCurrentTransactionIdIfAny() != pg_sys::InvalidTransactionId
            && pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32
    };
    if old_snapshot || !visibility::ensure_watched() {
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

    /// Store a decision computed in this statement (for a metered or counted feature: its
    /// rules' decision, with its limit and period in `usage`); returns the entry's TTL in
    /// seconds, or `None` when it was not stored.
    pub fn put(
        &self,
        key: &Key,
        enabled: bool,
        reason: Option<crate::resolver::Reason>,
        tier: &str,
        valid_until: Option<i64>,
        usage: Option<table::Allowance>,
    ) -> Option<i32> {
        let now = self.validity.now;
        let expires_at = now.saturating_add(self.ttl_micros).min(valid_until.unwrap_or(i64::MAX));
        let entry = Entry::new(enabled, reason, tier, now, expires_at)?.with_usage(usage);
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

/// Live entries of this database: the decisions served as they are (an entry of a metered or
/// counted feature holds its limit, and the decision needs the counter too, so it is left out).
pub fn list() -> Vec<Listed> {
    let Some(shared) = shared() else { return Vec::new() };
    let db = database();
    let v = now_validity();
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        let _lock = Locked::new(shared, p, pg_sys::LWLockMode::LW_SHARED);
        // SAFETY: shared lock held.
        for s in unsafe { &*partition_slots(shared, p) }.iter() {
            if s.database == db && s.usage_kind == 0 && is_live(shared, s, &v) {
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

    /// The past-due grace decisions of this reader are computed with.
    pub fn grace(&self) -> i64 {
        self.validity.grace
    }
}
