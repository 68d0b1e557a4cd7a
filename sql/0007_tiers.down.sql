-- pgmaxsim 0007 downgrade: token tables back to revision 0006's `tokens halfvec(dim)[]` plus the
-- `tokens_packed` fp16 copy. fp16 indexes only (their bytes are exactly the halfvec values;
-- pooled rows keep their pooled tokens); an int8 index cannot be held by 0006 and stops the
-- downgrade with a clear error. Pure SQL: each little-endian half is decoded arithmetically.
-- Released file: never edit.

CREATE FUNCTION maxsim._0007_half(h integer) RETURNS real
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT (CASE WHEN (h >> 10) & 31 = 0 THEN (h & 1023) * 2.0::float8 ^ -24
                 WHEN (h >> 10) & 31 = 31 THEN CASE WHEN h & 1023 = 0 THEN 'Infinity'::float8 ELSE 'NaN'::float8 END
                 ELSE (1024 + (h & 1023)) * 2.0::float8 ^ (((h >> 10) & 31) - 25) END
            * CASE WHEN h & 32768 <> 0 THEN -1 ELSE 1 END)::real
$$;

CREATE FUNCTION maxsim._0007_halfvecs(b bytea, dim integer) RETURNS @vector@.halfvec[]
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.array_agg(s.v ORDER BY s.t) FROM (
        SELECT t.t, pg_catalog.array_agg(maxsim._0007_half(pg_catalog.get_byte(b, 2 * (t.t * dim + j.j))
                                         | (pg_catalog.get_byte(b, 2 * (t.t * dim + j.j) + 1) << 8))
                                         ORDER BY j.j)::real[]::@vector@.halfvec AS v
          FROM pg_catalog.generate_series(0, pg_catalog.length(b) / (2 * dim) - 1) AS t(t)
         CROSS JOIN pg_catalog.generate_series(0, dim - 1) AS j(j)
         GROUP BY t.t) s
$$;

DO $do$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT i.id, i.name, i.dim, i.token_table, coalesce(i.options ->> 'storage', 'fp16') AS storage
               FROM maxsim.indexes i ORDER BY i.id LOOP
        IF r.storage <> 'fp16' THEN
            RAISE EXCEPTION 'pgmaxsim: index "%" stores % tokens, which revision 0006 cannot hold', r.name, r.storage
                USING HINT = 'drop it (SELECT maxsim.drop_index(...)) before downgrading', ERRCODE = 'feature_not_supported';
        END IF;
        IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', r.token_table)) IS NULL THEN
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format(
            'ALTER TABLE maxsim.%I DROP CONSTRAINT IF EXISTS n_tokens_valid, DROP CONSTRAINT IF EXISTS tokens_valid,'
            ' ADD COLUMN tokens_packed bytea', r.token_table);
        EXECUTE pg_catalog.format(
            'ALTER TABLE maxsim.%1$I ALTER COLUMN tokens_packed TYPE bytea USING tokens,'
            ' ALTER COLUMN tokens TYPE @vector@.halfvec(%2$s)[] USING maxsim._0007_halfvecs(tokens, %2$s),'
            ' ALTER COLUMN tokens SET STORAGE EXTERNAL, ALTER COLUMN tokens_packed SET STORAGE EXTERNAL,'
            ' DROP COLUMN n_raw_tokens', r.token_table, r.dim);
        EXECUTE pg_catalog.format(
            'ALTER TABLE maxsim.%I'
            ' ADD CONSTRAINT tokens_valid CHECK (CASE WHEN pg_catalog.cardinality(tokens) = 0'
            '   OR pg_catalog.array_ndims(tokens) <> 1 THEN false ELSE pg_catalog.array_position(tokens, NULL) IS NULL END),'
            ' ADD CONSTRAINT n_tokens_valid CHECK (n_tokens = pg_catalog.cardinality(tokens)),'
            ' ADD CONSTRAINT tokens_packed_valid CHECK (pg_catalog.length(tokens_packed) = n_tokens * %s)',
            r.token_table, 2 * r.dim);
    END LOOP;
END
$do$;

UPDATE maxsim.indexes SET options = (options - 'storage' - 'pool_factor') || '{"packed": true}'::jsonb;

DROP FUNCTION maxsim._0007_halfvecs(bytea, integer);
DROP FUNCTION maxsim._0007_half(integer);
