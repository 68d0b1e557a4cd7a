-- pgmaxsim 0003 (worker): per-batch ingest log (throughput in `pgmaxsim status`), worker state,
-- and re-embedding of an index under a new model alongside the old one.
-- Released file: never edit (its sha256 is pinned in migrations/versions/0003_worker.py).

ALTER TABLE maxsim.workers
    ADD COLUMN state   text NOT NULL DEFAULT 'starting',
    ADD COLUMN indexes text[] NOT NULL DEFAULT '{}',
    ADD COLUMN last_error text;

-- Claims take the oldest ready entries of one index (ORDER BY qid): this index serves them
-- in order without sorting or skipping other indexes' entries.
CREATE INDEX queue_index_qid_idx ON maxsim.queue (index_id, qid);

-- One row per committed batch; pruned by the workers after a day.
CREATE TABLE maxsim.ingest_log (
    index_id     integer NOT NULL REFERENCES maxsim.indexes (id) ON DELETE CASCADE,
    worker_id    text NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    rows_done    integer NOT NULL,
    rows_skipped integer NOT NULL,
    rows_failed  integer NOT NULL,
    tokens       bigint NOT NULL,
    seconds      real NOT NULL
);
CREATE INDEX ingest_log_at_idx ON maxsim.ingest_log (index_id, at);

-- A re-embedding in progress: index `index_id` is being re-encoded into the shadow index
-- `shadow_id` (same source, new model); when the shadow's queue is drained the two token
-- tables are swapped in one transaction and the shadow (now holding the old embeddings) dropped.
CREATE TABLE maxsim.reembeds (
    index_id   integer PRIMARY KEY REFERENCES maxsim.indexes (id) ON DELETE CASCADE,
    shadow_id  integer NOT NULL UNIQUE REFERENCES maxsim.indexes (id) ON DELETE CASCADE,
    started_at timestamptz NOT NULL DEFAULT now(),
    CHECK (index_id <> shadow_id)
);

-- Dropping an index also drops the shadow of its unfinished re-embedding.
CREATE FUNCTION maxsim.drop_reembed_shadow() RETURNS trigger
LANGUAGE plpgsql
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    shadow text;
BEGIN
    SELECT i.name INTO shadow
      FROM maxsim.reembeds r JOIN maxsim.indexes i ON i.id = r.shadow_id
     WHERE r.index_id = OLD.id;
    IF shadow IS NOT NULL THEN
        DELETE FROM maxsim.reembeds WHERE index_id = OLD.id;
        PERFORM maxsim.drop_index(shadow);
    END IF;
    RETURN OLD;
END
$$;

CREATE TRIGGER indexes_drop_reembed_shadow
    BEFORE DELETE ON maxsim.indexes
    FOR EACH ROW EXECUTE FUNCTION maxsim.drop_reembed_shadow();
