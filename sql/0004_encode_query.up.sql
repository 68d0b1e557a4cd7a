-- pgmaxsim 0004: query text from SQL. maxsim.encode_query(index, text) -> halfvec[] and its query cache.
-- Installed by migrations/versions/0004_encode_query.py AFTER one of 0004_encode_query_plpython.sql /
-- 0004_encode_query_sql.sql, which define maxsim._encode_remote (how this server reaches the scorer).
-- '@vector@' is replaced by the (quoted) schema of the pgvector extension.
-- Released file: never edit once its revision is released (sha256 pinned in the revision).

-- Encodings of query texts, per index and model (+ revision). Filled by pgmaxsim clients that
-- encoded a query themselves (maxsim.cache_query; pgmaxsim.Index.cache_query), read by
-- maxsim.encode_query before it asks the scorer service. On servers without plpython3u (the
-- embedded default, many managed services) this cache is how encode_query answers at all.
CREATE TABLE maxsim.query_cache (
    index_id       integer NOT NULL REFERENCES maxsim.indexes (id) ON DELETE CASCADE,
    query          text NOT NULL,
    model          text NOT NULL,
    model_revision text NOT NULL DEFAULT '',
    tokens         @vector@.halfvec[] NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (index_id, model, model_revision, query)
);

-- The cached encoding of `query` under the index's current model, or NULL.
CREATE FUNCTION maxsim._cached_query(index_id integer, model text, model_revision text, query text)
RETURNS @vector@.halfvec[]
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT c.tokens FROM maxsim.query_cache c
     WHERE c.index_id = _cached_query.index_id AND c.model = _cached_query.model
       AND c.model_revision = coalesce(_cached_query.model_revision, '') AND c.query = _cached_query.query
$$;

-- Store the encoding of a query text for index `name` (its model must have produced `tokens`).
CREATE FUNCTION maxsim.cache_query(name text, query text, tokens @vector@.halfvec[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    r maxsim.indexes;
    n integer;
BEGIN
    r := maxsim._index(name);
    IF r.model IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" has no model, so it has no query encodings to cache', name
            USING ERRCODE = '22023';
    END IF;
    IF cache_query.query IS NULL OR pg_catalog.btrim(cache_query.query) = '' THEN
        RAISE EXCEPTION 'pgmaxsim: query text is empty' USING ERRCODE = '22023';
    END IF;
    n := pg_catalog.cardinality(cache_query.tokens);
    IF n IS NULL OR n = 0 THEN
        RAISE EXCEPTION 'pgmaxsim: query tokens are empty' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.array_position(cache_query.tokens, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'pgmaxsim: query tokens contain NULL elements' USING ERRCODE = '22004';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.unnest(cache_query.tokens) AS t(v)
                WHERE @vector@.vector_dims(t.v) <> r.dim) THEN
        RAISE EXCEPTION 'pgmaxsim: query tokens must have dim % (the dim of index "%")', r.dim, name
            USING ERRCODE = '22023';
    END IF;
    INSERT INTO maxsim.query_cache AS c (index_id, query, model, model_revision, tokens)
    VALUES (r.id, cache_query.query, r.model, coalesce(r.model_revision, ''), cache_query.tokens)
    ON CONFLICT (index_id, model, model_revision, query)
    DO UPDATE SET tokens = EXCLUDED.tokens, created_at = pg_catalog.now();
END
$$;

-- Empty the query cache of one index (or of all when name is NULL); returns the rows removed.
CREATE FUNCTION maxsim.clear_query_cache(name text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF name IS NULL THEN
        DELETE FROM maxsim.query_cache;
    ELSE
        DELETE FROM maxsim.query_cache c WHERE c.index_id = (maxsim._index(name)).id;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- The index's model encodes a query text: this backend's cache -> maxsim.query_cache -> the scorer
-- service (`pgmaxsim scorer`, which hosts the query encoder of every index that has a model; the model
-- is never loaded in a database backend). Errors name what to start or do.
CREATE FUNCTION maxsim.encode_query(name text, query text)
RETURNS @vector@.halfvec[]
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    t @vector@.halfvec[];
    res record;
BEGIN
    r := maxsim._index(name);
    IF r.model IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" has no model (its embeddings are written by the application): encode the query in the application and pass it as halfvec[]', name
            USING ERRCODE = '22023';
    END IF;
    IF query IS NULL OR pg_catalog.btrim(query) = '' THEN
        RAISE EXCEPTION 'pgmaxsim: query text is empty' USING ERRCODE = '22023';
    END IF;
    t := maxsim._cached_query(r.id, r.model, r.model_revision, query);
    IF t IS NOT NULL THEN
        RETURN t;
    END IF;
    SELECT * INTO res FROM maxsim._encode_remote(r.id, r.dim, query);
    IF res.error IS NOT NULL THEN
        IF res.hint IS NULL THEN
            RAISE EXCEPTION 'pgmaxsim: %', res.error USING ERRCODE = '55000';
        END IF;
        RAISE EXCEPTION 'pgmaxsim: %', res.error USING ERRCODE = '55000', HINT = res.hint;
    END IF;
    RETURN res.tokens;
END
$$;
