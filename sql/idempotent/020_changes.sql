-- pgmaxsim functions: the change log (maxsim.changes) that keeps scorers in step with token tables.
-- Idempotent file (see 010_registry.sql).

-- BEFORE ROW trigger of every token table: a new version per write, and the change log.
-- TG_ARGV[0] = the index id.
CREATE OR REPLACE FUNCTION maxsim._tok_row() RETURNS trigger
LANGUAGE plpgsql
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    v_index integer := TG_ARGV[0]::integer;
BEGIN
    -- A retrain of the codebook first stage (pgmaxsim.codebook) rewrites only the rows' codes: no new
    -- version, no change-log entry (scorers would reload every row's tokens for nothing). The setting is
    -- the schema owner's own (maxsim._write and _stage_commit turn it off before they write).
    IF TG_OP = 'UPDATE' AND NEW.version = OLD.version AND NEW.id = OLD.id
       AND pg_catalog.current_setting('pgmaxsim.codes_only', true) = 'on' THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO maxsim.changes (index_id, row_id, version, deleted)
        VALUES (v_index, OLD.id::text, OLD.version, true);
        PERFORM pg_catalog.pg_notify('maxsim_changes', v_index::text);
        RETURN OLD;
    END IF;
    NEW.version := pg_catalog.nextval('maxsim.version_seq');
    NEW.updated_at := pg_catalog.now();
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
CREATE OR REPLACE FUNCTION maxsim._tok_truncate() RETURNS trigger
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

-- How long change-log entries are kept when no scorer reports where it has synced to: the
-- scorer's journal window (pgmaxsim.scorer.sync), so a scorer started later misses nothing it
-- could still use.
CREATE OR REPLACE FUNCTION maxsim._changes_window() RETURNS interval
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT interval '600 seconds' $$;

-- Prune the change log (schema owner / admin only: called by scorers and workers as they run).
-- Without arguments: every entry that all live scorers have synced past (their watermark
-- snapshots see its transaction), and, when no scorer reported within the window, every entry
-- older than the window. With `upto` / `older_than`: exactly those entries.
CREATE OR REPLACE FUNCTION maxsim.prune_changes(upto bigint DEFAULT NULL, older_than interval DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    horizon xid8;
BEGIN
    IF upto IS NULL AND older_than IS NULL THEN
        SELECT min(pg_catalog.pg_snapshot_xmin(s.watermark)) INTO horizon FROM maxsim.scorers s
         WHERE s.seen_at > pg_catalog.now() - maxsim._changes_window();
        IF horizon IS NULL THEN
            DELETE FROM maxsim.changes c WHERE c.at < pg_catalog.now() - maxsim._changes_window();
        ELSE
            DELETE FROM maxsim.changes c WHERE c.xid < horizon;
        END IF;
    ELSE
        DELETE FROM maxsim.changes c
         WHERE (upto IS NULL OR c.seq <= upto)
           AND (older_than IS NULL OR c.at < pg_catalog.now() - older_than);
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- A scorer reports the snapshot it has synced every index to; entries older than every live
-- scorer's watermark are then pruned. Scorers connect as the schema owner or an admin.
CREATE OR REPLACE FUNCTION maxsim.scorer_synced(scorer text, synced_to pg_snapshot) RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO maxsim.scorers AS s (scorer_id, watermark) VALUES (scorer, synced_to)
    ON CONFLICT ON CONSTRAINT scorers_pkey DO UPDATE SET watermark = EXCLUDED.watermark, seen_at = pg_catalog.now();
    DELETE FROM maxsim.scorers s WHERE s.seen_at < pg_catalog.now() - 2 * maxsim._changes_window();
    RETURN maxsim.prune_changes();
END
$$;
