-- pg_entitlements catalog: the types and tables every function stands on.
-- Runs first (bootstrap). Functions, triggers, policies and views come in sql/api.sql.

CREATE TYPE entitlements.check_result AS (
    feature text,
    enabled boolean,
    tier text,
    reason text,
    cached boolean,
    resolved_at timestamptz,
    cache_ttl_remaining integer,
    -- What a paywall offers: the tier that lifts the denial (NULL when allowed or when no
    -- tier would). Last, so a database updated with ADD ATTRIBUTE has the same type.
    required_tier text
);

-- What consume, refund and usage answer (limit_value and remaining NULL when unlimited;
-- the period NULL for a limit that never resets).
CREATE TYPE entitlements.usage_result AS (
    feature text,
    allowed boolean,
    reason text,
    used bigint,
    limit_value bigint,
    remaining bigint,
    period_start timestamptz,
    period_end timestamptz
);

-- level orders the tiers. Its uniqueness is checked at commit (DEFERRABLE INITIALLY DEFERRED), so
-- one transaction can shift the levels above a point and insert a tier between two.
CREATE TABLE entitlements.tiers (
    tier text PRIMARY KEY,
    level integer NOT NULL UNIQUE DEFERRABLE INITIALLY DEFERRED,
    description text
);

CREATE TABLE entitlements.features (
    feature text PRIMARY KEY,
    min_tier text NOT NULL REFERENCES entitlements.tiers ON UPDATE CASCADE,
    description text,
    -- boolean: on or off. metered: consumed with consume(), counted per reset period.
    -- counted: the number of rows of an app table (seats, projects).
    kind text NOT NULL DEFAULT 'boolean' CHECK (kind IN ('boolean', 'metered', 'counted')),
    -- For metered features; NULL counts as billing_period.
    reset_period text CHECK (reset_period IN ('billing_period', 'month', 'day', 'never')),
    -- false: consume past the limit is allowed (the overage shows in usage()); checks still
    -- deny once used >= limit.
    hard_limit boolean NOT NULL DEFAULT true
);

-- Registered workspaces: the rows of the entitlement matrix (a view) exist for these.
CREATE TABLE entitlements.workspaces (
    workspace_id uuid PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE entitlements.billing_state (
    workspace_id uuid PRIMARY KEY,
    tier text NOT NULL REFERENCES entitlements.tiers ON UPDATE CASCADE,
    status text NOT NULL CHECK (status IN ('trialing', 'active', 'past_due', 'canceled', 'unpaid',
                                           'incomplete', 'incomplete_expired', 'paused', 'none')),
    stripe_customer_id text UNIQUE,
    stripe_subscription_id text,
    trial_end timestamptz,
    current_period_end timestamptz,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    past_due_since timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- The subscription's current period, with current_period_end: what billing_period
    -- usage counters reset on.
    current_period_start timestamptz
);

CREATE TABLE entitlements.overrides (
    workspace_id uuid NOT NULL,
    feature text NOT NULL REFERENCES entitlements.features ON UPDATE CASCADE ON DELETE CASCADE,
    enabled boolean NOT NULL,
    reason text,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, feature)
);

CREATE TABLE entitlements.workspace_members (
    workspace_id uuid NOT NULL,
    user_id text NOT NULL,
    role text NOT NULL DEFAULT 'member',
    PRIMARY KEY (workspace_id, user_id)
);
CREATE INDEX workspace_members_user_idx ON entitlements.workspace_members (user_id);

-- The seed catalog. A restore from pg_dump brings the catalog as the admin left it (edits,
-- additions, deletions), and re-seeding would collide with it: every pg_dump script sets
-- row_security = off before it creates extensions, which ordinary sessions never do, so the
-- seed is skipped there (docs/OPERATIONS.md).
DO $seed$
BEGIN
    IF pg_catalog.current_setting('row_security') OPERATOR(pg_catalog.=) 'off' THEN
        RETURN;
    END IF;
    INSERT INTO entitlements.tiers (tier, level, description) VALUES
        ('free', 0, 'No subscription needed'),
        ('pro', 1, 'Pro plan'),
        ('pro_plus', 2, 'Pro Plus plan'),
        ('portfolio', 3, 'Portfolio plan'),
        ('enterprise', 4, 'Enterprise plan');

    INSERT INTO entitlements.features (feature, min_tier, description) VALUES
        ('ccp-01', 'free', 'Workspace dashboard'),
        ('ccp-02', 'free', 'Single project'),
        ('ccp-03', 'free', 'Community support'),
        ('ccp-04', 'pro', 'Unlimited projects'),
        ('ccp-05', 'pro', 'Data export'),
        ('ccp-06', 'pro', 'Custom domains'),
        ('ccp-07', 'pro_plus', 'Team roles'),
        ('ccp-08', 'pro_plus', 'Scheduled reports'),
        ('ccp-09', 'pro_plus', 'API access'),
        ('ccp-10', 'portfolio', 'Multiple portfolios'),
        ('ccp-11', 'portfolio', 'Cross-portfolio analytics'),
        ('ccp-12', 'portfolio', 'Priority support'),
        ('ccp-13', 'enterprise', 'Single sign-on'),
        ('ccp-14', 'enterprise', 'Audit exports');
END
$seed$;

-- pg_dump keeps user data (and the catalog as the admin edited it).
SELECT pg_catalog.pg_extension_config_dump('entitlements.tiers', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.features', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.workspaces', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.billing_state', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.overrides', '');
SELECT pg_catalog.pg_extension_config_dump('entitlements.workspace_members', '');
