-- pgmaxsim functions: index lifecycle (create, drop, describe, list).
-- Idempotent file (see 010_registry.sql for the privilege layering).

-- Register an index over a table the caller owns (or any table, for an admin). Runs as the
-- caller for the checks; the privileged part (_create_index) creates the token table, its
-- pooled-vector ANN and the source triggers as the schema owner.
CREATE OR REPLACE FUNCTION maxsim.create_index(
    name text, source regclass, id_column text,
    text_column text DEFAULT NULL, image_column text DEFAULT NULL,
    model text DEFAULT NULL, dim integer DEFAULT NULL, options jsonb DEFAULT '{}'
) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    v_id integer;
    done boolean;
BEGIN
    IF source IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: source table is required' USING ERRCODE = '22023';
    END IF;
    IF NOT maxsim._may_manage(source) THEN
        RAISE EXCEPTION 'pgmaxsim: permission denied: only the owner of % (or a pgmaxsim admin) may index it', source
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- No model and no dim: a text index gets the bundled default model (the worker loads it
    -- offline); an image index has no default, so say which models can embed images.
    IF model IS NULL AND dim IS NULL AND image_column IS NOT NULL THEN
        RAISE EXCEPTION 'pgmaxsim: an index with image_column needs a model: ColQwen2.5 (vidore/colqwen2.5-v0.2, nomic-ai/colnomic-embed-multimodal-3b), ColQwen2 (vidore/colqwen2-v1.0), ColPali (vidore/colpali-v1.3), ColIdefics3 (vidore/colSmol-256M), BiQwen2.5 (nomic-ai/nomic-embed-multimodal-3b) or NemoRetriever (nvidia/llama-nemoretriever-colembed-1b-v1)'
            USING ERRCODE = '22023', HINT = 'or give dim => N and write the embeddings yourself (maxsim.upsert)';
    END IF;
    IF model IS NULL AND dim IS NULL AND text_column IS NOT NULL THEN
        model := 'sentence-transformers/all-MiniLM-L6-v2';
        RAISE NOTICE 'pgmaxsim: index "%" uses the default text model %', name, model;
    END IF;
    options := maxsim._citus_options(source, options);   -- a distributed source (Citus): 085_citus.sql
    v_id := maxsim._create_index(name, source, id_column, text_column, image_column, model, dim, options);
    IF maxsim._citus_distributed(source) THEN
        done := maxsim._citus_distribute(v_id);
    END IF;
    RETURN v_id;
END
$$;

CREATE OR REPLACE FUNCTION maxsim._create_index(
    name text, source regclass, id_column text, text_column text, image_column text,
    model text, dim integer, options jsonb
) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id integer;
    v_dim integer;
    v_type oid;
    v_typmod integer;
    v_attnum smallint;
    v_type_sql text;
    v_pooling text;
    v_opts jsonb;
    v_tok text;
    v_cen text;
    v_fn text;
    v_body text;
    v_key text;
    v_changed text := '';
    v_cols text;
    col text;
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_create_index');
    IF name IS NULL OR pg_catalog.length(name) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'pgmaxsim: index name must be 1 to 200 characters' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM maxsim.indexes i WHERE i.name = _create_index.name) THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" already exists', name USING ERRCODE = 'duplicate_object';
    END IF;
    IF source IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: source table is required' USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = source AND c.relkind IN ('r', 'p')) THEN
        RAISE EXCEPTION 'pgmaxsim: source % is not a table', source USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT a.atttypid, a.atttypmod, a.attnum INTO v_type, v_typmod, v_attnum
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = source AND a.attname = id_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgmaxsim: column "%" does not exist in %', id_column, source
            USING ERRCODE = 'undefined_column';
    END IF;
    IF v_type NOT IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype, 'uuid'::regtype,
                      'text'::regtype, 'character varying'::regtype) THEN
        RAISE EXCEPTION 'pgmaxsim: id column "%" has type %; supported key types are smallint, integer, bigint, uuid, text and varchar',
            id_column, pg_catalog.format_type(v_type, v_typmod) USING ERRCODE = 'feature_not_supported';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index x
                    WHERE x.indrelid = source AND x.indisunique AND x.indnatts = 1 AND x.indkey[0] = v_attnum
                      AND x.indpred IS NULL AND x.indexprs IS NULL) THEN
        RAISE EXCEPTION 'pgmaxsim: id column "%" of % must be its primary key (or carry a unique index)',
            id_column, source USING ERRCODE = 'invalid_table_definition';
    END IF;
    FOREACH col IN ARRAY ARRAY[text_column, image_column] LOOP
        IF col IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = source AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped) THEN
            RAISE EXCEPTION 'pgmaxsim: column "%" does not exist in %', col, source USING ERRCODE = 'undefined_column';
        END IF;
    END LOOP;
    IF model IS NOT NULL AND text_column IS NULL AND image_column IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: an index with a model needs text_column or image_column' USING ERRCODE = '22023';
    END IF;
    v_dim := coalesce(dim, maxsim._known_model_dim(model));
    IF v_dim IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: dim is required%', CASE WHEN model IS NULL
            THEN ' when model is NULL (embeddings written by the application)'
            ELSE ' (the embedding size of model ' || pg_catalog.quote_literal(model) || ')' END
            USING ERRCODE = '22023';
    END IF;
    IF v_dim NOT BETWEEN 1 AND 16000 THEN
        RAISE EXCEPTION 'pgmaxsim: dim must be between 1 and 16000 (pgvector halfvec), got %', v_dim
            USING ERRCODE = '22023';
    END IF;
    PERFORM maxsim._check_options(options);
    -- The first stage (registry column `pooling`, its historical name): option first_stage, or pooling;
    -- codebook by default (bench/FIRST_STAGE.md). Indexes created before keep theirs.
    IF options ? 'first_stage' AND options ? 'pooling' AND options ->> 'first_stage' <> options ->> 'pooling' THEN
        RAISE EXCEPTION 'pgmaxsim: options first_stage (%) and pooling (%) disagree; give first_stage only',
            options ->> 'first_stage', options ->> 'pooling' USING ERRCODE = '22023';
    END IF;
    v_pooling := coalesce(options ->> 'first_stage', options ->> 'pooling', 'codebook');
    v_opts := maxsim.default_options()
              || CASE WHEN v_pooling = 'codebook' THEN maxsim._fs_default_options() ELSE '{}' END
              || (options - 'pooling' - 'first_stage');
    IF v_opts ->> 'storage' = 'int8' AND NOT maxsim.has_plpython() THEN
        RAISE EXCEPTION 'pgmaxsim: storage "int8" needs plpython3u on the server (this one scores in pure SQL, which reads fp16 only)'
            USING ERRCODE = 'feature_not_supported', HINT = 'use storage "fp16", or install plpython3u and run pgmaxsim migrate';
    END IF;
    v_type_sql := pg_catalog.format_type(v_type, v_typmod);

    INSERT INTO maxsim.indexes (name, source, id_column, id_type, text_column, image_column, model, dim,
                                pooling, options, token_table)
    VALUES (name, source, id_column, v_type::regtype, text_column, image_column, model, v_dim,
            v_pooling, v_opts, 'pending-' || pg_catalog.gen_random_uuid()::text)
    RETURNING id INTO v_id;
    v_tok := 'tok_' || v_id;
    v_cen := 'cen_' || v_id;
    UPDATE maxsim.indexes SET token_table = v_tok WHERE id = v_id;

    -- Token table: ONE copy of each row's tokens, `tokens` in the tier's byte layout
    -- (pgmaxsim.kernels.quantize: fp16 = n x dim little-endian halfs; int8 = n float32 scales
    -- then n x dim codes), out of line and uncompressed (STORAGE EXTERNAL: token noise does not
    -- compress, and fetching is a plain copy; bench/STORAGE.md). n_tokens counts the stored
    -- vectors, n_raw_tokens the vectors written before token pooling (option pool_factor).
    -- layout: where each token came from (patches / character spans; pgmaxsim.encoders.layout),
    -- written by the worker, NULL for rows written by the application.
    EXECUTE pg_catalog.format(
        'CREATE TABLE maxsim.%I ('
        '  id %s PRIMARY KEY,'
        '  tokens bytea NOT NULL,'
        '  n_tokens integer NOT NULL,'
        '  n_raw_tokens integer NOT NULL,'
        '  pooled @vector@.halfvec(%s),'
        '  model text,'
        '  model_revision text,'
        '  content_hash bytea,'
        '  version bigint NOT NULL DEFAULT pg_catalog.nextval(''maxsim.version_seq''),'
        '  updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),'
        '  layout bytea,'
        '  CONSTRAINT tokens_valid CHECK (pg_catalog.length(tokens) = n_tokens * %s),'
        '  CONSTRAINT n_tokens_valid CHECK (n_tokens >= 1 AND n_raw_tokens >= n_tokens))',
        v_tok, v_type_sql, v_dim, maxsim._token_bytes(v_opts ->> 'storage', v_dim));
    EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I ALTER COLUMN tokens SET STORAGE EXTERNAL', v_tok);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER maxsim_row BEFORE INSERT OR UPDATE OR DELETE ON maxsim.%I'
        ' FOR EACH ROW EXECUTE FUNCTION maxsim._tok_row(%L)', v_tok, v_id);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER maxsim_truncate AFTER TRUNCATE ON maxsim.%I'
        ' FOR EACH STATEMENT EXECUTE FUNCTION maxsim._tok_truncate(%L)', v_tok, v_id);

    -- Pooled-vector ANN. pgvector's HNSW indexes halfvec up to 4000 dims; above that the
    -- prefilter is a flat scan over the pooled vectors (still exact scoring after it).
    IF v_pooling = 'codebook' THEN
        PERFORM maxsim._fs_create(v_id, v_tok, v_dim);   -- 035_firststage.sql
    ELSIF v_pooling = 'mean' THEN
        IF v_dim <= 4000 THEN
            EXECUTE pg_catalog.format(
                'CREATE INDEX %I ON maxsim.%I USING hnsw (pooled @vector@.halfvec_ip_ops) WITH (m = %s, ef_construction = %s)',
                v_tok || '_pooled_hnsw', v_tok, (v_opts ->> 'hnsw_m')::integer, (v_opts ->> 'hnsw_ef_construction')::integer);
        END IF;
    ELSE
        EXECUTE pg_catalog.format(
            'CREATE TABLE maxsim.%I ('
            '  row_id %s NOT NULL REFERENCES maxsim.%I (id) ON DELETE CASCADE ON UPDATE CASCADE,'
            '  c smallint NOT NULL,'
            '  vec @vector@.halfvec(%s) NOT NULL,'
            '  PRIMARY KEY (row_id, c))',
            v_cen, v_type_sql, v_tok, v_dim);
        IF v_dim <= 4000 THEN
            EXECUTE pg_catalog.format(
                'CREATE INDEX %I ON maxsim.%I USING hnsw (vec @vector@.halfvec_ip_ops) WITH (m = %s, ef_construction = %s)',
                v_cen || '_vec_hnsw', v_cen, (v_opts ->> 'hnsw_m')::integer, (v_opts ->> 'hnsw_ef_construction')::integer);
        END IF;
    END IF;

    -- Change capture on the source table: one generated trigger function per index, with the
    -- column names baked in (static SQL, quoted with %I; the body travels as a literal).
    v_fn := 'src_' || v_id;
    v_key := pg_catalog.format('%I', id_column);
    v_cols := v_key;
    IF model IS NOT NULL THEN
        FOREACH col IN ARRAY ARRAY[text_column, image_column] LOOP
            IF col IS NOT NULL THEN
                v_changed := v_changed || pg_catalog.format(' OR NEW.%1$I IS DISTINCT FROM OLD.%1$I', col);
                v_cols := v_cols || ', ' || pg_catalog.format('%I', col);
            END IF;
        END LOOP;
    END IF;
    v_body := pg_catalog.format($b$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE maxsim.%1$I%2$s;
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') AND (TG_OP = 'DELETE' OR NEW.%3$s IS DISTINCT FROM OLD.%3$s) THEN
        DELETE FROM maxsim.%1$I WHERE id = OLD.%3$s;
    END IF;
    IF %4$L AND (TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND (NEW.%3$s IS DISTINCT FROM OLD.%3$s%5$s))) THEN
        INSERT INTO maxsim.queue (index_id, row_id) VALUES (%6$s, NEW.%3$s::text);
    END IF;
    RETURN NULL;
END
$b$, v_tok, CASE WHEN v_pooling = 'centroids' THEN pg_catalog.format(', maxsim.%I', v_cen) ELSE '' END,
      v_key, model IS NOT NULL, v_changed, v_id);
    EXECUTE pg_catalog.format(
        'CREATE FUNCTION maxsim.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER'
        ' SET search_path TO pg_catalog, pg_temp AS %L', v_fn, v_body);
    EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION maxsim.%I() FROM PUBLIC', v_fn);
    IF model IS NOT NULL THEN
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION maxsim.%I()',
            'maxsim_' || v_id || '_insert', source, v_fn);
    END IF;
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER %I AFTER UPDATE OF %s ON %s FOR EACH ROW EXECUTE FUNCTION maxsim.%I()',
        'maxsim_' || v_id || '_update', v_cols, source, v_fn);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER %I AFTER DELETE ON %s FOR EACH ROW EXECUTE FUNCTION maxsim.%I()',
        'maxsim_' || v_id || '_delete', source, v_fn);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION maxsim.%I()',
        'maxsim_' || v_id || '_truncate', source, v_fn);

    -- Backfill: every existing row goes to the queue (model-backed indexes only).
    IF model IS NOT NULL THEN
        EXECUTE pg_catalog.format('INSERT INTO maxsim.queue (index_id, row_id) SELECT %s, %s::text FROM %s',
                                  v_id, v_key, source);
    END IF;
    RETURN v_id;
END
$fn$;

-- Remove an index and everything it created (triggers on the source included).
CREATE OR REPLACE FUNCTION maxsim.drop_index(name text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._index_to_manage(name);
    done := maxsim._drop_index(r.id);
END
$$;

CREATE OR REPLACE FUNCTION maxsim._drop_index(index_id integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_drop_index');
    -- The registry row first: a worker's batch share-locks it (maxsim.batch_begin) before it touches
    -- the source and the token table, so taking it first here waits for the batch instead of
    -- deadlocking against it over the tables. NO KEY UPDATE, not UPDATE: writers of the source
    -- queue rows whose foreign key takes KEY SHARE on this row, and they must not wait for us
    -- while we wait for their lock on the source.
    SELECT * INTO STRICT r FROM maxsim.indexes i WHERE i.id = index_id FOR NO KEY UPDATE;
    -- CASCADE removes the triggers on the source table with the function.
    EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS maxsim.%I() CASCADE', 'src_' || r.id);
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I, maxsim.%I, maxsim.%I',
                              'cen_' || r.id, 'fs_coarse_' || r.id, 'fs_fine_' || r.id);
    PERFORM maxsim._sk_drop(r.id);   -- 034_sketch.sql
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I', r.token_table);
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I', 'q_' || r.id);   -- outbox on Citus (085_citus.sql)
    DELETE FROM maxsim.indexes WHERE id = r.id;  -- cascades to queue, failed, changes
    PERFORM pg_catalog.pg_notify('maxsim_changes', r.id::text);
    RETURN true;
END
$$;

-- Dropping an index also drops the shadow of its unfinished re-embedding (trigger on maxsim.indexes,
-- fired inside _drop_index as the schema owner).
CREATE OR REPLACE FUNCTION maxsim.drop_reembed_shadow() RETURNS trigger
LANGUAGE plpgsql
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    shadow integer;
    done boolean;
BEGIN
    SELECT r.shadow_id INTO shadow FROM maxsim.reembeds r WHERE r.index_id = OLD.id;
    IF shadow IS NOT NULL THEN
        DELETE FROM maxsim.reembeds WHERE index_id = OLD.id;
        -- the privileged function directly: going through maxsim.drop_index would re-enter it
        -- while its own call is in progress, which PL/pgSQL evaluates as a full statement (an
        -- extra PG_CONTEXT frame that maxsim._called_by_maxsim rightly refuses)
        done := maxsim._drop_index(shadow);
    END IF;
    RETURN OLD;
END
$$;

-- Bytes per stored token vector of a storage tier (pgmaxsim.kernels.quantize.stored_nbytes).
CREATE OR REPLACE FUNCTION maxsim._token_bytes(storage text, dim integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT CASE storage WHEN 'fp16' THEN 2 * dim WHEN 'int8' THEN dim + 4 END $$;

-- Everything an index stores, in bytes: its token table (heap, TOAST, primary key, HNSW over the
-- pooled vectors, the codes' GIN indexes) and its centroid table or codebook tables with their indexes.
CREATE OR REPLACE FUNCTION maxsim._index_bytes(r maxsim.indexes) RETURNS bigint
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT coalesce(pg_catalog.pg_total_relation_size(pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', r.token_table))), 0)
         + coalesce(pg_catalog.pg_total_relation_size(pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', 'cen_' || r.id))), 0)
         + maxsim._fs_bytes(r.id)
$$;

-- The first stage's part of _index_bytes: its own tables (the centroid table with its HNSW; the codebook,
-- sketch-list and pending tables, maxsim._fs_bytes) and its indexes on the token table (the pooled
-- vectors' HNSW; the codes' GIN and "uncoded" indexes). The pooled vector and codes inside each token row
-- are counted in _index_bytes only (a few hundred bytes of a row's heap tuple, not told apart from it).
CREATE OR REPLACE FUNCTION maxsim._first_stage_bytes(r maxsim.indexes) RETURNS bigint
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT coalesce(pg_catalog.pg_total_relation_size(pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', 'cen_' || r.id))), 0)
         + maxsim._fs_bytes(r.id)
         + coalesce((SELECT sum(pg_catalog.pg_relation_size(pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', r.token_table || x))))
                       FROM pg_catalog.unnest(ARRAY['_pooled_hnsw', '_codes_0_gin', '_codes_1_gin', '_uncoded_0', '_uncoded_1']) AS u(x)), 0)::bigint
$$;

-- Live counts of an index: rows, tokens, queued rows, bytes, the first stage's bytes (privileged: reads the
-- owner's tables).
CREATE OR REPLACE FUNCTION maxsim._counts(index_id integer) RETURNS bigint[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    n_rows bigint;
    n_tokens bigint;
    n_pending bigint;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_counts', index_id);
    EXECUTE pg_catalog.format('SELECT count(*), coalesce(sum(n_tokens), 0) FROM maxsim.%I', r.token_table)
        INTO n_rows, n_tokens;
    SELECT count(*) INTO n_pending FROM maxsim.queue q WHERE q.index_id = r.id;
    RETURN ARRAY[n_rows, n_tokens, n_pending, maxsim._index_bytes(r), maxsim._first_stage_bytes(r)];
END
$$;

-- One row describing an index: registry fields plus live counts. The counts are NULL for a role that
-- may not read every row of the source (no SELECT on it, or row-level security filtering it): they
-- would tell it about rows it cannot see.
CREATE OR REPLACE FUNCTION maxsim.index_info(name text)
RETURNS TABLE (id integer, source regclass, id_column text, id_type regtype, dim integer, model text,
               pooling text, options jsonb, token_table text, rows bigint, tokens bigint, pending bigint,
               storage text, pool_factor integer, bytes bigint, bytes_per_row bigint, first_stage_bytes bigint)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    counts bigint[];
BEGIN
    r := maxsim._index(name);
    id := r.id; source := r.source; id_column := r.id_column; id_type := r.id_type; dim := r.dim;
    model := r.model; pooling := r.pooling; options := r.options; token_table := r.token_table;
    storage := coalesce(r.options ->> 'storage', 'fp16');
    pool_factor := coalesce((r.options ->> 'pool_factor')::integer, 1);
    IF r.source IS NOT NULL AND pg_catalog.has_column_privilege(r.source, r.id_column, 'SELECT')
       AND NOT pg_catalog.row_security_active(r.source) THEN
        counts := maxsim._counts(r.id);
        rows := counts[1]; tokens := counts[2]; pending := counts[3]; bytes := counts[4];
        bytes_per_row := CASE WHEN counts[1] > 0 THEN pg_catalog.round(counts[4]::numeric / counts[1])::bigint END;
        first_stage_bytes := counts[5];
    END IF;
    RETURN NEXT;
END
$$;

-- Every registry row (names, sources, models and options are not secret; row counts are, see
-- index_info). What pgmaxsim.registry reads, so that Python clients work as any granted role.
CREATE OR REPLACE FUNCTION maxsim.list_indexes() RETURNS SETOF maxsim.indexes
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    regs maxsim.indexes[];
BEGIN
    regs := maxsim._registry();
    RETURN QUERY SELECT (g).* FROM pg_catalog.unnest(regs) AS g ORDER BY (g).id;
END
$$;
