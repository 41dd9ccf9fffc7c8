-- past_due keeps access within pg_entitlements.past_due_grace (default 7 days), then PAYMENT_PAST_DUE.
SHOW pg_entitlements.past_due_grace;
SELECT entitlements.sync_billing_state('77777777-7777-7777-7777-777777777777', 'pro', 'past_due');
SELECT enabled, reason FROM entitlements.entitlement_check('77777777-7777-7777-7777-777777777777', 'ccp-05');
SELECT past_due_grace_ends_at - now() > interval '6 days' AS grace_ahead
  FROM entitlements.billing_status_current WHERE workspace_id = '77777777-7777-7777-7777-777777777777';
-- eight days ago (a privileged direct UPDATE; the triggers keep the rest right)
UPDATE entitlements.billing_state SET past_due_since = now() - interval '8 days'
 WHERE workspace_id = '77777777-7777-7777-7777-777777777777';
SELECT enabled, reason FROM entitlements.entitlement_check('77777777-7777-7777-7777-777777777777', 'ccp-05');
-- paying again clears past_due_since
SELECT entitlements.sync_billing_state('77777777-7777-7777-7777-777777777777', 'pro', 'active');
SELECT past_due_since FROM entitlements.billing_state WHERE workspace_id = '77777777-7777-7777-7777-777777777777';
-- an admin override decides before everything else, until it expires
SELECT entitlements.set_override('77777777-7777-7777-7777-777777777777', 'ccp-13', true, reason => 'sales pilot');
SELECT enabled, reason FROM entitlements.entitlement_check('77777777-7777-7777-7777-777777777777', 'ccp-13');
SELECT entitlements.set_override('77777777-7777-7777-7777-777777777777', 'ccp-05', false);
SELECT enabled, reason FROM entitlements.entitlement_check('77777777-7777-7777-7777-777777777777', 'ccp-05');
SELECT entitlements.set_override('77777777-7777-7777-7777-777777777777', 'ccp-13', true, expires_at => now() - interval '1 second');
SELECT enabled, reason FROM entitlements.entitlement_check('77777777-7777-7777-7777-777777777777', 'ccp-13');
SELECT entitlements.clear_override('77777777-7777-7777-7777-777777777777', 'ccp-05');
SELECT enabled, reason FROM entitlements.entitlement_check('77777777-7777-7777-7777-777777777777', 'ccp-05');
