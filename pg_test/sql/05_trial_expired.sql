-- A trial that is running allows its tier; one that has ended denies with TRIAL_EXPIRED.
SELECT entitlements.sync_billing_state('55555555-5555-5555-5555-555555555555', 'pro_plus', 'trialing',
                                       trial_end => now() + interval '3 days');
SELECT enabled, reason FROM entitlements.entitlement_check('55555555-5555-5555-5555-555555555555', 'ccp-07');
SELECT days_left_in_trial FROM entitlements.billing_status_current
 WHERE workspace_id = '55555555-5555-5555-5555-555555555555';
SELECT entitlements.sync_billing_state('55555555-5555-5555-5555-555555555555', 'pro_plus', 'trialing',
                                       trial_end => now() - interval '1 hour');
SELECT enabled, reason FROM entitlements.entitlement_check('55555555-5555-5555-5555-555555555555', 'ccp-07');
SELECT enabled, reason FROM entitlements.entitlement_check('55555555-5555-5555-5555-555555555555', 'ccp-01');
