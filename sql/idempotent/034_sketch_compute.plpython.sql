-- pgmaxsim functions: the rows the residual sketch lists rank first (PL/Python variant: NumPy,
-- pgmaxsim.plpy.sketch; see 034_sketch.sql). Idempotent file. SECURITY INVOKER: called as the schema
-- owner from maxsim._fs_candidates; a caller of its own cannot read the sketch tables.

CREATE OR REPLACE FUNCTION maxsim._sk_top_py(index_id integer, query bytea, n integer) RETURNS text[]
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import sketch
return sketch.top(plpy, index_id, query, n)
$$;

-- Up to `n` row keys (text) with the best sketch scores for `query` under the live codebook of
-- index `index_id` (empty when the index has no lists yet).
CREATE OR REPLACE FUNCTION maxsim._sk_top(index_id integer, query @vector@.halfvec[], n integer) RETURNS text[]
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim._sk_top_py(index_id, pg_catalog.array_send(query), n) $$;

CREATE OR REPLACE FUNCTION maxsim._sk_candidates_py(index_id integer, query bytea, n integer, cap integer) RETURNS text[]
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import sketch
return sketch.candidates(plpy, index_id, query, n, cap)
$$;

-- The first stage of a codebook index on this server (it has no GIN over the codes): the `n` best
-- rows by sketch score (the XTR-WARP estimate over the probed codes) plus the coded rows not merged
-- into the lists yet (all up to `cap`, else their `n` best by the codebook's probe score); without
-- lists, the `n` best coded rows by the probe score; NULL only without a live codebook.
CREATE OR REPLACE FUNCTION maxsim._sk_candidates(index_id integer, query @vector@.halfvec[], n integer, cap integer) RETURNS text[]
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim._sk_candidates_py(index_id, pg_catalog.array_send(query), n, cap) $$;

CREATE OR REPLACE FUNCTION maxsim._sk_merge_py(index_id integer, gen integer, only_if_due boolean, settle boolean) RETURNS jsonb
LANGUAGE plpython3u VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
import json
from pgmaxsim.plpy import sketch_merge
return json.dumps(sketch_merge.merge(plpy, index_id, gen, only_if_due, settle))
$$;
