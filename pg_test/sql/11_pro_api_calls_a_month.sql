-- Pro: 1,000 API calls a month. A metered feature, consumed in the caller's transaction: a
-- refused call takes nothing, a rollback gives the calls back, a retried request (same
-- idempotency key) counts once.
INSERT INTO entitlements.features (feature, min_tier, description, kind, reset_period)
VALUES ('api_calls', 'pro', 'API calls', 'metered', 'month');
SELECT entitlements.set_feature_limit('api_calls', 'pro', 1000);
SELECT entitlements.set_feature_limit('api_calls', 'enterprise', NULL);
SELECT entitlements.sync_billing_state('b0000000-0000-0000-0000-000000000001', 'pro', 'active');
SELECT allowed, reason, used, limit_value, remaining
  FROM entitlements.consume('b0000000-0000-0000-0000-000000000001', 'api_calls', 990, 'batch-1');
-- the same request again: answered as the first time, counted once
SELECT allowed, reason, used, limit_value, remaining
  FROM entitlements.consume('b0000000-0000-0000-0000-000000000001', 'api_calls', 990, 'batch-1');
-- more than is left: refused, nothing taken
SELECT allowed, reason, used, remaining
  FROM entitlements.consume('b0000000-0000-0000-0000-000000000001', 'api_calls', 20);
-- a transaction that rolls back takes nothing
BEGIN;
SELECT allowed, used FROM entitlements.consume('b0000000-0000-0000-0000-000000000001', 'api_calls', 10);
ROLLBACK;
SELECT used, remaining FROM entitlements.usage('b0000000-0000-0000-0000-000000000001', 'api_calls');
SELECT allowed, used, remaining FROM entitlements.consume('b0000000-0000-0000-0000-000000000001', 'api_calls', 10);
SELECT enabled, reason FROM entitlements.entitlement_check('b0000000-0000-0000-0000-000000000001', 'api_calls');
-- reserve-then-settle: give back what was not used
SELECT used, remaining FROM entitlements.refund('b0000000-0000-0000-0000-000000000001', 'api_calls', 250);
-- a free workspace is told about its tier, not its usage
SELECT allowed, reason FROM entitlements.consume('b0000000-0000-0000-0000-000000000002', 'api_calls');
-- bad input
SELECT entitlements.consume('b0000000-0000-0000-0000-000000000001', 'api_calls', 0);
SELECT entitlements.consume('b0000000-0000-0000-0000-000000000001', 'ccp-05');
