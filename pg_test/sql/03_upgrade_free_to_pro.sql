-- The customer pays: the upgrade from free to pro allows the pro feature at once.
SELECT entitlements.sync_billing_state('33333333-3333-3333-3333-333333333333', 'free', 'none');
SELECT enabled, reason FROM entitlements.entitlement_check('33333333-3333-3333-3333-333333333333', 'ccp-05');
SELECT entitlements.sync_billing_state('33333333-3333-3333-3333-333333333333', 'pro', 'active');
SELECT enabled, reason FROM entitlements.entitlement_check('33333333-3333-3333-3333-333333333333', 'ccp-05');
-- the matrix table followed
SELECT feature, enabled, reason FROM entitlements.entitlements
 WHERE workspace_id = '33333333-3333-3333-3333-333333333333' AND feature IN ('ccp-04', 'ccp-05', 'ccp-07')
 ORDER BY feature;
