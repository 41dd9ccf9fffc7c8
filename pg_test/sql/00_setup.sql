-- The extension, as a DBA installs it.
CREATE EXTENSION IF NOT EXISTS pg_entitlements;
SELECT tier, level FROM entitlements.tiers ORDER BY level;
SELECT feature, min_tier FROM entitlements.features ORDER BY feature;
