-- pgmaxsim functions: rebuilding an index beside itself and switching over, as any role that manages it.
--
-- Two rebuilds fill a *shadow* index (an ordinary index over the same source, made by create_index)
-- and then swap the shadow's storage into the index in one transaction:
--   * re-embedding under another model (pgmaxsim.worker.reembed): maxsim.reembeds pairs the index
--     with its shadow `NAME#reembed`, which the worker embeds like any index; the switch carries the
--     model with the storage;
--   * a storage switch (pgmaxsim.retier, `index reindex --storage/--pool-factor`): the shadow
--     `NAME#retier` is filled from the stored tokens; the switch carries the options.
-- Both swap the NAMES of the two indexes' per-index tables (every maxsim table `<kind>_<id>`:
-- tokens, centroids, first-stage tables), so the swap is a few catalog updates under ACCESS
-- EXCLUSIVE (searches wait, never fail), then the shadow, now holding the old tables, is dropped.
-- Entry points run as the caller and check that it may manage both indexes; the privileged work is
-- in the guarded `_` functions (see 010_registry.sql).

-- The shadow index of a re-embedding in progress of index `index_id` (NULL: none).
CREATE OR REPLACE FUNCTION maxsim._reembed_shadow(index_id integer) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    sid integer;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_reembed_shadow');
    SELECT r.shadow_id INTO sid FROM maxsim.reembeds r WHERE r.index_id = _reembed_shadow.index_id;
    RETURN sid;
END
$$;

-- Every re-embedding in progress as flat pairs [index_id, shadow_id, queued rows of the shadow, ...].
CREATE OR REPLACE FUNCTION maxsim._reembed_pairs() RETURNS bigint[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    flat bigint[];
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_reembed_pairs');
    SELECT coalesce(pg_catalog.array_agg(v ORDER BY r.index_id, o), '{}') INTO flat
      FROM maxsim.reembeds r,
           LATERAL (VALUES (1, r.index_id::bigint), (2, r.shadow_id::bigint),
                           (3, (SELECT count(*) FROM maxsim.queue q WHERE q.index_id = r.shadow_id))) AS x(o, v);
    RETURN flat;
END
$$;

-- Failed rows of index `index_id` (the counts of _counts are rows, tokens, queued, bytes).
CREATE OR REPLACE FUNCTION maxsim._failed_count(index_id integer) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    n bigint;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_failed_count');
    SELECT count(*) INTO n FROM maxsim.failed f WHERE f.index_id = _failed_count.index_id;
    RETURN n;
END
$$;

-- Pair index `index_id` with its new shadow `shadow_id` (and the shadow's model revision).
CREATE OR REPLACE FUNCTION maxsim._reembed_begin(index_id integer, shadow_id integer, revision text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_reembed_begin');
    UPDATE maxsim.indexes SET model_revision = revision WHERE id = shadow_id;
    INSERT INTO maxsim.reembeds (index_id, shadow_id) VALUES (index_id, shadow_id);
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION maxsim._reembed_end(index_id integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_reembed_end');
    DELETE FROM maxsim.reembeds r WHERE r.index_id = _reembed_end.index_id;
    RETURN FOUND;
END
$$;

-- Copy rows of index `index_id` into a temp table of this session that `who` may read; returns its
-- name. `snap` NULL: the rows with version > after_version, in version order, at most `lim`;
-- `snap` given: the rows written by transactions that snapshot did not see (NULL when the index was
-- truncated meanwhile: the caller reads everything again).
CREATE OR REPLACE FUNCTION maxsim._read_stage(index_id integer, who name, snap text, after_version bigint,
                                              lim integer) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    t text := 'maxsim_read_' || index_id;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_read_stage', _read_stage.index_id);
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS pg_temp.%I', t);
    IF snap IS NULL THEN
        EXECUTE pg_catalog.format('CREATE TEMP TABLE %I AS SELECT * FROM maxsim.%I t WHERE t.version > %s'
                                  ' ORDER BY t.version LIMIT %s', t, r.token_table, after_version, lim);
    ELSE
        IF EXISTS (SELECT 1 FROM maxsim.changes c
                    WHERE c.index_id = r.id AND c.row_id IS NULL
                      AND c.xid >= pg_catalog.pg_snapshot_xmin(snap::pg_snapshot)
                      AND NOT pg_catalog.pg_visible_in_snapshot(c.xid, snap::pg_snapshot)) THEN
            RETURN NULL;
        END IF;
        EXECUTE pg_catalog.format(
            'CREATE TEMP TABLE %I AS SELECT * FROM maxsim.%I t WHERE t.id::text IN ('
            ' SELECT c.row_id FROM maxsim.changes c WHERE c.index_id = %s'
            ' AND c.xid >= pg_catalog.pg_snapshot_xmin(%L::pg_snapshot)'
            ' AND NOT pg_catalog.pg_visible_in_snapshot(c.xid, %L::pg_snapshot))', t, r.token_table, r.id, snap, snap);
    END IF;
    EXECUTE pg_catalog.format('GRANT SELECT ON pg_temp.%I TO %I', t, who);
    RETURN t;
END
$$;

-- Block writers of index `index_id` until the end of the transaction (readers go on).
CREATE OR REPLACE FUNCTION maxsim._switch_lock(index_id integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_switch_lock', _switch_lock.index_id);
    EXECUTE pg_catalog.format('LOCK TABLE maxsim.%I IN EXCLUSIVE MODE', r.token_table);
    RETURN true;
END
$$;

-- Rename maxsim table `a` to `b` and `b` to `a` (either may be missing), with the indexes and
-- constraints named after them.
CREATE OR REPLACE FUNCTION maxsim._swap_table_names(a text, b text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    tmp text := 'swap_' || a;
    pair text[];
BEGIN
    FOREACH pair SLICE 1 IN ARRAY ARRAY[[a, tmp], [b, a], [tmp, b]] LOOP
        CONTINUE WHEN pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', pair[1])) IS NULL;
        PERFORM maxsim._rename_children(pair[1], pair[2]);
        EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I RENAME TO %I', pair[1], pair[2]);
    END LOOP;
END
$$;

-- Rename the indexes and constraints of maxsim table `old` that carry its name as a prefix.
CREATE OR REPLACE FUNCTION maxsim._rename_children(old text, new text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    c record;
BEGIN
    FOR c IN
        SELECT 'i' AS kind, ic.relname::text AS name FROM pg_catalog.pg_index x
          JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid
         WHERE x.indrelid = pg_catalog.format('maxsim.%I', old)::regclass
        UNION ALL
        SELECT 'c', con.conname::text FROM pg_catalog.pg_constraint con
         WHERE con.conrelid = pg_catalog.format('maxsim.%I', old)::regclass AND con.conindid = 0
    LOOP
        CONTINUE WHEN pg_catalog.left(c.name, pg_catalog.length(old) + 1) <> old || '_';
        IF c.kind = 'i' THEN  -- renaming a constraint's index renames the constraint too
            EXECUTE pg_catalog.format('ALTER INDEX maxsim.%I RENAME TO %I', c.name,
                                      new || pg_catalog.substr(c.name, pg_catalog.length(old) + 1));
        ELSE
            EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I RENAME CONSTRAINT %I TO %I', old, c.name,
                                      new || pg_catalog.substr(c.name, pg_catalog.length(old) + 1));
        END IF;
    END LOOP;
END
$$;

-- Re-create the triggers of maxsim table `tbl` whose one argument is `old_id` with `new_id` (the token
-- tables' change-log triggers carry their index id).
CREATE OR REPLACE FUNCTION maxsim._repoint_triggers(tbl text, old_id integer, new_id integer) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    t record;
    suffix text := pg_catalog.format('(%L)', old_id::text);
BEGIN
    FOR t IN SELECT tg.tgname::text AS name, pg_catalog.pg_get_triggerdef(tg.oid) AS def
               FROM pg_catalog.pg_trigger tg
              WHERE tg.tgrelid = pg_catalog.format('maxsim.%I', tbl)::regclass
                AND NOT tg.tgisinternal AND tg.tgnargs = 1
    LOOP
        CONTINUE WHEN pg_catalog.right(t.def, pg_catalog.length(suffix)) <> suffix;
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON maxsim.%I', t.name, tbl);
        EXECUTE pg_catalog.left(t.def, -pg_catalog.length(suffix)) || pg_catalog.format('(%L)', new_id::text);
    END LOOP;
END
$$;

-- Swap shadow `shadow_id`'s storage into index `index_id` (see the top of this file). `reembed`: a
-- re-embedding (refused while the shadow still has queued rows; carries model, dim, pooling and
-- options, and the failed rows); else a storage switch (carries the options; rows deleted from the
-- index meanwhile are deleted from the shadow). False when not ready or taken by another session.
CREATE OR REPLACE FUNCTION maxsim._switch_index(index_id integer, shadow_id integer, reembed boolean) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    m maxsim.indexes;
    s maxsim.indexes;
    kinds text[];
    k text;
    rel text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_switch_index');
    IF reembed THEN
        PERFORM 1 FROM maxsim.reembeds r
          WHERE r.index_id = _switch_index.index_id AND r.shadow_id = _switch_index.shadow_id
          FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN RETURN false; END IF;
    END IF;
    -- NO KEY UPDATE: writers of the source take KEY SHARE on these rows (queue foreign keys).
    SELECT * INTO STRICT m FROM maxsim.indexes i WHERE i.id = _switch_index.index_id FOR NO KEY UPDATE;
    SELECT * INTO STRICT s FROM maxsim.indexes i WHERE i.id = _switch_index.shadow_id FOR NO KEY UPDATE;
    -- the per-index tables of either index: `<kind>_<id>`. A storage switch leaves the first stage's
    -- tables (`fs_*`) where they are: the shadow's rows were coded under the index's own codebook.
    SELECT pg_catalog.array_agg(DISTINCT pg_catalog.substring(c.relname, '^(.*)_[0-9]+$')) INTO kinds
      FROM pg_catalog.pg_class c
     WHERE c.relnamespace = 'maxsim'::regnamespace AND c.relkind IN ('r', 'p')
       AND (c.relname ~ ('^[a-z][a-z_]*_' || m.id || '$') OR c.relname ~ ('^[a-z][a-z_]*_' || s.id || '$'))
       AND (reembed OR c.relname !~ '^fs_');
    FOREACH k IN ARRAY coalesce(kinds, '{}') LOOP
        FOREACH rel IN ARRAY ARRAY[k || '_' || m.id, k || '_' || s.id] LOOP
            IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', rel)) IS NOT NULL THEN
                EXECUTE pg_catalog.format('LOCK TABLE maxsim.%I IN ACCESS EXCLUSIVE MODE', rel);
            END IF;
        END LOOP;
    END LOOP;
    IF reembed AND EXISTS (SELECT 1 FROM maxsim.queue q WHERE q.index_id = s.id) THEN
        RETURN false;
    END IF;
    IF NOT reembed THEN
        EXECUTE pg_catalog.format('DELETE FROM maxsim.%I s WHERE NOT EXISTS (SELECT 1 FROM maxsim.%I t WHERE t.id = s.id)',
                                  s.token_table, m.token_table);
    END IF;
    FOREACH k IN ARRAY coalesce(kinds, '{}') LOOP
        PERFORM maxsim._swap_table_names(k || '_' || m.id, k || '_' || s.id);
        -- after the swap k_<m> holds the shadow's table (its triggers name the shadow) and k_<s> the old one
        IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', k || '_' || m.id)) IS NOT NULL THEN
            PERFORM maxsim._repoint_triggers(k || '_' || m.id, s.id, m.id);
        END IF;
        IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', k || '_' || s.id)) IS NOT NULL THEN
            PERFORM maxsim._repoint_triggers(k || '_' || s.id, m.id, s.id);
        END IF;
    END LOOP;
    IF reembed THEN
        UPDATE maxsim.indexes x SET model = y.model, model_revision = y.model_revision, dim = y.dim,
               pooling = y.pooling, options = y.options
          FROM maxsim.indexes y WHERE (x.id, y.id) IN ((m.id, s.id), (s.id, m.id));
        DELETE FROM maxsim.failed f WHERE f.index_id = m.id;
        UPDATE maxsim.failed f SET index_id = m.id WHERE f.index_id = s.id;
        DELETE FROM maxsim.reembeds r WHERE r.index_id = m.id;
    ELSE
        -- one statement: the FROM side reads both rows as they were before it (a swap); the first
        -- stage's state (`fs_*` options) stays with its tables
        UPDATE maxsim.indexes x
           SET options = (SELECT coalesce(pg_catalog.jsonb_object_agg(e.key, e.value), '{}') FROM (
                            SELECT o.key, o.value FROM pg_catalog.jsonb_each(y.options) o WHERE o.key NOT LIKE 'fs\_%'
                            UNION ALL
                            SELECT o.key, o.value FROM pg_catalog.jsonb_each(x.options) o WHERE o.key LIKE 'fs\_%') e),
               pooling = y.pooling
          FROM maxsim.indexes y WHERE (x.id, y.id) IN ((m.id, s.id), (s.id, m.id));
    END IF;
    -- the scorer reloads the index (a truncate entry), callers see every row as changed
    INSERT INTO maxsim.changes (index_id, row_id, version, deleted) VALUES (m.id, NULL, NULL, true);
    EXECUTE pg_catalog.format('INSERT INTO maxsim.changes (index_id, row_id, version, deleted)'
                              ' SELECT $1, id::text, version, false FROM maxsim.%I', m.token_table) USING m.id;
    PERFORM pg_catalog.pg_notify('maxsim_changes', m.id::text);
    RETURN true;
END
$$;

-- ---------------------------------------------------------------- entry points

-- Pair index `name` with `shadow`, an index the caller just created over the same source under the
-- new model (pgmaxsim.worker.reembed.start_reembed).
CREATE OR REPLACE FUNCTION maxsim.reembed_begin(name text, shadow text, model_revision text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    s maxsim.indexes;
    busy integer;
    done boolean;
BEGIN
    r := maxsim._index_to_manage(name);
    s := maxsim._index_to_manage(shadow);
    IF r.source IS DISTINCT FROM s.source OR r.id = s.id THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" is not over the same source as "%"', shadow, name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    busy := maxsim._reembed_shadow(r.id);
    IF busy IS NOT NULL THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" is already being re-embedded', name USING ERRCODE = 'object_in_use';
    END IF;
    done := maxsim._reembed_begin(r.id, s.id, model_revision);
END
$$;

-- The re-embedding in progress of index `name` (no row: none).
CREATE OR REPLACE FUNCTION maxsim.reembed_state(name text)
RETURNS TABLE (index_name text, shadow_name text, index_id integer, shadow_id integer, model text,
               model_revision text, token_table text, rows bigint, queued bigint, failed bigint)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    s maxsim.indexes;
    sid integer;
    regs maxsim.indexes[];
    counts bigint[];
BEGIN
    r := maxsim._index_to_manage(name);
    sid := maxsim._reembed_shadow(r.id);
    IF sid IS NULL THEN RETURN; END IF;
    regs := maxsim._registry();
    SELECT (g).* INTO s FROM pg_catalog.unnest(regs) AS g WHERE (g).id = sid;
    counts := maxsim._counts(sid);
    index_name := r.name; shadow_name := s.name; index_id := r.id; shadow_id := s.id; model := s.model;
    model_revision := s.model_revision; token_table := s.token_table; rows := counts[1]; queued := counts[3];
    failed := maxsim._failed_count(sid);
    RETURN NEXT;
END
$$;

-- The re-embeddings in progress of the indexes the caller manages; `ready`: the shadow's queue is empty.
CREATE OR REPLACE FUNCTION maxsim.reembeds()
RETURNS TABLE (index_id integer, shadow_id integer, ready boolean)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    flat bigint[];
    regs maxsim.indexes[];
    i integer;
BEGIN
    flat := maxsim._reembed_pairs();
    regs := maxsim._registry();
    FOR i IN 0 .. coalesce(pg_catalog.array_length(flat, 1), 0) / 3 - 1 LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(regs) AS g
                                   WHERE (g).id = flat[3 * i + 1] AND maxsim._may_manage((g).source));
        index_id := flat[3 * i + 1]; shadow_id := flat[3 * i + 2]; ready := flat[3 * i + 3] = 0;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Abandon the re-embedding of index `name`: its shadow is dropped. False when there was none.
CREATE OR REPLACE FUNCTION maxsim.reembed_cancel(name text) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    sid integer;
    regs maxsim.indexes[];
    shadow text;
    done boolean;
BEGIN
    r := maxsim._index_to_manage(name);
    sid := maxsim._reembed_shadow(r.id);
    IF sid IS NULL THEN RETURN false; END IF;
    regs := maxsim._registry();
    SELECT (g).name INTO shadow FROM pg_catalog.unnest(regs) AS g WHERE (g).id = sid;
    done := maxsim._reembed_end(r.id);
    PERFORM maxsim.drop_index(shadow);
    RETURN true;
END
$$;

-- Rows of index `name` for a rebuild, in a temp table of this session (its name is returned): see
-- _read_stage. Only for roles that manage the index.
CREATE OR REPLACE FUNCTION maxsim.read_rows(name text, after_version bigint, lim integer) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    t text;
BEGIN
    r := maxsim._index_to_manage(name);
    t := maxsim._read_stage(r.id, current_user, NULL, after_version, lim);
    RETURN t;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.read_changed_rows(name text, snap text) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    t text;
BEGIN
    r := maxsim._index_to_manage(name);
    t := maxsim._read_stage(r.id, current_user, snap, NULL, NULL);
    RETURN t;
END
$$;

-- Block the writers of index `name` until the end of this transaction (a switch's last catch-up).
CREATE OR REPLACE FUNCTION maxsim.switch_lock(name text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._index_to_manage(name);
    done := maxsim._switch_lock(r.id);
END
$$;

-- Swap `shadow`'s storage into index `name`: `shadow` is its re-embedding, or its storage switch
-- `NAME#retier`. False when the re-embedding is not ready (queued rows) or another session switches it.
CREATE OR REPLACE FUNCTION maxsim.switch_index(name text, shadow text) RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    s maxsim.indexes;
    sid integer;
    done boolean;
BEGIN
    r := maxsim._index_to_manage(name);
    s := maxsim._index_to_manage(shadow);
    sid := maxsim._reembed_shadow(r.id);
    IF sid IS NOT DISTINCT FROM s.id THEN
        done := maxsim._switch_index(r.id, s.id, true);
    ELSIF s.name = r.name || '#retier' AND s.source IS NOT DISTINCT FROM r.source AND s.id <> r.id THEN
        done := maxsim._switch_index(r.id, s.id, false);
    ELSE
        RAISE EXCEPTION 'pgmaxsim: index "%" is neither the re-embedding nor the storage switch of "%"', shadow, name
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN done;
END
$$;
