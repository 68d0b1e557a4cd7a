-- pgmaxsim 0008 downgrade: token tables lose their `layout` column (revision 0007 has none).
-- Released file: never edit.

DO $do$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT i.token_table FROM maxsim.indexes i ORDER BY i.id LOOP
        IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', r.token_table)) IS NULL THEN
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I DROP COLUMN IF EXISTS layout', r.token_table);
    END LOOP;
END
$do$;
