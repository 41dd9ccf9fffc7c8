//! Who is asking. Superusers and BYPASSRLS roles may check any workspace; everyone else must
//! carry an identity (`pg_entitlements.user_id`, else the `sub` claim of `request.jwt.claims`,
//! the PostgREST/Supabase convention) and be a member of the workspace.

use crate::{cache, catalog, errors, gucs};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;

/// Superuser or BYPASSRLS: the roles that already see every row.
pub fn is_privileged() -> bool {
    // SAFETY: plain catalog lookups on the current user, valid in any transaction.
    unsafe {
        pg_sys::superuser() || pg_sys::has_bypassrls_privilege(pg_sys::GetUserId())
    }
}

/// The identity the application set for this transaction, if any.
pub fn current_user_id() -> Option<String> {
    if let Some(id) = gucs::USER_ID.get() {
        let id = id.to_string_lossy();
        if !id.is_empty() {
            return Some(id.into_owned());
        }
    }
    jwt_sub()
}

fn jwt_sub() -> Option<String> {
    // SAFETY: GetConfigOption with missing_ok returns NULL or a NUL-terminated string that
    // stays valid until the setting changes; we copy it out at once.
    let raw = unsafe { pg_sys::GetConfigOption(c"request.jwt.claims".as_ptr(), true, false) };
    if raw.is_null() {
        return None;
    }
    let claims = unsafe { CStr::from_ptr(raw) }.to_str().ok()?;
    sub_claim(claims)
}

/// The `sub` of a JWT claims document, if it is a non-empty string.
pub fn sub_claim(claims: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(claims).ok()?;
    v.get("sub")?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

/// Raise 28000 / 42501 unless the caller may ask about `workspace_id`.
pub fn authorize(workspace_id: pgrx::Uuid) {
    if is_privileged() {
        return;
    }
    let Some(user) = current_user_id() else { errors::no_identity() };
    if !is_member(workspace_id, user) {
        errors::not_a_member(&workspace_id.to_string());
    }
}

/// May the caller ask about `workspace_id`? `None` when there is no identity at all.
pub fn may_ask(workspace_id: pgrx::Uuid) -> Option<bool> {
    if is_privileged() {
        return Some(true);
    }
    let user = current_user_id()?;
    Some(is_member(workspace_id, user))
}

thread_local! {
    /// Membership answers of this backend, valid for one cache epoch (a change to
    /// workspace_members bumps it, like any decision input).
    static MEMBERSHIP: RefCell<(u64, HashMap<(String, [u8; 16]), bool>)> = RefCell::new((0, HashMap::new()));
}

/// Bound on the memo; past it, it starts over.
const MEMO_MAX: usize = 10_000;

fn is_member(workspace_id: pgrx::Uuid, user: String) -> bool {
    let Some((_, epoch)) = cache::current_epoch() else {
        return catalog::is_member(workspace_id, &user);
    };
    let key = (user, *workspace_id.as_bytes());
    let known = MEMBERSHIP.with(|m| {
        let m = m.borrow();
        if m.0 == epoch { m.1.get(&key).copied() } else { None }
    });
    if let Some(known) = known {
        return known;
    }
    // Read under a snapshot taken after the epoch (see cache/mod.rs), remember for the epoch.
    let member = cache::with_latest_snapshot(|| catalog::is_member(workspace_id, &key.0));
    MEMBERSHIP.with(|m| {
        let mut m = m.borrow_mut();
        if m.0 != epoch || m.1.len() >= MEMO_MAX {
            m.0 = epoch;
            m.1.clear();
        }
        m.1.insert(key, member);
    });
    member
}

#[cfg(test)]
mod tests {
    use super::sub_claim;

    #[test]
    fn sub_claim_reads_string_sub_only() {
        assert_eq!(sub_claim(r#"{"sub":"u1","role":"authenticated"}"#).as_deref(), Some("u1"));
        assert_eq!(sub_claim(r#"{"sub":""}"#), None);
        assert_eq!(sub_claim(r#"{"sub":42}"#), None);
        assert_eq!(sub_claim(r#"{"role":"anon"}"#), None);
        assert_eq!(sub_claim("not json"), None);
        assert_eq!(sub_claim(""), None);
    }
}
