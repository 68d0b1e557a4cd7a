-- pgmaxsim 0001 downgrade: remove what 0001 created. Released file: never edit.
DROP FUNCTION IF EXISTS maxsim.version();
DROP FUNCTION IF EXISTS maxsim.has_plpython();
DROP TABLE IF EXISTS maxsim.workers;
DROP TABLE IF EXISTS maxsim.failed;
DROP TABLE IF EXISTS maxsim.queue;
DROP TABLE IF EXISTS maxsim.indexes;
DROP SEQUENCE IF EXISTS maxsim.version_seq;
DO $$
DECLARE
    ext text;
BEGIN
    FOR ext IN SELECT pg_catalog.jsonb_array_elements_text(value) FROM maxsim.meta
               WHERE key = 'created_extensions' LOOP
        BEGIN
            EXECUTE pg_catalog.format('DROP EXTENSION IF EXISTS %I', ext);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'pgmaxsim: keeping extension % (other objects use it)', ext;
        END;
    END LOOP;
END
$$;
DROP TABLE IF EXISTS maxsim.meta;
