-- Stripe's catalog beyond the tier (docs/STRIPE.md, "A worked catalog"): a base plan, a
-- per-seat price, an add-on, a usage pack, and a Stripe Entitlements feature.
INSERT INTO entitlements.features (feature, min_tier, description, kind)
     VALUES ('editor_seats', 'free', 'Editor seats', 'counted');
INSERT INTO entitlements.features (feature, min_tier, description, kind, reset_period)
     VALUES ('report_runs', 'free', 'Report runs', 'metered', 'billing_period');
SELECT entitlements.set_feature_limit('report_runs', 'pro', 1000);
INSERT INTO entitlements.stripe_price_tiers VALUES ('price_base', 'pro');
SELECT entitlements.map_stripe_price_feature('price_editor_seat', 'editor_seats', 1);
SELECT entitlements.map_stripe_price_feature('prod_analytics', 'ccp-11');
SELECT entitlements.map_stripe_price_feature('price_runs_pack', 'report_runs', 1000);
SELECT entitlements.map_stripe_feature('sso', 'ccp-13');
-- A mapping to a feature the catalog does not have, or a negative per_unit: 22023.
\set VERBOSITY sqlstate
SELECT entitlements.map_stripe_price_feature('price_x', 'no_such_feature');
SELECT entitlements.map_stripe_price_feature('price_x', 'editor_seats', -1);
\set VERBOSITY default
SELECT entitlements.register_workspace('d0000000-0000-0000-0000-000000000001');
SELECT entitlements.link_stripe_customer('d0000000-0000-0000-0000-000000000001', 'cus_catalog');
SELECT entitlements.add_webhook_secret('whsec_regress_secret');
CREATE TEMP TABLE catalog_webhook(body text);
-- The subscription: the base plan, 7 editor seats, the analytics add-on, 3 packs of runs.
INSERT INTO catalog_webhook VALUES ('{"id":"evt_catalog_1","object":"event","type":"customer.subscription.created","created":1767225600,"data":{"object":{"id":"sub_catalog","object":"subscription","customer":"cus_catalog","status":"active","cancel_at_period_end":false,"items":{"object":"list","data":[{"id":"si_base","object":"subscription_item","quantity":1,"price":{"id":"price_base","object":"price","product":"prod_base"}},{"id":"si_seats","object":"subscription_item","quantity":7,"price":{"id":"price_editor_seat","object":"price","product":"prod_seats"}},{"id":"si_analytics","object":"subscription_item","quantity":1,"price":{"id":"price_analytics_monthly","object":"price","product":"prod_analytics"}},{"id":"si_runs","object":"subscription_item","quantity":3,"price":{"id":"price_runs_pack","object":"price","product":"prod_runs"}}]}}}}');
-- Stripe's summary of the customer's active entitlements: sso, and a feature we do not map.
INSERT INTO catalog_webhook VALUES ('{"id":"evt_catalog_2","object":"event","type":"entitlements.active_entitlement_summary.updated","created":1767225601,"data":{"object":{"object":"entitlements.active_entitlement_summary","customer":"cus_catalog","livemode":false,"entitlements":{"object":"list","has_more":false,"data":[{"id":"ent_1","object":"entitlements.active_entitlement","feature":"feat_1","livemode":false,"lookup_key":"sso"},{"id":"ent_2","object":"entitlements.active_entitlement","feature":"feat_2","livemode":false,"lookup_key":"beta_dashboards"}]}}}}');
SELECT event_type, outcome
  FROM catalog_webhook, entitlements.apply_stripe_event(body, entitlements.sign_stripe_payload(body, 'whsec_regress_secret'));
SELECT outcome_detail FROM entitlements.stripe_events WHERE event_id = 'evt_catalog_2';
-- Pro through the plan, ccp-11 (portfolio) through the add-on, ccp-13 (enterprise) through the
-- entitlement; ccp-10 (portfolio) stays out of reach.
SELECT feature, enabled, tier, reason FROM entitlements.entitlement_check_all('d0000000-0000-0000-0000-000000000001')
 WHERE feature IN ('ccp-05', 'ccp-10', 'ccp-11', 'ccp-13');
-- 7 seats (no tier includes any), 1,000 runs from the plan + 3 x 1,000 from the packs.
SELECT feature, limit_value FROM entitlements.usage_all('d0000000-0000-0000-0000-000000000001')
 WHERE feature IN ('editor_seats', 'report_runs') ORDER BY feature;
-- What support staff see: each grant and why.
SELECT feature, via, stripe_id, quantity, adds_to_limit, why FROM entitlements.stripe_grants
 WHERE workspace_id = 'd0000000-0000-0000-0000-000000000001' ORDER BY feature, stripe_id;
-- An admin override beats a Stripe grant.
SELECT entitlements.set_override('d0000000-0000-0000-0000-000000000001', 'ccp-13', false);
SELECT enabled, reason FROM entitlements.entitlement_check('d0000000-0000-0000-0000-000000000001', 'ccp-13');
SELECT entitlements.clear_override('d0000000-0000-0000-0000-000000000001', 'ccp-13');
-- The customer cancels: everything above the free tier ends, and so do the seats and the packs
-- (the runs go back to what the plan itself includes).
UPDATE catalog_webhook SET body = replace(replace(replace(replace(body, 'evt_catalog_1', 'evt_catalog_3'),
                                                  'customer.subscription.created', 'customer.subscription.deleted'),
                                          '"status":"active"', '"status":"canceled"'),
                                  '"created":1767225600', '"created":1767225700')
 WHERE body LIKE '%evt_catalog_1%';
DELETE FROM catalog_webhook WHERE body LIKE '%evt_catalog_2%';
SELECT event_type, outcome
  FROM catalog_webhook, entitlements.apply_stripe_event(body, entitlements.sign_stripe_payload(body, 'whsec_regress_secret'));
SELECT feature, enabled, reason FROM entitlements.entitlement_check_all('d0000000-0000-0000-0000-000000000001')
 WHERE feature IN ('ccp-01', 'ccp-11', 'ccp-13');
SELECT feature, limit_value FROM entitlements.usage_all('d0000000-0000-0000-0000-000000000001')
 WHERE feature IN ('editor_seats', 'report_runs') ORDER BY feature;
