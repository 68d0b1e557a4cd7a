-- pgmaxsim 0006 downgrade: remove the tables 0006 added (the revision puts back the functions of
-- 0002-0005 from their own released files). Released file: never edit.
DROP INDEX IF EXISTS maxsim.changes_at_idx;
DROP TABLE IF EXISTS maxsim.scorers;
DROP TABLE IF EXISTS maxsim.settings;
DROP TABLE IF EXISTS maxsim.grants;
