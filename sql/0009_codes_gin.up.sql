-- pgmaxsim 0009: on servers with plpython3u, codebook token tables lose the GIN over their codes
-- (`<token table>_codes_<slot>_gin`). There the first stage is the sketch lists with centroid
-- interaction over the codes (pgmaxsim.plpy.sketch.candidates), which never reads the GIN; it cost
-- ~0.7 % of the raw fp16 bytes and ~2.5 ms of server time a written row. Servers without plpython3u
-- keep theirs: it is their first stage (maxsim._fs_candidates). New token tables get one only there
-- (maxsim._fs_create). Released file: never edit (sha256 pinned in its revision).

DO $do$
DECLARE
    r record;
    s integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'plpython3u') THEN
        RETURN;
    END IF;
    FOR r IN SELECT i.token_table FROM maxsim.indexes i WHERE i.pooling = 'codebook' ORDER BY i.id LOOP
        FOR s IN 0..1 LOOP
            EXECUTE pg_catalog.format('DROP INDEX IF EXISTS maxsim.%I', r.token_table || '_codes_' || s || '_gin');
        END LOOP;
    END LOOP;
END
$do$;
