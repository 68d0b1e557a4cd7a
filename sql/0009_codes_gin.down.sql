-- pgmaxsim 0009 downgrade: every codebook token table has its codes' GIN again (revision 0008's
-- first stage reads it on every server). Released file: never edit.

DO $do$
DECLARE
    r record;
    s integer;
BEGIN
    FOR r IN SELECT i.token_table FROM maxsim.indexes i WHERE i.pooling = 'codebook' ORDER BY i.id LOOP
        IF pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', r.token_table)) IS NULL THEN
            CONTINUE;
        END IF;
        FOR s IN 0..1 LOOP
            EXECUTE pg_catalog.format('CREATE INDEX IF NOT EXISTS %I ON maxsim.%I USING gin (%I)',
                                      r.token_table || '_codes_' || s || '_gin', r.token_table, 'codes_' || s);
        END LOOP;
    END LOOP;
END
$do$;
