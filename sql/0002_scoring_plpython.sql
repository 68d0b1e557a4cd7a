-- pgmaxsim 0002 scoring, PL/Python + NumPy (servers with plpython3u). Same signatures as
-- 0002_scoring_sql.sql. Token arrays cross into Python in PostgreSQL's binary format
-- (array_send), never as vector text; the Python side is pgmaxsim.plpy.
-- '@vector@' is replaced by the (quoted) schema of the pgvector extension when installed.
-- Released file: never edit once its revision is released (sha256 pinned in the revision).

CREATE FUNCTION maxsim._maxsim_py(doc bytea, query bytea) RETURNS real
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.maxsim(plpy, doc, query)
$$;

-- MaxSim, dot-product form: sum over query tokens of the max over document tokens of <q, d>.
CREATE FUNCTION maxsim.maxsim(doc @vector@.halfvec[], query @vector@.halfvec[]) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._maxsim_py(pg_catalog.array_send(doc), pg_catalog.array_send(query))
$$;

CREATE FUNCTION maxsim._score_py(index_id integer, query bytea, ids text[], k integer)
RETURNS TABLE (id text, score real)
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.score(plpy, index_id, query, ids, k)
$$;

-- Exact MaxSim of the rows `ids` (text keys; NULL = every row) of index `index_id`, best `k` first.
CREATE FUNCTION maxsim._score(index_id integer, query @vector@.halfvec[], ids text[], k integer)
RETURNS TABLE (id text, score real)
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT s.id, s.score FROM maxsim._score_py(index_id, pg_catalog.array_send(query), ids, k) s
$$;

CREATE FUNCTION maxsim._pool_py(tokens bytea, n_centroids integer) RETURNS text[]
LANGUAGE plpython3u IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.pool(plpy, tokens, n_centroids)
$$;

-- {normalised mean, centroid 1..n} of one row's tokens (pgmaxsim.pooling).
CREATE FUNCTION maxsim._pool(tokens @vector@.halfvec[], n_centroids integer) RETURNS @vector@.halfvec[]
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._pool_py(pg_catalog.array_send(tokens), n_centroids)::@vector@.halfvec[]
$$;

CREATE FUNCTION maxsim._rescore_py(index_id integer, query bytea, ids text[], n integer) RETURNS text[]
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.rescore(plpy, index_id, query, ids, n)
$$;

-- The best n of rows `ids` by centroid interaction (MaxSim against each row's centroids).
CREATE FUNCTION maxsim._rescore(index_id integer, query @vector@.halfvec[], ids text[], n integer) RETURNS text[]
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._rescore_py(index_id, pg_catalog.array_send(query), ids, n)
$$;

CREATE FUNCTION maxsim._packed_py(tokens bytea) RETURNS bytea
LANGUAGE plpython3u IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import api
return api.packed(plpy, tokens)
$$;

-- Raw little-endian fp16 copy of tokens (the tokens_packed column).
CREATE FUNCTION maxsim._packed(tokens @vector@.halfvec[]) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._packed_py(pg_catalog.array_send(tokens))
$$;
