-- pgmaxsim functions: writing token embeddings from SQL (maxsim.upsert / maxsim.delete).
-- Idempotent file (see 010_registry.sql for the privilege layering).
-- Python writers (the worker, pgmaxsim.Index.upsert) use pgmaxsim.storage.write_rows (binary COPY);
-- both take the same per-row lock key (maxsim._row_lock_key) so they never interleave on one row.

-- Number of centroids kept for a row of n tokens under an index's options.
CREATE OR REPLACE FUNCTION maxsim._n_centroids(options jsonb, n integer) RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT least(greatest(1, ceil(n::numeric / (options ->> 'tokens_per_centroid')::integer)::integer),
                 (options ->> 'max_centroids')::integer, n)
$$;

-- The advisory-lock key serialising writers of one row of one index (pgmaxsim.storage uses the same).
CREATE OR REPLACE FUNCTION maxsim._row_lock_key(id text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT pg_catalog.hashtext(id) $$;

-- Write one row's token embeddings (text key), encoded in the server: token pooling (option
-- pool_factor), the tier's byte layout (option storage); the pooled vector and centroids are
-- computed from what is stored (the decoded bytes), as pgmaxsim.storage.write_rows does.
CREATE OR REPLACE FUNCTION maxsim._write(index_id integer, id text, tokens @vector@.halfvec[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    n integer;
    storage text;
    blob bytea;
    stored @vector@.halfvec[];
    pooled @vector@.halfvec[];
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    IF NOT maxsim._called_by_maxsim(ctx) THEN PERFORM maxsim._internal('_write'); END IF;
    SELECT * INTO STRICT r FROM maxsim.indexes i WHERE i.id = index_id;
    IF id IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: id is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF tokens IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: tokens are NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM maxsim._check_tokens(r, tokens, 'tokens');
    storage := coalesce(r.options ->> 'storage', 'fp16');
    blob := maxsim._encode(tokens, storage, coalesce((r.options ->> 'pool_factor')::integer, 1));
    stored := CASE WHEN storage = 'fp16' AND coalesce((r.options ->> 'pool_factor')::integer, 1) = 1 THEN tokens
                   ELSE maxsim._decode(blob, r.dim, storage) END;
    n := pg_catalog.cardinality(stored);
    pooled := maxsim._pool(stored, CASE WHEN r.pooling = 'centroids' THEN maxsim._n_centroids(r.options, n) ELSE 0 END);
    PERFORM pg_catalog.pg_advisory_xact_lock(r.id, maxsim._row_lock_key(id));
    EXECUTE pg_catalog.format(
        'INSERT INTO maxsim.%I AS t (id, tokens, n_tokens, n_raw_tokens, pooled) VALUES ($1::%s, $2, $3, $4, $5)'
        ' ON CONFLICT (id) DO UPDATE SET tokens = EXCLUDED.tokens, n_tokens = EXCLUDED.n_tokens,'
        ' n_raw_tokens = EXCLUDED.n_raw_tokens, pooled = EXCLUDED.pooled, model = NULL, model_revision = NULL,'
        ' content_hash = NULL',
        r.token_table, r.id_type)
        USING id, blob, n, pg_catalog.cardinality(tokens), pooled[1];
    IF r.pooling = 'centroids' THEN
        EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE row_id = $1::%s', 'cen_' || r.id, r.id_type)
            USING id;
        EXECUTE pg_catalog.format(
            'INSERT INTO maxsim.%I (row_id, c, vec) SELECT $1::%s, (u.i - 1)::smallint, u.v'
            ' FROM pg_catalog.unnest($2) WITH ORDINALITY AS u(v, i)', 'cen_' || r.id, r.id_type)
            USING id, pooled[2:];
    END IF;
    RETURN true;
END
$$;

-- Write one row's token embeddings directly (pooled vectors computed in the server). Only the owner
-- of the index's source table (or an admin) may write into it.
CREATE OR REPLACE FUNCTION maxsim.upsert(name text, id anyelement, tokens @vector@.halfvec[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._index(name);
    PERFORM maxsim._check_manage(r);
    done := maxsim._write(r.id, id::text, tokens);
END
$$;

CREATE OR REPLACE FUNCTION maxsim._delete(index_id integer, ids text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    n bigint;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    IF NOT maxsim._called_by_maxsim(ctx) THEN PERFORM maxsim._internal('_delete'); END IF;
    SELECT * INTO STRICT r FROM maxsim.indexes i WHERE i.id = index_id;
    EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE id = ANY ($1::%s[])', r.token_table, r.id_type)
        USING ids;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Remove rows' embeddings from an index (returns how many were removed).
CREATE OR REPLACE FUNCTION maxsim.delete(name text, ids anyarray)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    keys text[];
    n bigint;
BEGIN
    r := maxsim._index(name);
    PERFORM maxsim._check_manage(r);
    keys := ARRAY(SELECT x::text FROM pg_catalog.unnest(ids) AS u(x));
    n := maxsim._delete(r.id, keys);   -- a plain assignment: see maxsim._called_by_maxsim
    RETURN n;
END
$$;
