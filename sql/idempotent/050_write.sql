-- pgmaxsim functions: writing token embeddings from SQL (maxsim.upsert / maxsim.delete).
-- Idempotent file (see 010_registry.sql for the privilege layering).
-- Python writers (the worker, pgmaxsim.Index.upsert) use pgmaxsim.writes.write_rows (binary COPY);
-- both take the same per-row lock key (maxsim._row_lock_key) so they never interleave on one row.

-- Number of centroids kept for a row of n tokens under an index's options.
CREATE OR REPLACE FUNCTION maxsim._n_centroids(options jsonb, n integer) RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT least(greatest(1, ceil(n::numeric / (options ->> 'tokens_per_centroid')::integer)::integer),
                 (options ->> 'max_centroids')::integer, n)
$$;

-- The advisory-lock key serialising writers of one row of one index: equal to
-- pgmaxsim.writes.row_lock_key (the worker's claim and Python writers take the same lock).
CREATE OR REPLACE FUNCTION maxsim._row_lock_key(index_id integer, id text) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ('x' || pg_catalog.left(pg_catalog.md5('pgmaxsim/' || index_id::text || '/' || id), 16))::bit(64)::bigint $$;

-- Write one row's token embeddings (text key), encoded in the server: token pooling (option
-- pool_factor), the tier's byte layout (option storage); the pooled vector and centroids are
-- computed from what is stored (the decoded bytes), as pgmaxsim.writes.write_rows does.
CREATE OR REPLACE FUNCTION maxsim._write(index_id integer, id text, tokens @vector@.halfvec[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    n integer;
    storage text;
    blob bytea;
    stored @vector@.halfvec[];
    pooled @vector@.halfvec[];
    slot integer;
    codes integer[];
    marked boolean;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_write', index_id);
    IF id IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: id is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF tokens IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: tokens are NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM maxsim._check_tokens(r, tokens, 'tokens');
    PERFORM pg_catalog.pg_advisory_xact_lock(maxsim._row_lock_key(r.id, id));
    -- The token table first, then the registry again: a storage switch (pgmaxsim index reindex
    -- --storage) holds the table until it has swapped tables and options, so what is read
    -- after the lock is the tier of the table written.
    EXECUTE pg_catalog.format('LOCK TABLE maxsim.%I IN ROW EXCLUSIVE MODE', r.token_table);
    SELECT * INTO STRICT r FROM maxsim.indexes i WHERE i.id = index_id;
    storage := coalesce(r.options ->> 'storage', 'fp16');
    blob := maxsim._encode(tokens, storage, coalesce((r.options ->> 'pool_factor')::integer, 1));
    stored := CASE WHEN storage = 'fp16' AND coalesce((r.options ->> 'pool_factor')::integer, 1) = 1 THEN tokens
                   ELSE maxsim._decode(blob, r.dim, storage) END;
    n := pg_catalog.cardinality(stored);
    pooled := maxsim._pool(stored, CASE WHEN r.pooling = 'centroids' THEN maxsim._n_centroids(r.options, n) ELSE 0 END);
    PERFORM pg_catalog.set_config('pgmaxsim.codes_only', 'off', true);   -- see maxsim._tok_row
    IF r.pooling = 'codebook' THEN
        -- the row's codes under the live codebook (035_firststage.sql); NULL until it is trained,
        -- and NULL under the other slot (a retrain fills that one itself)
        slot := maxsim._fs_slot(r);
        codes := maxsim._fs_assign(r.id, (r.options ->> 'fs_gen')::integer, stored);
    END IF;
    EXECUTE pg_catalog.format(
        'INSERT INTO maxsim.%I AS t (id, tokens, n_tokens, n_raw_tokens, pooled%s) VALUES ($1::%s, $2, $3, $4, $5%s)'
        ' ON CONFLICT (id) DO UPDATE SET tokens = EXCLUDED.tokens, n_tokens = EXCLUDED.n_tokens,'
        ' n_raw_tokens = EXCLUDED.n_raw_tokens, pooled = EXCLUDED.pooled, model = NULL, model_revision = NULL,'
        ' content_hash = NULL, layout = NULL%s',
        r.token_table,
        CASE WHEN r.pooling = 'codebook' THEN ', codes_0, codes_1' ELSE '' END,
        r.id_type,
        CASE WHEN r.pooling = 'codebook' THEN ', $6, $7' ELSE '' END,
        CASE WHEN r.pooling = 'codebook' THEN ', codes_0 = EXCLUDED.codes_0, codes_1 = EXCLUDED.codes_1' ELSE '' END)
        USING id, blob, n, pg_catalog.cardinality(tokens), pooled[1],
              CASE WHEN slot = 0 THEN codes END, CASE WHEN slot = 1 THEN codes END;
    IF r.pooling = 'centroids' THEN
        EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE row_id = $1::%s', 'cen_' || r.id, r.id_type)
            USING id;
        EXECUTE pg_catalog.format(
            'INSERT INTO maxsim.%I (row_id, c, vec) SELECT $1::%s, (u.i - 1)::smallint, u.v'
            ' FROM pg_catalog.unnest($2) WITH ORDINALITY AS u(v, i)', 'cen_' || r.id, r.id_type)
            USING id, pooled[2:];
    END IF;
    IF r.pooling = 'codebook' THEN   -- past its threshold: training due, never done here (038_fs_train.sql)
        marked := maxsim._fs_mark(r.id);
    END IF;
    RETURN true;
END
$$;

-- Write one row's token embeddings directly (pooled vectors computed in the server). Only the owner
-- of the index's source table (or an admin) may write into it.
CREATE OR REPLACE FUNCTION maxsim.upsert(name text, id anyelement, tokens @vector@.halfvec[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._index_to_manage(name);
    done := maxsim._write(r.id, id::text, tokens);
END
$$;

CREATE OR REPLACE FUNCTION maxsim._delete(index_id integer, ids text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    n bigint;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_delete', index_id);
    EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE id = ANY ($1::%s[])', r.token_table, r.id_type)
        USING ids;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Remove rows' embeddings from an index (returns how many were removed).
CREATE OR REPLACE FUNCTION maxsim.delete(name text, ids anyarray)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    keys text[];
    n bigint;
BEGIN
    r := maxsim._index_to_manage(name);
    keys := ARRAY(SELECT x::text FROM pg_catalog.unnest(ids) AS u(x));
    n := maxsim._delete(r.id, keys);   -- a plain assignment: see maxsim._called_by_maxsim
    RETURN n;
END
$$;

-- ---------------------------------------------------------------- bulk writes by granted roles
-- pgmaxsim.writes.write_rows writes with binary COPY. A role with INSERT on the token table (the
-- schema owner: the worker) copies into it directly. Any other role that may manage the index copies
-- into session-private stage tables instead, created here by the schema owner (so the caller cannot
-- attach triggers, rules or policies to them) and granted to the caller for INSERT only, then
-- maxsim.write_commit moves the rows in, replacing earlier embeddings of the same ids.

CREATE OR REPLACE FUNCTION maxsim._stage_tables(index_id integer, writer name) RETURNS text[]
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    tag text := pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', '');
    tok text := 'maxsim_stage_tok_' || tag;
    cen text := 'maxsim_stage_cen_' || tag;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_stage_tables', index_id);
    -- the token table's columns with none of its defaults or constraints (no sequence to call)
    EXECUTE pg_catalog.format('CREATE TEMP TABLE %I ON COMMIT DROP AS SELECT * FROM maxsim.%I WITH NO DATA',
                              tok, r.token_table);
    EXECUTE pg_catalog.format('GRANT INSERT ON TABLE pg_temp.%I TO %I', tok, writer);
    IF r.pooling = 'centroids' THEN
        EXECUTE pg_catalog.format('CREATE TEMP TABLE %I ON COMMIT DROP AS SELECT * FROM maxsim.%I WITH NO DATA',
                                  cen, 'cen_' || r.id);
        EXECUTE pg_catalog.format('GRANT INSERT ON TABLE pg_temp.%I TO %I', cen, writer);
    ELSE
        cen := NULL;
    END IF;
    RETURN ARRAY[tok, cen];
END
$$;

-- One of this session's stage tables, created by _stage_tables (owned by the schema owner), or an error.
CREATE OR REPLACE FUNCTION maxsim._stage_table(name text) RETURNS regclass
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    rel regclass := pg_catalog.to_regclass('pg_temp.' || pg_catalog.quote_ident(name));
BEGIN
    IF name NOT LIKE 'maxsim\_stage\_%' OR rel IS NULL OR NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_class c
         WHERE c.oid = rel AND c.relkind = 'r' AND c.relnamespace = pg_catalog.pg_my_temp_schema()
           AND c.relowner = (SELECT n.nspowner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'maxsim')) THEN
        RAISE EXCEPTION 'pgmaxsim: % is not a stage table of this transaction (see maxsim.write_stage)', name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN rel;
END
$$;

CREATE OR REPLACE FUNCTION maxsim._stage_commit(index_id integer, tok_stage text, cen_stage text) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    tok regclass;
    cols text;
    n bigint;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_stage_commit', index_id);
    tok := maxsim._stage_table(tok_stage);
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = pg_catalog.format('maxsim.%I', r.token_table)::regclass AND a.attnum > 0
       AND NOT a.attisdropped AND a.attname NOT IN ('version', 'updated_at');
    PERFORM pg_catalog.set_config('pgmaxsim.codes_only', 'off', true);   -- see maxsim._tok_row
    -- replace: earlier embeddings of these ids go first (their centroids with them, ON DELETE CASCADE)
    EXECUTE pg_catalog.format('DELETE FROM maxsim.%I t WHERE t.id IN (SELECT s.id FROM %s s)', r.token_table, tok);
    EXECUTE pg_catalog.format('INSERT INTO maxsim.%I (%s) SELECT %s FROM %s', r.token_table, cols, cols, tok);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF cen_stage IS NOT NULL AND r.pooling = 'centroids' THEN
        EXECUTE pg_catalog.format('INSERT INTO maxsim.%I (row_id, c, vec) SELECT row_id, c, vec FROM %s',
                                  'cen_' || r.id, maxsim._stage_table(cen_stage));
        EXECUTE pg_catalog.format('DROP TABLE %s', maxsim._stage_table(cen_stage));
    END IF;
    EXECUTE pg_catalog.format('DROP TABLE %s', tok);
    RETURN n;
END
$$;

-- Stage tables for a bulk write into index `name` (in this transaction): {token stage, centroid
-- stage or NULL}. Copy rows into them with the token table's columns, then call write_commit.
CREATE OR REPLACE FUNCTION maxsim.write_stage(name text) RETURNS text[]
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    names text[];
BEGIN
    r := maxsim._index_to_manage(name);
    names := maxsim._stage_tables(r.id, current_user);
    RETURN names;
END
$$;

-- Move the staged rows into index `name`; returns the rows written.
CREATE OR REPLACE FUNCTION maxsim.write_commit(name text, stages text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    n bigint;
BEGIN
    r := maxsim._index_to_manage(name);
    n := maxsim._stage_commit(r.id, stages[1], stages[2]);
    RETURN n;
END
$$;
