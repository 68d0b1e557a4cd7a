-- pgmaxsim functions: MaxSim compute (nopython variant; chosen by feature detection). SECURITY INVOKER:
-- called as the schema owner from the privileged layer (060_search.sql); a caller of its own has
-- no right on the token tables they read. Idempotent file (see 010_registry.sql).

-- MaxSim, dot-product form: sum over query tokens of the max over document tokens of <q, d>.
CREATE OR REPLACE FUNCTION maxsim.maxsim(doc @vector@.halfvec[], query @vector@.halfvec[]) RETURNS real
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    s double precision;
BEGIN
    IF pg_catalog.cardinality(query) = 0 THEN
        RAISE EXCEPTION 'pgmaxsim: query is empty (it needs at least one token vector)' USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.array_position(query, NULL) IS NOT NULL OR pg_catalog.array_position(doc, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'pgmaxsim: token arrays must not contain NULL vectors' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF pg_catalog.cardinality(doc) = 0 THEN
        RETURN NULL;
    END IF;
    SELECT sum(m.best) INTO s FROM (
        SELECT max(-(d.v OPERATOR(@vector@.<#>) q.v)) AS best
          FROM pg_catalog.unnest(query) WITH ORDINALITY AS q(v, i)
         CROSS JOIN pg_catalog.unnest(doc) AS d(v)
         GROUP BY q.i) m;
    RETURN s;
END
$$;

-- Exact MaxSim of the rows `ids` (text keys; NULL = every row) of index `index_id`, best `k` first.
CREATE OR REPLACE FUNCTION maxsim._score(index_id integer, query @vector@.halfvec[], ids text[], k integer)
RETURNS TABLE (id text, score real)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
BEGIN
    SELECT * INTO STRICT r FROM maxsim.indexes i WHERE i.id = index_id;
    IF ids IS NULL THEN
        RETURN QUERY EXECUTE pg_catalog.format(
            'SELECT t.id::text, maxsim.maxsim(t.tokens, $1) AS s FROM maxsim.%I t ORDER BY s DESC, 1 LIMIT $2',
            r.token_table) USING query, k;
    ELSE
        RETURN QUERY EXECUTE pg_catalog.format(
            'SELECT t.id::text, maxsim.maxsim(t.tokens, $1) AS s FROM maxsim.%I t'
            ' WHERE t.id = ANY ($3::%s[]) ORDER BY s DESC, 1 LIMIT $2',
            r.token_table, r.id_type) USING query, k, ids;
    END IF;
END
$$;

-- {normalised mean, centroid 1..n} of one row's tokens: spherical k-means, strided start,
-- a fixed number of rounds (the same algorithm as pgmaxsim.pooling, in SQL).
CREATE OR REPLACE FUNCTION maxsim._pool(tokens @vector@.halfvec[], n_centroids integer) RETURNS @vector@.halfvec[]
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    n integer := pg_catalog.cardinality(tokens);
    mean @vector@.halfvec;
    cents @vector@.vector[];
    updated @vector@.vector[];
    round integer;
BEGIN
    SELECT @vector@.l2_normalize(@vector@.avg(t::@vector@.vector))::@vector@.halfvec INTO mean
      FROM pg_catalog.unnest(tokens) AS u(t);
    IF n_centroids <= 0 THEN
        RETURN ARRAY[mean];
    END IF;
    n_centroids := least(n_centroids, n);
    cents := ARRAY(SELECT tokens[(((2 * j + 1) * n) / (2 * n_centroids)) + 1]::@vector@.vector
                     FROM pg_catalog.generate_series(0, n_centroids - 1) AS g(j) ORDER BY j);
    FOR round IN 1..8 LOOP
        -- assign each token to its most similar centroid; move each centroid to its members'
        -- normalised mean (a centroid without members stays where it is)
        updated := ARRAY(
            SELECT coalesce(m.c, cents[g.j])
              FROM pg_catalog.generate_series(1, n_centroids) AS g(j)
              LEFT JOIN (
                  SELECT a.j, @vector@.l2_normalize(@vector@.avg(a.t)) AS c FROM (
                      SELECT u.t::@vector@.vector AS t,
                             (SELECT cc.j FROM pg_catalog.unnest(cents) WITH ORDINALITY AS cc(c, j)
                               ORDER BY u.t::@vector@.vector OPERATOR(@vector@.<#>) cc.c, cc.j LIMIT 1) AS j
                        FROM pg_catalog.unnest(tokens) AS u(t)) a
                   GROUP BY a.j) m ON m.j = g.j
             ORDER BY g.j);
        EXIT WHEN updated = cents;
        cents := updated;
    END LOOP;
    RETURN ARRAY[mean] || ARRAY(SELECT c::@vector@.halfvec FROM pg_catalog.unnest(cents) AS u(c));
END
$$;

-- The best n of rows `ids` by centroid interaction (MaxSim against each row's centroids).
CREATE OR REPLACE FUNCTION maxsim._rescore(index_id integer, query @vector@.halfvec[], ids text[], n integer) RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    result text[];
BEGIN
    SELECT * INTO STRICT r FROM maxsim.indexes i WHERE i.id = index_id;
    EXECUTE pg_catalog.format($q$
        SELECT array_agg(s.row_id::text ORDER BY s.score DESC, s.row_id) FROM (
            SELECT m.row_id, sum(m.best) AS score FROM (
                SELECT c.row_id, q.i, max(-(c.vec OPERATOR(@vector@.<#>) q.v)) AS best
                  FROM maxsim.%I c CROSS JOIN pg_catalog.unnest($1) WITH ORDINALITY AS q(v, i)
                 WHERE c.row_id = ANY ($2::%s[])
                 GROUP BY c.row_id, q.i) m
             GROUP BY m.row_id ORDER BY score DESC, m.row_id LIMIT $3) s
        $q$, 'cen_' || r.id, r.id_type)
        INTO result USING query, ids, n;
    RETURN coalesce(result, '{}');
END
$$;

-- Raw little-endian fp16 copy of tokens: not computed in pure SQL (too slow there); NULL
-- leaves tokens_packed empty, and readers fall back to the halfvec[] column.
CREATE OR REPLACE FUNCTION maxsim._packed(tokens @vector@.halfvec[]) RETURNS bytea
LANGUAGE sql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT NULL::bytea $$;
