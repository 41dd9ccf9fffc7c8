\pset footer off
\echo '== CREATE EXTENSION pg_entitlements'
CREATE EXTENSION pg_entitlements;
\echo
\echo '== A new workspace registers: every feature of the catalog gets a row in its matrix'
SELECT entitlements.register_workspace('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01');
SELECT count(*) AS matrix_rows FROM entitlements.entitlements
 WHERE workspace_id = '0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01';
\echo
\echo '== On the free tier, the pro feature ccp-05 is denied'
SELECT entitlements.sync_billing_state('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01', 'free', 'none');
SELECT feature, enabled, tier, reason FROM entitlements.entitlement_check('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01', 'ccp-05');
\echo
\echo '== The customer pays for pro: allowed at once'
SELECT entitlements.sync_billing_state('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01', 'pro', 'active');
SELECT feature, enabled, tier, reason FROM entitlements.entitlement_check('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01', 'ccp-05');
\echo
\echo '== Every feature at once'
SELECT feature, enabled, tier, reason FROM entitlements.entitlement_check_all('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01');
\echo
\echo '== The DBA view of billing'
SELECT workspace_id, tier, status, trial_end, past_due_grace_ends_at FROM entitlements.billing_status_current;
