-- pgmaxsim 0005 down: drop the change log's transaction ids.
DROP INDEX IF EXISTS maxsim.changes_index_xid_idx;
ALTER TABLE maxsim.changes DROP COLUMN IF EXISTS xid;
