//! Read-your-writes on hot standbys. The writer asks the primary for a token after its commit
//! (`entitlements.write_token()`), hands it to the app, and a check on a standby run under
//! `SET LOCAL pg_entitlements.min_lsn = '<token>'` first waits until replay has passed it
//! (at most `pg_entitlements.replica_wait_timeout`, then 55000). On a primary the setting is
//! satisfied at once: everything committed there is already visible.

use crate::{errors, gucs};
use pgrx::prelude::*;
use std::cell::Cell;

thread_local! {
    /// `pg_entitlements.min_lsn`, parsed by its assign hook (0: not set), so the checks' hot
    /// path reads a number, not a string setting.
    static MIN_LSN: Cell<u64> = const { Cell::new(0) };
}

/// `pg_lsn`'s text form, as PostgreSQL's own parser accepts it: two groups of 1 to 8 hex
/// digits around a slash.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    let part = |s: &str| {
        (!s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((part(hi)? << 32) | part(lo)?)
}

/// Called by the setting's assign hook (also when SET LOCAL ends and the old value returns).
pub fn set_min_lsn(lsn: u64) {
    MIN_LSN.with(|m| m.set(lsn));
}

fn replayed() -> u64 {
    // SAFETY: reads the startup process's replay position from shared memory (spinlocked).
    unsafe { pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut()) }
}

fn in_recovery() -> bool {
    // SAFETY: reads shared state; valid in any backend.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// Wait until this server has replayed up to `pg_entitlements.min_lsn`, if it is set and the
/// server is a standby. Called by every check before it authorizes or reads anything, so the
/// membership, the inputs and the cache (whose invalidations replay queues with the commit
/// record) all include the writes the token stands for.
pub fn await_min_lsn() {
    let target = MIN_LSN.with(Cell::get);
    if target == 0 || !in_recovery() || replayed() >= target {
        return;
    }
    let timeout = std::time::Duration::from_millis(gucs::REPLICA_WAIT_TIMEOUT.get().max(0) as u64);
    let start = std::time::Instant::now();
    loop {
        let now = replayed();
        // Promoted meanwhile: this server now has everything it will ever replay, and takes
        // writes itself.
        if now >= target || !in_recovery() {
            return;
        }
        let waited = start.elapsed();
        if waited >= timeout {
            errors::replica_behind(target, now, gucs::REPLICA_WAIT_TIMEOUT.get());
        }
        // PostgreSQL 15 has no wake-up for backends waiting on replay: poll every 10 ms,
        // interruptibly (a cancel or a shutdown ends the wait at once).
        let nap = (timeout - waited).min(std::time::Duration::from_millis(10));
        crate::pgutil::wait_on_latch(nap.as_millis().max(1) as i64);
    }
}

/// A `pg_lsn` value, returned as the datum it is (pass-by-value, 64 bits).
pub struct Lsn(u64);

pgrx::impl_sql_translatable!(Lsn, "pg_lsn");

// SAFETY: pg_lsn is a pass-by-value 8-byte type; the datum is the LSN itself.
unsafe impl pgrx::callconv::BoxRet for Lsn {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut pgrx::callconv::FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        // SAFETY: as above.
        unsafe { fcinfo.return_raw_datum(pg_sys::Datum::from(self.0)) }
    }
}

/// The token a writer hands to the app after its commit: a WAL position at or after that
/// commit, to be set as `pg_entitlements.min_lsn` for checks on a standby.
///
/// It is the later of two positions:
/// - the end of this session's last commit record (`XactLastCommitEnd`): exactly what a
///   standby must have replayed to show this session's writes, also when they were committed
///   with `synchronous_commit = off` (not yet flushed);
/// - the primary's WAL flush position: at or after every commit acknowledged to any client
///   with `synchronous_commit` on, so a token asked on another pooled connection than the one
///   that wrote still covers the write (a stale commit position of this session could not).
/// Not `pg_current_wal_insert_lsn()`: it may point at WAL not yet flushed or sent, and, when
/// the last record ends on a page boundary, past the next page's header, a position replay
/// only reports once another record arrives (on an idle primary, never: a spurious timeout).
/// The flush position only adds WAL the primary has already made durable, which a streaming
/// standby receives right away.
/// On a standby it is the position replayed so far (what this server's answers include).
#[pg_extern(volatile, parallel_restricted)]
fn write_token() -> Lsn {
    if in_recovery() {
        return Lsn(replayed());
    }
    // SAFETY: XactLastCommitEnd is this backend's own variable; GetFlushRecPtr reads shared
    // state under its spinlock and is valid outside recovery.
    let (own_commit, flushed) = unsafe { (pg_sys::XactLastCommitEnd, pg_sys::GetFlushRecPtr(std::ptr::null_mut())) };
    Lsn(own_commit.max(flushed))
}

#[cfg(test)]
mod tests {
    use super::parse_lsn;

    #[test]
    fn lsn_text_is_parsed_as_postgresql_does() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("ffffffff/FFFFFFFF"), Some(u64::MAX));
        for bad in ["", "/", "1/", "/1", "1", "1/2/3", "g/0", "123456789/0", "0/123456789", " 0/1", "0/1 ", "-1/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
    }
}
