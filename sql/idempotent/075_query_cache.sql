-- pgmaxsim functions: query text from SQL (maxsim.encode_query) and its cache.
-- Idempotent file (see 010_registry.sql for the privilege layering).
-- The cache holds encodings of query texts per index and model (+ revision). Only who may manage the
-- index writes it (a cached encoding is what every reader's encode_query returns: a wrong one would
-- poison their searches); reading is by exact text, so no role can list another's queries.

CREATE OR REPLACE FUNCTION maxsim._cached_query(index_id integer, query text) RETURNS @vector@.halfvec[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_cached_query');
    RETURN (SELECT c.tokens FROM maxsim.query_cache c JOIN maxsim.indexes i ON i.id = c.index_id
             WHERE c.index_id = _cached_query.index_id AND c.model = i.model
               AND c.model_revision = coalesce(i.model_revision, '') AND c.query = _cached_query.query);
END
$$;

CREATE OR REPLACE FUNCTION maxsim._cache_query(index_id integer, query text, tokens @vector@.halfvec[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_cache_query', _cache_query.index_id);
    INSERT INTO maxsim.query_cache AS c (index_id, query, model, model_revision, tokens)
    VALUES (r.id, _cache_query.query, r.model, coalesce(r.model_revision, ''), _cache_query.tokens)
    ON CONFLICT (index_id, model, model_revision, query)
    DO UPDATE SET tokens = EXCLUDED.tokens, created_at = pg_catalog.now();
    RETURN true;
END
$$;

-- Store the encoding of a query text for index `name` (its model must have produced `tokens`).
CREATE OR REPLACE FUNCTION maxsim.cache_query(name text, query text, tokens @vector@.halfvec[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._index_to_manage(name);
    IF r.model IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" has no model, so it has no query encodings to cache', name
            USING ERRCODE = '22023';
    END IF;
    IF query IS NULL OR pg_catalog.btrim(query) = '' THEN
        RAISE EXCEPTION 'pgmaxsim: query text is empty' USING ERRCODE = '22023';
    END IF;
    PERFORM maxsim._check_tokens(r, tokens, 'query tokens');
    done := maxsim._cache_query(r.id, query, tokens);
END
$$;

CREATE OR REPLACE FUNCTION maxsim._clear_query_cache(index_id integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    n bigint;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_clear_query_cache');
    DELETE FROM maxsim.query_cache c
     WHERE _clear_query_cache.index_id IS NULL OR c.index_id = _clear_query_cache.index_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Empty the query cache of one index (its managers), or of all (admins) when name is NULL.
CREATE OR REPLACE FUNCTION maxsim.clear_query_cache(name text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    n bigint;
BEGIN
    IF name IS NULL THEN
        PERFORM maxsim._check_admin('clearing every query cache');
        n := maxsim._clear_query_cache(NULL);
    ELSE
        r := maxsim._index_to_manage(name);
        n := maxsim._clear_query_cache(r.id);
    END IF;
    RETURN n;
END
$$;

-- Ask the scorer's query encoder (privileged: reads the registry and the scorer's address).
CREATE OR REPLACE FUNCTION maxsim._encode(index_id integer, dim integer, query text,
                                          OUT tokens @vector@.halfvec[], OUT error text, OUT hint text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_encode');
    SELECT e.tokens, e.error, e.hint INTO tokens, error, hint FROM maxsim._encode_remote(index_id, dim, query) e;
END
$$;

-- The index's model encodes a query text: maxsim.query_cache -> the scorer service (`pgmaxsim
-- scorer`, which hosts the query encoder of every index that has a model; the model is never loaded
-- in a database backend). Errors name what to start or do. Needs the right to search the index.
CREATE OR REPLACE FUNCTION maxsim.encode_query(name text, query text)
RETURNS @vector@.halfvec[]
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    t @vector@.halfvec[];
    res record;
BEGIN
    r := maxsim._index_to_read(name);
    IF r.model IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" has no model (its embeddings are written by the application): encode the query in the application and pass it as halfvec[]', name
            USING ERRCODE = '22023';
    END IF;
    IF query IS NULL OR pg_catalog.btrim(query) = '' THEN
        RAISE EXCEPTION 'pgmaxsim: query text is empty' USING ERRCODE = '22023';
    END IF;
    t := maxsim._cached_query(r.id, query);
    IF t IS NOT NULL THEN
        RETURN t;
    END IF;
    res := maxsim._encode(r.id, r.dim, query);
    IF res.error IS NOT NULL THEN
        IF res.hint IS NULL THEN
            RAISE EXCEPTION 'pgmaxsim: %', res.error USING ERRCODE = '55000';
        END IF;
        RAISE EXCEPTION 'pgmaxsim: %', res.error USING ERRCODE = '55000', HINT = res.hint;
    END IF;
    RETURN res.tokens;
END
$$;
