-- pgmaxsim functions on Citus: the per-row exact MaxSim a shard computes next to its tokens
-- (pure-SQL variant; see 085_citus.sql). Idempotent file (see 010_registry.sql).

CREATE OR REPLACE FUNCTION maxsim._citus_score(tokens bytea, n_tokens integer, query @vector@.halfvec[], dim integer,
                                               storage text) RETURNS real
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim.maxsim(maxsim._decode(tokens, dim, storage), query) $$;

-- Whether a shard can be scored in one call: not without PL/Python (one SQL call per row).
CREATE OR REPLACE FUNCTION maxsim._citus_batched() RETURNS boolean
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT false $$;
