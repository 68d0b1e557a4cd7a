-- pgmaxsim functions: the token-level first stage `codebook` (option first_stage; bench/FIRST_STAGE.md).
-- Idempotent file (see 010_registry.sql for the privilege layering).
--
-- A global two-level codebook per index (pgmaxsim.firststage): n_coarse spherical k-means centroids, and
-- inside each coarse cell n_fine fine centroids; a token's code is cell * n_fine + fine. Per index <id>:
--
--   maxsim.fs_coarse_<id> (slot, cell, vec)            the coarse centroids of each codebook slot
--   maxsim.fs_fine_<id>   (slot, code, cell, vec)      the fine centroids (code = cell * n_fine + j)
--   token table columns codes_0, codes_1 int4[]        a row's DISTINCT codes under the codebook of slot 0 / 1,
--                                                      each with a partial index of the rows without codes,
--                                                      and without plpython3u a GIN index (PostgreSQL's own
--                                                      posting lists: that server's first stage)
--
-- Two slots so that a retrain (pgmaxsim index reindex NAME --first-stage, pgmaxsim.codebook) builds the
-- new codebook and codes beside the live ones and switches by one registry update: option fs_gen (the
-- live generation; its slot is fs_gen % 2; absent = never trained). Searches read the registry and the
-- tables in one snapshot (STABLE functions), so each one uses one complete codebook. Deletes and
-- TRUNCATE need nothing: the codes are columns of the token row. A row whose live codes are NULL
-- (written before training, by a writer that could not assign) is always a candidate: never lost.
-- A per-row residual sketch (bytea) for a later, finer stage would be one more column here.

-- The live codebook slot of an index (NULL: not trained, or not a codebook index).
CREATE OR REPLACE FUNCTION maxsim._fs_slot(r maxsim.indexes) RETURNS integer
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT CASE WHEN r.pooling = 'codebook' THEN ((r.options ->> 'fs_gen')::integer % 2) END $$;

-- The rows a codebook index's residual sketch lists may lack, without reading every row
-- (034_sketch.sql): maxsim.skpend_<id> (version) holds every version written into the token table
-- since the live lists were last merged, and may hold more (versions merged into another slot, or no
-- longer live; a merge into the live generation removes those, maxsim._sk_pending_forget). The
-- token table's AFTER triggers add each new version in the writing transaction (a codes-only update
-- keeps its version and adds nothing), and TRUNCATE empties it. So the rows not merged into the
-- live lists are among its few entries, and a search finds them in O(pending) instead of an
-- anti-join over every row. Named skpend_<id>, not fs_*: a storage switch swaps it with the token
-- table whose versions it names (045_switch.sql), and the triggers are repointed with the others.
-- Created with the sketch tables (maxsim._sk_create): a codebook index older than it gets it at
-- its next merge, which merges every row first; until then searches check every row, as before.
CREATE OR REPLACE FUNCTION maxsim._sk_pending_row() RETURNS trigger
LANGUAGE plpgsql
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format('INSERT INTO maxsim.%I (version) VALUES ($1) ON CONFLICT DO NOTHING', 'skpend_' || TG_ARGV[0])
        USING NEW.version;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION maxsim._sk_pending_truncate() RETURNS trigger
LANGUAGE plpgsql
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format('DELETE FROM maxsim.%I', 'skpend_' || TG_ARGV[0]);
    RETURN NULL;
END
$$;

-- The pending-versions table of index `index_id` and its triggers on token table `tok`, when missing
-- (schema owner, from maxsim._sk_create).
CREATE OR REPLACE FUNCTION maxsim._sk_pending_create(index_id integer, tok text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', 'skpend_' || index_id)) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE pg_catalog.format('CREATE TABLE maxsim.%I (version bigint PRIMARY KEY)', 'skpend_' || index_id);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER maxsim_skpend_ins AFTER INSERT ON maxsim.%I'
        ' FOR EACH ROW EXECUTE FUNCTION maxsim._sk_pending_row(%L)', tok, index_id);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER maxsim_skpend_upd AFTER UPDATE ON maxsim.%I'
        ' FOR EACH ROW WHEN (NEW.version IS DISTINCT FROM OLD.version) EXECUTE FUNCTION maxsim._sk_pending_row(%L)',
        tok, index_id);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER maxsim_skpend_truncate AFTER TRUNCATE ON maxsim.%I'
        ' FOR EACH STATEMENT EXECUTE FUNCTION maxsim._sk_pending_truncate(%L)', tok, index_id);
    -- the rows written before the triggers (an index older than them): every version not merged into
    -- the live slot's lists. CREATE TRIGGER waited for the writers in flight, and holds new ones off
    -- until this transaction ends, so this statement's snapshot sees every row the triggers missed.
    EXECUTE pg_catalog.format(
        'INSERT INTO maxsim.%1$I (version) SELECT t.version FROM maxsim.%2$I t'
        ' WHERE NOT EXISTS (SELECT 1 FROM maxsim.%3$I s WHERE s.slot = $1 AND s.version = t.version)',
        'skpend_' || index_id, tok, 'fs_skrow_' || index_id)
        USING (SELECT ((i.options ->> 'fs_gen')::integer % 2)::smallint FROM maxsim.indexes i WHERE i.id = index_id);
END
$$;

-- After a merge into the live generation (slot `slot`): forget the pending versions now merged into
-- its lists or no longer live (schema owner, from maxsim._sk_merge). Entries of writers still in
-- flight are not visible here and stay.
CREATE OR REPLACE FUNCTION maxsim._sk_pending_forget(index_id integer, tok text, slot integer) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', 'skpend_' || index_id)) IS NULL THEN
        RETURN;
    END IF;
    EXECUTE pg_catalog.format(
        'DELETE FROM maxsim.%1$I p WHERE EXISTS (SELECT 1 FROM maxsim.%2$I s WHERE s.slot = $1 AND s.version = p.version)'
        ' OR NOT EXISTS (SELECT 1 FROM maxsim.%3$I t WHERE t.version = p.version)',
        'skpend_' || index_id, 'fs_skrow_' || index_id, tok) USING slot::smallint;
END
$$;

-- The per-index objects of the codebook first stage (called by _create_index as the schema owner).
CREATE OR REPLACE FUNCTION maxsim._fs_create(index_id integer, tok text, dim integer) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    s integer;
BEGIN
    FOR s IN 0..1 LOOP
        EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I ADD COLUMN %I integer[]', tok, 'codes_' || s);
        -- index names start with the token table's name: table swaps (retier, re-embedding) rename them along.
        -- The codes' GIN only where the first stage reads it (no plpython3u: _fs_candidates' pure-SQL
        -- path); with plpython3u the sketch lists and the probe score over the codes rank the rows
        -- (pgmaxsim.plpy.sketch.candidates), and a GIN would cost ~0.7 % of the raw fp16 bytes and
        -- ~2.5 ms of server time a written row for nothing (revision 0009 drops older ones).
        IF NOT maxsim.has_plpython() THEN
            EXECUTE pg_catalog.format('CREATE INDEX %I ON maxsim.%I USING gin (%I)',
                                      tok || '_codes_' || s || '_gin', tok, 'codes_' || s);
        END IF;
        EXECUTE pg_catalog.format('CREATE INDEX %I ON maxsim.%I (id) WHERE %I IS NULL',
                                  tok || '_uncoded_' || s, tok, 'codes_' || s);
    END LOOP;
    -- partitioned by slot, as the sketch lists (034_sketch.sql: maxsim._sk_create adds the partitions):
    -- the old slot's codebook goes by TRUNCATE after a switch (maxsim._fs_release)
    EXECUTE pg_catalog.format(
        'CREATE TABLE maxsim.%I (slot smallint NOT NULL, cell integer NOT NULL, vec @vector@.halfvec(%s) NOT NULL,'
        ' PRIMARY KEY (slot, cell)) PARTITION BY LIST (slot)', 'fs_coarse_' || index_id, dim);
    EXECUTE pg_catalog.format(
        'CREATE TABLE maxsim.%I (slot smallint NOT NULL, code integer NOT NULL, cell integer NOT NULL,'
        ' vec @vector@.halfvec(%s) NOT NULL, PRIMARY KEY (slot, code)) PARTITION BY LIST (slot)', 'fs_fine_' || index_id, dim);
    EXECUTE pg_catalog.format('CREATE INDEX %I ON maxsim.%I (slot, cell)',
                              'fs_fine_' || index_id || '_cell', 'fs_fine_' || index_id);
    PERFORM maxsim._sk_create(index_id, tok);   -- the residual sketch lists (034_sketch.sql)
END
$$;

-- Bytes of the codebook tables of an index (0 when it has none; the codes are in the token table).
CREATE OR REPLACE FUNCTION maxsim._fs_bytes(index_id integer) RETURNS bigint
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT maxsim._tables_bytes(ARRAY['fs_coarse_' || index_id, 'fs_fine_' || index_id]) + maxsim._sk_bytes(index_id)
$$;

-- One row's distinct codes under codebook `slot` of index `index_id` (pure SQL: nearest coarse
-- centroid, then the nearest fine centroid of that cell; ties to the lowest number, as
-- pgmaxsim.firststage.assign's argmax). NULL when that slot holds no codebook. Runs as its caller
-- (the schema owner, from maxsim._write through maxsim._fs_assign). ~4 s for a 1,000-token row of
-- d=128 at 125K codes on a loaded 2-core machine: servers with plpython3u assign in NumPy instead
-- (036_firststage_assign.plpython.sql).
CREATE OR REPLACE FUNCTION maxsim._fs_assign_sql(index_id integer, slot integer, tokens @vector@.halfvec[]) RETURNS integer[]
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    out integer[];
BEGIN
    IF slot IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE pg_catalog.format($q$
        SELECT pg_catalog.array_agg(DISTINCT s.code ORDER BY s.code) FROM (
          SELECT (SELECT f.code FROM maxsim.%2$I f
                   WHERE f.slot = $2 AND f.cell = (SELECT c.cell FROM maxsim.%1$I c WHERE c.slot = $2
                                                    ORDER BY c.vec OPERATOR(@vector@.<#>) t.v, c.cell LIMIT 1)
                   ORDER BY f.vec OPERATOR(@vector@.<#>) t.v, f.code LIMIT 1) AS code
            FROM pg_catalog.unnest($1) AS t(v)) s WHERE s.code IS NOT NULL
        $q$, 'fs_coarse_' || index_id, 'fs_fine_' || index_id)
        INTO out USING tokens, slot::smallint;
    RETURN out;
END
$$;

-- The first stage of a codebook index: the `n` best rows by the probe score, plus every row without
-- live codes; NULL = score every row (not trained yet, or too many rows without codes).
-- With plpython3u, pgmaxsim.plpy.sketch.candidates ranks (maxsim._sk_candidates). Without (the
-- pure-SQL path below, over the codes' GIN that only such servers have): each query token probes its
-- `coarse_probe` nearest coarse cells and, among their fine centroids, its `nprobe` nearest codes; the rows holding a probed code come from the GIN index (one scan per
-- probed code); a row scores, per query token, the best similarity among the probed codes it holds,
-- else that token's lowest probed similarity (XTR-WARP's missing-similarity estimate). One statement.
CREATE OR REPLACE FUNCTION maxsim._fs_candidates(r maxsim.indexes, query @vector@.halfvec[], n integer) RETURNS text[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    slot integer := maxsim._fs_slot(r);
    col text;
    uncoded text[];
    result text[];
    cap integer := greatest(1000, n);
    trained boolean;
    sketched text[];
    top integer := coalesce((r.options ->> 'sketch_top')::integer, 10);
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_fs_candidates');
    IF slot IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT 1 FROM maxsim.%I c WHERE c.slot = $1)', 'fs_coarse_' || r.id)
        INTO trained USING slot::smallint;
    IF NOT trained THEN
        RETURN NULL;
    END IF;
    col := 'codes_' || slot;
    EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(s.id::text) FROM (SELECT t.id FROM maxsim.%I t WHERE t.%I IS NULL LIMIT $1) s',
                              r.token_table, col)
        INTO uncoded USING cap + 1;
    IF pg_catalog.cardinality(uncoded) > cap THEN
        RETURN NULL;
    END IF;
    -- With plpython3u the first stage is pgmaxsim.plpy.sketch.candidates (034_sketch_compute.plpython.sql:
    -- the residual sketch lists, and the probe score over the codes where no list ranks a row);
    -- without, NULL and the codes' GIN ranks below.
    sketched := maxsim._sk_candidates(r.id, query, n, cap);
    IF sketched IS NOT NULL THEN
        RETURN sketched || coalesce(uncoded, '{}');
    END IF;
    EXECUTE pg_catalog.format($q$
        WITH q AS (SELECT u.v, u.i FROM pg_catalog.unnest($1) WITH ORDINALITY AS u(v, i)),
        cells AS (SELECT q.i, q.v, c.cell FROM q CROSS JOIN LATERAL (
                    SELECT c.cell FROM maxsim.%1$I c WHERE c.slot = $2
                     ORDER BY c.vec OPERATOR(@vector@.<#>) q.v LIMIT $3) c),
        ranked AS (SELECT cells.i, f.code, -(f.vec OPERATOR(@vector@.<#>) cells.v) AS sim,
                          pg_catalog.row_number() OVER (PARTITION BY cells.i ORDER BY f.vec OPERATOR(@vector@.<#>) cells.v, f.code) AS rn
                     FROM cells JOIN maxsim.%2$I f ON f.slot = $2 AND f.cell = cells.cell),
        pr AS (SELECT ranked.i, ranked.code, ranked.sim FROM ranked WHERE ranked.rn <= $4),
        fl AS (SELECT pr.i, min(pr.sim) AS f FROM pr GROUP BY pr.i),
        hits AS (SELECT pr.i, pr.sim, h.id FROM pr CROSS JOIN LATERAL (
                    SELECT t.id FROM maxsim.%3$I t WHERE t.%4$I OPERATOR(pg_catalog.@>) ARRAY[pr.code]) h),
        gain AS (SELECT hits.i, hits.id, max(hits.sim) - min(fl.f) AS g
                   FROM hits JOIN fl ON fl.i = hits.i GROUP BY hits.i, hits.id)
        SELECT pg_catalog.array_agg(s.id::text) FROM (
            SELECT gain.id FROM gain GROUP BY gain.id ORDER BY sum(gain.g) DESC, gain.id LIMIT $5) s
        $q$, 'fs_coarse_' || r.id, 'fs_fine_' || r.id, r.token_table, col)
        INTO result USING query, slot::smallint, (r.options ->> 'coarse_probe')::integer,
                          (r.options ->> 'nprobe')::integer, n;
    -- the rows whose tokens the residual sketch lists rank closest to query tokens (034_sketch.sql;
    -- empty without plpython3u or lists): a few more than the rescoring keeps first, for RLS to filter
    IF top > 0 THEN
        sketched := maxsim._sk_top(r.id, query, greatest(top, n / 16));
        result := coalesce(result, '{}') || ARRAY(SELECT u.k FROM pg_catalog.unnest(sketched) AS u(k)
                                                   WHERE NOT (u.k = ANY (coalesce(result, '{}'))));
    END IF;
    RETURN coalesce(result, '{}') || coalesce(uncoded, '{}');
END
$$;

-- The live codebook of an index: its generation and centroids in code order (NULLs when not trained).
-- For writers that may manage the index but not read maxsim's tables (granted roles): they assign
-- their rows' codes client-side like the schema owner does (pgmaxsim.codebook.live).
CREATE OR REPLACE FUNCTION maxsim._fs_codebook(index_id integer, OUT gen integer, OUT coarse @vector@.halfvec[],
                                               OUT fine @vector@.halfvec[])
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_fs_codebook', index_id);
    gen := (r.options ->> 'fs_gen')::integer;
    IF maxsim._fs_slot(r) IS NULL THEN
        RETURN;
    END IF;
    EXECUTE pg_catalog.format(
        'SELECT (SELECT pg_catalog.array_agg(c.vec ORDER BY c.cell) FROM maxsim.%I c WHERE c.slot = $1),'
        ' (SELECT pg_catalog.array_agg(f.vec ORDER BY f.code) FROM maxsim.%I f WHERE f.slot = $1)',
        'fs_coarse_' || r.id, 'fs_fine_' || r.id)
        INTO coarse, fine USING maxsim._fs_slot(r)::smallint;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.first_stage_codebook(name text, OUT gen integer, OUT coarse @vector@.halfvec[],
                                                       OUT fine @vector@.halfvec[])
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    res record;
BEGIN
    r := maxsim._index_to_manage(name);
    res := maxsim._fs_codebook(r.id);
    gen := res.gen; coarse := res.coarse; fine := res.fine;
END
$$;
