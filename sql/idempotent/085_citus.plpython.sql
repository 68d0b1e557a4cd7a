-- pgmaxsim functions on Citus: the exact MaxSim a shard computes next to its tokens (plpython
-- variant; see 085_citus.sql). Idempotent file (see 010_registry.sql). SECURITY INVOKER: run on a
-- shard's node as the role the coordinator connected as (the schema owner, from maxsim._scores),
-- they read only what that role may read.

--
-- `scorer`: the coordinator's scorer settings (maxsim.settings, as JSON) when an admin configured a
-- scorer: the shard's rows are then scored by the scorer of this node (pgmaxsim scorer --dsn <this
-- node>, pgmaxsim.scorer.citus_node) where it holds them at the caller's versions, the rest here.
CREATE OR REPLACE FUNCTION maxsim._citus_shard_score(shard regclass, query bytea, ids text[], k integer, dim integer,
                                                     storage text, id_type regtype, index_name text,
                                                     scorer text DEFAULT NULL)
RETURNS TABLE (id text, score real)
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import shards
return shards.score_shard(plpy, shard, query, ids, k, dim, storage, id_type, index_name, scorer)
$$;

-- Whether a shard can be scored in one call (maxsim._citus_shard_score) on this server.
CREATE OR REPLACE FUNCTION maxsim._citus_batched() RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT true $$;

CREATE OR REPLACE FUNCTION maxsim._citus_score_py(tokens bytea, n_tokens integer, query bytea, dim integer, storage text)
RETURNS real
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import shards
return shards.score_row(plpy, tokens, n_tokens, query, dim, storage)
$$;

-- MaxSim of one stored row (bytes in tier `storage`) against a query, scored as pgmaxsim.plpy
-- scores it on one node (the same NumPy kernel, so the same float32 score). The per-row path,
-- where the shards lack tsm_system_rows (085_citus.sql).
CREATE OR REPLACE FUNCTION maxsim._citus_score(tokens bytea, n_tokens integer, query @vector@.halfvec[], dim integer,
                                               storage text) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim._citus_score_py(tokens, n_tokens, pg_catalog.array_send(query), dim, storage) $$;
