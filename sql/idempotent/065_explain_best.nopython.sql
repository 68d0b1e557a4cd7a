-- pgmaxsim functions: each query token's best document token (nopython variant; chosen by feature
-- detection). SECURITY INVOKER, on values only (the bytes come from maxsim._explain_row). Idempotent file.

-- For each query token (0-based), the first document token of highest similarity and that similarity:
-- the terms of maxsim.maxsim over the stored (fp16) tokens, in pure SQL (decoded by maxsim._decode).
CREATE OR REPLACE FUNCTION maxsim._best_tokens(blob bytea, dim integer, storage text, n_tokens integer,
                                               query @vector@.halfvec[])
RETURNS TABLE (query_token integer, doc_token integer, score real)
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    doc @vector@.halfvec[] := maxsim._decode(blob, dim, storage);
BEGIN
    RETURN QUERY
        SELECT (q.i - 1)::integer, b.j, b.s
          FROM pg_catalog.unnest(query) WITH ORDINALITY AS q(v, i)
         CROSS JOIN LATERAL (
               SELECT (d.j - 1)::integer AS j, (-(d.v OPERATOR(@vector@.<#>) q.v))::real AS s
                 FROM pg_catalog.unnest(doc) WITH ORDINALITY AS d(v, j)
                ORDER BY d.v OPERATOR(@vector@.<#>) q.v, d.j
                LIMIT 1) b
         ORDER BY q.i;
END
$$;
