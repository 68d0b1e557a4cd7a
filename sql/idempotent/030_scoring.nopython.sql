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
            'SELECT t.id::text, maxsim.maxsim(maxsim._decode(t.tokens, %s, %L), $1) AS s FROM maxsim.%I t ORDER BY s DESC, 1 LIMIT $2',
            r.dim, r.options ->> 'storage', r.token_table) USING query, k;
    ELSE
        RETURN QUERY EXECUTE pg_catalog.format(
            'SELECT t.id::text, maxsim.maxsim(maxsim._decode(t.tokens, %s, %L), $1) AS s FROM maxsim.%I t'
            ' WHERE t.id = ANY ($3::%s[]) ORDER BY s DESC, 1 LIMIT $2',
            r.dim, r.options ->> 'storage', r.token_table, r.id_type) USING query, k, ids;
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

-- One row's tokens -> its stored fp16 bytes (little-endian halfs, token-major; the layout of
-- pgmaxsim.kernels.quantize): halfvec_send gives big-endian halfs after a 4-byte header, swapped
-- through their hex text (C-speed, no per-element SQL). int8 and token pooling need plpython3u
-- (create_index refuses int8 here; pool_factor > 1 rows come from Python writers).
CREATE OR REPLACE FUNCTION maxsim._encode(tokens @vector@.halfvec[], storage text, pool_factor integer) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    out bytea;
BEGIN
    IF storage <> 'fp16' THEN
        RAISE EXCEPTION 'pgmaxsim: storage "%" needs plpython3u on the server', storage USING ERRCODE = 'feature_not_supported';
    END IF;
    IF pool_factor <> 1 THEN
        RAISE EXCEPTION 'pgmaxsim: token pooling (pool_factor %) needs plpython3u on the server', pool_factor
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'write the rows from Python (pgmaxsim.Index.upsert or the worker), which pool them';
    END IF;
    SELECT pg_catalog.decode(pg_catalog.regexp_replace(pg_catalog.encode(
               pg_catalog.string_agg(pg_catalog.substr(@vector@.halfvec_send(u.v), 5), ''::bytea ORDER BY u.i),
               'hex'), '(..)(..)', '\2\1', 'g'), 'hex')
      INTO out FROM pg_catalog.unnest(tokens) WITH ORDINALITY AS u(v, i);
    RETURN out;
END
$$;

-- Stored fp16 bytes -> halfvec[] (exact: every half is a halfvec value). Arithmetic per element:
-- the pure-SQL path is the slow, exact fallback (README "Servers without plpython3u"). Measured on
-- the quickstart's 41 rows (2M halves): 22 s when each half was a function call (with its
-- search_path switch), ~3 s inline. plan_cache_mode: a generic plan (from the sixth call of a
-- session on) re-read the out-of-line blob for every byte and took minutes.
CREATE OR REPLACE FUNCTION maxsim._decode(blob bytea, dim integer, storage text) RETURNS @vector@.halfvec[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
SET plan_cache_mode TO force_custom_plan
AS $$
BEGIN
    IF storage <> 'fp16' THEN
        RAISE EXCEPTION 'pgmaxsim: storage "%" needs plpython3u on the server', storage USING ERRCODE = 'feature_not_supported';
    END IF;
    IF pg_catalog.length(blob) < 2 * dim THEN
        RETURN NULL;  -- no whole token (as array_agg over no rows)
    END IF;
    RETURN ARRAY(
        SELECT ARRAY(
            SELECT ((CASE WHEN b.e = 0 THEN b.m * 2.0::float8 ^ -24              -- subnormal
                          WHEN b.e = 31 THEN CASE WHEN b.m = 0 THEN 'Infinity'::float8 ELSE 'NaN'::float8 END
                          ELSE (1024 + b.m) * 2.0::float8 ^ (b.e - 25) END)
                    * CASE WHEN b.h & 32768 <> 0 THEN -1 ELSE 1 END)::real
              FROM pg_catalog.generate_series(t.t * dim, t.t * dim + dim - 1) AS g(i)
             CROSS JOIN LATERAL (SELECT x.h, (x.h >> 10) & 31 AS e, x.h & 1023 AS m FROM (
                     SELECT pg_catalog.get_byte(blob, 2 * g.i) | (pg_catalog.get_byte(blob, 2 * g.i + 1) << 8) AS h) x) b
             ORDER BY g.i)::@vector@.halfvec
          FROM pg_catalog.generate_series(0, pg_catalog.length(blob) / (2 * dim) - 1) AS t(t)
         ORDER BY t.t);
END
$$;
