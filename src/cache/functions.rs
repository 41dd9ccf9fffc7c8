//! The cache's SQL surface: statistics, the live-entry listing behind the
//! `entitlements.entitlement_cache` view, manual invalidation, and the writers' trigger hook.

use super::{clear, invalidate_workspace, list, note_change, statistics};
use crate::errors;
use pgrx::prelude::*;
use pgrx::Uuid;

fn require_superuser(what: &str) {
    // SAFETY: catalog lookup on the current user.
    if !unsafe { pg_sys::superuser() } {
        errors::superuser_only(what);
    }
}

#[pg_extern(volatile, parallel_safe)]
fn cache_statistics() -> TableIterator<
    'static,
    (
        name!(enabled, bool),
        name!(entries, i64),
        name!(capacity, i64),
        name!(hits, i64),
        name!(misses, i64),
        name!(hit_rate, f64),
        name!(invalidations, i64),
        name!(evictions, i64),
    ),
> {
    let s = statistics();
    let lookups = s.hits + s.misses;
    let hit_rate = if lookups == 0 { 0.0 } else { s.hits as f64 / lookups as f64 };
    TableIterator::once((s.enabled, s.entries, s.capacity, s.hits, s.misses, hit_rate, s.invalidations, s.evictions))
}

/// Whether the shared cache exists in this server (it needs shared_preload_libraries).
#[pg_extern(stable, parallel_safe)]
fn cache_enabled() -> bool {
    super::enabled()
}

#[pg_extern(volatile, parallel_restricted)]
fn cache_entries() -> TableIterator<
    'static,
    (
        name!(workspace_id, Uuid),
        name!(feature, String),
        name!(enabled, bool),
        name!(reason, Option<&'static str>),
        name!(cached_at, TimestampWithTimeZone),
        name!(expires_at, TimestampWithTimeZone),
    ),
> {
    require_superuser("cache_entries()");
    let ts = |t: i64| TimestampWithTimeZone::try_from(t).unwrap_or_else(|e| errors::internal(e));
    TableIterator::new(list().into_iter().map(move |l| {
        (
            Uuid::from_bytes(l.workspace),
            l.feature,
            l.entry.enabled,
            l.entry.reason.map(|r| r.code()),
            ts(l.entry.cached_at),
            ts(l.entry.expires_at),
        )
    }))
}

/// Drop a workspace's cached decisions; returns how many live entries went.
#[pg_extern(volatile, parallel_restricted)]
fn invalidate_workspace_cache(workspace_id: Uuid) -> i64 {
    require_superuser("invalidate_workspace_cache()");
    invalidate_workspace(*workspace_id.as_bytes())
}

/// Drop every cached decision; returns how many live entries went.
#[pg_extern(volatile, parallel_restricted)]
fn clear_cache() -> i64 {
    require_superuser("clear_cache()");
    clear()
}

/// Called by the statement triggers on the decision's input tables.
#[pg_extern(volatile, parallel_unsafe)]
fn note_decision_inputs_changed(relid: pg_sys::Oid) {
    note_change(relid);
}

/// Called by the BEFORE statement triggers on the per-workspace inputs (billing_state,
/// overrides, workspace_members) for INSERT, UPDATE and DELETE.
#[pg_extern(volatile, parallel_unsafe)]
fn note_workspace_statement(relid: pg_sys::Oid) {
    super::note_workspace_statement(relid);
}

/// Called by their AFTER statement triggers with the workspaces of the changed rows (at most
/// a bound more than the cache invalidates one by one; NULL: too many to list).
#[pg_extern(volatile, parallel_unsafe)]
fn note_workspaces_changed(relid: pg_sys::Oid, workspace_ids: Option<Vec<Uuid>>) {
    let ids: Option<Vec<[u8; 16]>> = workspace_ids.map(|v| v.iter().map(|u| *u.as_bytes()).collect());
    super::note_workspaces(relid, ids.as_deref());
}

/// Shared memory the cache takes, in all and per entry (header amortised).
#[pg_extern(stable, parallel_safe)]
fn cache_shared_memory() -> TableIterator<'static, (name!(bytes, i64), name!(bytes_per_entry, f64))> {
    let size = crate::gucs::CACHE_SIZE.get();
    let per_entry = super::bytes_per_entry(size);
    let capacity = if super::enabled() { super::statistics().capacity } else { 0 };
    TableIterator::once(((per_entry * capacity as f64) as i64, per_entry))
}
