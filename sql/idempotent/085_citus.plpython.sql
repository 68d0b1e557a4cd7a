-- pgmaxsim functions on Citus: the per-row exact MaxSim a shard computes next to its tokens
-- (plpython variant; see 085_citus.sql). Idempotent file (see 010_registry.sql).

CREATE OR REPLACE FUNCTION maxsim._citus_score_py(tokens bytea, n_tokens integer, query bytea, dim integer, storage text)
RETURNS real
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim import citus
return citus.score_stored(plpy, tokens, n_tokens, query, dim, storage)
$$;

-- MaxSim of one stored row (bytes in tier `storage`) against a query, scored as pgmaxsim.plpy
-- scores it on one node (the same NumPy kernel, so the same float32 score).
CREATE OR REPLACE FUNCTION maxsim._citus_score(tokens bytea, n_tokens integer, query @vector@.halfvec[], dim integer,
                                               storage text) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim._citus_score_py(tokens, n_tokens, pg_catalog.array_send(query), dim, storage) $$;
