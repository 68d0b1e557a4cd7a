-- pgmaxsim functions: how this server reaches the scorer's query encoder (plpython variant).
-- maxsim._encode (075_query_cache.sql) calls it as the schema owner after the query cache missed.
-- The scorer's address is the admin's setting (maxsim.set_scorer); with none, it connects nowhere.
-- Idempotent file (see 010_registry.sql).

CREATE OR REPLACE FUNCTION maxsim._encode_remote(index_id integer, dim integer, query text,
                                                 OUT tokens @vector@.halfvec[], OUT error text, OUT hint text)
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $py$
from pgmaxsim.plpy import remote
return remote.encode_query(plpy, index_id, dim, query)
$py$;
