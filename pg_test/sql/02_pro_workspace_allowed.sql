-- A pro workspace with an active subscription may use a pro feature, not a pro_plus one.
SELECT entitlements.sync_billing_state('22222222-2222-2222-2222-222222222222', 'pro', 'active');
SELECT feature, enabled, tier, reason
  FROM entitlements.entitlement_check('22222222-2222-2222-2222-222222222222', 'ccp-05');
SELECT feature, enabled, tier, reason
  FROM entitlements.entitlement_check('22222222-2222-2222-2222-222222222222', 'ccp-07');
