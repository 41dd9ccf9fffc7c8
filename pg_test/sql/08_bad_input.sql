-- Bad input gets a clear error (SQLSTATE shown) and changes nothing.
\set VERBOSITY sqlstate
SELECT * FROM entitlements.entitlement_check('88888888-8888-8888-8888-888888888888', 'ccp-99');
SELECT * FROM entitlements.entitlement_check(NULL, 'ccp-01');
SELECT * FROM entitlements.entitlement_check('88888888-8888-8888-8888-888888888888', NULL);
SELECT entitlements.sync_billing_state('88888888-8888-8888-8888-888888888888', 'gold', 'active');
SELECT entitlements.sync_billing_state('88888888-8888-8888-8888-888888888888', 'pro', 'lapsed');
SELECT entitlements.set_override('88888888-8888-8888-8888-888888888888', 'ccp-99', true);
\set VERBOSITY default
SELECT * FROM entitlements.entitlement_check('88888888-8888-8888-8888-888888888888', 'ccp-99');
SELECT count(*) FROM entitlements.billing_state WHERE workspace_id = '88888888-8888-8888-8888-888888888888';
SELECT entitlements.has_entitlement(NULL, 'ccp-01'), entitlements.has_entitlement('88888888-8888-8888-8888-888888888888', 'ccp-99');
