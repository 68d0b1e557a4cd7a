-- pgmaxsim 0007: one stored copy of each row's tokens, in the index's storage tier.
-- Token tables: `tokens halfvec(dim)[]` + `tokens_packed bytea` become ONE `tokens bytea` column in
-- the tier's byte layout (pgmaxsim.scoring.quantize: fp16 = n x dim little-endian halfs; int8 = n
-- float32 LE scales then n x dim int8 codes), STORAGE EXTERNAL (bench/STORAGE.md: 3.5-5x cheaper
-- to COPY than halfvec[], ~9x cheaper to fetch, nothing to gain from compression). n_tokens is the
-- stored count, n_raw_tokens the count before token pooling (option pool_factor).
-- Registry options gain storage ('fp16' | 'int8') and pool_factor (1 = no pooling); packed goes.
-- Every existing index is fp16 without pooling: its rows are converted in place (one table
-- rewrite each, which also drops the bytes of the removed columns). Pure SQL (no plpython3u
-- needed): halfvec_send gives big-endian halfs, swapped to little-endian through their hex text.
-- Released file: never edit (sha256 pinned in its revision).

CREATE FUNCTION maxsim._0007_fp16(t @vector@.halfvec[]) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.decode(pg_catalog.regexp_replace(pg_catalog.encode(
               pg_catalog.string_agg(pg_catalog.substr(@vector@.halfvec_send(u.v), 5), ''::bytea ORDER BY u.i),
               'hex'), '(..)(..)', '\2\1', 'g'), 'hex')
      FROM pg_catalog.unnest(t) WITH ORDINALITY AS u(v, i)
$$;

DO $do$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT i.id, i.dim, i.token_table FROM maxsim.indexes i ORDER BY i.id LOOP
        IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', r.token_table)) IS NULL THEN
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format(
            'ALTER TABLE maxsim.%I DROP CONSTRAINT IF EXISTS n_tokens_valid,'
            ' DROP CONSTRAINT IF EXISTS tokens_packed_valid, DROP CONSTRAINT IF EXISTS tokens_valid,'
            ' DROP COLUMN tokens_packed, ADD COLUMN n_raw_tokens integer', r.token_table);
        -- one rewrite: converted tokens, n_raw_tokens filled, the dropped column's bytes gone
        EXECUTE pg_catalog.format(
            'ALTER TABLE maxsim.%I ALTER COLUMN tokens TYPE bytea USING maxsim._0007_fp16(tokens),'
            ' ALTER COLUMN tokens SET STORAGE EXTERNAL,'
            ' ALTER COLUMN n_raw_tokens TYPE integer USING n_tokens', r.token_table);
        EXECUTE pg_catalog.format(
            'ALTER TABLE maxsim.%I ALTER COLUMN n_raw_tokens SET NOT NULL,'
            ' ADD CONSTRAINT tokens_valid CHECK (pg_catalog.length(tokens) = n_tokens * %s),'
            ' ADD CONSTRAINT n_tokens_valid CHECK (n_tokens >= 1 AND n_raw_tokens >= n_tokens)',
            r.token_table, 2 * r.dim);
    END LOOP;
END
$do$;

UPDATE maxsim.indexes SET options = (options - 'packed') || '{"storage": "fp16", "pool_factor": 1}'::jsonb;

DROP FUNCTION maxsim._0007_fp16(@vector@.halfvec[]);
