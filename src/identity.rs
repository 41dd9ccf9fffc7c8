//! Who is asking. Superusers and BYPASSRLS roles may check any workspace, and members of
//! `entitlements_reader` may read any workspace's decisions; everyone else must
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

/// The identity the application set for this transaction, if any, from the sources
/// `pg_entitlements.identity_source` allows.
pub fn current_user_id() -> Option<String> {
    asserted_identity().ok()
}

/// Why no identity could be found: each answer names the mistake (for the 28000 hint).
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    /// Nothing set in any allowed source.
    Unset,
    /// `request.jwt.claims` is set but is not a JSON object.
    ClaimsNotJson,
    /// The claims have no `sub`, or it is not a non-empty string without NUL characters.
    BadSub,
}

/// `f` of the asserted identity (None when there is none), without copying an identity set
/// with `pg_entitlements.user_id` (the audit records one per check).
pub fn with_current_user_id<R>(f: impl FnOnce(Option<&str>) -> R) -> R {
    fn usable(id: Option<&CStr>) -> Option<&str> {
        id.and_then(|id| id.to_str().ok()).filter(|id| !id.is_empty())
    }
    if gucs::IDENTITY_SOURCE.get() != gucs::IdentitySource::Jwt
        && gucs::with_str(&gucs::USER_ID, |id| usable(id).is_some())
    {
        return gucs::with_str(&gucs::USER_ID, |id| f(usable(id)));
    }
    f(current_user_id().as_deref())
}

/// The identity, or why there is none.
pub fn asserted_identity() -> Result<String, Missing> {
    use crate::gucs::IdentitySource;
    let source = gucs::IDENTITY_SOURCE.get();
    if source != IdentitySource::Jwt {
        if let Some(id) = gucs::USER_ID.get() {
            let id = id.to_string_lossy();
            if !id.is_empty() {
                return Ok(id.into_owned());
            }
        }
    }
    if source == IdentitySource::Setting {
        return Err(Missing::Unset);
    }
    match jwt_claims() {
        None => Err(Missing::Unset),
        Some(claims) => sub_claim(&claims),
    }
}

fn jwt_claims() -> Option<String> {
    // SAFETY: GetConfigOption with missing_ok returns NULL or a NUL-terminated string that
    // stays valid until the setting changes; we copy it out at once.
    let raw = unsafe { pg_sys::GetConfigOption(c"request.jwt.claims".as_ptr(), true, false) };
    if raw.is_null() {
        return None;
    }
    let claims = unsafe { CStr::from_ptr(raw) }.to_string_lossy().into_owned();
    (!claims.is_empty()).then_some(claims)
}

/// The `sub` of a JWT claims document: a non-empty string without NUL characters (PostgreSQL
/// text cannot hold one).
pub fn sub_claim(claims: &str) -> Result<String, Missing> {
    let v: serde_json::Value = serde_json::from_str(claims).map_err(|_| Missing::ClaimsNotJson)?;
    if !v.is_object() {
        return Err(Missing::ClaimsNotJson);
    }
    match v.get("sub").and_then(serde_json::Value::as_str) {
        Some(s) if !s.is_empty() && !s.contains('\0') => Ok(s.to_owned()),
        _ => Err(Missing::BadSub),
    }
}

fn no_identity(why: Missing) -> ! {
    errors::no_identity(match why {
        Missing::Unset => "SET LOCAL pg_entitlements.user_id = '<user>' inside the transaction (SET LOCAL lasts only inside a transaction block; outside one it does nothing), or set request.jwt.claims with a \"sub\".",
        Missing::ClaimsNotJson => "request.jwt.claims is set but is not a JSON object.",
        Missing::BadSub => "request.jwt.claims has no \"sub\", or its \"sub\" is not a non-empty string (a number is not accepted).",
    })
}

/// Does the current role have the privileges of `entitlements_reader` (read-only, every
/// workspace)? Asked only once membership has failed, so members' checks never pay for it.
fn reads_every_workspace() -> bool {
    // SAFETY: catalog lookups on the current user and a role name, valid in any transaction;
    // a missing role answers InvalidOid (missing_ok).
    unsafe {
        let reader = pg_sys::get_role_oid(c"entitlements_reader".as_ptr(), true);
        reader != pg_sys::InvalidOid && pg_sys::has_privs_of_role(pg_sys::GetUserId(), reader)
    }
}

/// Raise 28000 / 42501 unless the caller may ask about `workspace_id`.
pub fn authorize(workspace_id: pgrx::Uuid) {
    if is_privileged() {
        return;
    }
    let user = match asserted_identity() {
        Ok(user) => user,
        Err(_) if reads_every_workspace() => return,
        Err(why) => no_identity(why),
    };
    if !is_member(workspace_id, user.clone()) && !reads_every_workspace() {
        errors::not_a_member(&workspace_id.to_string(), &user);
    }
}

/// May the caller ask about `workspace_id`? Raises 28000 when there is no identity at all
/// (a misconfigured connection: silence would hide it).
pub fn may_ask(workspace_id: pgrx::Uuid) -> bool {
    if is_privileged() {
        return true;
    }
    let user = match asserted_identity() {
        Ok(user) => user,
        Err(_) if reads_every_workspace() => return true,
        Err(why) => no_identity(why),
    };
    is_member(workspace_id, user) || reads_every_workspace()
}

thread_local! {
    /// Membership answers of this backend, each with the version of its workspace it was
    /// read in (a change to workspace_members moves that version, like any decision input).
    static MEMBERSHIP: RefCell<HashMap<(String, [u8; 16]), (u64, bool)>> = RefCell::new(HashMap::new());
}

/// Bound on the memo; past it, it starts over.
const MEMO_MAX: usize = 10_000;

fn is_member(workspace_id: pgrx::Uuid, user: String) -> bool {
    let Some(version) = cache::workspace_version(workspace_id.as_bytes()) else {
        return cache::read_decision_inputs(|s| catalog::is_member(workspace_id, &user, s));
    };
    let key = (user, *workspace_id.as_bytes());
    let known = MEMBERSHIP.with(|m| m.borrow().get(&key).filter(|(v, _)| *v == version).map(|(_, member)| *member));
    if let Some(known) = known {
        return known;
    }
    // Read under a snapshot taken after the version (see cache/mod.rs), remember with it.
    let member = cache::read_decision_inputs(|s| catalog::is_member(workspace_id, &key.0, s));
    MEMBERSHIP.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= MEMO_MAX {
            m.clear();
        }
        m.insert(key, (version, member));
    });
    member
}

#[cfg(test)]
mod tests {
    use super::{sub_claim, Missing};

    #[test]
    fn sub_claim_reads_string_sub_only() {
        assert_eq!(sub_claim(r#"{"sub":"u1","role":"authenticated"}"#), Ok("u1".to_owned()));
        assert_eq!(sub_claim(r#"{"sub":""}"#), Err(Missing::BadSub));
        assert_eq!(sub_claim(r#"{"sub":42}"#), Err(Missing::BadSub));
        assert_eq!(sub_claim(r#"{"role":"anon"}"#), Err(Missing::BadSub));
        assert_eq!(sub_claim("not json"), Err(Missing::ClaimsNotJson));
        assert_eq!(sub_claim("[1]"), Err(Missing::ClaimsNotJson));
        assert_eq!(sub_claim(""), Err(Missing::ClaimsNotJson));
    }

    #[test]
    fn sub_with_a_nul_character_is_refused() {
        assert_eq!(sub_claim(r#"{"sub":"al\u0000ice"}"#), Err(Missing::BadSub));
    }
}
