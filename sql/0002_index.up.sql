-- pgmaxsim 0002: indexes (token tables, pooled-vector ANN, change capture) and the public SQL surface.
-- Installed by migrations/versions/0002_index.py AFTER one of 0002_scoring_plpython.sql /
-- 0002_scoring_sql.sql (the wrappers below call the maxsim._search/_rerank/_upsert they define).
-- '@vector@' is replaced by the (quoted) schema of the pgvector extension when installed.
-- Released file: never edit once its revision is released (sha256 pinned in the revision).

-- Change log read by the scorer service to stay in step with the token tables.
-- One row per written or deleted token row; row_id NULL + deleted = the whole index was emptied.
CREATE TABLE maxsim.changes (
    seq      bigserial PRIMARY KEY,
    index_id integer NOT NULL REFERENCES maxsim.indexes (id) ON DELETE CASCADE,
    row_id   text,
    version  bigint,
    deleted  boolean NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX changes_index_seq_idx ON maxsim.changes (index_id, seq);

-- Prune the change log up to (and including) seq `upto`, or everything older than `older_than`.
CREATE FUNCTION maxsim.prune_changes(upto bigint DEFAULT NULL, older_than interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF upto IS NULL AND older_than IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: prune_changes needs upto or older_than' USING ERRCODE = '22023';
    END IF;
    DELETE FROM maxsim.changes c
     WHERE (upto IS NULL OR c.seq <= upto)
       AND (older_than IS NULL OR c.at < pg_catalog.now() - older_than);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- BEFORE ROW trigger of every token table: a new version per write, and the change log.
-- TG_ARGV[0] = the index id.
CREATE FUNCTION maxsim._tok_row() RETURNS trigger
LANGUAGE plpgsql
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    v_index integer := TG_ARGV[0]::integer;
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO maxsim.changes (index_id, row_id, version, deleted)
        VALUES (v_index, OLD.id::text, OLD.version, true);
        PERFORM pg_catalog.pg_notify('maxsim_changes', v_index::text);
        RETURN OLD;
    END IF;
    NEW.version := pg_catalog.nextval('maxsim.version_seq');
    NEW.updated_at := pg_catalog.now();
    -- tokens_packed mirrors tokens: tokens changed without it means the copy is stale
    IF TG_OP = 'UPDATE' AND NEW.tokens_packed IS NOT NULL
       AND NEW.tokens_packed IS NOT DISTINCT FROM OLD.tokens_packed AND NEW.tokens IS DISTINCT FROM OLD.tokens THEN
        NEW.tokens_packed := NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id THEN
        INSERT INTO maxsim.changes (index_id, row_id, version, deleted)
        VALUES (v_index, OLD.id::text, OLD.version, true);
    END IF;
    INSERT INTO maxsim.changes (index_id, row_id, version, deleted)
    VALUES (v_index, NEW.id::text, NEW.version, false);
    PERFORM pg_catalog.pg_notify('maxsim_changes', v_index::text);
    RETURN NEW;
END
$$;

-- AFTER TRUNCATE trigger of every token table.
CREATE FUNCTION maxsim._tok_truncate() RETURNS trigger
LANGUAGE plpgsql
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    v_index integer := TG_ARGV[0]::integer;
BEGIN
    INSERT INTO maxsim.changes (index_id, row_id, version, deleted) VALUES (v_index, NULL, NULL, true);
    PERFORM pg_catalog.pg_notify('maxsim_changes', v_index::text);
    RETURN NULL;
END
$$;

-- The registry row of an index by name, or a clear error.
CREATE FUNCTION maxsim._index(name text) RETURNS maxsim.indexes
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
BEGIN
    SELECT * INTO r FROM maxsim.indexes i WHERE i.name = _index.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" does not exist', name
            USING ERRCODE = 'undefined_object', HINT = 'see SELECT name FROM maxsim.indexes';
    END IF;
    RETURN r;
END
$$;

-- Embedding size of a few well-known models (create_index(model => ...) without dim).
CREATE FUNCTION maxsim._known_model_dim(model text) RETURNS integer
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

-- Defaults of the per-index options (merged under the options given to create_index).
CREATE FUNCTION maxsim.default_options() RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT '{"candidates": 64, "ef_search": 64, "probe": 64, "rescore": 4, "max_centroids": 16,
             "tokens_per_centroid": 64, "hnsw_m": 16, "hnsw_ef_construction": 64, "packed": true}'::jsonb
$$;

CREATE FUNCTION maxsim._check_options(options jsonb) RETURNS void
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
        IF k = 'packed' THEN
            IF pg_catalog.jsonb_typeof(v) <> 'boolean' THEN
                RAISE EXCEPTION 'pgmaxsim: option packed must be true or false, got %', v USING ERRCODE = '22023';
            END IF;
            CONTINUE;
        END IF;
        IF k = 'pooling' THEN
            IF pg_catalog.jsonb_typeof(v) <> 'string' OR v #>> '{}' NOT IN ('mean', 'centroids') THEN
                RAISE EXCEPTION 'pgmaxsim: option pooling must be "mean" or "centroids", got %', v
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
        END;
        IF lim IS NULL THEN
            RAISE EXCEPTION 'pgmaxsim: unknown option "%"', k USING ERRCODE = '22023',
                HINT = 'known options: pooling, packed, candidates, ef_search, probe, rescore, max_centroids,'
                       ' tokens_per_centroid, hnsw_m, hnsw_ef_construction';
        END IF;
        IF pg_catalog.jsonb_typeof(v) <> 'number' OR (v #>> '{}')::numeric <> pg_catalog.trunc((v #>> '{}')::numeric)
           OR (v #>> '{}')::numeric NOT BETWEEN lim[1] AND lim[2] THEN
            RAISE EXCEPTION 'pgmaxsim: option % must be an integer between % and %, got %', k, lim[1], lim[2], v
                USING ERRCODE = '22023';
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION maxsim.create_index(
    name text, source regclass, id_column text,
    text_column text DEFAULT NULL, image_column text DEFAULT NULL,
    model text DEFAULT NULL, dim integer DEFAULT NULL, options jsonb DEFAULT '{}'
) RETURNS integer
LANGUAGE plpgsql VOLATILE
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
BEGIN
    IF name IS NULL OR pg_catalog.length(name) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION 'pgmaxsim: index name must be 1 to 200 characters' USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM maxsim.indexes i WHERE i.name = create_index.name) THEN
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
    v_pooling := coalesce(options ->> 'pooling', 'centroids');
    v_opts := maxsim.default_options() || (options - 'pooling');
    v_type_sql := pg_catalog.format_type(v_type, v_typmod);

    INSERT INTO maxsim.indexes (name, source, id_column, id_type, text_column, image_column, model, dim,
                                pooling, options, token_table)
    VALUES (name, source, id_column, v_type::regtype, text_column, image_column, model, v_dim,
            v_pooling, v_opts, 'pending-' || pg_catalog.gen_random_uuid()::text)
    RETURNING id INTO v_id;
    v_tok := 'tok_' || v_id;
    v_cen := 'cen_' || v_id;
    UPDATE maxsim.indexes SET token_table = v_tok WHERE id = v_id;

    -- Token table. tokens are stored out of line uncompressed (fp16 noise does not compress,
    -- and EXTERNAL storage makes fetching them a plain copy). tokens_packed, when not NULL,
    -- holds the same values as raw little-endian fp16 (n_tokens x dim): scoring reads it with
    -- one copy instead of array_send's per-element conversion (option packed, default true).
    EXECUTE pg_catalog.format(
        'CREATE TABLE maxsim.%I ('
        '  id %s PRIMARY KEY,'
        '  tokens @vector@.halfvec(%s)[] NOT NULL CONSTRAINT tokens_valid CHECK (CASE WHEN'
        '    pg_catalog.cardinality(tokens) = 0 OR pg_catalog.array_ndims(tokens) <> 1 THEN false'
        '    ELSE pg_catalog.array_position(tokens, NULL) IS NULL END),'
        '  n_tokens integer NOT NULL,'
        '  tokens_packed bytea,'
        '  pooled @vector@.halfvec(%s),'
        '  model text,'
        '  model_revision text,'
        '  content_hash bytea,'
        '  version bigint NOT NULL DEFAULT pg_catalog.nextval(''maxsim.version_seq''),'
        '  updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),'
        '  CONSTRAINT n_tokens_valid CHECK (n_tokens = pg_catalog.cardinality(tokens)),'
        '  CONSTRAINT tokens_packed_valid CHECK (pg_catalog.length(tokens_packed) = n_tokens * %s))',
        v_tok, v_type_sql, v_dim, v_dim, 2 * v_dim);
    EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I ALTER COLUMN tokens SET STORAGE EXTERNAL,'
                              ' ALTER COLUMN tokens_packed SET STORAGE EXTERNAL', v_tok);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER maxsim_row BEFORE INSERT OR UPDATE OR DELETE ON maxsim.%I'
        ' FOR EACH ROW EXECUTE FUNCTION maxsim._tok_row(%L)', v_tok, v_id);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER maxsim_truncate AFTER TRUNCATE ON maxsim.%I'
        ' FOR EACH STATEMENT EXECUTE FUNCTION maxsim._tok_truncate(%L)', v_tok, v_id);

    -- Pooled-vector ANN. pgvector's HNSW indexes halfvec up to 4000 dims; above that the
    -- prefilter is a flat scan over the pooled vectors (still exact scoring after it).
    IF v_pooling = 'mean' THEN
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

CREATE FUNCTION maxsim.drop_index(name text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
BEGIN
    r := maxsim._index(name);
    -- CASCADE removes the triggers on the source table with the function.
    EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS maxsim.%I() CASCADE', 'src_' || r.id);
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I', 'cen_' || r.id);
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I', r.token_table);
    DELETE FROM maxsim.indexes WHERE id = r.id;  -- cascades to queue, failed, changes
    PERFORM pg_catalog.pg_notify('maxsim_changes', r.id::text);
END
$$;

-- One row describing an index: registry fields plus live counts.
CREATE FUNCTION maxsim.index_info(name text)
RETURNS TABLE (id integer, source regclass, id_column text, id_type regtype, dim integer, model text,
               pooling text, options jsonb, token_table text, rows bigint, tokens bigint, pending bigint)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
BEGIN
    r := maxsim._index(name);
    id := r.id; source := r.source; id_column := r.id_column; id_type := r.id_type; dim := r.dim;
    model := r.model; pooling := r.pooling; options := r.options; token_table := r.token_table;
    EXECUTE pg_catalog.format('SELECT count(*), coalesce(sum(n_tokens), 0) FROM maxsim.%I', r.token_table)
        INTO rows, tokens;
    SELECT count(*) INTO pending FROM maxsim.queue q WHERE q.index_id = r.id;
    RETURN NEXT;
END
$$;

-- ---------------------------------------------------------------- public scoring surface
-- Each scoring file (PL/Python + NumPy, or pure SQL on servers without plpython3u) defines:
--   maxsim.maxsim(doc halfvec[], query halfvec[]) -> real
--   maxsim._score(index_id integer, query halfvec[], ids text[], k integer) -> TABLE(id text, score real)
--       exact MaxSim of the rows ids (NULL = every row of the index), best k (NULL = all)
--   maxsim._pool(tokens halfvec[], n_centroids integer) -> halfvec[]
--       {normalised mean, centroid 1, ..., centroid n} of one row's tokens
--   maxsim._packed(tokens halfvec[]) -> bytea
--       the tokens as raw little-endian fp16 (NULL where that cannot be computed cheaply)
--   maxsim._rescore(index_id integer, query halfvec[], ids text[], n integer) -> text[]
--       the best n of rows ids by centroid interaction: sum over query tokens of the max
--       similarity to the row's centroids (a cheap MaxSim estimate, centroids pooling)

-- Validate a query against an index (and k); raises a clear error.
CREATE FUNCTION maxsim._check_query(r maxsim.indexes, query @vector@.halfvec[], k integer) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    bad integer;
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: query is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF pg_catalog.cardinality(query) = 0 THEN
        RAISE EXCEPTION 'pgmaxsim: query is empty (it needs at least one token vector)' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.array_ndims(query) <> 1 THEN
        RAISE EXCEPTION 'pgmaxsim: query must be a one-dimensional array of token vectors, got % dimensions',
            pg_catalog.array_ndims(query) USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.array_position(query, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'pgmaxsim: query contains NULL token vectors' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT @vector@.vector_dims(q) INTO bad FROM pg_catalog.unnest(query) AS u(q)
     WHERE @vector@.vector_dims(q) <> r.dim LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgmaxsim: query vectors have % dimensions, index "%" has %', bad, r.name, r.dim
            USING ERRCODE = 'data_exception';
    END IF;
    IF k IS NOT NULL AND k <= 0 THEN
        RAISE EXCEPTION 'pgmaxsim: k must be positive, got %', k USING ERRCODE = '22023';
    END IF;
END
$$;

-- Candidate row ids (as text) for a query from the pooled-vector ANN, or NULL when the
-- candidate budget n covers the whole index (exact search). mean: the n rows whose mean
-- vector is nearest the query's. centroids: n * rescore rows from the per-token centroid
-- probes (maxsim._rescore then keeps the best n of them by centroid interaction).
CREATE FUNCTION maxsim._candidates(r maxsim.indexes, query @vector@.halfvec[], n integer) RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    present bigint;
    probe integer := (r.options ->> 'probe')::integer;
    wide integer := least(n::bigint * (r.options ->> 'rescore')::integer, 100000000);
    ef integer := (r.options ->> 'ef_search')::integer;
    old_ef text := pg_catalog.current_setting('hnsw.ef_search', true);
    qmean @vector@.halfvec;
    result text[];
BEGIN
    -- A budget >= the row count means exact search: count at most n + 1 rows to know.
    EXECUTE pg_catalog.format('SELECT count(*) FROM (SELECT 1 FROM maxsim.%I LIMIT $1) s', r.token_table)
        INTO present USING n::bigint + 1;
    IF present <= n THEN
        RETURN NULL;
    END IF;
    IF r.pooling = 'mean' THEN
        SELECT @vector@.l2_normalize(@vector@.avg(q::@vector@.vector))::@vector@.halfvec INTO qmean
          FROM pg_catalog.unnest(query) AS u(q);
        IF n <= 1000 THEN
            PERFORM pg_catalog.set_config('hnsw.ef_search', greatest(ef, n)::text, true);
            EXECUTE pg_catalog.format(
                'SELECT array_agg(s.id::text) FROM (SELECT t.id FROM maxsim.%I t'
                ' ORDER BY t.pooled OPERATOR(@vector@.<#>) $1 LIMIT $2) s', r.token_table)
                INTO result USING qmean, n;
        ELSE
            -- beyond HNSW's ef_search ceiling: a flat scan over the pooled vectors
            EXECUTE pg_catalog.format(
                'SELECT array_agg(s.id::text) FROM (SELECT t.id FROM maxsim.%I t'
                ' ORDER BY (t.pooled OPERATOR(@vector@.<#>) $1) + 0 LIMIT $2) s', r.token_table)
                INTO result USING qmean, n;
        END IF;
    ELSE
        -- centroids: every query token fetches its `probe` nearest row centroids (more when
        -- the budget is large); a row's proxy score sums, over query tokens, its best centroid
        -- similarity, imputing the probe's smallest similarity where the row was not reached.
        probe := least(1000, greatest(probe, wide / 4));
        PERFORM pg_catalog.set_config('hnsw.ef_search', greatest(ef, probe)::text, true);
        EXECUTE pg_catalog.format($q$
            WITH q AS (SELECT u.v, u.i FROM pg_catalog.unnest($1) WITH ORDINALITY AS u(v, i)),
            hits AS (SELECT q.i, h.row_id, h.sim FROM q CROSS JOIN LATERAL (
                         SELECT c.row_id, -(c.vec OPERATOR(@vector@.<#>) q.v) AS sim FROM maxsim.%I c
                          ORDER BY c.vec OPERATOR(@vector@.<#>) q.v LIMIT $2) h),
            fl AS (SELECT hits.i, min(hits.sim) AS f FROM hits GROUP BY hits.i),
            best AS (SELECT hits.i, hits.row_id, max(hits.sim) - min(fl.f) AS gain
                       FROM hits JOIN fl ON fl.i = hits.i GROUP BY hits.i, hits.row_id)
            SELECT array_agg(s.row_id::text) FROM (
                SELECT best.row_id FROM best GROUP BY best.row_id ORDER BY sum(best.gain) DESC, best.row_id LIMIT $3) s
            $q$, 'cen_' || r.id)
            INTO result USING query, probe, wide;
    END IF;
    PERFORM pg_catalog.set_config('hnsw.ef_search', coalesce(old_ef, '40'), true);
    RETURN coalesce(result, '{}');
END
$$;

-- Top-k rows by MaxSim. id is the source key as text (lossless for integer, bigint, uuid and
-- text keys); join back with a cast to the key's type so the source's primary key index is used:
--   SELECT d.*, s.score FROM maxsim.search('docs', q, 10) s JOIN docs d ON d.id = s.id::bigint
-- candidates: rows passed from the ANN prefilter to exact scoring (NULL = the index's default;
-- a value >= the row count means exact search over every row).
CREATE FUNCTION maxsim.search(name text, query @vector@.halfvec[], k integer DEFAULT 10,
                              candidates integer DEFAULT NULL)
RETURNS TABLE (id text, score real)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    n integer;
    cand text[];
    t0 timestamptz;
    timing boolean;
BEGIN
    r := maxsim._index(name);
    IF k IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: k is NULL (it must be a positive integer)' USING ERRCODE = '22023';
    END IF;
    PERFORM maxsim._check_query(r, query, k);
    n := coalesce(candidates, (r.options ->> 'candidates')::integer);
    IF n <= 0 THEN
        RAISE EXCEPTION 'pgmaxsim: candidates must be positive, got %', n USING ERRCODE = '22023';
    END IF;
    n := greatest(n, k);
    timing := pg_catalog.current_setting('pgmaxsim.timing', true) IN ('on', 'true', '1');
    t0 := pg_catalog.clock_timestamp();
    cand := maxsim._candidates(r, query, n);
    IF timing THEN
        RAISE NOTICE 'pgmaxsim: candidates % (% ms, pooling %)',
            coalesce(pg_catalog.cardinality(cand)::text, 'all rows'),
            pg_catalog.round((EXTRACT(epoch FROM pg_catalog.clock_timestamp() - t0) * 1000)::numeric, 1), r.pooling;
    END IF;
    IF cand IS NOT NULL AND r.pooling = 'centroids' AND pg_catalog.cardinality(cand) > n THEN
        t0 := pg_catalog.clock_timestamp();
        cand := maxsim._rescore(r.id, query, cand, n);
        IF timing THEN
            RAISE NOTICE 'pgmaxsim: rescored to % by centroid interaction (% ms)', pg_catalog.cardinality(cand),
                pg_catalog.round((EXTRACT(epoch FROM pg_catalog.clock_timestamp() - t0) * 1000)::numeric, 1);
        END IF;
    END IF;
    RETURN QUERY SELECT s.id, s.score FROM maxsim._score(r.id, query, cand, k) s;
END
$$;

-- Exact MaxSim over rows given as text keys (NULL k = all of them). Keys not in the index are ignored.
CREATE FUNCTION maxsim._rerank(name text, query @vector@.halfvec[], ids text[], k integer)
RETURNS TABLE (id text, score real)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
BEGIN
    r := maxsim._index(name);
    PERFORM maxsim._check_query(r, query, k);
    IF ids IS NULL OR pg_catalog.cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT s.id, s.score FROM maxsim._score(r.id, query, ids, k) s;
END
$$;

-- Exact MaxSim over any id set, typed like the ids given (compose with WHERE, full-text
-- search, row-level security). Ids not in the index are ignored; NULL k = every id given.
CREATE FUNCTION maxsim.rerank(name text, query @vector@.halfvec[], ids anyarray, k integer DEFAULT NULL)
RETURNS TABLE (id anyelement, score real)
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    WITH given AS (SELECT DISTINCT g.x AS id, g.x::text AS key
                     FROM pg_catalog.unnest(ids) AS g(x) WHERE g.x IS NOT NULL)
    SELECT given.id, r.score
      FROM maxsim._rerank(name, query, ARRAY(SELECT given.key FROM given), k) AS r
      JOIN given ON given.key = r.id
     ORDER BY r.score DESC, r.id
$$;

-- Number of centroids kept for a row of n tokens under an index's options.
CREATE FUNCTION maxsim._n_centroids(options jsonb, n integer) RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT least(greatest(1, ceil(n::numeric / (options ->> 'tokens_per_centroid')::integer)::integer),
                 (options ->> 'max_centroids')::integer, n)
$$;

-- Write one row's token embeddings (text key); pooled vectors are computed in the server.
CREATE FUNCTION maxsim._upsert(name text, id text, tokens @vector@.halfvec[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    n integer;
    pooled @vector@.halfvec[];
BEGIN
    r := maxsim._index(name);
    IF id IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: id is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF tokens IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: tokens are NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    BEGIN
        PERFORM maxsim._check_query(r, tokens, NULL);
    EXCEPTION WHEN OTHERS THEN
        RAISE EXCEPTION '%', replace(replace(replace(SQLERRM, 'query vectors', 'token vectors'), 'query is ',
                                             'tokens are '), 'query', 'tokens') USING ERRCODE = SQLSTATE;
    END;
    n := pg_catalog.cardinality(tokens);
    pooled := maxsim._pool(tokens, CASE WHEN r.pooling = 'centroids' THEN maxsim._n_centroids(r.options, n) ELSE 0 END);
    -- serialise writers of the same row (see pgmaxsim.storage)
    PERFORM pg_catalog.pg_advisory_xact_lock(r.id, pg_catalog.hashtext(id));
    EXECUTE pg_catalog.format(
        'INSERT INTO maxsim.%I AS t (id, tokens, n_tokens, tokens_packed, pooled) VALUES ($1::%s, $2, $3, $4, $5)'
        ' ON CONFLICT (id) DO UPDATE SET tokens = EXCLUDED.tokens, n_tokens = EXCLUDED.n_tokens,'
        ' tokens_packed = EXCLUDED.tokens_packed, pooled = EXCLUDED.pooled, model = NULL, model_revision = NULL,'
        ' content_hash = NULL',
        r.token_table, r.id_type)
        USING id, tokens, n, CASE WHEN (r.options ->> 'packed')::boolean THEN maxsim._packed(tokens) END, pooled[1];
    IF r.pooling = 'centroids' THEN
        EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE row_id = $1::%s', 'cen_' || r.id, r.id_type)
            USING id;
        EXECUTE pg_catalog.format(
            'INSERT INTO maxsim.%I (row_id, c, vec) SELECT $1::%s, (u.i - 1)::smallint, u.v'
            ' FROM pg_catalog.unnest($2) WITH ORDINALITY AS u(v, i)', 'cen_' || r.id, r.id_type)
            USING id, pooled[2:];
    END IF;
END
$$;

-- Write one row's token embeddings directly (pooled vectors computed in the server).
CREATE FUNCTION maxsim.upsert(name text, id anyelement, tokens @vector@.halfvec[])
RETURNS void
LANGUAGE sql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._upsert(name, id::text, tokens)
$$;

-- Remove rows' embeddings from an index (returns how many were removed).
CREATE FUNCTION maxsim.delete(name text, ids anyarray)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    n bigint;
BEGIN
    r := maxsim._index(name);
    EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE id = ANY ($1::%s[])', r.token_table, r.id_type)
        USING ARRAY(SELECT x::text FROM pg_catalog.unnest(ids) AS u(x));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
