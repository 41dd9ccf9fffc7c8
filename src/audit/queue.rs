//! The bounded queue between the checking backends and the writers: one ring of fixed-size
//! records in shared memory, sized by `pg_entitlements.audit_queue_size` at server start,
//! whatever the number of databases. Each record carries its database's OID; each database
//! with audited checks has a writer (a dynamic background worker) in a slot of its own, with
//! its own read cursor: it stores its database's records and skips the others'.
//!
//! Producers (backends) never wait for one another, and rarely touch memory another CPU
//! writes: a backend reserves a block of entries at once (`block_size`: up to 16), holding
//! the queue's LWLock in shared mode and advancing the tail with a compare-and-swap, marks
//! them reserved, and then fills one entry per record without any lock: it turns the
//! entry's stamp from reserved to writing (a compare-and-swap on its own entry), copies the
//! record in, and publishes it by setting the stamp to the sequence number + 1. (One shared
//! counter advanced by every check costs more CPU than the rest of the audit under
//! concurrency: each advance moves its cache line from one CPU to the other.)
//!
//! A reservation can be voided: the writer voids the reservations it has waited behind for a
//! whole tick (a backend that reserved a block and went idle), `flush_audit()` and a writer
//! leaving void them all, and a backend voids its own when it exits. A void entry holds no
//! record and every writer steps over it; the backend whose reservation was voided finds out
//! at its next record (its compare-and-swap fails) and reserves a new block. Claiming,
//! attaching and freeing a writer slot take the lock exclusively, so no reservation is half
//! done; freeing one first voids every reservation and waits for the entries being written,
//! so it counts the database's pending records exactly.
//!
//! A writer reads without the lock from its cursor up to the first entry neither published
//! nor void, and advances its cursor only after its rows committed. The ring's head, what
//! producers compare with the tail for "full" and what `flush_audit()` waits on, is the
//! lowest cursor of the slots in use. A full queue drops the record: a check never waits
//! for the audit.
//!
//! The tail has a cache line of its own, and each entry (its stamp, then its record) fills
//! whole lines of its own, so backends filling their blocks side by side share no line.

use super::record::Record;
use crate::gucs;
use pgrx::pg_sys;
use std::cell::Cell;
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

const SEGMENT: &CStr = c"pg_entitlements audit queue";
const TRANCHE: &CStr = c"pg_entitlements audit";

/// The most writer slots `pg_entitlements.audit_max_databases` may ask for (the slots are a
/// fixed array: a few hundred bytes each).
pub const MAX_WRITERS: usize = 64;

/// Why a record will never be stored; `audit_statistics()` shows each count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The ring was full.
    QueueFull = 0,
    /// No writer can store it: every writer slot serves another database, the extension is
    /// not installed (any more) in its database, no writer could be started, or the library
    /// is not preloaded.
    NoWriter = 1,
    /// Checked on a hot standby, which cannot write.
    Standby = 2,
    /// PostgreSQL refused its row, or its batch failed repeatedly.
    Refused = 3,
}

const CAUSES: usize = 4;
/// How the server log names each cause, in `Cause` order.
const CAUSE_NAMES: [&str; CAUSES] = [
    "the queue was full",
    "no writer serves their database",
    "checked on a standby",
    "refused by the table",
];

/// A writer slot's life: FREE, then STARTING (claimed by the first check of a database, its
/// worker registered; also while the postmaster restarts a terminated writer), RUNNING (the
/// worker attached), FREE again when the writer leaves.
const FREE: u32 = 0;
const STARTING: u32 = 1;
const RUNNING: u32 = 2;

/// A STARTING slot whose worker has not attached after this long is registered again (a
/// registration lost to an ERROR, say).
const START_TIMEOUT_US: i64 = 30_000_000;

#[repr(C)]
struct Slot {
    /// FREE, STARTING or RUNNING; changed under the queue lock only.
    state: AtomicU32,
    database_oid: AtomicU32,
    /// Bumped at every claim: a worker started for an earlier claim of the slot leaves.
    generation: AtomicU32,
    pid: AtomicI32,
    latch: AtomicPtr<pg_sys::Latch>,
    /// Next sequence number this writer will handle. Set under the lock when the slot is
    /// claimed; afterwards only the writer advances it.
    cursor: AtomicU64,
    /// When the slot last entered STARTING (timestamptz microseconds).
    starting_since: AtomicI64,
    /// DROP DATABASE asks the writer to leave so that it does not hold the database open.
    leave: AtomicBool,
    /// The cursor whose batch the writer is attempting, and how many times it started on it:
    /// survives the writer's exit on an ERROR, so a batch that always fails can be given up.
    attempt_cursor: AtomicU64,
    attempts: AtomicU32,
}

#[repr(C)]
struct Header {
    lock: *mut pg_sys::LWLock,
    capacity: u64,
    /// Slots in use at most (`pg_entitlements.audit_max_databases`).
    max_writers: usize,
    /// Next sequence number a producer will reserve; only ever advanced, by a producer
    /// holding `lock` (shared or exclusive). Every reservation is a queued record, so it is
    /// also the count of records queued since the server started. Alone in its cache line:
    /// every append writes it, and the fields above are read by every append.
    tail: CacheLine<AtomicU64>,
    written: AtomicU64,
    /// Reservations voided (entries that hold no record): `queued` is the tail without them.
    voided: AtomicU64,
    dropped: [AtomicU64; CAUSES],
    /// The drop counts last written to the server log, and when.
    reported: [AtomicU64; CAUSES],
    reported_at: AtomicI64,
    /// When a writer last committed a batch (timestamptz microseconds; 0: never).
    last_flush_at: AtomicI64,
    /// The end of the latest batch's commit record in the WAL (the highest of the writers'):
    /// what `flush_audit()` makes durable, the writers committing asynchronously.
    last_commit_lsn: AtomicU64,
    slots: [Slot; MAX_WRITERS],
}

/// A value alone in a cache line (64 bytes, what x86-64 and most ARM servers use).
#[repr(C, align(64))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// One entry of the ring: an entry holding the record of sequence number `seq` has stamp
/// `seq + 1`; anything else means not published yet. Whole cache lines, so that neighbouring
/// entries, written by different backends at once, share none.
#[repr(C, align(64))]
struct Entry {
    stamp: AtomicU64,
    record: Record,
}

/// The queue's memory per record: docs/AUDIT.md and the README quote it.
pub const ENTRY_SIZE: usize = 576;
const _: () = assert!(std::mem::size_of::<Entry>() == ENTRY_SIZE);

/// This process's view of the segment; null without `shared_preload_libraries`.
static QUEUE: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());

/// The segment: the header, then the ring's entries. (PostgreSQL aligns shared memory
/// allocations to cache lines, so the segment starts on one.)
fn entries_offset() -> usize {
    std::mem::size_of::<Header>().next_multiple_of(std::mem::align_of::<Entry>())
}

fn segment_size(capacity: usize) -> usize {
    entries_offset() + capacity * std::mem::size_of::<Entry>()
}

fn capacity_setting() -> usize {
    gucs::AUDIT_QUEUE_SIZE.get().max(1) as usize
}

static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// Chain our shared-memory hooks in front of whatever was installed before (the cache's,
/// pgrx's). Only during `shared_preload_libraries`: later, shared memory is fixed.
pub fn install_hooks() {
    // SAFETY: _PG_init runs once per process, single-threaded, before any hook can fire;
    // we save the previous hooks and call them first from ours.
    unsafe {
        PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    // SAFETY: called by the postmaster in its shmem-request phase, the only time these
    // requests are allowed; the previous hook is a valid function or None.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(segment_size(capacity_setting()));
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    // SAFETY: runs in the postmaster (and again after a crash restart) with the space and
    // tranche requested above; shmem::init_segment creates it under AddinShmemInitLock and
    // initialises it once.
    // Every field of the header is valid when zeroed (atomics, null pointers, FREE slots).
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            prev();
        }
        let capacity = capacity_setting();
        let header = crate::shmem::init_segment(SEGMENT, segment_size(capacity), |base| {
            let header = base.cast::<Header>();
            (*header).lock = &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock;
            (*header).capacity = capacity as u64;
            (*header).max_writers = (gucs::AUDIT_MAX_DATABASES.get().max(1) as usize).min(MAX_WRITERS);
        })
        .cast::<Header>();
        QUEUE.store(header, Ordering::Release);
    }
}

fn header() -> Option<&'static Header> {
    let p = QUEUE.load(Ordering::Acquire);
    // SAFETY: non-null only once shmem_startup initialised the segment, which lives as long
    // as the server (a crash restart re-runs the hook and replaces the pointer).
    unsafe { p.as_ref() }
}

fn entry(h: &Header, seq: u64) -> *mut Entry {
    let base = (h as *const Header as *mut u8).wrapping_add(entries_offset()).cast::<Entry>();
    base.wrapping_add((seq % h.capacity) as usize)
}

fn ring_slot(h: &Header, seq: u64) -> *mut Record {
    // SAFETY: in bounds of the segment (entry() takes the index modulo the capacity); no
    // reference is made, only the field's address.
    unsafe { &raw mut (*entry(h, seq)).record }
}

fn stamp(h: &Header, seq: u64) -> &AtomicU64 {
    // SAFETY: the entries follow the header, `capacity` of them, zeroed at startup (a valid
    // AtomicU64), and live as long as the segment.
    unsafe { &(*entry(h, seq)).stamp }
}

// An entry's stamp for sequence number `seq`: `seq + 1` once its record is published, with
// one of these flags while reserved, being written, or void. Anything else (a stamp of the
// previous lap, or 0) means the entry is not reserved for `seq` yet. The flags sit far above
// any sequence number.
const RESERVED: u64 = 1 << 63;
const WRITING: u64 = 1 << 62;
const VOID: u64 = 1 << 61;
const FLAGS: u64 = RESERVED | WRITING | VOID;

/// What the writer finds at an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryState {
    Published,
    Void,
    /// Reserved by a backend that has not written it yet.
    Reserved,
    /// Being written, or reserved a moment ago and not marked yet: wait.
    Busy,
}

fn entry_state(h: &Header, seq: u64) -> EntryState {
    let v = stamp(h, seq).load(Ordering::Acquire);
    if v == seq + 1 {
        EntryState::Published
    } else if v == (seq + 1) | VOID {
        EntryState::Void
    } else if v == (seq + 1) | RESERVED {
        EntryState::Reserved
    } else {
        EntryState::Busy
    }
}

/// How many entries a backend reserves at once: 16 in a ring of at least 4096, fewer in
/// smaller rings (down to 1 below 512), so that reservations of idle backends never hold
/// more than a sliver of the ring.
pub fn block_size(capacity: u64) -> u64 {
    (capacity / 256).clamp(1, 16)
}

/// The entries this process reserved and has not filled yet: `[next, end)`.
#[derive(Clone, Copy, Debug)]
struct Block {
    next: u64,
    end: u64,
}

fn writers(h: &Header) -> &[Slot] {
    &h.slots[..h.max_writers]
}

/// Run `f` holding the queue lock. `f` must not raise an ERROR (atomics and copies only),
/// except where said otherwise at the call.
fn locked<R>(h: &Header, f: impl FnOnce() -> R) -> R {
    locked_as(h, pg_sys::LWLockMode::LW_EXCLUSIVE, f)
}

fn locked_as<R>(h: &Header, mode: pg_sys::LWLockMode::Type, f: impl FnOnce() -> R) -> R {
    // SAFETY: the lock is the tranche's LWLock in shared memory; an ERROR inside would be
    // released by the transaction abort (LWLockReleaseAll).
    unsafe { pg_sys::LWLockAcquire(h.lock, mode) };
    let r = f();
    // SAFETY: acquired above.
    unsafe { pg_sys::LWLockRelease(h.lock) };
    r
}

/// The lowest sequence number some writer still needs: records before it are done.
fn head(h: &Header) -> u64 {
    let tail = h.tail.load(Ordering::Acquire);
    writers(h)
        .iter()
        .filter(|s| s.state.load(Ordering::Acquire) != FREE)
        .map(|s| s.cursor.load(Ordering::Acquire))
        .fold(tail, u64::min)
}

/// Backend-local count of checks not recorded because there is no queue at all (the library
/// was loaded without shared_preload_libraries).
static UNQUEUED: AtomicU64 = AtomicU64::new(0);

pub fn available() -> bool {
    header().is_some()
}

fn now() -> i64 {
    // SAFETY: reads the clock; callable in any process.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Count records that will never be written, and say so in the server log at most once a
/// minute.
pub fn count_dropped(cause: Cause, n: u64) {
    if n == 0 {
        return;
    }
    let Some(h) = header() else {
        UNQUEUED.fetch_add(n, Ordering::Relaxed);
        return;
    };
    h.dropped[cause as usize].fetch_add(n, Ordering::Relaxed);
    // The statement's start time, not the clock: a burst of drops must not cost a clock
    // read each, and drops happen inside a statement, so its start is at most that
    // statement's length behind.
    // SAFETY: reads a backend-local timestamp; no preconditions.
    report_drops_at(unsafe { pg_sys::GetCurrentStatementStartTimestamp() });
}

/// Write the drops not yet reported to the server log, unless a report was written less
/// than a minute ago (the writers call it on every tick, so drops are reported within about
/// a minute even when they stop).
pub fn report_drops() {
    report_drops_at(now());
}

fn report_drops_at(now: i64) {
    let Some(h) = header() else { return };
    let unreported = (0..CAUSES).any(|i| h.dropped[i].load(Ordering::Relaxed) > h.reported[i].load(Ordering::Relaxed));
    if !unreported {
        return;
    }
    let last = h.reported_at.load(Ordering::Relaxed);
    if now - last < 60_000_000
        || h.reported_at.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_err()
    {
        return;
    }
    // We won this minute's report: the drops since the last one, by cause.
    let mut parts = Vec::new();
    let mut total = 0;
    for (i, name) in CAUSE_NAMES.iter().enumerate() {
        let count = h.dropped[i].load(Ordering::Relaxed);
        let new = count.saturating_sub(h.reported[i].swap(count, Ordering::Relaxed));
        if new > 0 {
            parts.push(format!("{new} because {name}"));
            total += new;
        }
    }
    if total > 0 {
        pgrx::log!(
            "pg_entitlements: {total} audit records dropped since the last report ({}); see entitlements.audit_statistics()",
            parts.join(", ")
        );
    }
}

/// Append a record of database `db`. Usually its database has a writer: the record is
/// appended holding the lock in shared mode, alongside other producers. Otherwise the lock
/// is taken exclusively: the first record of a database without a writer claims a free slot
/// and calls `start(slot, generation)` to register its worker (so only one registration
/// happens); when every slot serves another database, or the worker cannot be registered,
/// the record is dropped. Never waits beyond the lock.
pub fn push(record: &Record, db: u32, start: impl Fn(usize, u32) -> bool) {
    let Some(h) = header() else {
        UNQUEUED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    // Most records go into the block this backend reserved, without the lock. (A block is
    // only ever reserved while a writer serves this database, and freeing that writer's slot
    // voids it first.)
    let mut block = BLOCK.with(Cell::get);
    let filled = fill_reserved(h, &mut block, record);
    BLOCK.with(|b| b.set(block));
    if filled {
        return;
    }
    let fast = locked_as(h, pg_sys::LWLockMode::LW_SHARED, || {
        let i = serving_slot(h, db)?;
        // A worker that never attached is registered again below.
        (!registration_lost(&h.slots[i])).then(|| append(h, &mut block, record))
    });
    let outcome = fast.unwrap_or_else(|| locked(h, || {
        match serving_slot(h, db) {
            Some(i) => {
                let s = &h.slots[i];
                if registration_lost(s) {
                    let generation = s.generation.fetch_add(1, Ordering::AcqRel) + 1;
                    s.starting_since.store(now(), Ordering::Relaxed);
                    // RegisterDynamicBackgroundWorker takes its own LWLock and reports
                    // failure by its result, not by an ERROR.
                    start(i, generation);
                }
            }
            None => {
                let Some(i) = writers(h).iter().position(|s| s.state.load(Ordering::Relaxed) == FREE) else {
                    return Appended::Dropped(Cause::NoWriter);
                };
                let s = &h.slots[i];
                let generation = s.generation.fetch_add(1, Ordering::AcqRel) + 1;
                s.database_oid.store(db, Ordering::Relaxed);
                // No producer holds the lock: every sequence number before the tail is
                // published, and none of them is this database's.
                s.cursor.store(h.tail.load(Ordering::Acquire), Ordering::Release);
                s.attempts.store(0, Ordering::Relaxed);
                s.leave.store(false, Ordering::Relaxed);
                s.starting_since.store(now(), Ordering::Relaxed);
                s.state.store(STARTING, Ordering::Release);
                // As above: a failed registration is a result, not an ERROR.
                if !start(i, generation) {
                    s.state.store(FREE, Ordering::Release);
                    return Appended::Dropped(Cause::NoWriter);
                }
            }
        }
        append(h, &mut block, record)
    }));
    BLOCK.with(|b| b.set(block));
    match outcome {
        Appended::Dropped(cause) => count_dropped(cause, 1),
        Appended::Queued { fill } => {
            // Wake the writers early when the queue gets half full, once per crossing, so a
            // burst drains before their regular tick.
            let half = h.capacity.div_ceil(2);
            if fill.start < half && half <= fill.end {
                wake_writers();
            }
        }
    }
    if block.is_some() {
        void_block_at_exit();
    }
}

thread_local! {
    static BLOCK: Cell<Option<Block>> = const { Cell::new(None) };
    static EXIT_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Void what is left of this backend's block when it exits, so that no writer waits for it.
fn void_block_at_exit() {
    if EXIT_CALLBACK.with(|c| c.replace(true)) {
        return;
    }
    // SAFETY: registers a callback run at process exit, while shared memory is attached.
    unsafe { pg_sys::before_shmem_exit(Some(void_block_on_exit), pg_sys::Datum::from(0)) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn void_block_on_exit(_code: i32, _arg: pg_sys::Datum) {
    let (Some(h), Some(block)) = (header(), BLOCK.with(|b| b.take())) else { return };
    void_block(h, block);
}

/// Void what is left of a block, counting each entry voided here (not by someone else).
fn void_block(h: &Header, block: Block) {
    let voided = (block.next..block.end).filter(|&seq| void_reserved(h, seq)).count() as u64;
    h.voided.fetch_add(voided, Ordering::Relaxed);
}

/// Turn the reservation of `seq` into a void entry, unless it is no longer reserved.
fn void_reserved(h: &Header, seq: u64) -> bool {
    let v = seq + 1;
    stamp(h, seq).compare_exchange(v | RESERVED, v | VOID, Ordering::AcqRel, Ordering::Relaxed).is_ok()
}

enum Appended {
    /// Queued; the ring held `fill.start` entries before this reservation and `fill.end`
    /// after it.
    Queued { fill: std::ops::Range<u64> },
    Dropped(Cause),
}

/// The slot of the writer serving database `db`, if any.
fn serving_slot(h: &Header, db: u32) -> Option<usize> {
    writers(h)
        .iter()
        .position(|s| s.state.load(Ordering::Acquire) != FREE && s.database_oid.load(Ordering::Acquire) == db)
}

/// A slot whose worker has not attached within START_TIMEOUT_US of its registration (the
/// registration lost to an ERROR, say).
fn registration_lost(s: &Slot) -> bool {
    s.state.load(Ordering::Acquire) == STARTING && now() - s.starting_since.load(Ordering::Relaxed) > START_TIMEOUT_US
}

/// Put the record into the next entry of `block`, if any is left and still reserved for us;
/// false when the record must go through `append`. Without the lock.
fn fill_reserved(h: &Header, block: &mut Option<Block>, record: &Record) -> bool {
    let Some(b) = block.as_mut() else { return false };
    let seq = b.next;
    let v = seq + 1;
    // Reserved -> writing: from here on nobody voids the entry, and a slot being freed waits
    // for it to be published. Failing, the block was voided (from its next entry to its end).
    let ours = stamp(h, seq).compare_exchange(v | RESERVED, v | WRITING, Ordering::AcqRel, Ordering::Relaxed).is_ok();
    if ours {
        // SAFETY: the entry is ours alone (reserved by us, marked writing by us), and no
        // writer reads it before the stamp below says it is published.
        unsafe { ring_slot(h, seq).write(*record) };
        stamp(h, seq).store(v, Ordering::Release);
        b.next += 1;
    }
    if !ours || b.next == b.end {
        *block = None;
    }
    ours
}

/// Reserve a new block (up to `block_size` entries, fewer when the ring is nearly full), put
/// the record into its first entry and mark the others reserved for `block`. With the lock
/// held in either mode, so that an exclusive holder never sees a reservation half made.
fn append(h: &Header, block: &mut Option<Block>, record: &Record) -> Appended {
    let want = block_size(h.capacity);
    let mut tail = h.tail.load(Ordering::Acquire);
    let (start, end, fill) = loop {
        // The head only moves forward, so a ring full here was full at the exchange too. (The
        // head can be past this `tail` already: writers read up to the newest tail.)
        let fill = tail.saturating_sub(head(h));
        if fill >= h.capacity {
            return Appended::Dropped(Cause::QueueFull);
        }
        let n = want.min(h.capacity - fill);
        match h.tail.compare_exchange_weak(tail, tail + n, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break (tail, tail + n, fill),
            Err(now_tail) => tail = now_tail,
        }
    };
    // The entries are ours alone: no other producer reserved them, every writer's cursor is
    // past their previous use (the ring had room), and no writer reads them before their
    // stamps say published or void.
    for seq in start + 1..end {
        stamp(h, seq).store((seq + 1) | RESERVED, Ordering::Release);
    }
    // SAFETY: as just said.
    unsafe { ring_slot(h, start).write(*record) };
    stamp(h, start).store(start + 1, Ordering::Release);
    *block = (start + 1 < end).then_some(Block { next: start + 1, end });
    Appended::Queued { fill: fill..fill + (end - start) }
}

/// Void every reservation in the ring, and wait until no entry is being written: afterwards
/// every entry before the tail is published or void, until producers reserve again. Returns
/// how many reservations were voided. With the lock held exclusively (no reservation is half
/// made, and none is made meanwhile).
fn void_all_reserved(h: &Header) -> u64 {
    let mut voided = 0;
    for i in 0..h.capacity {
        // The entry at index i holds sequence numbers i, i + capacity, ...: its stamp says which.
        let v = stamp(h, i).load(Ordering::Acquire);
        if v & RESERVED != 0 && void_reserved(h, (v & !FLAGS) - 1) {
            voided += 1;
        }
    }
    h.voided.fetch_add(voided, Ordering::Relaxed);
    // An entry being written is published within moments: its producer holds no lock and
    // does nothing but copy the record.
    for i in 0..h.capacity {
        let mut spins = 0u32;
        while stamp(h, i).load(Ordering::Acquire) & WRITING != 0 {
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
    voided
}

/// Void every reservation (see `void_all_reserved`): `flush_audit()` does before it waits, so
/// that no idle backend's block holds it up.
pub fn void_reservations() -> u64 {
    let Some(h) = header() else { return 0 };
    locked(h, || void_all_reserved(h))
}

/// Whether records of database `db` can be stored: a writer serves it or a slot is free.
/// True without shared_preload_libraries (that case is warned about on its own).
pub fn can_serve(db: u32) -> bool {
    let Some(h) = header() else { return true };
    writers(h).iter().any(|s| {
        let state = s.state.load(Ordering::Acquire);
        state == FREE || s.database_oid.load(Ordering::Acquire) == db
    })
}

/// Sequence number the next record will get: `flush_audit()` waits until `handled()` reaches it.
pub fn enqueued() -> Option<u64> {
    Some(header()?.tail.load(Ordering::Acquire))
}

pub fn handled() -> Option<u64> {
    header().map(head)
}

/// The end of the latest batch's commit record (0: none since the server started).
pub fn last_commit_lsn() -> u64 {
    header().map_or(0, |h| h.last_commit_lsn.load(Ordering::Acquire))
}

/// Records among the entries from sequence number `from` to `to` (published or being
/// written; not reserved, not void).
pub fn records_between(from: u64, to: u64) -> u64 {
    header().map_or(0, |h| records_in(h, from, to))
}

fn records_in(h: &Header, from: u64, to: u64) -> u64 {
    // Entries more than a lap behind the tail have been reused.
    let from = from.max(h.tail.load(Ordering::Acquire).saturating_sub(h.capacity));
    (from..to)
        .filter(|&seq| matches!(entry_state(h, seq), EntryState::Published | EntryState::Busy))
        .count() as u64
}

pub fn wake_writers() {
    let Some(h) = header() else { return };
    for s in writers(h) {
        let latch = s.latch.load(Ordering::Acquire);
        if !latch.is_null() {
            // SAFETY: a writer publishes its own PGPROC latch, which lives in shared memory
            // for the server's life; setting a latch of an exited process is harmless (and
            // the writer clears the pointer before it exits).
            unsafe { pg_sys::SetLatch(latch) };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writer side. A writer serves the slot it was started for: `slot` below is its index.
// ---------------------------------------------------------------------------------------

/// Take up the slot this worker was started for; false when it is no longer ours (claimed
/// again since, freed, or already served): the worker then leaves without touching it.
pub fn attach(slot: usize, generation: u32, db: u32, latch: *mut pg_sys::Latch, pid: i32) -> bool {
    let Some(h) = header() else { return false };
    if slot >= h.max_writers {
        return false;
    }
    let s = &h.slots[slot];
    locked(h, || {
        // The worker's argument carries the generation's low 24 bits.
        let ours = s.state.load(Ordering::Relaxed) == STARTING
            && s.generation.load(Ordering::Relaxed) & 0xff_ffff == generation
            && s.database_oid.load(Ordering::Relaxed) == db;
        if ours {
            s.latch.store(latch, Ordering::Release);
            s.pid.store(pid, Ordering::Release);
            s.state.store(RUNNING, Ordering::Release);
        }
        ours
    })
}

/// The writer ends but must come back (terminated, or an ERROR): the slot keeps its cursor,
/// so the records queued meanwhile wait for the restarted worker.
pub fn detach(slot: usize) {
    let Some(h) = header() else { return };
    let s = &h.slots[slot];
    locked(h, || {
        s.latch.store(std::ptr::null_mut(), Ordering::Release);
        s.pid.store(0, Ordering::Release);
        s.starting_since.store(now(), Ordering::Relaxed);
        s.state.store(STARTING, Ordering::Release);
    });
}

/// Free the slot. With `force`, records of its database still queued are counted as dropped
/// (no writer will store them); without, the slot is only freed when there are none (returns
/// whether it was). Under the lock, so no record of the database arrives meanwhile.
pub fn release(slot: usize, force: bool) -> bool {
    let Some(h) = header() else { return true };
    let s = &h.slots[slot];
    let db = s.database_oid.load(Ordering::Relaxed);
    let left = locked(h, || {
        // No record of the database may arrive once the slot is free: the reservations its
        // backends hold are voided (everyone's: the others reserve again).
        void_all_reserved(h);
        let tail = h.tail.load(Ordering::Acquire);
        // SAFETY: after void_all_reserved with the lock held exclusively, every entry in
        // [cursor, tail) is published or void, and no producer overwrites it while our
        // cursor holds the head.
        let mine = (s.cursor.load(Ordering::Relaxed)..tail)
            .filter(|&seq| {
                entry_state(h, seq) == EntryState::Published && unsafe { (*ring_slot(h, seq)).database_oid } == db
            })
            .count() as u64;
        if mine > 0 && !force {
            return None;
        }
        s.latch.store(std::ptr::null_mut(), Ordering::Release);
        s.pid.store(0, Ordering::Release);
        s.state.store(FREE, Ordering::Release);
        Some(mine)
    });
    match left {
        None => false,
        Some(mine) => {
            count_dropped(Cause::NoWriter, mine);
            true
        }
    }
}

/// Whether DROP DATABASE asked this writer to leave.
pub fn leave_requested(slot: usize) -> bool {
    header().is_some_and(|h| h.slots[slot].leave.load(Ordering::Acquire))
}

/// Ask the writer of database `db`, if any, to leave; returns whether there was one.
pub fn ask_to_leave(db: u32) -> bool {
    let Some(h) = header() else { return false };
    let mut asked = false;
    for s in writers(h) {
        if s.state.load(Ordering::Acquire) != FREE && s.database_oid.load(Ordering::Acquire) == db {
            s.leave.store(true, Ordering::Release);
            let latch = s.latch.load(Ordering::Acquire);
            if !latch.is_null() {
                // SAFETY: as in wake_writers.
                unsafe { pg_sys::SetLatch(latch) };
            }
            asked = true;
        }
    }
    asked
}

/// Whether a writer process of database `db` is attached.
pub fn serving(db: u32) -> bool {
    header().is_some_and(|h| {
        writers(h).iter().any(|s| {
            s.pid.load(Ordering::Acquire) != 0 && s.database_oid.load(Ordering::Acquire) == db
        })
    })
}

/// Copy the records of up to `max` entries from the slot's cursor, without removing them;
/// returns how many entries they span (void ones included): what `consume` then takes.
pub fn peek(slot: usize, max: usize, out: &mut Vec<Record>) -> usize {
    out.clear();
    match header() {
        Some(h) => read_from_cursor(h, slot, max, out),
        None => 0,
    }
}

fn read_from_cursor(h: &Header, slot: usize, max: usize, out: &mut Vec<Record>) -> usize {
    out.clear();
    let cursor = h.slots[slot].cursor.load(Ordering::Relaxed);
    let tail = h.tail.load(Ordering::Acquire);
    let n = tail.saturating_sub(cursor).min(max as u64);
    // Up to the first entry still reserved or being written: its producer publishes it (or
    // its reservation is voided), and a later drain takes it.
    let mut spanned = 0;
    for seq in cursor..cursor + n {
        match entry_state(h, seq) {
            // SAFETY: published (the stamp was stored with Release after the write), and no
            // producer touches the entry until the head moves past it, which our cursor holds.
            EntryState::Published => out.push(unsafe { ring_slot(h, seq).read() }),
            EntryState::Void => {}
            EntryState::Reserved | EntryState::Busy => break,
        }
        spanned += 1;
    }
    spanned
}

/// The sequence number of the reservation the slot's writer is held up by, if it is: the
/// entry at its cursor is reserved and not written yet.
pub fn held_up_by_reservation(slot: usize) -> Option<u64> {
    let h = header()?;
    let cursor = h.slots[slot].cursor.load(Ordering::Relaxed);
    (cursor < h.tail.load(Ordering::Acquire) && entry_state(h, cursor) == EntryState::Reserved).then_some(cursor)
}

/// Entries from the slot's cursor to the tail: its database's records and others', and
/// reserved or void entries (a cheap bound on what waits; `records_between` counts records).
pub fn waiting(slot: usize) -> u64 {
    let Some(h) = header() else { return 0 };
    h.tail.load(Ordering::Acquire).saturating_sub(h.slots[slot].cursor.load(Ordering::Relaxed))
}

/// About to write the batch at the cursor; returns how many times this batch has been
/// attempted, this time included.
pub fn note_attempt(slot: usize) -> u32 {
    let Some(h) = header() else { return 0 };
    let s = &h.slots[slot];
    let cursor = s.cursor.load(Ordering::Relaxed);
    if s.attempt_cursor.swap(cursor, Ordering::Relaxed) == cursor {
        s.attempts.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        s.attempts.store(1, Ordering::Relaxed);
        1
    }
}

/// The first `n` records from the cursor are done: `written` rows committed, `dropped` of
/// them given up for `cause`, the rest another database's.
pub fn consume(slot: usize, n: usize, written: u64, dropped: u64, cause: Cause, now: i64, commit_lsn: u64) {
    let Some(h) = header() else { return };
    let s = &h.slots[slot];
    // Before the cursor moves (with Release below): whoever sees the records handled sees
    // where their commit ends.
    h.last_commit_lsn.fetch_max(commit_lsn, Ordering::Relaxed);
    h.written.fetch_add(written, Ordering::Relaxed);
    count_dropped(cause, dropped);
    if written > 0 {
        h.last_flush_at.store(now, Ordering::Relaxed);
    }
    s.attempts.store(0, Ordering::Relaxed);
    s.cursor.fetch_add(n as u64, Ordering::AcqRel);
}

pub struct Statistics {
    pub queued: u64,
    pub written: u64,
    /// By cause, indexed by `Cause as usize`.
    pub dropped: [u64; CAUSES],
    pub pending: u64,
    pub last_flush_at: Option<i64>,
    pub writer_running: bool,
}

impl Statistics {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    pub fn dropped(&self, cause: Cause) -> u64 {
        self.dropped[cause as usize]
    }
}

pub fn statistics() -> Statistics {
    match header() {
        None => {
            let mut dropped = [0; CAUSES];
            dropped[Cause::NoWriter as usize] = UNQUEUED.load(Ordering::Relaxed);
            Statistics { queued: 0, written: 0, dropped, pending: 0, last_flush_at: None, writer_running: false }
        }
        Some(h) => {
            let last = h.last_flush_at.load(Ordering::Relaxed);
            // Entries before the tail that hold no record yet (reserved) or never will (void)
            // are not queued records; the published ones past the head are pending.
            let tail = h.tail.load(Ordering::Acquire);
            let reserved = (tail.saturating_sub(h.capacity)..tail)
                .filter(|&seq| entry_state(h, seq) == EntryState::Reserved)
                .count() as u64;
            Statistics {
                queued: tail.saturating_sub(h.voided.load(Ordering::Relaxed) + reserved),
                written: h.written.load(Ordering::Relaxed),
                dropped: std::array::from_fn(|i| h.dropped[i].load(Ordering::Relaxed)),
                pending: records_in(h, head(h), tail),
                last_flush_at: (last != 0).then_some(last),
                writer_running: writers(h).iter().any(|s| s.pid.load(Ordering::Acquire) != 0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::record::InlineText;

    /// A ring in ordinary memory, laid out as the shared segment is, with one running writer
    /// slot for database 1.
    struct TestRing {
        base: *mut u8,
        layout: std::alloc::Layout,
    }

    impl TestRing {
        fn new(capacity: usize) -> TestRing {
            let layout = std::alloc::Layout::from_size_align(segment_size(capacity), 64).unwrap();
            // SAFETY: a non-zero size; zeroed memory is a valid header, stamps and records.
            let base = unsafe { std::alloc::alloc_zeroed(layout) };
            assert!(!base.is_null());
            let ring = TestRing { base, layout };
            // SAFETY: base is a zeroed, aligned Header at the start of the allocation.
            let h = unsafe { &mut *base.cast::<Header>() };
            h.capacity = capacity as u64;
            h.max_writers = 1;
            h.slots[0].database_oid.store(1, Ordering::Relaxed);
            h.slots[0].state.store(RUNNING, Ordering::Relaxed);
            ring
        }

        fn header(&self) -> &Header {
            // SAFETY: initialised in new and alive as long as self.
            unsafe { &*self.base.cast::<Header>() }
        }
    }

    impl Drop for TestRing {
        fn drop(&mut self) {
            // SAFETY: allocated in new with this layout.
            unsafe { std::alloc::dealloc(self.base, self.layout) };
        }
    }

    fn record(producer: i64, n: i64) -> Record {
        Record {
            database_oid: 1,
            result: true,
            cached: false,
            reason: 0,
            checked_at: n,
            workspace_id: [producer as u8; 16],
            feature: InlineText::new(Some(&format!("{producer}-{n}"))),
            user_id: InlineText::new(None),
            user_agent: InlineText::new(Some(&"x".repeat((n % 100) as usize))),
            ip_address: InlineText::new(None),
            session_role: InlineText::new(Some("role")),
            connection_addr: InlineText::new(None),
            quantity: Some(producer * 1_000_000 + n).into(),
        }
    }

    #[test]
    fn block_size_is_16_in_large_rings_and_a_sliver_of_small_ones() {
        assert_eq!(block_size(32768), 16);
        assert_eq!(block_size(4096), 16);
        assert_eq!(block_size(1024), 4);
        assert_eq!(block_size(511), 1);
        assert_eq!(block_size(8), 1);
        assert_eq!(block_size(1 << 20), 16);
    }

    #[test]
    fn producers_side_by_side_deliver_every_record_once_whole_and_in_their_order() {
        const PRODUCERS: i64 = 4;
        const EACH: i64 = 50_000;
        // A small ring (blocks of 4), so that it goes round hundreds of times while
        // producers fill their blocks; a voider voids reservations meanwhile, as the writer
        // (behind an idle backend), flush_audit() and a writer leaving do; producers pause
        // now and then, as idle backends do.
        let ring = TestRing::new(1024);
        assert_eq!(block_size(1024), 4);
        let addr = ring.header() as *const Header as usize;
        let mut next = [0i64; PRODUCERS as usize];
        // Set when the reader below stops (a failed assertion too), so that the producers
        // stop waiting for room, the voider stops, and the test fails rather than hangs.
        let stop = std::sync::atomic::AtomicBool::new(false);
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let voids = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|scope| {
            for p in 0..PRODUCERS {
                let stop = &stop;
                scope.spawn(move || {
                    // SAFETY: the ring outlives the scope; Header is only shared atomics.
                    let h = unsafe { &*(addr as *const Header) };
                    let mut block = None;
                    for n in 0..EACH {
                        let r = record(p, n);
                        if fill_reserved(h, &mut block, &r) {
                            continue;
                        }
                        while let Appended::Dropped(cause) = append(h, &mut block, &r) {
                            assert_eq!(cause, Cause::QueueFull);
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            std::thread::yield_now();
                        }
                        if n % 5000 == 0 {
                            std::thread::sleep(std::time::Duration::from_millis(2));
                        }
                    }
                    // Exit: what is left of the block is voided.
                    if let Some(b) = block {
                        void_block(h, b);
                    }
                });
            }
            {
                let (stop, voids) = (&stop, &voids);
                scope.spawn(move || {
                    // SAFETY: as above.
                    let h = unsafe { &*(addr as *const Header) };
                    while !stop.load(Ordering::Relaxed) {
                        voids.fetch_add(void_all_reserved(h), Ordering::Relaxed);
                        std::thread::sleep(std::time::Duration::from_micros(200));
                    }
                });
            }
            let _stop = StopOnDrop(&stop);
            let h = ring.header();
            let mut batch = Vec::new();
            let mut seen = 0;
            let mut progress_at = std::time::Instant::now();
            while seen < PRODUCERS * EACH {
                // A record lost (written into a void entry, say) would leave the reader
                // waiting for it forever.
                assert!(progress_at.elapsed().as_secs() < 20, "no record for 20 s: {seen} of {} read", PRODUCERS * EACH);
                let spanned = read_from_cursor(h, 0, 16, &mut batch);
                if spanned > 0 {
                    progress_at = std::time::Instant::now();
                }
                for r in &batch {
                    let q = r.quantity.get().unwrap();
                    let (p, n) = (q / 1_000_000, q % 1_000_000);
                    // Whole: every field agrees with the others.
                    assert_eq!(r.feature.get(), Some(&*format!("{p}-{n}")));
                    assert_eq!((r.checked_at, r.workspace_id), (n, [p as u8; 16]));
                    assert_eq!(r.user_agent.get().map(str::len), Some((n % 100) as usize));
                    // Once, and in the order its producer queued it.
                    assert_eq!(n, next[p as usize], "producer {p}: record {n} out of order or repeated");
                    next[p as usize] += 1;
                }
                seen += batch.len() as i64;
                h.slots[0].cursor.fetch_add(spanned as u64, Ordering::AcqRel);
                if spanned == 0 {
                    std::thread::yield_now();
                }
            }
        });
        assert_eq!(next, [EACH; PRODUCERS as usize]);
        // Every reservation became a record or a void entry, and each void was counted once.
        let h = ring.header();
        assert!(voids.load(Ordering::Relaxed) > 0, "the voider never voided a reservation");
        assert_eq!(h.tail.load(Ordering::Relaxed) - h.voided.load(Ordering::Relaxed), (PRODUCERS * EACH) as u64);
    }
}
