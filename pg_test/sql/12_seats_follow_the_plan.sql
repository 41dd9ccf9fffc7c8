-- Seats follow the plan: a counted feature on the extension's own members table.
INSERT INTO entitlements.features (feature, min_tier, description, kind)
VALUES ('seats', 'free', 'Seats', 'counted');
SELECT entitlements.set_feature_limit('seats', 'free', 2);
SELECT entitlements.set_feature_limit('seats', 'pro', 5);
SELECT entitlements.register_workspace('c0000000-0000-0000-0000-000000000001');
SELECT entitlements.attach_limit('entitlements.workspace_members', 'workspace_id', 'seats');
SELECT entitlements.add_member('c0000000-0000-0000-0000-000000000001', 'alice', 'owner');
SELECT entitlements.add_member('c0000000-0000-0000-0000-000000000001', 'bob');
SELECT entitlements.add_member('c0000000-0000-0000-0000-000000000001', 'carol');
SELECT entitlements.sync_billing_state('c0000000-0000-0000-0000-000000000001', 'pro', 'active');
SELECT entitlements.add_member('c0000000-0000-0000-0000-000000000001', 'carol');
SELECT feature, allowed, used, limit_value, remaining
  FROM entitlements.usage_all('c0000000-0000-0000-0000-000000000001') ORDER BY feature;
SELECT entitlements.detach_limit('entitlements.workspace_members', 'seats');
