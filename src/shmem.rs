//! Shared-memory segments, set up the one way PostgreSQL requires for both users of shared
//! memory here (the decision cache and the audit queue): found or created by name, under
//! `AddinShmemInitLock`, initialised once by whoever creates it.

use pgrx::pg_sys;
use std::ffi::CStr;

/// `AddinShmemInitLock` is `&MainLWLockArray[21].lock` in PostgreSQL 15
/// (`storage/lwlocknames.h`); pgrx binds the array but not the macro.
const ADDIN_SHMEM_INIT_LOCK: usize = 21;

/// The named segment of `size` bytes: created and passed to `init` (zeroed first) if it does
/// not exist yet, else found as it is. Returns its address.
///
/// # Safety
/// Only from a `shmem_startup_hook`, after the space was requested in the request hook.
pub unsafe fn init_segment(name: &CStr, size: usize, init: impl FnOnce(*mut u8)) -> *mut u8 {
    // SAFETY: as the caller promises; the lock serialises creation with other backends'
    // startup hooks (in EXEC_BACKEND builds) and with other extensions'.
    unsafe {
        let lock = &raw mut (*pg_sys::MainLWLockArray.add(ADDIN_SHMEM_INIT_LOCK)).lock;
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let base = pg_sys::ShmemInitStruct(name.as_ptr(), size, &mut found).cast::<u8>();
        if !found {
            std::ptr::write_bytes(base, 0, size);
            init(base);
        }
        pg_sys::LWLockRelease(lock);
        base
    }
}
