-- The webhook layer hands Stripe's raw body and Stripe-Signature header to the database.
-- (Here the header is made with the extension's own signer, as Stripe would make it.)
SELECT entitlements.add_webhook_secret('whsec_regress_secret');
INSERT INTO entitlements.stripe_price_tiers VALUES ('price_pro_monthly', 'pro'), ('price_plus_monthly', 'pro_plus');
CREATE TEMP TABLE webhook(body text);
-- Stripe sends customer.subscription.created for a workspace that is still on the free tier.
INSERT INTO webhook VALUES ('{"id":"evt_regress_1","object":"event","type":"customer.subscription.created","created":1767225600,"data":{"object":{"id":"sub_regress","object":"subscription","customer":"cus_regress","status":"active","cancel_at_period_end":false,"metadata":{"workspace_id":"99999999-9999-9999-9999-999999999999"},"items":{"object":"list","data":[{"id":"si_1","object":"subscription_item","current_period_end":1769904000,"price":{"id":"price_pro_monthly","object":"price","product":"prod_pro"}}]}}}}');
SELECT enabled, reason FROM entitlements.entitlement_check('99999999-9999-9999-9999-999999999999', 'ccp-05');
SELECT event_id, event_type, workspace_id, outcome
  FROM webhook, entitlements.apply_stripe_event(body, entitlements.sign_stripe_payload(body, 'whsec_regress_secret'));
-- paid: allowed at once
SELECT enabled, tier, reason FROM entitlements.entitlement_check('99999999-9999-9999-9999-999999999999', 'ccp-05');
-- Stripe delivers at least once: the same event again changes nothing
SELECT outcome
  FROM webhook, entitlements.apply_stripe_event(body, entitlements.sign_stripe_payload(body, 'whsec_regress_secret'));
-- A tampered body is refused with Stripe's own message, SQLSTATE 28000
\set VERBOSITY sqlstate
SELECT outcome FROM webhook,
       entitlements.apply_stripe_event(replace(body, 'price_pro_monthly', 'price_plus_monthly'),
                                       entitlements.sign_stripe_payload(body, 'whsec_regress_secret'));
\set VERBOSITY default
SELECT outcome FROM webhook,
       entitlements.apply_stripe_event(body, 't=1767225600,v1=' || repeat('0', 64));
-- The customer cancels: tier-gated features are denied, free ones stay
UPDATE webhook SET body = replace(replace(replace(body, 'evt_regress_1', 'evt_regress_2'),
                                          'customer.subscription.created', 'customer.subscription.deleted'),
                                  '"status":"active"', '"status":"canceled"');
UPDATE webhook SET body = replace(body, '"created":1767225600', '"created":1767225700');
SELECT event_type, outcome
  FROM webhook, entitlements.apply_stripe_event(body, entitlements.sign_stripe_payload(body, 'whsec_regress_secret'));
SELECT feature, enabled, reason FROM entitlements.entitlement_check_all('99999999-9999-9999-9999-999999999999')
 WHERE feature IN ('ccp-01', 'ccp-05');
-- what the DBA sees
SELECT event_id, event_type, outcome FROM entitlements.stripe_events ORDER BY created;
SELECT tier, status, stripe_customer_id, stripe_subscription_id FROM entitlements.billing_state
 WHERE workspace_id = '99999999-9999-9999-9999-999999999999';
