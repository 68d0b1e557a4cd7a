-- pgmaxsim functions: the rows the residual sketch lists rank first (pure-SQL variant: none; servers
-- without plpython3u search with the codebook's GIN alone, see 034_sketch.sql). Idempotent file.

CREATE OR REPLACE FUNCTION maxsim._sk_top(index_id integer, query @vector@.halfvec[], n integer) RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT '{}'::text[] $$;

CREATE OR REPLACE FUNCTION maxsim._sk_candidates(index_id integer, query @vector@.halfvec[], n integer, cap integer) RETURNS text[]
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT NULL::text[] $$;

CREATE OR REPLACE FUNCTION maxsim._sk_merge_py(index_id integer, gen integer, only_if_due boolean, settle boolean) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT NULL::jsonb $$;
