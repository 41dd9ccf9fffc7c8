-- A free workspace asks for a pro feature: denied, TIER_INSUFFICIENT; its free features stay allowed.
SELECT entitlements.register_workspace('11111111-1111-1111-1111-111111111111');
SELECT entitlements.sync_billing_state('11111111-1111-1111-1111-111111111111', 'free', 'none');
SELECT feature, enabled, tier, reason, cached
  FROM entitlements.entitlement_check('11111111-1111-1111-1111-111111111111', 'ccp-05');
SELECT feature, enabled, tier, reason
  FROM entitlements.entitlement_check('11111111-1111-1111-1111-111111111111', 'ccp-01');
SELECT entitlements.has_entitlement('11111111-1111-1111-1111-111111111111', 'ccp-05');
