-- pgmaxsim functions: a row's codes under the live codebook of a codebook first stage (pure-SQL
-- variant, for servers without plpython3u; see 035_firststage.sql). Idempotent file.

-- The distinct codes of `tokens` under generation `gen` of index `index_id`'s codebook (NULL: not trained).
CREATE OR REPLACE FUNCTION maxsim._fs_assign(index_id integer, gen integer, tokens @vector@.halfvec[]) RETURNS integer[]
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim._fs_assign_sql(index_id, gen % 2, tokens) $$;
