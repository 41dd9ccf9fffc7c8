-- A batch check of all 14 features for a pro_plus workspace.
SELECT entitlements.sync_billing_state('66666666-6666-6666-6666-666666666666', 'pro_plus', 'active');
SELECT feature, enabled, tier, reason, cached
  FROM entitlements.entitlement_check_all('66666666-6666-6666-6666-666666666666');
SELECT count(*) AS features, count(*) FILTER (WHERE enabled) AS allowed
  FROM entitlements.entitlement_check_all('66666666-6666-6666-6666-666666666666');
