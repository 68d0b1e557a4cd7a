-- pgmaxsim functions: settings an admin chooses (where backends find the scorer, limits).
-- Idempotent file (see 010_registry.sql for the privilege layering).
-- Settings live in the owner's table maxsim.settings, not in PostgreSQL settings: any role can SET a
-- custom setting in its own session, and the scorer's address decides who sees query texts and whose
-- scores a backend trusts.

CREATE OR REPLACE FUNCTION maxsim._known_setting(key text) RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT key IN ('scorer', 'scorer_timeout_ms', 'scorer_secret_file', 'scorer_user', 'max_query_tokens') $$;

CREATE OR REPLACE FUNCTION maxsim._set_setting(setting text, new_value text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_set_setting');
    IF new_value IS NULL OR pg_catalog.btrim(new_value) = '' THEN
        DELETE FROM maxsim.settings s WHERE s.key = setting;
    ELSE
        INSERT INTO maxsim.settings AS s (key, value) VALUES (setting, pg_catalog.btrim(new_value))
        ON CONFLICT ON CONSTRAINT settings_pkey DO UPDATE SET value = EXCLUDED.value, updated_at = pg_catalog.now();
    END IF;
    RETURN true;
END
$$;

-- Set (or, with NULL / '', clear) a setting: scorer (a Unix socket path or HOST:PORT),
-- scorer_timeout_ms, scorer_secret_file (TCP: a file the server's OS user reads holding the
-- scorer's shared secret), scorer_user (the OS user the scorer runs as, when neither root nor the
-- server's: backends trust a socket only from those), max_query_tokens. Admins only.
CREATE OR REPLACE FUNCTION maxsim.set_setting(key text, value text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    done boolean;
BEGIN
    PERFORM maxsim._check_admin('changing pgmaxsim settings');
    IF NOT maxsim._known_setting(key) THEN
        RAISE EXCEPTION 'pgmaxsim: unknown setting "%"', key USING ERRCODE = '22023',
            HINT = 'known settings: scorer, scorer_timeout_ms, scorer_secret_file, scorer_user, max_query_tokens';
    END IF;
    IF key IN ('scorer_timeout_ms', 'max_query_tokens') AND value IS NOT NULL AND pg_catalog.btrim(value) <> ''
       AND (value !~ '^\s*[0-9]{1,9}\s*$' OR value::integer < 1) THEN
        RAISE EXCEPTION 'pgmaxsim: setting % must be a positive integer, got %', key, pg_catalog.quote_literal(value)
            USING ERRCODE = '22023';
    END IF;
    done := maxsim._set_setting(key, value);
END
$$;

-- Where backends find the scorer service: a Unix socket path or HOST:PORT (NULL: no scorer; search
-- and rerank score in the backend, encode_query answers from the query cache only). Admins only.
CREATE OR REPLACE FUNCTION maxsim.set_scorer(address text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM maxsim.set_setting('scorer', address);
END
$$;

-- The settings in force (admins: the scorer's address is an admin's business).
CREATE OR REPLACE FUNCTION maxsim._settings() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_settings');
    RETURN coalesce((SELECT pg_catalog.jsonb_object_agg(s.key, s.value) FROM maxsim.settings s), '{}');
END
$$;

CREATE OR REPLACE FUNCTION maxsim.show_settings() RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    v jsonb;
BEGIN
    PERFORM maxsim._check_admin('reading pgmaxsim settings');
    v := maxsim._settings();
    RETURN v;
END
$$;
