\pset footer off
\echo '== CREATE EXTENSION pg_entitlements'
CREATE EXTENSION pg_entitlements;
\echo
\echo '== A new workspace registers: every feature of the catalog gets a row in its matrix'
SELECT entitlements.register_workspace('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01');
SELECT count(*) AS matrix_rows FROM entitlements.entitlements
 WHERE workspace_id = '0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01';
\echo
\echo '== On the free tier, the pro feature ccp-05 is denied'
SELECT entitlements.sync_billing_state('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01', 'free', 'none');
SELECT feature, enabled, tier, reason FROM entitlements.entitlement_check('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01', 'ccp-05');
\echo
\echo '== The customer pays for pro: allowed at once'
SELECT entitlements.sync_billing_state('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01', 'pro', 'active');
SELECT feature, enabled, tier, reason FROM entitlements.entitlement_check('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01', 'ccp-05');
\echo
\echo '== Every feature at once'
SELECT feature, enabled, tier, reason FROM entitlements.entitlement_check_all('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01');
\echo
\echo '== Checked again: now from the shared cache'
SELECT feature, enabled, cached, cache_ttl_remaining FROM entitlements.entitlement_check('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01', 'ccp-05');
SELECT enabled, entries, hits, misses, round(hit_rate::numeric, 2) AS hit_rate FROM entitlements.cache_statistics();
\echo
\echo '== Stripe: the webhook layer hands over the raw body and the Stripe-Signature header'
SELECT entitlements.add_webhook_secret('whsec_demo_only');
INSERT INTO entitlements.stripe_price_tiers VALUES ('price_enterprise', 'enterprise');
\set body '{"id":"evt_demo_1","object":"event","type":"customer.subscription.updated","created":1767225600,"data":{"object":{"id":"sub_demo","object":"subscription","customer":"cus_demo","status":"active","cancel_at_period_end":false,"metadata":{"workspace_id":"0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01"},"items":{"object":"list","data":[{"id":"si_demo","object":"subscription_item","current_period_end":1769904000,"price":{"id":"price_enterprise","object":"price","product":"prod_demo"}}]}}}}'
SELECT * FROM entitlements.apply_stripe_event(:'body', entitlements.sign_stripe_payload(:'body', 'whsec_demo_only'));
SELECT feature, enabled, tier, reason, cached FROM entitlements.entitlement_check('0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01', 'ccp-13');
\echo
\echo '== The DBA view of billing'
SELECT workspace_id, tier, status, current_period_end, past_due_grace_ends_at FROM entitlements.billing_status_current;
\echo
\echo '== The audit trail (written by a background worker, outside the checks'' transactions)'
SELECT entitlements.flush_audit() AS still_pending_when_flushed;
SELECT checked_at::time(0), feature, result, reason, cached FROM entitlements.entitlement_checks ORDER BY id DESC LIMIT 5;
SELECT * FROM entitlements.entitlement_checks_summary;
\echo
\echo '== The README''s DBA queries'
\set ws '0b0e6c2e-5f7a-4f7e-9d55-3f4c1b2a9e01'
SELECT checked_at, feature, reason, user_id, user_agent, ip_address
  FROM entitlements.entitlement_checks
 WHERE workspace_id = :'ws' AND NOT result
   AND checked_at >= now() - interval '1 day'
 ORDER BY checked_at DESC;
SELECT count(*) AS checks,
       round(100.0 * count(*) FILTER (WHERE cached) / nullif(count(*), 0), 1) AS cache_hit_rate_pct
  FROM entitlements.entitlement_checks
 WHERE checked_at >= now() - interval '1 hour';
SELECT feature, reason, count(*) AS denials
  FROM entitlements.entitlement_checks
 WHERE NOT result AND checked_at >= now() - interval '7 days'
 GROUP BY feature, reason
 ORDER BY denials DESC, feature
 LIMIT 10;

