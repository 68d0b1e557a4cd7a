-- pgmaxsim 0004 downgrade: remove what 0004 created. Released file: never edit.
DROP FUNCTION IF EXISTS maxsim.encode_query(text, text);
DROP FUNCTION IF EXISTS maxsim._encode_remote(integer, integer, text);
DROP FUNCTION IF EXISTS maxsim.clear_query_cache(text);
DROP FUNCTION IF EXISTS maxsim.cache_query(text, text, @vector@.halfvec[]);
DROP FUNCTION IF EXISTS maxsim._cached_query(integer, text, text, text);
DROP TABLE IF EXISTS maxsim.query_cache;
