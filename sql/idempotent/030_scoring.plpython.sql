-- pgmaxsim functions: MaxSim compute (plpython variant; chosen by feature detection). SECURITY INVOKER:
-- called as the schema owner from the privileged layer (060_search.sql); a caller of its own has
-- no right on the token tables they read. Idempotent file (see 010_registry.sql).

CREATE OR REPLACE FUNCTION maxsim._maxsim_py(doc bytea, query bytea) RETURNS real
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.maxsim(plpy, doc, query)
$$;

-- MaxSim, dot-product form: sum over query tokens of the max over document tokens of <q, d>.
CREATE OR REPLACE FUNCTION maxsim.maxsim(doc @vector@.halfvec[], query @vector@.halfvec[]) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._maxsim_py(pg_catalog.array_send(doc), pg_catalog.array_send(query))
$$;

CREATE OR REPLACE FUNCTION maxsim._score_py(index_id integer, query bytea, ids text[], k integer)
RETURNS TABLE (id text, score real)
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.score(plpy, index_id, query, ids, k)
$$;

-- Exact MaxSim of the rows `ids` (text keys; NULL = every row) of index `index_id`, best `k` first.
CREATE OR REPLACE FUNCTION maxsim._score(index_id integer, query @vector@.halfvec[], ids text[], k integer)
RETURNS TABLE (id text, score real)
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT s.id, s.score FROM maxsim._score_py(index_id, pg_catalog.array_send(query), ids, k) s
$$;

CREATE OR REPLACE FUNCTION maxsim._pool_py(tokens bytea, n_centroids integer) RETURNS text[]
LANGUAGE plpython3u IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.pool(plpy, tokens, n_centroids)
$$;

-- {normalised mean, centroid 1..n} of one row's tokens (pgmaxsim.pooling).
CREATE OR REPLACE FUNCTION maxsim._pool(tokens @vector@.halfvec[], n_centroids integer) RETURNS @vector@.halfvec[]
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._pool_py(pg_catalog.array_send(tokens), n_centroids)::@vector@.halfvec[]
$$;

CREATE OR REPLACE FUNCTION maxsim._rescore_py(index_id integer, query bytea, ids text[], n integer) RETURNS text[]
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.rescore(plpy, index_id, query, ids, n)
$$;

-- The best n of rows `ids` by centroid interaction (MaxSim against each row's centroids).
CREATE OR REPLACE FUNCTION maxsim._rescore(index_id integer, query @vector@.halfvec[], ids text[], n integer) RETURNS text[]
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._rescore_py(index_id, pg_catalog.array_send(query), ids, n)
$$;

CREATE OR REPLACE FUNCTION maxsim._encode_py(tokens bytea, storage text, pool_factor integer) RETURNS bytea
LANGUAGE plpython3u IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.encode(plpy, tokens, storage, pool_factor)
$$;

-- One row's tokens -> its stored bytes: pooled (pool_factor > 1, pgmaxsim.pooling.pool_tokens),
-- then in the tier's layout (pgmaxsim.kernels.quantize.encode_tokens).
CREATE OR REPLACE FUNCTION maxsim._encode(tokens @vector@.halfvec[], storage text, pool_factor integer) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._encode_py(pg_catalog.array_send(tokens), storage, pool_factor)
$$;

CREATE OR REPLACE FUNCTION maxsim._decode_py(blob bytea, dim integer, storage text) RETURNS text[]
LANGUAGE plpython3u IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.decode(plpy, blob, dim, storage)
$$;

-- Stored bytes -> the token vectors they stand for (int8 dequantized), as pgvector values.
CREATE OR REPLACE FUNCTION maxsim._decode(blob bytea, dim integer, storage text) RETURNS @vector@.halfvec[]
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._decode_py(blob, dim, storage)::@vector@.halfvec[]
$$;
