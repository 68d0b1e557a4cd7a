-- pgmaxsim 0002 downgrade: drop every index (token and centroid tables, the triggers on source
-- tables with their generated functions) and every function 0002 created, leaving what 0001 left.
-- Released file: never edit once its revision is released.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT id, token_table FROM maxsim.indexes ORDER BY id LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION IF EXISTS maxsim.%I() CASCADE', 'src_' || r.id);
        EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I', 'cen_' || r.id);
        EXECUTE pg_catalog.format('DROP TABLE IF EXISTS maxsim.%I', r.token_table);
    END LOOP;
    -- the queue and failed rows belonged to those indexes
    DELETE FROM maxsim.queue;
    DELETE FROM maxsim.failed;
    DELETE FROM maxsim.indexes;
    -- every remaining function 0002 created (both scoring implementations), whatever its signature
    FOR r IN SELECT p.oid::regprocedure AS fn
               FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'maxsim'::regnamespace
                AND p.proname IN ('search', 'rerank', 'upsert', 'delete', 'maxsim', 'index_info',
                                  'create_index', 'drop_index', 'prune_changes', 'default_options',
                                  '_search', '_rerank', '_upsert', '_search_py', '_rerank_py', '_upsert_py',
                                  '_maxsim_py', '_score', '_rescore', '_rescore_py', '_packed', '_packed_py', '_score_py', '_pool', '_pool_py', '_n_centroids', '_index', '_known_model_dim', '_check_options',
                                  '_check_query', '_candidates', '_pool_sql', '_tok_row', '_tok_truncate',
                                  '_set_ef_search')
    LOOP
        EXECUTE pg_catalog.format('DROP FUNCTION %s', r.fn);
    END LOOP;
END
$$;
DROP TABLE IF EXISTS maxsim.changes;
