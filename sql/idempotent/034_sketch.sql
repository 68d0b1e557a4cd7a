-- pgmaxsim functions: residual sketch lists of the codebook first stage (pgmaxsim.sketch,
-- pgmaxsim.sketch_lists; bench/FIRST_STAGE.md "Sketch lists"). Idempotent file.
--
-- The codebook's GIN finds the rows that hold a query token's codes; among the ~80 tokens of a code
-- it cannot tell a near-copy of the query token from the rest. Per index <id>, for each codebook slot:
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
-- Rows written since the last merge are not in the lists: the codebook's GIN still ranks them (they
-- have codes), and a merge (writers after commit, the worker, reindex --first-stage) adds them as a
-- new segment; more than a few segments are compacted into one (dead entries dropped). A retrain
-- builds the other slot's lists before the codebook switch, so each search sees one slot's codebook
-- and lists in its snapshot. Servers without plpython3u keep the codebook's GIN path alone.

-- The per-index sketch tables (called by maxsim._fs_create for new indexes, and by
-- pgmaxsim.sketch_lists for a codebook index created before them; schema owner).
CREATE OR REPLACE FUNCTION maxsim._sk_create(index_id integer, tok text) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE TABLE IF NOT EXISTS maxsim.%I (slot smallint NOT NULL, code integer NOT NULL, seg integer NOT NULL,'
        ' base bigint NOT NULL, offs bytea NOT NULL, sk bytea NOT NULL, PRIMARY KEY (slot, code, seg))',
        'fs_sk_' || index_id);
    EXECUTE pg_catalog.format(
        'CREATE TABLE IF NOT EXISTS maxsim.%I (slot smallint NOT NULL, version bigint NOT NULL, PRIMARY KEY (slot, version))',
        'fs_skrow_' || index_id);
    EXECUTE pg_catalog.format(
        'CREATE TABLE IF NOT EXISTS maxsim.%I (slot smallint PRIMARY KEY, gen integer NOT NULL, mag real[] NOT NULL)',
        'fs_skm_' || index_id);
    IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', tok || '_version')) IS NULL THEN
        EXECUTE pg_catalog.format('CREATE INDEX %I ON maxsim.%I (version)', tok || '_version', tok);
    END IF;
END
$$;

-- Bytes of the sketch tables of an index (0 when it has none).
CREATE OR REPLACE FUNCTION maxsim._sk_bytes(index_id integer) RETURNS bigint
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT coalesce(pg_catalog.pg_total_relation_size(pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', 'fs_sk_' || index_id))), 0)
         + coalesce(pg_catalog.pg_total_relation_size(pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', 'fs_skrow_' || index_id))), 0)
         + coalesce(pg_catalog.pg_total_relation_size(pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', 'fs_skm_' || index_id))), 0)
$$;

CREATE OR REPLACE FUNCTION maxsim._sk_drop(index_id integer) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I, maxsim.%I, maxsim.%I',
                              'fs_sk_' || index_id, 'fs_skrow_' || index_id, 'fs_skm_' || index_id);
END
$$;

-- Drop slot `slot`'s lists, merged versions and codec (the old slot after a codebook switch:
-- maxsim._fs_end). Runs as its caller (the schema owner, from there).
CREATE OR REPLACE FUNCTION maxsim._sk_clear(index_id integer, slot integer) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['fs_sk_', 'fs_skrow_', 'fs_skm_'] LOOP
        IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', t || index_id)) IS NOT NULL THEN
            EXECUTE pg_catalog.format('DELETE FROM maxsim.%I WHERE slot = $1', t || index_id) USING slot::smallint;
        END IF;
    END LOOP;
END
$$;

-- Merge the rows not in the lists of generation `gen` yet (pgmaxsim.plpy.sketch_merge; `only_if_due`:
-- only once enough rows are pending). The tables are created first for an index older than them.
-- Without plpython3u: nothing (searches use the codebook's GIN there).
CREATE OR REPLACE FUNCTION maxsim._sk_merge(index_id integer, gen integer, only_if_due boolean) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_sk_merge', _sk_merge.index_id);
    IF r.pooling <> 'codebook' OR gen IS NULL OR NOT maxsim.has_plpython() THEN
        RETURN NULL;
    END IF;
    PERFORM maxsim._sk_create(r.id, r.token_table);
    RETURN maxsim._sk_merge_py(r.id, gen, only_if_due);
END
$$;

-- Entry point: merge the rows written since the last merge into the live codebook's sketch lists
-- (writers call it after each write with only_if_due: a merge once 5 % of the rows are pending; the
-- merges of one index are serialized, a busy one returns at once). For any role that manages the index.
CREATE OR REPLACE FUNCTION maxsim.first_stage_sketch_merge(name text, only_if_due boolean DEFAULT false) RETURNS jsonb
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
    res := maxsim._sk_merge(r.id, (r.options ->> 'fs_gen')::integer, only_if_due);
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
