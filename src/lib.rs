//! pg_entitlements: "may workspace W use feature F right now?", answered inside PostgreSQL
//! from the workspace's tier, its billing status and admin overrides.
//!
//! Module map: `resolver` (the rules, pure), `catalog` (reads the tables), `identity` (who
//! asks), `api` (the SQL functions), `limits` (usage limits: consume, refund, usage), `cache` (the shared decision cache), `stripe` (webhook
//! ingestion: verification and parsing pure, application through SPI), `audit` (the trail of
//! checks), `gucs` (settings),
//! `billing` (the one writer of billing_state: sync_billing_state and Stripe ingestion),
//! `errors` (SQLSTATEs), `pgutil` (small Postgres helpers), `spi_read` (the checks' reads),
//! `spi_write` (the plan cache of the writes).
//! The tables, policies and views are SQL, in `sql/`.

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod api;
mod audit;
mod billing;
mod build_info;
mod cache;
mod catalog;
mod errors;
mod gucs;
mod identity;
mod limits;
mod pgutil;
mod shmem;
mod replica;
mod spi_read;
mod spi_write;
pub mod resolver;
pub mod stripe;

extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!(
    "../sql/audit.sql",
    name = "audit",
    requires = [audit::entitlement_checks_append_only, audit::audit_can_store_here, api::current_user_id]
);
extension_sql_file!(
    "../sql/api.sql",
    name = "api",
    requires = [
        api::decide_all,
        api::current_user_id,
        api::past_due_grace,
        cache::functions::note_decision_inputs_changed,
        cache::functions::note_workspace_statement,
        cache::functions::note_workspaces_changed,
        cache::functions::cache_entries,
        cache::functions::cache_enabled,
        "audit",
    ]
);
extension_sql_file!("../sql/limits.sql", name = "limits", requires = ["api", "stripe"]);
extension_sql_file!("../sql/security.sql", name = "security", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Once per process. A running server keeps serving with the build it loaded, also after
    // the file is replaced on disk (docs/OPERATIONS.md). PostgreSQL remembers loaded libraries
    // by path and by inode; should a lookup miss both after a replacement, it dlopen()s again,
    // the dynamic loader can hand back the object this process already has mapped, and
    // PostgreSQL calls _PG_init on it a second time. Redefining our GUCs would then fail with
    // "attempt to redefine parameter" and hooks and workers would be registered twice; the
    // first initialisation already holds, so a second call has nothing to do.
    use std::sync::atomic::{AtomicBool, Ordering};
    static INITIALIZED: AtomicBool = AtomicBool::new(false);
    if INITIALIZED.swap(true, Ordering::Relaxed) {
        return;
    }
    gucs::init();
    // SAFETY: a plain flag of the postmaster's startup, read-only here.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        cache::init();
    }
    audit::init();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_entitlements'"]
    }
}
