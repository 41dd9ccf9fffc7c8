//! `#[pg_test]`s: in-server checks of the SQL surface, each in a transaction rolled back at
//! the end. Commit-time, multi-session, crash and standby behaviour is in `tests/`.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn one<T: pgrx::IntoDatum + pgrx::FromDatum>(sql: &str) -> Option<T> {
        Spi::get_one::<T>(sql).expect(sql)
    }

    /// The resolver's status list is the one list: the table's CHECK constraint and
    /// sync_billing_state's validation must accept exactly it.
    #[pg_test]
    fn the_sql_status_lists_equal_the_resolvers() {
        let ours: Vec<&str> = crate::resolver::Status::ALL.iter().map(|(n, _)| *n).collect();
        for status in &ours {
            let ws = "'00000000-0000-0000-0000-0000000000aa'";
            Spi::run(&format!("SELECT entitlements.sync_billing_state({ws}, 'pro', '{status}')")).expect(status);
        }
        // The constraint's text lists the accepted values; compare them as a set.
        let def = one::<String>(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint
              WHERE conrelid = 'entitlements.billing_state'::regclass AND contype = 'c'
                AND pg_get_constraintdef(oid) LIKE '%status%'",
        )
        .unwrap();
        let mut in_sql: Vec<String> =
            def.split('\'').skip(1).step_by(2).map(str::to_owned).collect();
        in_sql.sort();
        let mut expected: Vec<String> = ours.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(in_sql, expected, "{def}");
    }

    #[pg_test(error = "pg_entitlements: unknown status \"ended\"")]
    fn a_status_outside_the_list_is_refused() {
        let _ = Spi::run("SELECT entitlements.sync_billing_state('00000000-0000-0000-0000-0000000000ab', 'pro', 'ended')");
    }

    #[pg_test]
    fn catalog_is_seeded_with_five_tiers_and_fourteen_features() {
        assert_eq!(one::<i64>("SELECT count(*) FROM entitlements.tiers"), Some(5));
        assert_eq!(one::<i64>("SELECT count(*) FROM entitlements.features"), Some(14));
        assert!(one::<i64>("SELECT count(*) FROM entitlements.features WHERE min_tier = 'free'").unwrap() >= 2);
    }

    #[pg_test]
    fn unregistered_workspace_is_free_without_subscription() {
        let ws = "'00000000-0000-0000-0000-000000000001'";
        assert_eq!(one::<String>(&format!("SELECT tier FROM entitlements.entitlement_check({ws}, 'ccp-01')")).as_deref(), Some("free"));
        assert_eq!(one::<bool>(&format!("SELECT enabled FROM entitlements.entitlement_check({ws}, 'ccp-01')")), Some(true));
        assert_eq!(
            one::<String>(&format!("SELECT reason FROM entitlements.entitlement_check({ws}, 'ccp-04')")).as_deref(),
            Some("TIER_INSUFFICIENT")
        );
    }

    #[pg_test]
    fn sync_billing_state_moves_past_due_since_on_transitions() {
        let ws = "'00000000-0000-0000-0000-000000000002'";
        Spi::run(&format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'past_due')")).unwrap();
        assert_eq!(one::<bool>(&format!("SELECT past_due_since IS NOT NULL FROM entitlements.billing_state WHERE workspace_id = {ws}")), Some(true));
        Spi::run(&format!("SELECT entitlements.sync_billing_state({ws}, 'pro', 'active')")).unwrap();
        assert_eq!(one::<bool>(&format!("SELECT past_due_since IS NULL FROM entitlements.billing_state WHERE workspace_id = {ws}")), Some(true));
    }

    #[pg_test]
    fn registering_creates_one_matrix_row_per_feature() {
        let ws = "'00000000-0000-0000-0000-000000000003'";
        Spi::run(&format!("SELECT entitlements.register_workspace({ws})")).unwrap();
        Spi::run(&format!("SELECT entitlements.register_workspace({ws})")).unwrap();
        assert_eq!(one::<i64>(&format!("SELECT count(*) FROM entitlements.entitlements WHERE workspace_id = {ws}")), Some(14));
    }

    #[pg_test]
    fn has_entitlement_is_false_on_null_and_unknown_feature() {
        assert_eq!(one::<bool>("SELECT entitlements.has_entitlement(NULL, 'ccp-01')"), Some(false));
        assert_eq!(one::<bool>("SELECT entitlements.has_entitlement(gen_random_uuid(), NULL)"), Some(false));
        assert_eq!(one::<bool>("SELECT entitlements.has_entitlement(gen_random_uuid(), 'nope')"), Some(false));
    }

    #[pg_test(error = "pg_entitlements: unknown feature \"ccp-99\"")]
    fn unknown_feature_is_an_error_naming_it() {
        Spi::run("SELECT * FROM entitlements.entitlement_check(gen_random_uuid(), 'ccp-99')").unwrap();
    }

    #[pg_test(error = "pg_entitlements: workspace_id must not be NULL")]
    fn null_workspace_is_an_error() {
        Spi::run("SELECT * FROM entitlements.entitlement_check(NULL, 'ccp-01')").unwrap();
    }

    #[pg_test(error = "pg_entitlements: unknown tier \"gold\"")]
    fn unknown_tier_is_an_error() {
        Spi::run("SELECT entitlements.sync_billing_state(gen_random_uuid(), 'gold', 'active')").unwrap();
    }

    #[pg_test]
    fn search_path_of_security_definer_functions_is_pinned() {
        let unpinned = one::<i64>(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = 'entitlements' AND p.prosecdef
                AND NOT EXISTS (SELECT 1 FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')",
        );
        assert_eq!(unpinned, Some(0));
    }
}
