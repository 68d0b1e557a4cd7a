-- pgmaxsim 0003 downgrade: remove what 0002 created. Released file: never edit.
DROP TRIGGER IF EXISTS indexes_drop_reembed_shadow ON maxsim.indexes;
DROP FUNCTION IF EXISTS maxsim.drop_reembed_shadow();
DROP TABLE IF EXISTS maxsim.reembeds;
DROP TABLE IF EXISTS maxsim.ingest_log;
DROP INDEX IF EXISTS maxsim.queue_index_qid_idx;
ALTER TABLE maxsim.workers
    DROP COLUMN IF EXISTS last_error,
    DROP COLUMN IF EXISTS indexes,
    DROP COLUMN IF EXISTS state;
