-- pgmaxsim functions: residual sketch lists of the codebook first stage (pgmaxsim.sketch,
-- pgmaxsim.sketch_lists; bench/FIRST_STAGE.md "Sketch lists"). Idempotent file.
--
-- A codebook names the rows that hold a query token's codes; among the ~80 tokens of a code it
-- cannot tell a near-copy of the query token from the rest. Per index <id>, for each codebook slot:
--
--   maxsim.fs_sk_<id>    (slot, code, seg, base, offs, sk)   cluster-major lists: the tokens of `code`
--                        written by one merge (`seg`): their rows' versions (uint32 offsets from
--                        `base`, or int64) and their 8-byte residual sign sketches, in the same order
--   maxsim.fs_skrow_<id> (slot, version)                      the row versions merged into the lists
--   maxsim.fs_skm_<id>   (slot, gen, mag)                     the sketch codec of the slot's codebook
--   btree <tok>_version on the token table                    list entry -> row (only live versions map)
--
-- Entries name a row by its version (maxsim._tok_row gives every write a new one), so an updated or
-- deleted row's old entries map to nothing and drop out at query time; TRUNCATE needs nothing either.
-- Rows written since the last merge are not in the lists: they are candidates anyway (all of them up
-- to 1,000, past that the best by the codebook's probe score over their codes), and a merge (the
-- worker's trainer, reindex --first-stage, first_stage_sketch_merge; never a writer:
-- pgmaxsim.worker.train) adds them as a new segment; more than a few segments are compacted into one
-- (dead entries dropped; a rewrite of all of them is swapped in as a table of its own by the next
-- merge call, maxsim._sk_swap). A retrain
-- builds the other slot's lists before the codebook switch, so each search sees one slot's codebook
-- and lists in its snapshot. Only servers without plpython3u have a GIN over the codes: its path
-- (maxsim._fs_candidates) is their first stage alone.

-- The per-index sketch tables (called by maxsim._fs_create for new indexes, and by
-- pgmaxsim.sketch_lists for a codebook index created before them; schema owner). fs_sk_<id> and
-- fs_skrow_<id>, like the codebook's fs_coarse_<id> and fs_fine_<id> (035_firststage.sql), are
-- partitioned by slot (partitions fs_sk_a_<id> / fs_sk_b_<id> for slots 0 / 1, the same for the
-- others; created here): the old slot's tables go by TRUNCATE after a switch (maxsim._fs_release),
-- so their bytes return to the system at once. Tables made before this layout stay plain (cleared
-- by DELETE).
CREATE OR REPLACE FUNCTION maxsim._sk_create(index_id integer, tok text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    s integer;
    t text;
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE TABLE IF NOT EXISTS maxsim.%I (slot smallint NOT NULL, code integer NOT NULL, seg integer NOT NULL,'
        ' base bigint NOT NULL, offs bytea NOT NULL, sk bytea NOT NULL, PRIMARY KEY (slot, code, seg))'
        ' PARTITION BY LIST (slot)', 'fs_sk_' || index_id);
    EXECUTE pg_catalog.format(
        'CREATE TABLE IF NOT EXISTS maxsim.%I (slot smallint NOT NULL, version bigint NOT NULL, PRIMARY KEY (slot, version))'
        ' PARTITION BY LIST (slot)', 'fs_skrow_' || index_id);
    FOR s, t IN SELECT g.s, k.t FROM pg_catalog.generate_series(0, 1) AS g(s),
                                   pg_catalog.unnest(ARRAY['fs_coarse_', 'fs_fine_', 'fs_sk_', 'fs_skrow_']) AS k(t) LOOP
        IF maxsim._sk_part(t || index_id, s) IS NULL AND EXISTS (
               SELECT 1 FROM pg_catalog.pg_class c
                WHERE c.oid = pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', t || index_id)) AND c.relkind = 'p') THEN
            EXECUTE pg_catalog.format('CREATE TABLE maxsim.%I PARTITION OF maxsim.%I FOR VALUES IN (%s)',
                                      t || pg_catalog.chr(97 + s) || '_' || index_id, t || index_id, s);
        END IF;
    END LOOP;
    EXECUTE pg_catalog.format(
        'CREATE TABLE IF NOT EXISTS maxsim.%I (slot smallint PRIMARY KEY, gen integer NOT NULL, mag real[] NOT NULL)',
        'fs_skm_' || index_id);
    IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', tok || '_version')) IS NULL THEN
        EXECUTE pg_catalog.format('CREATE INDEX %I ON maxsim.%I (version)', tok || '_version', tok);
    END IF;
    PERFORM maxsim._sk_pending_create(index_id, tok);   -- the versions not merged yet (035_firststage.sql)
END
$$;

-- The partition of maxsim table `parent` (fs_coarse_, fs_fine_, fs_sk_, fs_skrow_<id>) holding slot `slot`, found by its
-- bound (its name follows its parent's through table swaps); NULL when `parent` is a plain table.
CREATE OR REPLACE FUNCTION maxsim._sk_part(parent text, slot integer) RETURNS regclass
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT i.inhrelid::regclass FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', parent))
       AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) = pg_catalog.format('FOR VALUES IN (''%s'')', slot)
$$;

-- Bytes of maxsim tables `names` with their indexes and, for a partitioned one, its partitions (0 for
-- a missing one).
CREATE OR REPLACE FUNCTION maxsim._tables_bytes(names text[]) RETURNS bigint
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(pg_catalog.pg_total_relation_size(c.oid)), 0)::bigint
      FROM pg_catalog.unnest(names) AS u(name)
      JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', u.name))
        OR c.oid IN (SELECT i.inhrelid FROM pg_catalog.pg_inherits i
                      WHERE i.inhparent = pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', u.name)))
$$;

-- The table a full compaction of slot `slot`'s lists is written into (pgmaxsim.plpy.sketch_merge), to be
-- swapped for the slot's partition by maxsim._sk_swap: the partition's name + '_next'. NULL when the
-- lists are a plain table (an index older than the partitions: compacted in place).
CREATE OR REPLACE FUNCTION maxsim._sk_next(index_id integer, slot integer) RETURNS text
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT c.relname::text || '_next' FROM pg_catalog.pg_class c WHERE c.oid = maxsim._sk_part('fs_sk_' || index_id, slot) $$;

-- Wait up to `wait_s` seconds for every client transaction of this database in progress now (but the
-- caller's) to end, as CREATE INDEX CONCURRENTLY does (their virtual transaction ids in pg_locks,
-- which every role may read). A transaction that begins later sees, in all its snapshots, what had
-- committed before this call. True: they all ended.
CREATE OR REPLACE FUNCTION maxsim._wait_older(wait_s double precision) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    older text[];
    until timestamptz := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => wait_s);
BEGIN
    older := ARRAY(SELECT l.virtualxid FROM pg_catalog.pg_locks l
                     JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid AND a.backend_type = 'client backend'
                                                       AND a.datname = pg_catalog.current_database()
                    WHERE l.locktype = 'virtualxid' AND l.granted AND l.pid <> pg_catalog.pg_backend_pid());
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                        WHERE l.locktype = 'virtualxid' AND l.granted AND l.virtualxid = ANY (older)) THEN
            RETURN true;
        END IF;
        EXIT WHEN pg_catalog.clock_timestamp() >= until;
        PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
    RETURN false;
END
$$;

-- Take table `rel` in ACCESS EXCLUSIVE mode with NOWAIT, up to 20 tries 50 ms apart, so that no
-- search queues behind the lock while it waits (the lock is held until the caller's transaction ends).
-- False: every try found it in use.
CREATE OR REPLACE FUNCTION maxsim._lock_nowait(rel regclass) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    FOR try IN 1..20 LOOP
        BEGIN
            EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE NOWAIT', rel);
            RETURN true;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM pg_catalog.pg_sleep(0.05);
        END;
    END LOOP;
    RETURN false;
END
$$;

-- Swap in the lists a full compaction of slot `slot` wrote aside (maxsim._sk_next), in place of the
-- slot's partition, whose file holds the old entries too: a rewrite in place (DELETE, INSERT) would
-- leave them to VACUUM, which keeps the file's size, and the lists would stay at ~2x their live bytes.
-- The caller holds the index's merge lock; every merge since the rewrite added its segment to the
-- rewritten table too (pgmaxsim.plpy.sketch_merge), so it holds every entry of the partition that
-- maps to a live row.
--
-- Swapping tables is not MVCC-safe: a search whose snapshot predates the rewrite's commit would find
-- the new table empty. So the rewrite commits first (this runs only in a transaction that has written
-- nothing yet, NULL otherwise: the rewrite, and the segments merges added to it, committed before;
-- and a training's steps, which hold locks, never wait here), then this waits up to `wait_s` seconds
-- for the transactions in progress to end (maxsim._wait_older) and takes the lists' table with NOWAIT, a few tries apart, so
-- that no search queues behind it; the caller commits at once after a swap (searches wait for that
-- commit, not for a merge). True: swapped. False: transactions or searches held on, the rewritten
-- table is dropped and the partition is as it was (the caller compacts in place). NULL: nothing to swap.
CREATE OR REPLACE FUNCTION maxsim._sk_swap(index_id integer, slot integer, wait_s double precision) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    parent text := 'fs_sk_' || index_id;
    nxt text := maxsim._sk_next(index_id, slot);
    part text;
    held boolean := false;
BEGIN
    IF pg_catalog.pg_current_xact_id_if_assigned() IS NOT NULL
       OR nxt IS NULL OR pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', nxt)) IS NULL THEN
        RETURN NULL;
    END IF;
    part := pg_catalog.left(nxt, -5);
    IF maxsim._wait_older(wait_s) THEN
        held := maxsim._lock_nowait(pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', parent)));
    END IF;
    IF NOT held THEN
        EXECUTE pg_catalog.format('DROP TABLE maxsim.%I', nxt);
        RETURN false;
    END IF;
    EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I DETACH PARTITION maxsim.%I', parent, part);
    EXECUTE pg_catalog.format('DROP TABLE maxsim.%I', part);
    EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I ATTACH PARTITION maxsim.%I FOR VALUES IN (%s)', parent, nxt, slot);
    EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I RENAME TO %I', nxt, part);
    IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', part || '_pkey')) IS NULL
       AND pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', nxt || '_pkey')) IS NOT NULL THEN
        EXECUTE pg_catalog.format('ALTER INDEX maxsim.%I RENAME TO %I', nxt || '_pkey', part || '_pkey');
    END IF;
    RETURN true;
END
$$;

-- Bytes of the sketch tables of an index (0 when it has none; partitions included).
CREATE OR REPLACE FUNCTION maxsim._sk_bytes(index_id integer) RETURNS bigint
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim._tables_bytes(pg_catalog.array_remove(ARRAY['fs_sk_' || index_id, 'fs_skrow_' || index_id,
          'fs_skm_' || index_id, 'skpend_' || index_id, maxsim._sk_next(index_id, 0), maxsim._sk_next(index_id, 1)], NULL)) $$;

CREATE OR REPLACE FUNCTION maxsim._sk_drop(index_id integer) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    nxt text;
BEGIN
    FOR nxt IN SELECT n.t FROM pg_catalog.generate_series(0, 1) AS g(s), maxsim._sk_next(index_id, g.s) AS n(t)
                WHERE n.t IS NOT NULL LOOP
        EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I', nxt);   -- a rewrite not swapped in yet
    END LOOP;
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I, maxsim.%I, maxsim.%I, maxsim.%I',
                              'fs_sk_' || index_id, 'fs_skrow_' || index_id, 'fs_skm_' || index_id, 'skpend_' || index_id);
END
$$;

-- Drop slot `slot`'s lists, merged versions and codec, by DELETE (the old slot after a codebook
-- switch made in the same transaction: maxsim.train_first_stage). Runs as its caller (the schema owner).
CREATE OR REPLACE FUNCTION maxsim._sk_clear(index_id integer, slot integer) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    t text;
    nxt text := maxsim._sk_next(index_id, slot);
BEGIN
    IF nxt IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I', nxt);   -- a rewrite not swapped in yet
    END IF;
    FOREACH t IN ARRAY ARRAY['fs_sk_', 'fs_skrow_', 'fs_skm_'] LOOP
        IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', t || index_id)) IS NOT NULL THEN
            EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE slot = $1', t || index_id) USING slot::smallint;
        END IF;
    END LOOP;
END
$$;

-- Drop slot `slot`'s codebook (fs_coarse, fs_fine), sketch lists, merged versions and codec, and give
-- their bytes back at once: TRUNCATE of the slot's partitions (a DELETE leaves them to VACUUM, and a
-- plain VACUUM keeps the file's size). Not its rows' codes: columns of the token table.
-- For the old slot after a switch that has committed (maxsim._fs_end), and a slot about to be rebuilt
-- (pgmaxsim.plpy.sketch_merge). Runs as its caller (the schema owner, from there).
--
-- TRUNCATE is not MVCC-safe: a search whose snapshot predates the switch would still take the old
-- slot for the live one and find its lists empty (every row "not merged": a poorer first stage). So
-- it waits, up to `wait_s` seconds, for every client transaction in progress when it is called to end
-- (their virtual transaction ids in pg_locks, which every role may read; what CREATE INDEX
-- CONCURRENTLY waits for): a transaction that began after the switch sees it in all its snapshots.
-- Then each partition is taken with NOWAIT, a few tries apart, so that no search queues behind it.
-- Transactions still running after `wait_s` (an idle session holding one open, a long write), or
-- tables that predate the partitions: the rows are deleted instead, as before.
CREATE OR REPLACE FUNCTION maxsim._fs_release(index_id integer, slot integer, wait_s double precision) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    t text;
    part regclass;
    quiet boolean := maxsim._wait_older(wait_s);
    done boolean;
    all_done boolean := true;
    nxt text := maxsim._sk_next(index_id, slot);
BEGIN
    IF nxt IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I', nxt);   -- a rewrite not swapped in yet
    END IF;
    FOREACH t IN ARRAY ARRAY['fs_coarse_', 'fs_fine_', 'fs_sk_', 'fs_skrow_'] LOOP
        CONTINUE WHEN pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', t || index_id)) IS NULL;
        part := CASE WHEN quiet THEN maxsim._sk_part(t || index_id, slot) END;
        done := false;
        IF part IS NOT NULL AND maxsim._lock_nowait(part) THEN
            EXECUTE pg_catalog.format('TRUNCATE %s', part);
            done := true;
        END IF;
        IF NOT done THEN
            EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE slot = $1', t || index_id) USING slot::smallint;
            all_done := false;
        END IF;
    END LOOP;
    IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', 'fs_skm_' || index_id)) IS NOT NULL THEN
        EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE slot = $1', 'fs_skm_' || index_id) USING slot::smallint;
    END IF;
    RETURN all_done;
END
$$;

-- Merge the rows not in the lists of generation `gen` yet (pgmaxsim.plpy.sketch_merge; `only_if_due`:
-- only once enough rows are pending, or some are and no row was written for a while; `settle`: then
-- rewrite the lists as one segment). The tables are created first for an index older than them.
-- Without plpython3u: nothing (searches use the codes' GIN path there, maxsim._fs_candidates).
CREATE OR REPLACE FUNCTION maxsim._sk_merge(index_id integer, gen integer, only_if_due boolean, settle boolean DEFAULT false) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    res jsonb;
    swapped boolean;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_sk_merge', _sk_merge.index_id);
    IF r.pooling <> 'codebook' OR gen IS NULL OR NOT maxsim.has_plpython() THEN
        RETURN NULL;
    END IF;
    PERFORM maxsim._sk_create(r.id, r.token_table);
    -- the merges of one index are serialized (pgmaxsim.plpy.sketch_merge takes the same lock again)
    IF NOT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('pgmaxsim/sketch/' || r.id)) THEN
        RETURN '{"rows": 0, "entries": 0, "compacted": false, "busy": true}'::jsonb;
    END IF;
    -- First the lists an earlier merge's full compaction rewrote, and return, for the caller to
    -- commit at once (searches wait for the swap's commit) and call again for the merge
    -- (pgmaxsim.sketch_lists.merge). Only asked for by maxsim.first_stage_sketch_merge (and only in a
    -- transaction that has written nothing yet, maxsim._sk_swap).
    IF pg_catalog.current_setting('pgmaxsim.sketch_swap', true) = 'on' THEN
        PERFORM pg_catalog.set_config('pgmaxsim.sketch_swap', 'off', true);
        swapped := maxsim._sk_swap(r.id, gen % 2, 10);
    END IF;
    IF swapped THEN
        RETURN '{"rows": 0, "entries": 0, "compacted": false, "swapped": true}'::jsonb;
    END IF;
    -- not swapped (transactions held on): this merge compacts in place
    PERFORM pg_catalog.set_config('pgmaxsim.sketch_in_place', CASE WHEN swapped IS NULL THEN 'off' ELSE 'on' END, true);
    res := maxsim._sk_merge_py(r.id, gen, only_if_due, settle);
    -- (also on a merge asked for, not only when due, with nothing to merge: it repairs an index
    -- trained before the switch forgot them, 038_fs_train.sql)
    IF gen = (r.options ->> 'fs_gen')::integer AND (coalesce((res ->> 'rows')::integer, 0) > 0 OR NOT only_if_due) THEN
        PERFORM maxsim._sk_pending_forget(r.id, r.token_table, gen % 2);   -- 035_firststage.sql
    END IF;
    RETURN res;
END
$$;

-- Entry point: merge the rows written since the last merge into the live codebook's sketch lists
-- (the worker's trainer calls it with only_if_due: a merge once 5 % of the rows are pending, or some
-- are and none was written for 30 s; writers never do; the merges of one index are serialized, a busy
-- one returns at once). `settle`: then rewrite the lists as one segment, their smallest and fastest
-- form (`pgmaxsim worker --once` does; a merge at the end of a burst of writes does by itself once the
-- newer segments hold 1/16 of the largest). For any role that manages the index.
CREATE OR REPLACE FUNCTION maxsim.first_stage_sketch_merge(name text, only_if_due boolean DEFAULT false,
                                                           settle boolean DEFAULT false) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    res jsonb;
BEGIN
    r := maxsim._index_to_manage(name);
    IF r.pooling <> 'codebook' OR (r.options ->> 'fs_gen') IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM pg_catalog.set_config('pgmaxsim.sketch_swap', 'on', true);   -- see maxsim._sk_merge
    res := maxsim._sk_merge(r.id, (r.options ->> 'fs_gen')::integer, only_if_due, settle);
    PERFORM pg_catalog.set_config('pgmaxsim.sketch_swap', 'off', true);
    RETURN res;
END
$$;

-- Entry point, a training's step between its fill and its switch (pgmaxsim.codebook.train): the
-- sketch lists of generation `gen` (the one being trained) for every row filled so far; the switch
-- merges the rest under its lock.
CREATE OR REPLACE FUNCTION maxsim.first_stage_train_sketch(name text, gen integer) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    res jsonb;
BEGIN
    r := maxsim._index_to_manage(name);
    IF gen IS DISTINCT FROM coalesce((r.options ->> 'fs_gen')::integer + 1, 0) THEN
        RAISE EXCEPTION 'pgmaxsim: first stage of index "%": generation % is not the one being trained', r.name, gen
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    res := maxsim._sk_merge(r.id, gen, false);
    RETURN res;
END
$$;
