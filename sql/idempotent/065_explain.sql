-- pgmaxsim functions: explain (why a row matched) and a row's token layout.
-- Idempotent file (see 010_registry.sql for the privilege layering).
--
-- explain(name, query, id): for each query token, the document token it picks (its max similarity)
-- and where that token sits: patch_row / patch_col on the page's patch grid, or char_start /
-- char_end in the row's text, from the layout the worker stored at ingest (pgmaxsim.encoders.layout;
-- NULL where a row has none: rows written by upsert, prompt and special tokens, rows stored with
-- token pooling, whose tokens are merged positions). The scores are the terms of the row's MaxSim:
-- they sum to maxsim.maxsim(tokens, query). Positions are 0-based, as in the model's output.
--
-- Privileges: like search. The entry points run as the caller, check SELECT on the source's key,
-- and read the source as the caller when row-level security filters it; a row the caller cannot
-- see gets the same answer as a row that is not in the index. Only the row's stored tokens come
-- from the privileged layer (_explain_row). Read-only: works on a hot standby. Each query token's
-- best document token is maxsim._best_tokens (065_explain_best.plpython.sql: NumPy over the stored
-- bytes; .nopython.sql: pure SQL over maxsim._decode, slower, fp16 only, like the rest of that path).

-- The rows of a stored layout (format: pgmaxsim.encoders.layout): one per token position.
-- token_kind: 'patch' (image token on the grid), 'thumbnail' (image token off the grid: Idefics3's
-- global image), 'prompt' (a non-image token of an image row), 'text' (a token with a character
-- span), 'special' (a text row's token without one). Words are big-endian int32 (get_byte
-- arithmetic: `<<` on integer wraps, so the top byte gives the sign).
CREATE OR REPLACE FUNCTION maxsim._layout_rows(layout bytea)
RETURNS TABLE (doc_token integer, token_kind text, patch_row integer, patch_col integer,
               char_start integer, char_end integer)
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    head integer;
    n integer;
    cols integer;
BEGIN
    IF pg_catalog.length(layout) < 8 THEN
        RETURN;
    END IF;
    head := maxsim._layout_word(layout, 0);
    n := maxsim._layout_word(layout, 1);
    IF head = (1 << 24) | (1 << 16) AND pg_catalog.length(layout) = 4 * (4 + n) THEN
        cols := maxsim._layout_word(layout, 3);
        RETURN QUERY
            SELECT g.i, CASE WHEN g.c >= 0 THEN 'patch' WHEN g.c = -2 THEN 'thumbnail' ELSE 'prompt' END,
                   CASE WHEN g.c >= 0 THEN g.c / cols END, CASE WHEN g.c >= 0 THEN g.c % cols END,
                   NULL::integer, NULL::integer
              FROM (SELECT s.i, maxsim._layout_word(layout, 4 + s.i) AS c
                      FROM pg_catalog.generate_series(0, n - 1) AS s(i)) g;
    ELSIF head = (1 << 24) | (2 << 16) AND pg_catalog.length(layout) = 4 * (2 + 2 * n) THEN
        RETURN QUERY
            SELECT g.i, CASE WHEN g.a >= 0 THEN 'text' ELSE 'special' END, NULL::integer, NULL::integer,
                   CASE WHEN g.a >= 0 THEN g.a END, CASE WHEN g.a >= 0 THEN g.b END
              FROM (SELECT s.i, maxsim._layout_word(layout, 2 + 2 * s.i) AS a,
                           maxsim._layout_word(layout, 3 + 2 * s.i) AS b
                      FROM pg_catalog.generate_series(0, n - 1) AS s(i)) g;
    END IF;
END
$$;

-- Big-endian int32 word `i` of a layout.
CREATE OR REPLACE FUNCTION maxsim._layout_word(b bytea, i integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT (pg_catalog.get_byte(b, 4 * i) << 24) | (pg_catalog.get_byte(b, 4 * i + 1) << 16)
         | (pg_catalog.get_byte(b, 4 * i + 2) << 8) | pg_catalog.get_byte(b, 4 * i + 3)
$$;

-- One row's stored token bytes (tier layout, pgmaxsim.kernels.quantize), their count, its layout, and
-- whether its tokens are pooled (then the layout does not apply); blob NULL when the row is not in
-- the index. Privileged: reads the token table.
CREATE OR REPLACE FUNCTION maxsim._explain_row(index_id integer, id text, OUT blob bytea, OUT n_tokens integer,
                                               OUT layout bytea, OUT pooled boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_explain_row', index_id);
    EXECUTE pg_catalog.format(
        'SELECT t.tokens, t.n_tokens, t.layout, t.n_tokens <> t.n_raw_tokens FROM maxsim.%I t WHERE t.id = $1::%s',
        r.token_table, r.id_type)
        INTO blob, n_tokens, layout, pooled USING id;
END
$$;

-- Index `name` and its row `id` as the caller may see it: stored bytes, token count, layout and
-- pooling, or an error that reads the same whether the row is missing or hidden from the caller
-- (row-level security). Takes the index by name, never a registry row from its caller: a
-- caller-made row could name one index and another's source table.
CREATE OR REPLACE FUNCTION maxsim._explained_row(name text, id text, OUT r maxsim.indexes, OUT blob bytea,
                                                 OUT n_tokens integer, OUT layout bytea, OUT pooled boolean)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    res record;
BEGIN
    r := maxsim._index_to_read(name);
    IF id IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: id is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT pg_catalog.row_security_active(r.source) OR pg_catalog.cardinality(maxsim._visible(r, ARRAY[id])) > 0 THEN
        res := maxsim._explain_row(r.id, id);
        blob := res.blob; n_tokens := res.n_tokens; layout := res.layout; pooled := res.pooled;
    END IF;
    IF blob IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" has no row % (or role % may not see it)', r.name, id, current_user
            USING ERRCODE = 'no_data_found';
    END IF;
END
$$;

-- Why row `id` matched `query`: one row per query token (see the top of this file).
--   SELECT * FROM maxsim.explain('docs', maxsim.encode_query('docs', 'lazy dog'), 42);
CREATE OR REPLACE FUNCTION maxsim.explain(name text, query @vector@.halfvec[], id anyelement)
RETURNS TABLE (query_token integer, doc_token integer, score real, patch_row integer, patch_col integer,
               char_start integer, char_end integer)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    row_ record;
BEGIN
    r := maxsim._index_to_read(name);
    PERFORM maxsim._check_query(r, query, NULL);
    row_ := maxsim._explained_row(name, id::text);
    IF row_.pooled THEN
        RAISE NOTICE 'pgmaxsim: row % of index "%" is stored with token pooling (pool_factor %): doc_token numbers its pooled tokens, which have no patch or character positions',
            id, r.name, coalesce(r.options ->> 'pool_factor', '1');
    END IF;
    RETURN QUERY
        SELECT b.query_token, b.doc_token, b.score, l.patch_row, l.patch_col, l.char_start, l.char_end
          FROM maxsim._best_tokens(row_.blob, r.dim, coalesce(r.options ->> 'storage', 'fp16'), row_.n_tokens, query) b
          LEFT JOIN maxsim._layout_rows(CASE WHEN row_.pooled THEN NULL ELSE row_.layout END) l
            ON l.doc_token = b.doc_token
         ORDER BY b.query_token;
END
$$;

-- A row's token layout as rows (doc_token, token_kind, patch_row, patch_col, char_start, char_end);
-- none when the row has no layout or is stored with token pooling. Same rights as explain.
CREATE OR REPLACE FUNCTION maxsim.layout(name text, id anyelement)
RETURNS TABLE (doc_token integer, token_kind text, patch_row integer, patch_col integer,
               char_start integer, char_end integer)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    row_ record;
BEGIN
    row_ := maxsim._explained_row(name, id::text);
    IF row_.pooled OR row_.layout IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT l.* FROM maxsim._layout_rows(row_.layout) l
                  WHERE l.doc_token < row_.n_tokens ORDER BY l.doc_token;
END
$$;

-- A row's stored token bytes (in its tier's layout, pgmaxsim.kernels.quantize) and layout (format:
-- pgmaxsim.encoders.layout), for clients that explain and draw on their side (pgmaxsim.explain:
-- one round trip, decoded by NumPy, where maxsim.tokens would decode in SQL). The same rights as
-- explain; the values are what maxsim.tokens returns.
CREATE OR REPLACE FUNCTION maxsim.stored_row(name text, id anyelement)
RETURNS TABLE (storage text, dim integer, n_tokens integer, tokens bytea, layout bytea, pooled boolean)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    row_ record;
    r maxsim.indexes;
BEGIN
    row_ := maxsim._explained_row(name, id::text);
    r := row_.r;
    storage := coalesce(r.options ->> 'storage', 'fp16');
    dim := r.dim;
    n_tokens := row_.n_tokens;
    tokens := row_.blob;
    layout := row_.layout;
    pooled := row_.pooled;
    RETURN NEXT;
END
$$;
