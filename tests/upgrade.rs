//! The upgrade path: a database on 0.1.0, with data loaded through 0.1.0's API, updated with
//! `ALTER EXTENSION pg_entitlements UPDATE`, has exactly the objects of a fresh install of the
//! current version, keeps every row, and decides every (workspace, feature) as before.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use std::collections::BTreeSet;

/// Every object of the extension, described so that two databases can be compared: one
/// line per function, column, constraint, index, view, policy, trigger, type attribute,
/// privilege and configuration-table entry.
const DESCRIBE: &str = r#"
WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_extension WHERE extname = 'pg_entitlements'),
     members AS (SELECT d.classid, d.objid FROM pg_depend d, ext
                  WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
     rels AS (SELECT c.* FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid),
     procs AS (SELECT p.* FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid)
SELECT 'function ' || p.oid::regprocedure::text || ' returns ' || pg_get_function_result(p.oid)
       || ' lang ' || (SELECT lanname FROM pg_language l WHERE l.oid = p.prolang)
       || ' vol ' || p.provolatile::text || ' par ' || p.proparallel::text || ' secdef ' || p.prosecdef
       || ' strict ' || p.proisstrict || ' config ' || coalesce(p.proconfig::text, '-')
       || ' acl ' || coalesce(p.proacl::text, '-') || ' src ' || md5(coalesce(p.prosrc, '') || coalesce(p.probin, ''))
       || ' args ' || coalesce(pg_get_function_arguments(p.oid), '')
  FROM procs p
UNION ALL
SELECT 'relation ' || c.oid::regclass::text || ' kind ' || c.relkind::text || ' rls ' || c.relrowsecurity
       || ' force ' || c.relforcerowsecurity || ' acl ' || coalesce(c.relacl::text, '-')
       || ' options ' || coalesce(c.reloptions::text, '-')
  FROM rels c
UNION ALL
SELECT 'column ' || c.oid::regclass::text || '.' || a.attname || ' #' || a.attnum || ' '
       || format_type(a.atttypid, a.atttypmod) || ' notnull ' || a.attnotnull
       || ' default ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-') || ' identity ' || a.attidentity::text
       || ' stats ' || a.attstattarget || ' acl ' || coalesce(a.attacl::text, '-')
  FROM rels c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
UNION ALL
SELECT 'constraint ' || con.conrelid::regclass::text || ' ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
  FROM pg_constraint con JOIN rels c ON c.oid = con.conrelid
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN rels c ON c.oid = i.indrelid
UNION ALL
SELECT 'view ' || c.oid::regclass::text || ' ' || pg_get_viewdef(c.oid)
  FROM rels c WHERE c.relkind = 'v'
UNION ALL
SELECT 'policy ' || pol.polrelid::regclass::text || ' ' || pol.polname || ' cmd ' || pol.polcmd::text
       || ' roles ' || (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ',' ORDER BY 1) FROM unnest(pol.polroles) r)
       || ' using ' || coalesce(pg_get_expr(pol.polqual, pol.polrelid), '-')
       || ' check ' || coalesce(pg_get_expr(pol.polwithcheck, pol.polrelid), '-')
  FROM pg_policy pol JOIN rels c ON c.oid = pol.polrelid
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text
  FROM pg_trigger t JOIN rels c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'type ' || t.oid::regtype::text || ' attr ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' #' || a.attnum
  FROM pg_type t JOIN members m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
  JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0
UNION ALL
SELECT 'config ' || x.rel::regclass::text || ' filter ' || coalesce(x.cond, '')
  FROM ext, unnest(ext.extconfig, ext.extcondition) AS x(rel, cond)
UNION ALL
SELECT 'initpriv ' || pg_describe_object(ip.classoid, ip.objoid, ip.objsubid) || ' ' || ip.initprivs::text
  FROM pg_init_privs ip JOIN members m ON m.classid = ip.classoid AND m.objid = ip.objoid
UNION ALL
SELECT 'schema acl ' || coalesce(n.nspacl::text, '-') FROM pg_namespace n WHERE n.nspname = 'entitlements'
UNION ALL
SELECT 'member ' || pg_describe_object(m.classid, m.objid, 0) FROM members m
"#;

fn describe(c: &mut Client) -> BTreeSet<String> {
    c.query(DESCRIBE, &[]).unwrap().iter().map(|r| r.get::<_, String>(0)).collect()
}

/// Every row of the extension's tables that 0.1.0 and the current version both keep.
const KEPT_TABLES: &[&str] = &[
    "tiers", "features", "workspaces", "billing_state", "overrides", "workspace_members",
    "stripe_price_tiers", "stripe_customers", "stripe_subscriptions", "stripe_events", "webhook_secrets",
];

fn rows(c: &mut Client) -> Vec<String> {
    let mut out = Vec::new();
    for t in KEPT_TABLES {
        // Only the columns 0.1.0 had: later versions may add columns.
        let cols: Vec<String> = c
            .query(
                "SELECT quote_ident(attname) FROM pg_attribute
                  WHERE attrelid = ('entitlements.' || $1)::regclass AND attnum > 0 AND NOT attisdropped
                    AND attname <> ALL (ARRAY['session_role', 'connection_addr', 'kind', 'reset_period',
                                             'hard_limit', 'current_period_start', 'outcome_detail'])
                  ORDER BY attnum",
                &[t],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        for r in c
            .query(&format!("SELECT row({})::text FROM entitlements.{t} ORDER BY 1", cols.join(", ")), &[])
            .unwrap()
        {
            out.push(format!("{t}: {}", r.get::<_, String>(0)));
        }
    }
    let audit: i64 = c.query_one("SELECT count(*) FROM entitlements.entitlement_checks", &[]).unwrap().get(0);
    out.push(format!("audit rows: {audit}"));
    out
}

fn decisions(c: &mut Client) -> Vec<String> {
    c.query(
        "SELECT w.workspace_id::text || ' ' || d.feature || ' ' || d.enabled || ' ' || coalesce(d.reason, '-')
           FROM entitlements.workspaces w CROSS JOIN LATERAL entitlements.decide_all(w.workspace_id) d
          ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn alter_extension_update_from_0_1_0_matches_a_fresh_install_and_keeps_every_row() {
    let pg = Cluster::init("upgrade", &["pg_entitlements.audit_database = 'old'"]);
    let mut postgres = pg.connect_db("postgres");
    exec(&mut postgres, "CREATE DATABASE old");
    exec(&mut postgres, "CREATE DATABASE fresh");
    let mut old = pg.connect_db("old");
    exec(&mut old, "CREATE EXTENSION pg_entitlements VERSION '0.1.0'");
    let version: String = old.query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_entitlements'", &[]).unwrap().get(0);
    assert_eq!(version, "0.1.0");

    // Data through 0.1.0's API and tables, as its users had it.
    exec(
        &mut old,
        "INSERT INTO entitlements.tiers VALUES ('team', 5, 'Team plan');
         INSERT INTO entitlements.features VALUES ('ccp-15', 'team', 'Team analytics');
         UPDATE entitlements.features SET min_tier = 'pro' WHERE feature = 'ccp-08';
         UPDATE entitlements.tiers SET description = 'Pro (monthly)' WHERE tier = 'pro';
         SELECT entitlements.sync_billing_state('11111111-1111-1111-1111-111111111111', 'pro', 'active');
         SELECT entitlements.sync_billing_state('22222222-2222-2222-2222-222222222222', 'enterprise', 'past_due');
         SELECT entitlements.sync_billing_state('33333333-3333-3333-3333-333333333333', 'pro_plus', 'trialing', now() + interval '3 days');
         SELECT entitlements.register_workspace('44444444-4444-4444-4444-444444444444');
         SELECT entitlements.set_override('44444444-4444-4444-4444-444444444444', 'ccp-13', true, now() + interval '30 days', 'pilot');
         SELECT entitlements.set_override('11111111-1111-1111-1111-111111111111', 'ccp-05', false);
         INSERT INTO entitlements.workspace_members VALUES ('11111111-1111-1111-1111-111111111111', 'alice', 'owner'),
                                                          ('22222222-2222-2222-2222-222222222222', 'bob', 'member');
         INSERT INTO entitlements.stripe_price_tiers VALUES ('price_pro', 'pro');
         SELECT entitlements.add_webhook_secret('whsec_upgrade_test');
         SELECT entitlements.link_stripe_customer('11111111-1111-1111-1111-111111111111', 'cus_upgrade');
         CREATE TABLE public.app_workspaces (id uuid PRIMARY KEY);
         INSERT INTO public.app_workspaces VALUES ('55555555-5555-5555-5555-555555555555');
         SELECT entitlements.attach_workspace_table('public.app_workspaces', 'id');",
    );
    let payload = serde_json::json!({
        "id": "evt_upgrade_1", "object": "event", "type": "customer.subscription.updated",
        "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 60,
        "data": {"object": {"id": "sub_upgrade", "object": "subscription", "customer": "cus_upgrade",
            "status": "active", "cancel_at_period_end": false,
            "items": {"object": "list", "data": [{"id": "si_1", "object": "subscription_item",
                "price": {"id": "price_pro", "object": "price", "product": "prod_x"}}]}}}
    })
    .to_string();
    let header: String = old.query_one("SELECT entitlements.sign_stripe_payload($1, 'whsec_upgrade_test')", &[&payload]).unwrap().get(0);
    let outcome: String = old.query_one("SELECT outcome FROM entitlements.apply_stripe_event($1, $2)", &[&payload, &header]).unwrap().get(0);
    assert_eq!(outcome, "applied");
    // A Stripe Entitlements summary reaching a database whose schema is still 0.1.0's (the
    // library already replaced) is recorded `ignored`, as before the schema knew them.
    let summary = |id: &str, created: u64| {
        serde_json::json!({
            "id": id, "object": "event", "type": "entitlements.active_entitlement_summary.updated",
            "created": created,
            "data": {"object": {"object": "entitlements.active_entitlement_summary", "customer": "cus_upgrade",
                "entitlements": {"object": "list", "has_more": false,
                    "data": [{"object": "entitlements.active_entitlement", "lookup_key": "audit_exports"}]}}}
        })
        .to_string()
    };
    let deliver = |c: &mut Client, payload: &str| -> String {
        let header: String = c.query_one("SELECT entitlements.sign_stripe_payload($1, 'whsec_upgrade_test')", &[&payload]).unwrap().get(0);
        c.query_one("SELECT outcome FROM entitlements.apply_stripe_event($1, $2)", &[&payload, &header]).unwrap().get(0)
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(deliver(&mut old, &summary("evt_upgrade_summary_1", now - 50)), "ignored");
    for ws in ["11111111-1111-1111-1111-111111111111", "22222222-2222-2222-2222-222222222222"] {
        old.query(&format!("SELECT * FROM entitlements.entitlement_check_all('{ws}')"), &[]).unwrap();
    }
    old.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
    let rows_before = rows(&mut old);
    let decisions_before = decisions(&mut old);
    assert!(rows_before.iter().any(|r| r == "audit rows: 30"), "{rows_before:?}");

    exec(&mut old, "ALTER EXTENSION pg_entitlements UPDATE");
    let mut fresh = pg.connect_db("fresh");
    exec(&mut fresh, "CREATE EXTENSION pg_entitlements");
    let (v_old, v_fresh): (String, String) = (
        old.query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_entitlements'", &[]).unwrap().get(0),
        fresh.query_one("SELECT extversion FROM pg_extension WHERE extname = 'pg_entitlements'", &[]).unwrap().get(0),
    );
    assert_eq!(v_old, v_fresh);
    assert_ne!(v_old, "0.1.0");

    let (updated, installed) = (describe(&mut old), describe(&mut fresh));
    let only_updated: Vec<&String> = updated.difference(&installed).collect();
    let only_fresh: Vec<&String> = installed.difference(&updated).collect();
    assert!(
        only_updated.is_empty() && only_fresh.is_empty(),
        "the updated extension differs from a fresh install\nonly after UPDATE:\n  {}\nonly in a fresh install:\n  {}",
        only_updated.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        only_fresh.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
    );
    assert_eq!(rows(&mut old), rows_before, "a row changed or went missing");
    let rolled_up: i64 = old
        .query_one("SELECT sum(checks)::bigint FROM entitlements.entitlement_check_rollups", &[])
        .unwrap()
        .get(0);
    assert_eq!(rolled_up, 30, "the rollups start from the rows kept");
    let by_day: i64 = old
        .query_one("SELECT sum(checks)::bigint FROM entitlements.entitlement_check_daily", &[])
        .unwrap()
        .get(0);
    assert_eq!(by_day, 30, "the daily rollups start from the rows kept");
    assert_eq!(decisions(&mut old), decisions_before, "a decision changed");
    // And the updated database works as the current version does: checks, audit, Stripe.
    let ok: bool = old
        .query_one("SELECT enabled FROM entitlements.entitlement_check('22222222-2222-2222-2222-222222222222', 'ccp-13')", &[])
        .unwrap()
        .get(0);
    assert!(ok);
    old.query_one("SELECT entitlements.flush_audit()", &[]).unwrap();
    let recorded: i64 = old
        .query_one("SELECT count(*) FROM entitlements.entitlement_checks WHERE session_role = 'postgres'", &[])
        .unwrap()
        .get(0);
    assert_eq!(recorded, 1, "the updated audit table records the new columns");
    // A table attached under 0.1.0 now unregisters the workspaces it deletes.
    exec(&mut old, "DELETE FROM public.app_workspaces");
    let left: i64 = old
        .query_one("SELECT count(*) FROM entitlements.workspaces WHERE workspace_id = '55555555-5555-5555-5555-555555555555'", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the attached table's trigger was brought up to date");
    // Once updated, summaries grant what stripe_feature_map maps.
    exec(&mut old, "SELECT entitlements.map_stripe_feature('audit_exports', 'ccp-14')");
    assert_eq!(deliver(&mut old, &summary("evt_upgrade_summary_2", now - 40)), "applied");
    let granted: bool = old
        .query_one("SELECT enabled FROM entitlements.entitlement_check('11111111-1111-1111-1111-111111111111', 'ccp-14')", &[])
        .unwrap()
        .get(0);
    assert!(granted, "a pro workspace gets an enterprise feature through its Stripe entitlement");
}
