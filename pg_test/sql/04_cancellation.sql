-- Cancellation denies every tier-gated feature (SUBSCRIPTION_INACTIVE); free features stay allowed.
SELECT entitlements.sync_billing_state('44444444-4444-4444-4444-444444444444', 'enterprise', 'active');
SELECT count(*) FILTER (WHERE enabled) AS allowed
  FROM entitlements.entitlement_check_all('44444444-4444-4444-4444-444444444444');
SELECT entitlements.sync_billing_state('44444444-4444-4444-4444-444444444444', 'enterprise', 'canceled');
SELECT r.feature, f.min_tier, r.enabled, r.reason
  FROM entitlements.entitlement_check_all('44444444-4444-4444-4444-444444444444') r
  JOIN entitlements.features f USING (feature)
 ORDER BY r.feature;
