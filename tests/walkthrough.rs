//! The README's "Build your first paywall", run as written: each ```sql block of that section
//! in order, as the role its first line names (the application's blocks as a plain LOGIN
//! role), over TCP, with what the README says each step shows checked.
#![cfg(not(feature = "pg_test"))]

mod common;
use common::*;
use postgres::SimpleQueryMessage;
use std::collections::HashMap;

/// The section's blocks as (role, sql).
fn walk_through() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("\n## Build your first paywall\n").expect("the README has the walk-through");
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in section.lines() {
        match (&mut current, line) {
            (None, "```sql") => current = Some(Vec::new()),
            (Some(lines), "```") => {
                let sql = lines.join("\n");
                let role = lines
                    .first()
                    .and_then(|l| l.strip_prefix("-- as "))
                    .unwrap_or_else(|| panic!("a walk-through block must say who runs it:\n{sql}"))
                    .trim();
                let role = if role == "a superuser" { "postgres" } else { role };
                blocks.push((role.to_owned(), sql));
                current = None;
            }
            (Some(lines), l) => lines.push(l),
            (None, _) => {}
        }
    }
    blocks
}

type Rows = Vec<Vec<Option<String>>>;

fn rows_of(messages: Vec<SimpleQueryMessage>) -> Rows {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect()
}

fn row(cells: &[Option<&str>]) -> Vec<Option<String>> {
    cells.iter().map(|c| c.map(str::to_owned)).collect()
}

#[test]
fn the_first_paywall_walk_through_runs_as_written() {
    let pg = Cluster::start("walkthrough");
    let blocks = walk_through();
    assert_eq!(blocks.len(), 6, "{blocks:#?}");
    let roles: Vec<&str> = blocks.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles, ["postgres", "billing_admin", "my_app", "my_app", "my_webhook", "my_app"]);

    let mut sessions: HashMap<String, Client> = HashMap::new();
    let mut results: Vec<Rows> = Vec::new();
    for (role, sql) in &blocks {
        let c = sessions.entry(role.clone()).or_insert_with(|| pg.connect_as(role, "app"));
        if role != "postgres" {
            let su: bool = c.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = current_user", &[]).unwrap().get(0);
            assert!(!su, "{role} must not be a superuser");
        }
        let rows = if sql.contains("$1") {
            // The webhook's block: Stripe's body and header as the parameters.
            let secret = blocks
                .iter()
                .find_map(|(_, s)| s.split("add_webhook_secret('").nth(1).and_then(|t| t.split('\'').next()))
                .expect("the walk-through adds a webhook secret")
                .to_owned();
            let body = serde_json::json!({
                "id": "evt_walkthrough", "object": "event", "type": "customer.subscription.updated",
                "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 5,
                "data": {"object": {"id": "sub_acme", "object": "subscription", "customer": "cus_acme",
                    "status": "active", "cancel_at_period_end": false,
                    "items": {"object": "list", "data": [{"id": "si_acme", "object": "subscription_item",
                        "price": {"id": "price_pro_plus_monthly", "object": "price", "product": "prod_acme"}}]}}}
            })
            .to_string();
            let mut su = pg.connect();
            let header: String =
                su.query_one("SELECT entitlements.sign_stripe_payload($1, $2)", &[&body, &secret]).unwrap().get(0);
            c.query(sql.as_str(), &[&body, &header])
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .iter()
                .map(|r| vec![r.get::<_, Option<String>>(0)])
                .collect()
        } else {
            rows_of(c.simple_query(sql).unwrap_or_else(|e| panic!("as {role}:\n{sql}\n{e}")))
        };
        results.push(rows);
    }

    // 4: stored but hidden; the paywall names pro_plus, and upgrade_options lists it.
    let request = &results[3];
    assert_eq!(request[0], row(&[Some("0")]), "visible_reports");
    assert_eq!(request[1], row(&[Some("f"), Some("TIER_INSUFFICIENT"), Some("pro_plus")]));
    assert!(request[2..].contains(&row(&[Some("ccp-08"), Some("TIER_INSUFFICIENT"), Some("pro_plus")])), "{request:?}");
    // 5: the upgrade applied; 6: allowed, nothing required, the report visible.
    assert_eq!(results[4], vec![row(&[Some("applied")])]);
    assert_eq!(results[5], vec![row(&[Some("t"), None, None]), row(&[Some("Weekly revenue")])]);

    // What the README says next: Bob sees it too; a non-member is refused and sees nothing.
    let app = sessions.get_mut("my_app").unwrap();
    let as_user = |app: &mut Client, user: &str, sql: &str| -> Result<Rows, String> {
        let r = app.simple_query(&format!("BEGIN; SET LOCAL pg_entitlements.user_id = '{user}'; {sql}"));
        let _ = app.simple_query("ROLLBACK");
        r.map(rows_of).map_err(|e| e.code().map(|c| c.code().to_owned()).unwrap_or_default())
    };
    assert_eq!(as_user(app, "bob", "SELECT title FROM app.scheduled_reports"), Ok(vec![row(&[Some("Weekly revenue")])]));
    assert_eq!(as_user(app, "mallory", "SELECT title FROM app.scheduled_reports"), Ok(vec![]));
    assert_eq!(
        as_user(app, "mallory", "SELECT * FROM entitlements.entitlement_check('5b8f3a2e-9c41-4d7a-b2e6-1f0c7d9a4e21', 'ccp-08')"),
        Err("42501".into())
    );
}
