-- pgmaxsim functions: the registry, the privilege checks and the guard of the privileged layer.
-- Idempotent file: applied by `pgmaxsim migrate` (pgmaxsim.db.sqlfiles.apply_functions) after every
-- function of the schema was dropped, so edit it in place; never add a revision to change a function.
-- '@vector@' is replaced by the (quoted) schema of the pgvector extension.
--
-- How calls cross the privilege boundary (README "Security"):
--   * Entry points (no leading underscore: search, rerank, create_index, ...) are SECURITY INVOKER:
--     they run as the caller, check the caller's rights with has_*_privilege / pg_has_role, and read
--     the source table as the caller, so its privileges and row-level security apply.
--   * What they need from maxsim's own tables (owned by the schema owner; nobody else has any right on
--     them) comes from SECURITY DEFINER functions with a leading underscore. Each of those starts with
--     `GET DIAGNOSTICS ctx = PG_CONTEXT` and hands its own context to maxsim._guard (or to
--     maxsim._guarded_index, which also reads the registry row it works on), which refuses to go on
--     unless the function's direct caller is a PL/pgSQL function of schema maxsim
--     (maxsim._called_by_maxsim): only the schema owner can create those, so the privileged layer is
--     reachable only through the entry points and their checks.
--   * Everything else runs with the caller's rights (SECURITY INVOKER), which give no access to
--     maxsim's tables: EXECUTE on it is harmless. tests/test_security.py checks that every SECURITY
--     DEFINER function of the schema carries the guard.

-- True when the function whose PG_CONTEXT is `ctx` was called directly by a PL/pgSQL function of
-- schema maxsim. The second line of PG_CONTEXT is the calling frame; a call from a SQL statement, a
-- SQL function, a DO block or another schema's function reads differently ('SQL statement "...',
-- 'SQL function "...', 'PL/pgSQL function other.f(...)'), and a statement's text (which a caller
-- controls) can only appear after such a line, never as the second line itself. Entry points
-- therefore call privileged functions by plain assignment of a simple expression (`x := maxsim._f(a, b)`,
-- no sub-SELECT in it: a non-simple expression adds a 'PL/pgSQL assignment "..."' frame and is refused).
CREATE OR REPLACE FUNCTION maxsim._called_by_maxsim(ctx text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT pg_catalog.split_part(ctx, E'\n', 2) LIKE 'PL/pgSQL function maxsim.%' $$;

-- The error of a privileged function called from outside the entry points.
CREATE OR REPLACE FUNCTION maxsim._internal(fn text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'pgmaxsim: maxsim.% is internal; use the maxsim entry points (search, rerank, upsert, ...)', fn
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- The guard of a SECURITY DEFINER function `fn`: `ctx` is that function's own PG_CONTEXT (a function
-- reading PG_CONTEXT only sees itself on top, so each guarded function reads it and passes it here).
-- Runs as its caller: called directly, with a forged `ctx`, it opens nothing.
CREATE OR REPLACE FUNCTION maxsim._guard(ctx text, fn text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT maxsim._called_by_maxsim(ctx) THEN
        PERFORM maxsim._internal(fn);
    END IF;
END
$$;

-- maxsim._guard, then the registry row of index `index_id` (STRICT: an error when there is none).
-- Runs as its caller, so it reads the registry only for a SECURITY DEFINER function of the schema.
CREATE OR REPLACE FUNCTION maxsim._guarded_index(ctx text, fn text, index_id integer) RETURNS maxsim.indexes
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
BEGIN
    PERFORM maxsim._guard(ctx, fn);
    SELECT * INTO STRICT r FROM maxsim.indexes i WHERE i.id = _guarded_index.index_id;
    RETURN r;
END
$$;

-- Whether role `who` is a pgmaxsim admin: a superuser, a member of the schema owner, or a member of
-- a role given grant_usage(..., admin => true). Information only (no guard needed).
CREATE OR REPLACE FUNCTION maxsim._is_admin(who name) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = who AND r.rolsuper)
        OR pg_catalog.pg_has_role(who, (SELECT n.nspowner FROM pg_catalog.pg_namespace n
                                         WHERE n.nspname = 'maxsim'), 'USAGE')
        OR EXISTS (SELECT 1 FROM maxsim.grants g
                    WHERE g.admin AND pg_catalog.pg_has_role(who, g.role::oid, 'USAGE'))
$$;

-- The registry row of an index by name, or a clear error. Privileged (the registry is the owner's).
CREATE OR REPLACE FUNCTION maxsim._index(name text) RETURNS maxsim.indexes
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_index');
    SELECT * INTO r FROM maxsim.indexes i WHERE i.name = _index.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" does not exist', name
            USING ERRCODE = 'undefined_object', HINT = 'see SELECT name FROM maxsim.list_indexes()';
    END IF;
    RETURN r;
END
$$;

-- The caller may search the index: SELECT on the source's key column (row-level security is
-- applied separately, by reading the source as the caller). Runs as the caller.
CREATE OR REPLACE FUNCTION maxsim._check_read(r maxsim.indexes) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    IF r.source IS NULL OR NOT pg_catalog.has_column_privilege(r.source, r.id_column, 'SELECT') THEN
        RAISE EXCEPTION 'pgmaxsim: permission denied for index "%": role % may not SELECT %', r.name,
            current_user, coalesce(r.source::text, 'its (dropped) source table')
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

-- Whether the caller may manage (create/reindex/drop, write tokens into) indexes over `source`:
-- it owns the table (is a member of its owner) or is a pgmaxsim admin. Runs as the caller.
CREATE OR REPLACE FUNCTION maxsim._may_manage(source regclass) RETURNS boolean
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._is_admin(current_user)
        OR coalesce(pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = source),
                                           'USAGE'), false)
$$;

CREATE OR REPLACE FUNCTION maxsim._check_manage(r maxsim.indexes) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT maxsim._may_manage(r.source) THEN
        RAISE EXCEPTION 'pgmaxsim: permission denied for index "%": only the owner of % (or a pgmaxsim admin) may change it',
            r.name, coalesce(r.source::text, 'its source table') USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

-- The registry row of index `name` for an entry point that reads it (search, rerank, explain, ...;
-- `manage` false) or changes it (writes, reindexing, the worker's calls; `manage` true): the caller's
-- rights checked as above. Entry points call it by one of the two names below.
CREATE OR REPLACE FUNCTION maxsim._index_checked(name text, manage boolean) RETURNS maxsim.indexes
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
BEGIN
    r := maxsim._index(name);
    IF manage THEN
        PERFORM maxsim._check_manage(r);
    ELSE
        PERFORM maxsim._check_read(r);
    END IF;
    RETURN r;
END
$$;

CREATE OR REPLACE FUNCTION maxsim._index_to_read(name text) RETURNS maxsim.indexes
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim._index_checked(name, false) $$;

CREATE OR REPLACE FUNCTION maxsim._index_to_manage(name text) RETURNS maxsim.indexes
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim._index_checked(name, true) $$;

CREATE OR REPLACE FUNCTION maxsim._check_admin(what text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT maxsim._is_admin(current_user) THEN
        RAISE EXCEPTION 'pgmaxsim: permission denied: % needs a pgmaxsim admin (maxsim.grant_usage(role, admin => true))',
            what USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

-- The ids among `ids` (text keys) that the caller can see in the index's source table: read as the
-- caller, so the table's privileges and row-level security policies apply. NULL ids = every row.
CREATE OR REPLACE FUNCTION maxsim._visible(r maxsim.indexes, ids text[]) RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    out text[];
BEGIN
    IF ids IS NULL THEN
        EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(s.%1$I::text) FROM %2$s s', r.id_column, r.source)
            INTO out;
    ELSE
        EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(s.%1$I::text) FROM %2$s s WHERE s.%1$I = ANY ($1::%3$s[])',
                                  r.id_column, r.source, r.id_type)
            INTO out USING ids;
    END IF;
    RETURN coalesce(out, '{}');
END
$$;

-- Embedding size of a few well-known models (create_index(model => ...) without dim).
CREATE OR REPLACE FUNCTION maxsim._known_model_dim(model text) RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT CASE pg_catalog.lower(model)
        WHEN 'sentence-transformers/all-minilm-l6-v2' THEN 384
        WHEN 'all-minilm-l6-v2' THEN 384
        WHEN 'minilm' THEN 384
        WHEN 'vidore/colqwen2.5-v0.2' THEN 128
        WHEN 'vidore/colqwen2-v1.0' THEN 128
        WHEN 'vidore/colpali-v1.3' THEN 128
        WHEN 'vidore/colpali-v1.2' THEN 128
        WHEN 'nomic-ai/colnomic-embed-multimodal-3b' THEN 128
        WHEN 'nomic-ai/colnomic-embed-multimodal-7b' THEN 128
        WHEN 'nvidia/llama-nemoretriever-colembed-3b-v1' THEN 3072
        WHEN 'nvidia/llama-nemoretriever-colembed-1b-v1' THEN 2048
    END
$$;

-- Defaults of the codebook first stage's options (merged under the options of a codebook index):
-- probe 8 codes among each query token's 2 nearest cells; train once the index holds 65,536 tokens,
-- on a sample of at most 500,000 of them, sizing the codebook to ~20 tokens per code (at most 2,048
-- fine centroids per cell, and past 4,096 codes no more than PLAID's rule: pgmaxsim.fs_train.sizing).
-- bench/FIRST_STAGE.md and bench/STORAGE.md have the measurements behind them.
CREATE OR REPLACE FUNCTION maxsim._fs_default_options() RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT '{"nprobe": 8, "coarse_probe": 2, "train_tokens": 65536, "tokens_per_code": 20,
             "train_sample": 500000, "max_fine": 2048}'::jsonb
$$;

-- Defaults of the per-index options (merged under the options given to create_index).
CREATE OR REPLACE FUNCTION maxsim.default_options() RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT '{"candidates": 64, "ef_search": 64, "probe": 64, "rescore": 4, "max_centroids": 16,
             "tokens_per_centroid": 64, "hnsw_m": 16, "hnsw_ef_construction": 64, "storage": "fp16",
             "pool_factor": 1}'::jsonb
$$;

CREATE OR REPLACE FUNCTION maxsim._check_options(options jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    k text;
    v jsonb;
    lim integer[];
BEGIN
    IF options IS NULL OR pg_catalog.jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'pgmaxsim: options must be a JSON object' USING ERRCODE = '22023';
    END IF;
    FOR k, v IN SELECT * FROM pg_catalog.jsonb_each(options) LOOP
        IF k = 'storage' THEN
            IF pg_catalog.jsonb_typeof(v) <> 'string' OR v #>> '{}' NOT IN ('fp16', 'int8') THEN
                RAISE EXCEPTION 'pgmaxsim: option storage must be "fp16" or "int8", got %', v
                    USING ERRCODE = '22023';
            END IF;
            CONTINUE;
        END IF;
        IF k = 'fs_count' THEN   -- 038_fs_train.sql (maxsim._fs_count): kept by the training, carried by a storage switch
            IF pg_catalog.jsonb_typeof(v) <> 'object' THEN
                RAISE EXCEPTION 'pgmaxsim: option fs_count must be a JSON object, got %', v USING ERRCODE = '22023';
            END IF;
            CONTINUE;
        END IF;
        IF k IN ('first_stage', 'pooling') THEN
            IF pg_catalog.jsonb_typeof(v) <> 'string' OR v #>> '{}' NOT IN ('codebook', 'mean', 'centroids') THEN
                RAISE EXCEPTION 'pgmaxsim: option % must be "codebook", "centroids" or "mean", got %', k, v
                    USING ERRCODE = '22023';
            END IF;
            CONTINUE;
        END IF;
        lim := CASE k
            WHEN 'candidates' THEN ARRAY[1, 1000000]
            WHEN 'ef_search' THEN ARRAY[1, 1000]
            WHEN 'probe' THEN ARRAY[1, 1000]
            WHEN 'rescore' THEN ARRAY[1, 100]
            WHEN 'max_centroids' THEN ARRAY[1, 256]
            WHEN 'tokens_per_centroid' THEN ARRAY[1, 100000]
            WHEN 'hnsw_m' THEN ARRAY[2, 100]
            WHEN 'hnsw_ef_construction' THEN ARRAY[4, 1000]
            WHEN 'pool_factor' THEN ARRAY[1, 64]
            -- first stage codebook (045_firststage.sql, pgmaxsim.codebook)
            WHEN 'nprobe' THEN ARRAY[1, 1024]
            WHEN 'coarse_probe' THEN ARRAY[1, 256]
            WHEN 'train_tokens' THEN ARRAY[1, 2000000000]
            WHEN 'tokens_per_code' THEN ARRAY[1, 1000000]
            WHEN 'train_sample' THEN ARRAY[1000, 100000000]
            WHEN 'max_fine' THEN ARRAY[1, 65536]
            WHEN 'sketch_top' THEN ARRAY[0, 10000]   -- 034_sketch.sql: rows the sketch lists put first (0: off)
            WHEN 'fs_gen' THEN ARRAY[0, 2000000000]
            WHEN 'fs_rows' THEN ARRAY[0, 2000000000]
        END;
        IF lim IS NULL THEN
            RAISE EXCEPTION 'pgmaxsim: unknown option "%"', k USING ERRCODE = '22023',
                HINT = 'known options: first_stage, storage, pool_factor, candidates, ef_search, probe, rescore, max_centroids,'
                       ' tokens_per_centroid, hnsw_m, hnsw_ef_construction, nprobe, coarse_probe, train_tokens,'
                       ' tokens_per_code, train_sample, max_fine, sketch_top';
        END IF;
        IF pg_catalog.jsonb_typeof(v) <> 'number' OR (v #>> '{}')::numeric <> pg_catalog.trunc((v #>> '{}')::numeric)
           OR (v #>> '{}')::numeric NOT BETWEEN lim[1] AND lim[2] THEN
            RAISE EXCEPTION 'pgmaxsim: option % must be an integer between % and %, got %', k, lim[1], lim[2], v
                USING ERRCODE = '22023';
        END IF;
    END LOOP;
END
$$;

-- Every registry row (names, sources and models are not secret; row counts are, see index_info).
-- An array: privileged functions are called by assignment (see maxsim._called_by_maxsim).
CREATE OR REPLACE FUNCTION maxsim._registry() RETURNS maxsim.indexes[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_registry');
    RETURN ARRAY(SELECT i FROM maxsim.indexes i ORDER BY i.id);
END
$$;

CREATE OR REPLACE FUNCTION maxsim.has_plpython() RETURNS boolean
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'plpython3u') $$;

-- The schema's revision (readable by granted roles: the version table itself is the owner's).
CREATE OR REPLACE FUNCTION maxsim.version() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT version_num::text FROM maxsim.alembic_version LIMIT 1 $$;
