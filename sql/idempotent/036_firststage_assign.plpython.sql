-- pgmaxsim functions: a row's codes under the live codebook of a codebook first stage (PL/Python
-- variant: NumPy, pgmaxsim.plpy.codes; see 035_firststage.sql). Idempotent file. SECURITY INVOKER:
-- called as the schema owner from maxsim._write; a caller of its own cannot read the codebook tables.

CREATE OR REPLACE FUNCTION maxsim._fs_assign_py(index_id integer, gen integer, tokens bytea) RETURNS integer[]
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import codes
return codes.assign(plpy, index_id, gen, tokens)
$$;

-- The distinct codes of `tokens` under generation `gen` of index `index_id`'s codebook (NULL: not trained).
CREATE OR REPLACE FUNCTION maxsim._fs_assign(index_id integer, gen integer, tokens @vector@.halfvec[]) RETURNS integer[]
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim._fs_assign_py(index_id, gen, pg_catalog.array_send(tokens)) $$;
