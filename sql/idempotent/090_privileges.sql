-- pgmaxsim functions: the privilege model (grant_usage / revoke_usage) and the lock-down that every
-- `pgmaxsim migrate` re-applies. Idempotent file (see 010_registry.sql for the layering). Runs last.
--
-- The schema owner (whoever ran `pgmaxsim migrate`) owns every maxsim object. No other role has
-- CREATE on the schema (it could plant functions that win overload resolution in our calls) or any
-- right on its tables and sequences. A role given grant_usage gets USAGE on the schema and EXECUTE
-- on its functions: the entry points check its rights themselves (010_registry.sql).

-- (Re)grant what a recorded role gets: USAGE on the schema, EXECUTE on every function.
CREATE OR REPLACE FUNCTION maxsim._grant_to(who regrole) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA maxsim TO %s', who);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA maxsim TO %s', who);
END
$$;

CREATE OR REPLACE FUNCTION maxsim._grant(who regrole, make_admin boolean) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_grant');
    INSERT INTO maxsim.grants AS g (role, admin) VALUES (who, make_admin)
    ON CONFLICT ON CONSTRAINT grants_pkey DO UPDATE SET admin = EXCLUDED.admin, granted_at = pg_catalog.now();
    PERFORM maxsim._grant_to(who);
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION maxsim._revoke(who regrole) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_revoke');
    DELETE FROM maxsim.grants g WHERE g.role = who;
    EXECUTE pg_catalog.format('REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA maxsim FROM %s', who);
    EXECUTE pg_catalog.format('REVOKE USAGE ON SCHEMA maxsim FROM %s', who);
    RETURN true;
END
$$;

-- Let `to_role` use pgmaxsim: create, reindex and drop indexes on tables it owns, write tokens
-- into those indexes, and search / rerank an index when it may SELECT its source table (its
-- privileges and row-level security apply). admin => true: every index, and the settings
-- (where backends find the scorer). Granting needs an admin (the schema owner is one).
CREATE OR REPLACE FUNCTION maxsim.grant_usage(to_role name, admin boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    who regrole;
    done boolean;
BEGIN
    PERFORM maxsim._check_admin('grant_usage');
    who := pg_catalog.to_regrole(pg_catalog.quote_ident(to_role));
    IF who IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: role "%" does not exist', to_role USING ERRCODE = 'undefined_object';
    END IF;
    done := maxsim._grant(who, coalesce(admin, false));
END
$$;

CREATE OR REPLACE FUNCTION maxsim.revoke_usage(from_role name) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    who regrole;
    done boolean;
BEGIN
    PERFORM maxsim._check_admin('revoke_usage');
    who := pg_catalog.to_regrole(pg_catalog.quote_ident(from_role));
    IF who IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: role "%" does not exist', from_role USING ERRCODE = 'undefined_object';
    END IF;
    done := maxsim._revoke(who);
END
$$;

-- The lock-down, re-applied by every migrate (as the schema owner).
DO $$
DECLARE
    owner oid := (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'maxsim');
    foreign_objects text;
    r record;
BEGIN
    -- Objects in maxsim that its owner did not create could hijack our calls: refuse to go on.
    SELECT pg_catalog.string_agg(x.what, ', ') INTO foreign_objects FROM (
        SELECT 'function ' || p.oid::regprocedure::text AS what FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'maxsim'::regnamespace AND p.proowner <> owner
        UNION ALL
        SELECT 'relation ' || c.oid::regclass::text FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'maxsim'::regnamespace AND c.relowner <> owner
        UNION ALL
        SELECT 'operator ' || o.oid::regoperator::text FROM pg_catalog.pg_operator o
         WHERE o.oprnamespace = 'maxsim'::regnamespace AND o.oprowner <> owner
        UNION ALL
        SELECT 'type ' || t.oid::regtype::text FROM pg_catalog.pg_type t
         WHERE t.typnamespace = 'maxsim'::regnamespace AND t.typowner <> owner AND t.typrelid = 0) x;
    IF foreign_objects IS NOT NULL THEN
        RAISE EXCEPTION 'pgmaxsim: schema maxsim holds objects its owner did not create: %', foreign_objects
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'another role could create objects in maxsim; review and drop them, then migrate again';
    END IF;
    -- Nobody but the owner creates in the schema or touches its tables and sequences.
    FOR r IN SELECT DISTINCT a.grantee FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
              WHERE n.nspname = 'maxsim' AND a.grantee <> owner LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON SCHEMA maxsim FROM %s',
                                  CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE r.grantee::regrole::text END);
    END LOOP;
    FOR r IN SELECT c.oid::regclass AS rel, c.relkind, a.grantee
               FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
              WHERE c.relnamespace = 'maxsim'::regnamespace AND a.grantee <> owner LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s %s FROM %s', CASE WHEN r.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
                                  r.rel, CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE r.grantee::regrole::text END);
    END LOOP;
    REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA maxsim FROM PUBLIC;
    -- Roles given grant_usage get the functions as they are now.
    FOR r IN SELECT g.role FROM maxsim.grants g WHERE g.role::oid IN (SELECT oid FROM pg_catalog.pg_roles) LOOP
        PERFORM maxsim._grant_to(r.role);
    END LOOP;
END
$$;
