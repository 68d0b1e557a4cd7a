-- pgmaxsim functions: training the codebook first stage (035_firststage.sql) outside the write path,
-- by any role that manages the index. Idempotent file (see 010_registry.sql for the privilege layering).
--
-- Writes never train. A write that takes a codebook index past its threshold (option train_tokens
-- tokens while untrained; then rows grown by maxsim._fs_growth since its last training: 10 % while
-- small, up to 2x from 2M tokens; checked in O(1)) only marks it due: option
-- fs_due = the time (maxsim._fs_mark, from maxsim._write and maxsim.first_stage_mark). Until it is
-- trained the rows stay searchable: an untrained index is searched exactly, and a row without live
-- codes is always a candidate.
--
-- Training is one flow of steps. Each step is a guarded `_fs_*` function (the privileged DML) behind
-- an entry point that checks that the caller manages the index:
--   begin     first_stage_train_begin     take the index's training lock; clear the next slot -> gen
--   sample    first_stage_train_sample    stored tokens of rows drawn in a seeded order
--   codebook  first_stage_train_codebook  the new centroids into the next slot (gen % 2)
--   fill      first_stage_train_uncoded / first_stage_train_codes
--                                         each row's codes in that slot, in batches; then again under
--                                         maxsim.switch_lock (writers wait, searches go on)
--   switch    first_stage_train_switch    one registry update: fs_gen = gen, fs_due cleared
--   end       first_stage_train_end       clear the old slot (its sketch lists by TRUNCATE); release
--                                         the training lock
-- pgmaxsim.codebook.train runs them from a client (the worker's trainer, `pgmaxsim index reindex
-- NAME --first-stage`), committing between steps. maxsim.train_first_stage(name) runs the same steps
-- inside the server, in one transaction (k-means and assignment in NumPy: needs plpython3u).
-- Searches read the registry and the tables in one snapshot: before the switch they use the old
-- codebook, after it the new one, each complete.
--
-- HOOK for more per-slot structures (e.g. residual sketch lists): per-row data of slot gen % 2 is
-- written beside the codes in the fill (maxsim._fs_set_codes; pgmaxsim.fs_train.batch_codes computes
-- it), per-slot lists are built in maxsim._fs_switch before the registry update (the table is locked
-- there: every row is filled), and the old slot's are dropped in maxsim._fs_end. Clear the next slot's
-- in maxsim._fs_begin.

-- Rows inserted less rows deleted in relation `rel` over the life of its statistics, this backend's
-- not yet reported included: counters PostgreSQL only ever adds to (an ANALYZE or VACUUM sets the
-- live-row count, never these), so no row is in them twice. They count attempts: an insert or a
-- delete rolled back counts too.
CREATE OR REPLACE FUNCTION maxsim._fs_net(rel oid) RETURNS bigint
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.pg_stat_get_tuples_inserted(rel) + pg_catalog.pg_stat_get_xact_tuples_inserted(rel)
           - pg_catalog.pg_stat_get_tuples_deleted(rel) - pg_catalog.pg_stat_get_xact_tuples_deleted(rel)
$$;

-- Where the row count of token table `tok` stood, for maxsim._fs_rows_now: `rows` counted (a scan,
-- by the caller), the table's maxsim._fs_net and its file then. Taken by the switch of a training
-- (option fs_count), under the lock that holds writers off.
CREATE OR REPLACE FUNCTION maxsim._fs_count(tok text, rows bigint) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.jsonb_build_object('rows', rows, 'net', maxsim._fs_net(c.oid),
                                         'node', pg_catalog.pg_relation_filenode(c.oid))
      FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', tok))
$$;

-- Rows in token table `tok` now, without a scan (it runs on every write), from counts no ANALYZE or
-- VACUUM rewrites:
--   * with `count` (maxsim._fs_count: option fs_count, taken by the last training) and the table
--     still in the file it names: the rows counted then plus the net inserts since (maxsim._fs_net);
--   * else (never trained, or TRUNCATE, VACUUM FULL or a storage switch gave it another file since):
--     the planner's estimate, the catalog's rows per page (as its last VACUUM or ANALYZE counted
--     them) times the pages the table has now; for a table never vacuumed nor analyzed, the live rows
--     the statistics hold plus this backend's not yet reported (no ANALYZE has set that count);
--   * and never under the catalog's count (statistics lost in a crash or reset).
-- Not the live-row count of the statistics once analyzed: an ANALYZE counts the rows written and not
-- yet reported, and when they are reported that count holds them twice (a retrain came due early).
-- An estimate, good enough for a schedule: other sessions report their writes up to a second late
-- (so rows they wrote in the second before the switch are in `count` and, once reported, in the net
-- since: early by those); inserts rolled back count as rows (early); the planner's pages count dead
-- rows (early), and rows written into space a VACUUM freed show only at the next ANALYZE (late).
CREATE OR REPLACE FUNCTION maxsim._fs_rows_now(tok text, count jsonb) RETURNS double precision
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT greatest(c.reltuples, 0, CASE
        WHEN (count ->> 'node')::oid = pg_catalog.pg_relation_filenode(c.oid) THEN
            (count ->> 'rows')::double precision + (maxsim._fs_net(c.oid) - (count ->> 'net')::bigint)
        WHEN c.reltuples >= 0 AND c.relpages > 0 THEN
            c.reltuples / c.relpages
            * (pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::double precision)
        ELSE pg_catalog.pg_stat_get_live_tuples(c.oid)
             + pg_catalog.pg_stat_get_xact_tuples_inserted(c.oid) - pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid)
        END)
      FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', tok))
$$;

-- How much an index trained on `tokens` tokens grows before its codebook is retrained: by 10 % while
-- it is small (a training then takes seconds, and a codebook sized and sampled for 54 % of a corpus
-- lost 4 points of phrase recall@10 on bench/phrase_pg.py), by a share rising with its size above
-- 200K tokens, to 2x from 2M tokens on (a training there takes minutes: bench/fs_train.py). Each
-- training is sized for the tokens it sees (pgmaxsim.fs_train.sizing).
--
-- >>> growth: 65K tokens -> 1.1, 500K -> 1.25, 1M -> 1.5, 2M and more -> 2
CREATE OR REPLACE FUNCTION maxsim._fs_growth(tokens bigint) RETURNS numeric
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT 1.0 + least(1.0, greatest(0.1, pg_catalog.round(coalesce(tokens, 2000000) / 2000000.0, 3))) $$;

-- Whether codebook index `r` should be (re)trained now: untrained and holding option train_tokens
-- tokens, or grown by maxsim._fs_growth since its last training (option fs_rows rows; a codebook
-- sized and sampled for fewer rows puts too many tokens in each code and misses what came after).
-- O(1) on every write: the rows come from maxsim._fs_rows_now, the tokens per row from the first
-- 64 rows. Runs as the schema owner (from _fs_mark, _fs_is_due).
CREATE OR REPLACE FUNCTION maxsim._fs_due(r maxsim.indexes) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    rows_now double precision;
    per_row double precision;
    trained bigint;
BEGIN
    IF r.pooling IS DISTINCT FROM 'codebook' THEN
        RETURN false;
    END IF;
    rows_now := coalesce(maxsim._fs_rows_now(r.token_table, r.options -> 'fs_count'), 0);
    EXECUTE pg_catalog.format('SELECT avg(s.n_tokens) FROM (SELECT t.n_tokens FROM maxsim.%I t LIMIT 64) s', r.token_table)
        INTO per_row;
    IF coalesce(per_row, 0) = 0 THEN
        RETURN false;
    END IF;
    IF r.options ->> 'fs_gen' IS NULL THEN
        RETURN rows_now * per_row >= coalesce((r.options ->> 'train_tokens')::bigint, 65536);
    END IF;
    trained := greatest(1, coalesce((r.options ->> 'fs_rows')::bigint, 0));
    RETURN rows_now::numeric >= trained * maxsim._fs_growth((trained * per_row)::bigint);
END
$$;

-- Mark index `index_id` due for training when _fs_due says so (true when this call marked it). Never
-- waits: a registry row another transaction holds (a switch, another writer marking) is skipped.
CREATE OR REPLACE FUNCTION maxsim._fs_mark(index_id integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_fs_mark', _fs_mark.index_id);
    IF r.pooling IS DISTINCT FROM 'codebook' OR r.options ? 'fs_due' OR NOT maxsim._fs_due(r) THEN
        RETURN false;
    END IF;
    UPDATE maxsim.indexes i SET options = i.options || pg_catalog.jsonb_build_object('fs_due', pg_catalog.now())
     WHERE i.id = (SELECT j.id FROM maxsim.indexes j WHERE j.id = _fs_mark.index_id AND NOT j.options ? 'fs_due'
                     FOR NO KEY UPDATE SKIP LOCKED);
    RETURN FOUND;
END
$$;

-- Rows to sample for a codebook of an index of n_rows rows / n_tokens tokens: enough for option
-- train_sample tokens after taking about half of each row's tokens (all tokens of few rows would
-- over-represent them; a fraction of every row's would read every row).
CREATE OR REPLACE FUNCTION maxsim._fs_sample_rows(options jsonb, n_rows bigint, n_tokens bigint) RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT least(n_rows, greatest(1, ceil(2.0 * least(n_tokens, coalesce((options ->> 'train_sample')::bigint, 500000))
                                          / greatest(1.0, n_tokens::numeric / greatest(1, n_rows)))))::integer
$$;

-- Begin training index `index_id`: take its training lock (session-level when `in_session`, else
-- until the end of the transaction), clear the next slot. gen NULL: another session is training it.
CREATE OR REPLACE FUNCTION maxsim._fs_begin(index_id integer, in_session boolean, OUT gen integer,
                                            OUT n_rows bigint, OUT n_tokens bigint, OUT sample_rows integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    slot integer;
    got boolean;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_fs_begin');
    -- the training lock: advisory, keys (1885762674, index id); maxsim.first_stage_status reads it
    IF in_session THEN
        got := pg_catalog.pg_try_advisory_lock(1885762674, _fs_begin.index_id);
    ELSE
        got := pg_catalog.pg_try_advisory_xact_lock(1885762674, _fs_begin.index_id);
    END IF;
    IF NOT got THEN
        RETURN;
    END IF;
    SELECT * INTO STRICT r FROM maxsim.indexes i WHERE i.id = _fs_begin.index_id;
    gen := coalesce((r.options ->> 'fs_gen')::integer + 1, 0);
    slot := gen % 2;
    PERFORM pg_catalog.set_config('pgmaxsim.codes_only', 'on', true);   -- see maxsim._tok_row
    EXECUTE pg_catalog.format('UPDATE maxsim.%I SET %I = NULL WHERE %I IS NOT NULL', r.token_table,
                              'codes_' || slot, 'codes_' || slot);
    PERFORM pg_catalog.set_config('pgmaxsim.codes_only', 'off', true);
    -- its codebook and sketch lists (what a failed training left; normally released after the last switch)
    PERFORM maxsim._fs_release(r.id, slot, 0);
    EXECUTE pg_catalog.format('SELECT count(*), coalesce(sum(t.n_tokens), 0) FROM maxsim.%I t', r.token_table)
        INTO n_rows, n_tokens;
    sample_rows := maxsim._fs_sample_rows(r.options, n_rows, n_tokens);
END
$$;

-- The generation being built for index `r` (the next one), or an error when `gen` is not it.
CREATE OR REPLACE FUNCTION maxsim._fs_check_next(r maxsim.indexes, gen integer, live_ok boolean) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    live integer := (r.options ->> 'fs_gen')::integer;
BEGIN
    IF gen IS NOT DISTINCT FROM coalesce(live + 1, 0) OR (live_ok AND gen IS NOT DISTINCT FROM live) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION 'pgmaxsim: first stage of index "%": generation % is not the one being trained (live: %)',
        r.name, gen, coalesce(live::text, 'none') USING ERRCODE = 'object_not_in_prerequisite_state';
END
$$;

-- Page [off, off + lim) of the first `take` rows of index `index_id` in a seeded order: their stored tokens.
CREATE OR REPLACE FUNCTION maxsim._fs_sample(index_id integer, seed integer, take integer, off integer, lim integer,
                                             OUT tokens bytea[], OUT n_tokens integer[])
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_fs_sample', _fs_sample.index_id);
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.array_agg(s.tokens ORDER BY s.o), pg_catalog.array_agg(s.n_tokens ORDER BY s.o) FROM ('
        ' SELECT t.tokens, t.n_tokens, pg_catalog.md5(t.id::text || $1::text) AS o FROM maxsim.%I t'
        ' ORDER BY 3 LIMIT least($4, greatest(0, $2 - $3)) OFFSET $3) s', r.token_table)
        INTO tokens, n_tokens USING seed, take, off, lim;
END
$$;

-- Store the centroids of generation `gen` (the one being built) of index `index_id` in its slot:
-- `coarse` in cell order, `fine` in code order (code = cell * n_fine + j).
CREATE OR REPLACE FUNCTION maxsim._fs_put_codebook(index_id integer, gen integer, coarse @vector@.halfvec[],
                                                   fine @vector@.halfvec[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    n_fine integer;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_fs_put_codebook', _fs_put_codebook.index_id);
    PERFORM maxsim._fs_check_next(r, gen, false);
    IF coalesce(pg_catalog.cardinality(coarse), 0) = 0 OR coalesce(pg_catalog.cardinality(fine), 0) = 0
       OR pg_catalog.cardinality(fine) % pg_catalog.cardinality(coarse) <> 0 THEN
        RAISE EXCEPTION 'pgmaxsim: a codebook needs coarse centroids and a whole number of fine centroids per coarse one'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    n_fine := pg_catalog.cardinality(fine) / pg_catalog.cardinality(coarse);
    EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE slot = $1', 'fs_coarse_' || r.id) USING (gen % 2)::smallint;
    EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE slot = $1', 'fs_fine_' || r.id) USING (gen % 2)::smallint;
    EXECUTE pg_catalog.format('INSERT INTO maxsim.%I (slot, cell, vec) SELECT $1, (u.i - 1)::integer, u.v'
                              ' FROM pg_catalog.unnest($2) WITH ORDINALITY AS u(v, i)', 'fs_coarse_' || r.id)
        USING (gen % 2)::smallint, coarse;
    EXECUTE pg_catalog.format('INSERT INTO maxsim.%I (slot, code, cell, vec) SELECT $1, (u.i - 1)::integer,'
                              ' ((u.i - 1) / $3)::integer, u.v FROM pg_catalog.unnest($2) WITH ORDINALITY AS u(v, i)',
                              'fs_fine_' || r.id)
        USING (gen % 2)::smallint, fine, n_fine;
    RETURN true;
END
$$;

-- Up to `lim` rows of index `index_id` without codes in generation `gen`'s slot (`gen`: the one being
-- built, or the live one, which fills rows a writer could not code): key, version, stored tokens.
CREATE OR REPLACE FUNCTION maxsim._fs_uncoded(index_id integer, gen integer, lim integer, OUT ids text[],
                                              OUT versions bigint[], OUT tokens bytea[], OUT n_tokens integer[])
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_fs_uncoded', _fs_uncoded.index_id);
    PERFORM maxsim._fs_check_next(r, gen, true);
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.array_agg(s.id::text), pg_catalog.array_agg(s.version), pg_catalog.array_agg(s.tokens),'
        ' pg_catalog.array_agg(s.n_tokens) FROM (SELECT t.id, t.version, t.tokens, t.n_tokens FROM maxsim.%I t'
        ' WHERE t.%I IS NULL LIMIT $1) s', r.token_table, 'codes_' || (gen % 2))
        INTO ids, versions, tokens, n_tokens USING lim;
END
$$;

-- Store rows' codes in generation `gen`'s slot of index `index_id`: row i (key ids[i], still at
-- version versions[i]: a row rewritten meanwhile is skipped, the next batch reads it again) gets
-- codes flat[sum(lens[1:i-1]) + 1 : sum(lens[1:i])]. Returns the rows updated.
CREATE OR REPLACE FUNCTION maxsim._fs_set_codes(index_id integer, gen integer, ids text[], versions bigint[],
                                                flat integer[], lens integer[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    n integer;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_fs_set_codes', _fs_set_codes.index_id);
    PERFORM maxsim._fs_check_next(r, gen, true);
    IF pg_catalog.cardinality(ids) <> pg_catalog.cardinality(versions) OR pg_catalog.cardinality(ids) <> pg_catalog.cardinality(lens)
       OR (SELECT coalesce(sum(l), 0) FROM pg_catalog.unnest(lens) AS l) <> pg_catalog.cardinality(flat)
       OR EXISTS (SELECT 1 FROM pg_catalog.unnest(lens) AS l WHERE l IS NULL OR l < 1) THEN
        RAISE EXCEPTION 'pgmaxsim: first-stage codes: ids, versions and lens must have one entry per row, lens sum to the codes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_catalog.set_config('pgmaxsim.codes_only', 'on', true);   -- see maxsim._tok_row
    EXECUTE pg_catalog.format(
        'WITH x AS (SELECT u.id, u.v, u.n, (sum(u.n) OVER (ORDER BY u.o) - u.n)::integer AS off'
        '             FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($4)) WITH ORDINALITY AS u(id, v, n, o))'
        ' UPDATE maxsim.%1$I t SET %2$I = (SELECT pg_catalog.array_agg(DISTINCT c ORDER BY c)'
        '                                  FROM pg_catalog.unnest($3[x.off + 1 : x.off + x.n]) AS c)'
        '   FROM x WHERE t.id = x.id::%3$s AND t.version = x.v AND t.%2$I IS NULL',
        r.token_table, 'codes_' || (gen % 2), r.id_type)
        USING ids, versions, flat, lens;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_catalog.set_config('pgmaxsim.codes_only', 'off', true);
    RETURN n;
END
$$;

-- Switch index `index_id` to generation `gen` (the one being built): writers are held off (EXCLUSIVE
-- on the token table: searches go on) and the registry says fs_gen = gen in one update. The caller
-- filled every row's codes under the same lock first (rows it missed stay candidates).
CREATE OR REPLACE FUNCTION maxsim._fs_switch(index_id integer, gen integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    n bigint;
    have boolean;
    sk jsonb;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_fs_switch', _fs_switch.index_id);
    -- the token table first, then the registry row (the order writers take them in)
    EXECUTE pg_catalog.format('LOCK TABLE maxsim.%I IN EXCLUSIVE MODE', r.token_table);
    SELECT * INTO STRICT r FROM maxsim.indexes i WHERE i.id = _fs_switch.index_id FOR NO KEY UPDATE;
    PERFORM maxsim._fs_check_next(r, gen, false);
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT 1 FROM maxsim.%I c WHERE c.slot = $1)', 'fs_coarse_' || r.id)
        INTO have USING (gen % 2)::smallint;
    IF NOT have THEN
        RAISE EXCEPTION 'pgmaxsim: first stage of index "%": generation % has no codebook yet', r.name, gen
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- the residual sketch lists of slot gen % 2 (034_sketch.sql): the training built them for the rows
    -- it had filled; the rows written since are merged here, under the lock
    sk := maxsim._sk_merge(r.id, gen, false);
    -- every row is in the new lists now (writers wait on the lock): forget the pending versions, or
    -- until the next merge with rows each search would check every row written before the training
    -- (74 ms a search at 100K rows; a table loaded then trained may see no merge for a long time)
    PERFORM maxsim._sk_pending_forget(r.id, r.token_table, gen % 2);   -- 035_firststage.sql
    EXECUTE pg_catalog.format('SELECT count(*) FROM maxsim.%I', r.token_table) INTO n;
    UPDATE maxsim.indexes i
       SET options = (i.options - 'fs_due') || pg_catalog.jsonb_build_object('fs_gen', gen, 'fs_rows', n,
                                                                           'fs_count', maxsim._fs_count(r.token_table, n))
     WHERE i.id = r.id;
    RETURN true;
END
$$;

-- End a training of index `index_id`: once generation `gen` is live, the old slot's codes and
-- codebook go (searches that began before the switch keep their snapshot); the session's training
-- lock is released (`in_session`). False when `gen` did not become live (a failed training: its slot
-- is cleared by the next begin).
CREATE OR REPLACE FUNCTION maxsim._fs_end(index_id integer, gen integer, in_session boolean) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    old integer;
    live boolean;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_fs_end', _fs_end.index_id);
    live := gen IS NOT NULL AND (r.options ->> 'fs_gen')::integer IS NOT DISTINCT FROM gen;
    IF live AND gen > 0 THEN
        old := (gen - 1) % 2;
        -- its codebook and sketch lists (034_sketch.sql): after a switch that committed (a client's
        -- training), by TRUNCATE once the transactions that may not see the switch have ended (before
        -- the codes' row locks are taken below: writers do not wait for that); else (one transaction)
        -- by DELETE
        IF in_session THEN
            PERFORM maxsim._fs_release(r.id, old, 30);
        ELSE
            PERFORM maxsim._sk_clear(r.id, old);
            EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE slot = $1', 'fs_coarse_' || r.id) USING old::smallint;
            EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE slot = $1', 'fs_fine_' || r.id) USING old::smallint;
        END IF;
        PERFORM pg_catalog.set_config('pgmaxsim.codes_only', 'on', true);
        EXECUTE pg_catalog.format('UPDATE maxsim.%I SET %I = NULL WHERE %I IS NOT NULL', r.token_table,
                                  'codes_' || old, 'codes_' || old);
        PERFORM pg_catalog.set_config('pgmaxsim.codes_only', 'off', true);
    END IF;
    IF in_session AND EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                               WHERE l.locktype = 'advisory' AND l.pid = pg_catalog.pg_backend_pid()
                                 AND l.classid = 1885762674::oid AND l.objid = r.id::oid AND l.objsubid = 2) THEN
        PERFORM pg_catalog.pg_advisory_unlock(1885762674, r.id);
    END IF;
    RETURN live;
END
$$;

-- Whether index `index_id` is due for training (option fs_due set, or past its threshold now).
CREATE OR REPLACE FUNCTION maxsim._fs_is_due(index_id integer) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_fs_is_due', _fs_is_due.index_id);
    RETURN r.options ? 'fs_due' OR maxsim._fs_due(r);
END
$$;

-- The whole training of index `index_id` inside the server, in this transaction (the same steps as
-- pgmaxsim.codebook.train; k-means and assignment by the PL/Python helpers of
-- 038_fs_train_compute.*.sql, which run as this function's owner).
CREATE OR REPLACE FUNCTION maxsim._fs_train_here(index_id integer) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    b record;
    s record;
    cb record;
    u record;
    c record;
    coarse @vector@.halfvec[];
    fine @vector@.halfvec[];
    ok boolean;
    n integer;
    filled bigint := 0;
    idle integer;
    pass integer;
    sk jsonb;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_fs_train_here', _fs_train_here.index_id);
    b := maxsim._fs_begin(r.id, false);
    IF b.gen IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: the first stage of index "%" is being trained by another session', r.name
            USING ERRCODE = 'lock_not_available';
    END IF;
    IF b.n_tokens = 0 THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" has no rows yet: nothing to train its first stage on', r.name
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    s := maxsim._fs_sample(r.id, 0, b.sample_rows, 0, b.sample_rows);
    cb := maxsim._fs_kmeans_py(s.tokens, s.n_tokens, r.dim, coalesce(r.options ->> 'storage', 'fp16'), b.n_tokens,
                               r.options, 0);
    coarse := ARRAY(SELECT (cb.coarse[(i - 1) * r.dim + 1 : i * r.dim])::@vector@.halfvec
                      FROM pg_catalog.generate_series(1, pg_catalog.cardinality(cb.coarse) / r.dim) AS i ORDER BY i);
    fine := ARRAY(SELECT (cb.fine[(i - 1) * r.dim + 1 : i * r.dim])::@vector@.halfvec
                    FROM pg_catalog.generate_series(1, pg_catalog.cardinality(cb.fine) / r.dim) AS i ORDER BY i);
    ok := maxsim._fs_put_codebook(r.id, b.gen, coarse, fine);
    -- fill, then hold writers off and fill what they wrote meanwhile, then switch
    FOR pass IN 1..2 LOOP
        IF pass = 2 THEN
            sk := maxsim._sk_merge(r.id, b.gen, false);   -- the new slot's sketch lists (034_sketch.sql)
            EXECUTE pg_catalog.format('LOCK TABLE maxsim.%I IN EXCLUSIVE MODE', r.token_table);
        END IF;
        idle := 0;
        LOOP
            u := maxsim._fs_uncoded(r.id, b.gen, 256);
            EXIT WHEN u.ids IS NULL;
            c := maxsim._fs_codes_py(r.id, b.gen, u.tokens, u.n_tokens, r.dim, coalesce(r.options ->> 'storage', 'fp16'));
            n := maxsim._fs_set_codes(r.id, b.gen, u.ids, u.versions, c.flat, c.lens);
            filled := filled + n;
            idle := CASE WHEN n = 0 THEN idle + 1 ELSE 0 END;
            IF idle > 100 THEN
                RAISE EXCEPTION 'pgmaxsim: first stage of index "%": rows keep changing while their codes are filled', r.name;
            END IF;
        END LOOP;
    END LOOP;
    ok := maxsim._fs_switch(r.id, b.gen);
    ok := maxsim._fs_end(r.id, b.gen, false);
    RETURN pg_catalog.jsonb_build_object('generation', b.gen, 'n_coarse', cb.n_coarse, 'n_fine', cb.n_fine,
                                         'sample_tokens', cb.sample_tokens, 'rows', b.n_rows, 'filled', filled);
END
$$;

-- ---------------------------------------------------------------- entry points

-- The index `name` checked for a training step: it exists, the caller manages it, it has a codebook
-- first stage (one clear line otherwise).
CREATE OR REPLACE FUNCTION maxsim._fs_train_target(name text) RETURNS maxsim.indexes
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
BEGIN
    r := maxsim._index_to_manage(name);
    IF r.pooling IS DISTINCT FROM 'codebook' THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" has first stage ''%''; only a ''codebook'' first stage is trained', name, r.pooling
            USING ERRCODE = 'wrong_object_type',
                  HINT = 'create the index with options => ''{"first_stage": "codebook"}''';
    END IF;
    RETURN r;
END
$$;

-- After a write to index `name`: mark it due for training when it crossed its threshold (see the top
-- of this file). True when this call marked it. Writers that are not maxsim.upsert call it
-- (pgmaxsim.writes.write_rows).
CREATE OR REPLACE FUNCTION maxsim.first_stage_mark(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._index_to_manage(name);
    IF r.pooling IS DISTINCT FROM 'codebook' THEN
        RETURN false;
    END IF;
    done := maxsim._fs_mark(r.id);
    RETURN done;
END
$$;

-- The first stage of index `name`: its kind, live generation (NULL: not trained, searched exactly),
-- rows at the last training, since when a training is due (NULL: not due), whether a session is
-- training it now. For roles that may search it.
CREATE OR REPLACE FUNCTION maxsim.first_stage_status(name text)
RETURNS TABLE (first_stage text, generation integer, trained_rows bigint, due_since timestamptz, training boolean)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
BEGIN
    r := maxsim._index_to_read(name);
    first_stage := r.pooling;
    generation := (r.options ->> 'fs_gen')::integer;
    trained_rows := (r.options ->> 'fs_rows')::bigint;
    due_since := (r.options ->> 'fs_due')::timestamptz;
    training := EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                         WHERE l.locktype = 'advisory' AND l.classid = 1885762674::oid AND l.objid = r.id::oid
                           AND l.objsubid = 2 AND l.granted);
    RETURN NEXT;
END
$$;

-- The codebook indexes the caller manages (the worker's trainer's work), never the shadow of a storage
-- switch (its rows are coded under its index's codebook: pgmaxsim.retier).
CREATE OR REPLACE FUNCTION maxsim._fs_managed() RETURNS SETOF maxsim.indexes
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    regs maxsim.indexes[];
BEGIN
    regs := maxsim._registry();
    RETURN QUERY SELECT g.* FROM pg_catalog.unnest(regs) AS g
                  WHERE g.pooling = 'codebook' AND g.name NOT LIKE '%#retier' AND maxsim._may_manage(g.source);
END
$$;

-- Of maxsim._fs_managed, those marked due for training, the longest due first.
CREATE OR REPLACE FUNCTION maxsim.first_stage_due() RETURNS TABLE (name text, due_since timestamptz)
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT g.name, (g.options ->> 'fs_due')::timestamptz FROM maxsim._fs_managed() AS g
     WHERE g.options ? 'fs_due' ORDER BY 2, 1
$$;

-- Of maxsim._fs_managed, the trained ones, whose residual sketch lists the worker's trainer keeps
-- merged (maxsim.first_stage_sketch_merge(name, true): writers never merge).
CREATE OR REPLACE FUNCTION maxsim.first_stage_trained() RETURNS TABLE (name text)
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT g.name FROM maxsim._fs_managed() AS g WHERE g.options ? 'fs_gen' ORDER BY 1
$$;

-- Step "begin" (see the top of this file): gen NULL when another session is training the index. The
-- training lock is this session's until first_stage_train_end (or the session ends).
CREATE OR REPLACE FUNCTION maxsim.first_stage_train_begin(name text, OUT gen integer, OUT n_rows bigint,
                                                          OUT n_tokens bigint, OUT sample_rows integer)
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    b record;
BEGIN
    r := maxsim._fs_train_target(name);
    b := maxsim._fs_begin(r.id, true);
    gen := b.gen; n_rows := b.n_rows; n_tokens := b.n_tokens; sample_rows := b.sample_rows;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.first_stage_train_sample(name text, seed integer, take integer, off integer,
                                                           lim integer, OUT tokens bytea[], OUT n_tokens integer[])
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    s record;
BEGIN
    r := maxsim._fs_train_target(name);
    s := maxsim._fs_sample(r.id, seed, take, off, lim);
    tokens := s.tokens; n_tokens := s.n_tokens;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.first_stage_train_codebook(name text, gen integer, coarse @vector@.halfvec[],
                                                             fine @vector@.halfvec[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._fs_train_target(name);
    done := maxsim._fs_put_codebook(r.id, gen, coarse, fine);
END
$$;

CREATE OR REPLACE FUNCTION maxsim.first_stage_train_uncoded(name text, gen integer, lim integer, OUT ids text[],
                                                            OUT versions bigint[], OUT tokens bytea[],
                                                            OUT n_tokens integer[])
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    u record;
BEGIN
    r := maxsim._fs_train_target(name);
    u := maxsim._fs_uncoded(r.id, gen, lim);
    ids := u.ids; versions := u.versions; tokens := u.tokens; n_tokens := u.n_tokens;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.first_stage_train_codes(name text, gen integer, ids text[], versions bigint[],
                                                          flat integer[], lens integer[]) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    n integer;
BEGIN
    r := maxsim._fs_train_target(name);
    n := maxsim._fs_set_codes(r.id, gen, ids, versions, flat, lens);
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.first_stage_train_switch(name text, gen integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._fs_train_target(name);
    done := maxsim._fs_switch(r.id, gen);
    RETURN done;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.first_stage_train_end(name text, gen integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._fs_train_target(name);
    done := maxsim._fs_end(r.id, gen, true);
    RETURN done;
END
$$;

-- Train the codebook first stage of index `name` now and switch to it, inside the server in one
-- transaction (for applications without the pgmaxsim worker; needs plpython3u). Searches go on and
-- use the old codebook until this commits; writers of new rows wait only for the last fill and the
-- switch, writers replacing existing rows wait for the whole training (its row locks). Returns what
-- was built: generation, n_coarse, n_fine, sample_tokens, rows.
CREATE OR REPLACE FUNCTION maxsim.train_first_stage(name text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done jsonb;
BEGIN
    r := maxsim._fs_train_target(name);
    IF NOT maxsim.has_plpython() THEN
        RAISE EXCEPTION 'pgmaxsim: maxsim.train_first_stage needs plpython3u on the server; train from a client instead'
            USING ERRCODE = 'feature_not_supported',
                  HINT = pg_catalog.format('pgmaxsim index reindex %s --first-stage (or run pgmaxsim worker)', name);
    END IF;
    done := maxsim._fs_train_here(r.id);
    RETURN done;
END
$$;
