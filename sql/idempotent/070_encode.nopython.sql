-- pgmaxsim functions: how this server reaches the scorer's query encoder (nopython variant).
-- Idempotent file (see 010_registry.sql).

CREATE OR REPLACE FUNCTION maxsim._encode_remote(index_id integer, dim integer, query text,
                                      OUT tokens @vector@.halfvec[], OUT error text, OUT hint text)
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT NULL::@vector@.halfvec[],
           'maxsim.encode_query cannot reach the scorer service from this server (no plpython3u here, e.g. the'
           || ' embedded default), and query ' || pg_catalog.quote_literal(query) || ' is not in the query cache of'
           || ' index "' || (SELECT i.name FROM maxsim.indexes i WHERE i.id = index_id) || '"',
           'cache it once, then encode_query answers it here: run `pgmaxsim search '
           || pg_catalog.quote_literal(query) || ' --index '
           || pg_catalog.quote_ident((SELECT i.name FROM maxsim.indexes i WHERE i.id = index_id))
           || ' --cache` (or in Python: pgmaxsim.Index(conn, name).cache_query(text)); or search from the client'
           || ' (pgmaxsim search, pgmaxsim.Index(conn, name).search(text)), which encodes there'
$$;
