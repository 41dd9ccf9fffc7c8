//! The bounded queue between the checking backends and the writer: a ring of fixed-size
//! records in shared memory, sized by `pg_entitlements.audit_queue_size` at server start.
//! Many producers (backends) append under one LWLock held for a copy; one consumer (the
//! writer) reads without the lock and advances the head only after its rows committed, so
//! `flush_audit()` can wait on the head. A full queue drops the record: a check never waits
//! for the audit.

use super::record::Record;
use crate::gucs;
use pgrx::pg_sys;
use std::ffi::CStr;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicU64, Ordering};

const SEGMENT: &CStr = c"pg_entitlements audit queue";
const TRANCHE: &CStr = c"pg_entitlements audit";

#[repr(C)]
struct Header {
    lock: *mut pg_sys::LWLock,
    capacity: u64,
    /// Next sequence number the writer will handle; everything before it is written (or
    /// dropped as unwritable). Only the writer stores it.
    head: AtomicU64,
    /// Next sequence number a producer will fill. Stored under `lock`.
    tail: AtomicU64,
    /// Published by the writer once connected (0: no writer yet).
    database_oid: AtomicU32,
    worker_pid: AtomicI32,
    worker_latch: AtomicPtr<pg_sys::Latch>,
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    /// When the writer last committed a batch (timestamptz microseconds; 0: never).
    last_flush_at: AtomicI64,
    /// The head whose batch the writer is attempting, and how many times it started on it:
    /// survives the writer's exit on an ERROR, so a batch that always fails can be given up.
    attempt_head: AtomicU64,
    attempts: AtomicU32,
}

/// This process's view of the segment; null without `shared_preload_libraries`.
static QUEUE: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());

fn records_offset() -> usize {
    std::mem::size_of::<Header>().next_multiple_of(std::mem::align_of::<Record>().max(64))
}

fn segment_size(capacity: usize) -> usize {
    records_offset() + capacity * std::mem::size_of::<Record>()
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
    // tranche requested above. AddinShmemInitLock (MainLWLockArray[21], as pgrx's own
    // PgLwLock uses it) serialises initialisation; `found` tells us whether to initialise.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            prev();
        }
        let capacity = capacity_setting();
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let header =
            pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), segment_size(capacity), &mut found).cast::<Header>();
        if !found {
            header.write(Header {
                lock: &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock,
                capacity: capacity as u64,
                head: AtomicU64::new(0),
                tail: AtomicU64::new(0),
                database_oid: AtomicU32::new(0),
                worker_pid: AtomicI32::new(0),
                worker_latch: AtomicPtr::new(std::ptr::null_mut()),
                queued: AtomicU64::new(0),
                written: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                last_flush_at: AtomicI64::new(0),
                attempt_head: AtomicU64::new(0),
                attempts: AtomicU32::new(0),
            });
        }
        QUEUE.store(header, Ordering::Release);
        pg_sys::LWLockRelease(init_lock);
    }
}

fn header() -> Option<&'static Header> {
    let p = QUEUE.load(Ordering::Acquire);
    // SAFETY: non-null only once shmem_startup initialised the segment, which lives as long
    // as the server (a crash restart re-runs the hook and replaces the pointer).
    unsafe { p.as_ref() }
}

fn slot(h: &Header, seq: u64) -> *mut Record {
    let base = (h as *const Header as *mut u8).wrapping_add(records_offset()).cast::<Record>();
    base.wrapping_add((seq % h.capacity) as usize)
}

/// Backend-local count of checks not recorded because there is no queue at all (the library
/// was loaded without shared_preload_libraries).
static UNQUEUED: AtomicU64 = AtomicU64::new(0);

pub fn available() -> bool {
    header().is_some()
}

/// Count a record that will never be written.
pub fn count_dropped() {
    match header() {
        Some(h) => h.dropped.fetch_add(1, Ordering::Relaxed),
        None => UNQUEUED.fetch_add(1, Ordering::Relaxed),
    };
}

/// The database the writer serves, once it has connected.
pub fn writer_database() -> Option<pg_sys::Oid> {
    let oid = header()?.database_oid.load(Ordering::Acquire);
    (oid != 0).then(|| pg_sys::Oid::from(oid))
}

/// Append a record; false (and counted as dropped) when there is no room or no queue.
pub fn push(record: &Record) -> bool {
    let Some(h) = header() else {
        UNQUEUED.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    // SAFETY: the lock is the tranche's LWLock in shared memory. Under it we are the only
    // producer; the slot at `tail` is outside [head, tail), which the writer alone reads.
    // An ERROR cannot happen between acquire and release (a copy and atomics only).
    let fill = unsafe {
        pg_sys::LWLockAcquire(h.lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let tail = h.tail.load(Ordering::Relaxed);
        let head = h.head.load(Ordering::Acquire);
        let fill = if tail - head >= h.capacity {
            None
        } else {
            slot(h, tail).write(*record);
            h.tail.store(tail + 1, Ordering::Release);
            Some(tail + 1 - head)
        };
        pg_sys::LWLockRelease(h.lock);
        fill
    };
    match fill {
        None => {
            h.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
        Some(fill) => {
            h.queued.fetch_add(1, Ordering::Relaxed);
            // Wake the writer early when the queue is half full, once per crossing, so a
            // burst drains before the writer's regular tick.
            if fill == h.capacity.div_ceil(2) {
                wake_writer();
            }
            true
        }
    }
}

/// Sequence number the next record will get: `flush_audit()` waits until `handled()` reaches it.
pub fn enqueued() -> Option<u64> {
    Some(header()?.tail.load(Ordering::Acquire))
}

pub fn handled() -> Option<u64> {
    Some(header()?.head.load(Ordering::Acquire))
}

pub fn wake_writer() {
    let Some(h) = header() else { return };
    let latch = h.worker_latch.load(Ordering::Acquire);
    if !latch.is_null() {
        // SAFETY: the writer publishes its own PGPROC latch, which lives in shared memory for
        // the server's life; setting a latch of an exited process is harmless (and the
        // writer clears the pointer before it exits).
        unsafe { pg_sys::SetLatch(latch) };
    }
}

/// Writer side: announce ourselves so backends can wake us and know our database.
pub fn publish_writer(database_oid: pg_sys::Oid, latch: *mut pg_sys::Latch, pid: i32) {
    if let Some(h) = header() {
        h.worker_latch.store(latch, Ordering::Release);
        h.worker_pid.store(pid, Ordering::Release);
        h.database_oid.store(database_oid.to_u32(), Ordering::Release);
    }
}

pub fn retract_writer() {
    if let Some(h) = header() {
        h.worker_latch.store(std::ptr::null_mut(), Ordering::Release);
        h.worker_pid.store(0, Ordering::Release);
    }
}

/// Writer side: copy up to `max` records from the head, without removing them.
pub fn peek(max: usize, out: &mut Vec<Record>) {
    out.clear();
    let Some(h) = header() else { return };
    let head = h.head.load(Ordering::Relaxed);
    let tail = h.tail.load(Ordering::Acquire);
    let n = (tail - head).min(max as u64);
    for seq in head..head + n {
        // SAFETY: [head, tail) is filled (tail was stored with Release after the write) and
        // no producer touches it until the head moves past it, which only we do.
        out.push(unsafe { slot(h, seq).read() });
    }
}

/// Writer side: about to write the batch at the head; returns how many times this batch
/// has been attempted, this time included.
pub fn note_attempt() -> u32 {
    let Some(h) = header() else { return 0 };
    let head = h.head.load(Ordering::Relaxed);
    if h.attempt_head.swap(head, Ordering::Relaxed) == head {
        h.attempts.fetch_add(1, Ordering::Relaxed) + 1
    } else {
        h.attempts.store(1, Ordering::Relaxed);
        1
    }
}

/// Writer side: the first `n` records are done (`written` rows committed, the rest dropped).
pub fn consume(n: usize, written: u64, now: i64) {
    let Some(h) = header() else { return };
    h.written.fetch_add(written, Ordering::Relaxed);
    h.dropped.fetch_add(n as u64 - written, Ordering::Relaxed);
    if written > 0 {
        h.last_flush_at.store(now, Ordering::Relaxed);
    }
    h.attempts.store(0, Ordering::Relaxed);
    h.head.fetch_add(n as u64, Ordering::AcqRel);
}

pub struct Statistics {
    pub queued: u64,
    pub written: u64,
    pub dropped: u64,
    pub pending: u64,
    pub last_flush_at: Option<i64>,
    pub writer_running: bool,
}

pub fn statistics() -> Statistics {
    match header() {
        None => Statistics {
            queued: 0,
            written: 0,
            dropped: UNQUEUED.load(Ordering::Relaxed),
            pending: 0,
            last_flush_at: None,
            writer_running: false,
        },
        Some(h) => {
            let last = h.last_flush_at.load(Ordering::Relaxed);
            Statistics {
                queued: h.queued.load(Ordering::Relaxed),
                written: h.written.load(Ordering::Relaxed),
                dropped: h.dropped.load(Ordering::Relaxed),
                pending: h.tail.load(Ordering::Acquire).saturating_sub(h.head.load(Ordering::Acquire)),
                last_flush_at: (last != 0).then_some(last),
                writer_running: h.worker_pid.load(Ordering::Acquire) != 0,
            }
        }
    }
}
