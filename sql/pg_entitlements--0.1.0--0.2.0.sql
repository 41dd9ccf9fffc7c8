-- pg_entitlements 0.1.0 -> 0.2.0

-- Which build of the library a backend runs: after a package upgrade a running server keeps the
-- build it loaded until restart (docs/OPERATIONS.md).
CREATE FUNCTION entitlements.library_version() RETURNS TABLE (version text, build text)
STRICT STABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'library_version_wrapper';
