-- pgmaxsim 0008: token tables gain `layout bytea`, where each of a row's tokens came from (image
-- patch on the page's grid, or character span of the text; format: pgmaxsim.encoders.layout),
-- written by the worker at ingest and read by maxsim.explain. Existing rows have none (NULL) until
-- they are embedded again. New token tables get the column from maxsim.create_index.
-- Released file: never edit (sha256 pinned in its revision).

DO $do$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT i.token_table FROM maxsim.indexes i ORDER BY i.id LOOP
        IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', r.token_table)) IS NULL THEN
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I ADD COLUMN IF NOT EXISTS layout bytea', r.token_table);
    END LOOP;
END
$do$;
