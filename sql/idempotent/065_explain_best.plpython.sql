-- pgmaxsim functions: each query token's best document token (plpython variant; chosen by feature
-- detection). SECURITY INVOKER, on values only (the bytes come from maxsim._explain_row). Idempotent file.

CREATE OR REPLACE FUNCTION maxsim._best_tokens_py(blob bytea, dim integer, storage text, n_tokens integer,
                                                  query bytea)
RETURNS TABLE (query_token integer, doc_token integer, score real)
LANGUAGE plpython3u IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import explaining
return explaining.best_tokens(plpy, blob, dim, storage, n_tokens, query)
$$;

-- For each query token (0-based), the first document token of highest similarity and that similarity:
-- the terms of maxsim.maxsim over the stored tokens (scored as stored, like PL/Python's search).
CREATE OR REPLACE FUNCTION maxsim._best_tokens(blob bytea, dim integer, storage text, n_tokens integer,
                                               query @vector@.halfvec[])
RETURNS TABLE (query_token integer, doc_token integer, score real)
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT b.query_token, b.doc_token, b.score
      FROM maxsim._best_tokens_py(blob, dim, storage, n_tokens, pg_catalog.array_send(query)) b
$$;
