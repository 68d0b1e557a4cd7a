-- pgmaxsim 0004, servers WITHOUT plpython3u: no way to reach the scorer service from inside a query,
-- so maxsim.encode_query answers from maxsim.query_cache only (see 0004_encode_query.up.sql).
-- Released file: never edit once its revision is released (sha256 pinned in the revision).

CREATE FUNCTION maxsim._encode_remote(index_id integer, dim integer, query text,
                                      OUT tokens @vector@.halfvec[], OUT error text, OUT hint text)
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT NULL::@vector@.halfvec[],
           'maxsim.encode_query cannot reach the scorer service from this server (no plpython3u here, e.g. the'
           || ' embedded default), and query ' || pg_catalog.quote_literal(query) || ' is not in the query cache of'
           || ' index "' || (SELECT i.name FROM maxsim.indexes i WHERE i.id = index_id) || '"',
           'encode the query in the client (pgmaxsim search, pgmaxsim.Index(conn, name).search(text) or'
           || ' .cache_query(text)), or use PostgreSQL with plpython3u and run `pgmaxsim scorer`'
$$;
