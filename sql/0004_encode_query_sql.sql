-- pgmaxsim 0004, servers WITHOUT plpython3u: maxsim.encode_query answers from the query cache only.
-- (A server without plpython3u has no way to reach the scorer service from inside a query.)
-- Released file: never edit once its revision is released (sha256 pinned in the revision).

CREATE FUNCTION maxsim.encode_query(name text, query text)
RETURNS @vector@.halfvec[]
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    t @vector@.halfvec[];
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
    RAISE EXCEPTION 'pgmaxsim: maxsim.encode_query cannot reach the scorer service from this server (no plpython3u here, e.g. the embedded default), and query % is not in the query cache of index "%"',
        pg_catalog.quote_literal(query), name
        USING ERRCODE = '55000',
              HINT = 'encode the query in the client (pgmaxsim search, pgmaxsim.Index(conn, name).search(text) or .cache_query(text)), or use PostgreSQL with plpython3u and run `pgmaxsim scorer`';
END
$$;
