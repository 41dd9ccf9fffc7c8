-- Free plan: 3 projects. A counted feature: the number of rows of the app's own table, kept
-- by attach_limit's triggers. The fourth project is refused (PT402) and nothing is written.
INSERT INTO entitlements.features (feature, min_tier, description, kind)
VALUES ('projects', 'free', 'Projects', 'counted');
SELECT entitlements.set_feature_limit('projects', 'free', 3);
SELECT entitlements.set_feature_limit('projects', 'pro', NULL);   -- NULL: unlimited
CREATE TABLE regress_projects (id serial PRIMARY KEY, workspace_id uuid NOT NULL, name text);
INSERT INTO regress_projects (workspace_id, name)
VALUES ('a0000000-0000-0000-0000-000000000001', 'existing');
SELECT entitlements.attach_limit('regress_projects', 'workspace_id', 'projects');
-- the count starts from the row already there
SELECT used, limit_value, remaining FROM entitlements.usage('a0000000-0000-0000-0000-000000000001', 'projects');
INSERT INTO regress_projects (workspace_id, name)
VALUES ('a0000000-0000-0000-0000-000000000001', 'second'), ('a0000000-0000-0000-0000-000000000001', 'third');
INSERT INTO regress_projects (workspace_id, name) VALUES ('a0000000-0000-0000-0000-000000000001', 'fourth');
SELECT count(*) FROM regress_projects;
SELECT enabled, reason FROM entitlements.entitlement_check('a0000000-0000-0000-0000-000000000001', 'projects');
-- a delete frees a unit
DELETE FROM regress_projects WHERE name = 'existing';
INSERT INTO regress_projects (workspace_id, name) VALUES ('a0000000-0000-0000-0000-000000000001', 'fourth');
-- the upgrade to pro lifts the limit
SELECT entitlements.sync_billing_state('a0000000-0000-0000-0000-000000000001', 'pro', 'active');
INSERT INTO regress_projects (workspace_id, name) VALUES ('a0000000-0000-0000-0000-000000000001', 'fifth');
SELECT used, limit_value, remaining FROM entitlements.usage('a0000000-0000-0000-0000-000000000001', 'projects');
-- and the downgrade deletes nothing: new rows are refused until the count is under 3
SELECT entitlements.sync_billing_state('a0000000-0000-0000-0000-000000000001', 'free', 'active');
INSERT INTO regress_projects (workspace_id, name) VALUES ('a0000000-0000-0000-0000-000000000001', 'sixth');
SELECT count(*) FROM regress_projects;
SELECT has_entitlement FROM entitlements.has_entitlement('a0000000-0000-0000-0000-000000000001', 'projects');
