-- pgmaxsim 0005: transaction ids in the change log, for the scorer service.
-- The scorer mirrors each token table at one snapshot (its sync transaction's
-- pg_current_snapshot()). With the writer's top-level xid on every change, the
-- rows that differ between that snapshot and a caller's are exactly the changes
-- whose xid one snapshot sees and the other does not (pg_visible_in_snapshot).
-- Released file: never edit once its revision is released (sha256 pinned in the revision).
ALTER TABLE maxsim.changes ADD COLUMN xid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id();
CREATE INDEX changes_index_xid_idx ON maxsim.changes (index_id, xid);
