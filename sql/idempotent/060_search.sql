-- pgmaxsim functions: search and rerank (the ANN prefilter, exact MaxSim, row-level security).
-- Idempotent file (see 010_registry.sql for the privilege layering).
--
-- search/rerank/tokens run as the caller. The rows they return are the rows the caller can see:
-- when row-level security filters the source table for the caller (row_security_active), every
-- candidate set is passed through the source as the caller (maxsim._visible) before it is scored,
-- and the ANN prefilter is widened (in proportion to the share of its rows the caller saw) until
-- `candidates` visible rows were found, or all the caller's rows are taken (when that share says
-- they are few, or the prefilter covered the whole index), so k results come back whenever k
-- visible rows exist. Without RLS the source shows the caller every row it may SELECT, and no
-- filtering is needed.

-- A setting an admin chose (maxsim.set_setting), or NULL.
CREATE OR REPLACE FUNCTION maxsim._setting(key text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_setting');
    RETURN (SELECT s.value FROM maxsim.settings s WHERE s.key = _setting.key);
END
$$;

-- Validate token vectors for an index; `what` names them in errors ('query', 'tokens', 'query tokens').
CREATE OR REPLACE FUNCTION maxsim._check_tokens(r maxsim.indexes, t @vector@.halfvec[], what text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    bad integer;
    plural boolean := what LIKE '%s';
    is_ text := CASE WHEN plural THEN 'are' ELSE 'is' END;
    noun text := CASE WHEN plural THEN pg_catalog.left(what, -1) ELSE what END;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: % % NULL', what, is_ USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF pg_catalog.cardinality(t) = 0 THEN
        RAISE EXCEPTION 'pgmaxsim: % % empty (it needs at least one token vector)', what, is_ USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.array_ndims(t) <> 1 THEN
        RAISE EXCEPTION 'pgmaxsim: % must be a one-dimensional array of token vectors, got % dimensions',
            what, pg_catalog.array_ndims(t) USING ERRCODE = '22023';
    END IF;
    IF pg_catalog.array_position(t, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'pgmaxsim: % contain% NULL token vectors', what, CASE WHEN plural THEN '' ELSE 's' END
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT @vector@.vector_dims(v) INTO bad FROM pg_catalog.unnest(t) AS u(v)
     WHERE @vector@.vector_dims(v) <> r.dim LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgmaxsim: % vectors have % dimensions, index "%" has %', noun, bad, r.name, r.dim
            USING ERRCODE = 'data_exception';
    END IF;
END
$$;

-- The most query tokens accepted (setting max_query_tokens, default 512 like the scorer): a query
-- is a few dozen tokens; thousands are a mistake or an attack that would hold a backend for seconds.
CREATE OR REPLACE FUNCTION maxsim._max_query_tokens() RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    v text;
BEGIN
    v := maxsim._setting('max_query_tokens');
    RETURN coalesce(v::integer, 512);
END
$$;

-- Validate a query against an index (and k); raises a clear error.
CREATE OR REPLACE FUNCTION maxsim._check_query(r maxsim.indexes, query @vector@.halfvec[], k integer) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    lim integer;
BEGIN
    IF query IS NOT NULL THEN
        lim := maxsim._max_query_tokens();
        IF pg_catalog.cardinality(query) > lim THEN
            RAISE EXCEPTION 'pgmaxsim: query has % token vectors, more than the limit of %', pg_catalog.cardinality(query), lim
                USING ERRCODE = 'program_limit_exceeded',
                      HINT = 'an admin can raise it: SELECT maxsim.set_setting(''max_query_tokens'', ''1024'')';
        END IF;
    END IF;
    PERFORM maxsim._check_tokens(r, query, 'query');
    IF k IS NOT NULL AND k <= 0 THEN
        RAISE EXCEPTION 'pgmaxsim: k must be positive, got %', k USING ERRCODE = '22023';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION maxsim._candidates(r maxsim.indexes, query @vector@.halfvec[], n integer) RETURNS text[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    present bigint;
    probe integer := (r.options ->> 'probe')::integer;
    wide integer := least(n::bigint * (r.options ->> 'rescore')::integer, 100000000);
    ef integer := (r.options ->> 'ef_search')::integer;
    old_ef text := pg_catalog.current_setting('hnsw.ef_search', true);
    qmean @vector@.halfvec;
    result text[];
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_candidates');
    IF maxsim._citus_index(r) THEN
        RETURN maxsim._citus_candidates(r, query, n);   -- per shard, merged (085_citus.sql)
    END IF;
    -- A budget >= the row count means exact search: count at most n + 1 rows to know.
    EXECUTE pg_catalog.format('SELECT count(*) FROM (SELECT 1 FROM maxsim.%I LIMIT $1) s', r.token_table)
        INTO present USING n::bigint + 1;
    IF present <= n THEN
        RETURN NULL;
    END IF;
    IF r.pooling = 'codebook' THEN
        -- 035_firststage.sql (NULL: every row); with PL/Python, `rescore` x n rows, of which
        -- maxsim.search keeps the best n by centroid interaction (pgmaxsim.plpy.codes.rescore)
        result := maxsim._fs_candidates(r, query, CASE WHEN maxsim.has_plpython() THEN wide ELSE n END);
        RETURN result;
    END IF;
    IF r.pooling = 'mean' THEN
        SELECT @vector@.l2_normalize(@vector@.avg(q::@vector@.vector))::@vector@.halfvec INTO qmean
          FROM pg_catalog.unnest(query) AS u(q);
        IF n <= 1000 THEN
            PERFORM pg_catalog.set_config('hnsw.ef_search', greatest(ef, n)::text, true);
            EXECUTE pg_catalog.format(
                'SELECT array_agg(s.id::text) FROM (SELECT t.id FROM maxsim.%I t'
                ' ORDER BY t.pooled OPERATOR(@vector@.<#>) $1 LIMIT $2) s', r.token_table)
                INTO result USING qmean, n;
        ELSE
            -- beyond HNSW's ef_search ceiling: a flat scan over the pooled vectors
            EXECUTE pg_catalog.format(
                'SELECT array_agg(s.id::text) FROM (SELECT t.id FROM maxsim.%I t'
                ' ORDER BY (t.pooled OPERATOR(@vector@.<#>) $1) + 0 LIMIT $2) s', r.token_table)
                INTO result USING qmean, n;
        END IF;
    ELSE
        -- centroids: every query token fetches its `probe` nearest row centroids (more when
        -- the budget is large); a row's proxy score sums, over query tokens, its best centroid
        -- similarity, imputing the probe's smallest similarity where the row was not reached.
        probe := least(1000, greatest(probe, wide / 4));
        PERFORM pg_catalog.set_config('hnsw.ef_search', greatest(ef, probe)::text, true);
        EXECUTE pg_catalog.format($q$
            WITH q AS (SELECT u.v, u.i FROM pg_catalog.unnest($1) WITH ORDINALITY AS u(v, i)),
            hits AS (SELECT q.i, h.row_id, h.sim FROM q CROSS JOIN LATERAL (
                         SELECT c.row_id, -(c.vec OPERATOR(@vector@.<#>) q.v) AS sim FROM maxsim.%I c
                          ORDER BY c.vec OPERATOR(@vector@.<#>) q.v LIMIT $2) h),
            fl AS (SELECT hits.i, min(hits.sim) AS f FROM hits GROUP BY hits.i),
            best AS (SELECT hits.i, hits.row_id, max(hits.sim) - min(fl.f) AS gain
                       FROM hits JOIN fl ON fl.i = hits.i GROUP BY hits.i, hits.row_id)
            SELECT array_agg(s.row_id::text) FROM (
                SELECT best.row_id FROM best GROUP BY best.row_id ORDER BY sum(best.gain) DESC, best.row_id LIMIT $3) s
            $q$, 'cen_' || r.id)
            INTO result USING query, probe, wide;
    END IF;
    PERFORM pg_catalog.set_config('hnsw.ef_search', coalesce(old_ef, '40'), true);
    RETURN coalesce(result, '{}');
END
$$;

-- The best n of rows `ids` by centroid interaction (privileged: reads the centroid table).
CREATE OR REPLACE FUNCTION maxsim._rescore_ids(index_id integer, query @vector@.halfvec[], ids text[], n integer)
RETURNS text[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_rescore_ids');
    RETURN maxsim._rescore(index_id, query, ids, n);
END
$$;

-- Exact MaxSim of rows `ids` (text keys; NULL = every row), best k first (NULL = all), as two
-- parallel arrays in rank order (privileged: reads the token table, or asks the scorer).
CREATE OR REPLACE FUNCTION maxsim._scores(index_id integer, query @vector@.halfvec[], ids text[], k integer,
                                          OUT ranked_ids text[], OUT ranked_scores real[])
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_scores', index_id);
    IF maxsim._citus_index(r) THEN   -- per shard, merged (085_citus.sql)
        SELECT pg_catalog.array_agg(s.id ORDER BY s.o), pg_catalog.array_agg(s.score ORDER BY s.o)
          INTO ranked_ids, ranked_scores
          FROM maxsim._citus_score_ids(r, query, ids, k) WITH ORDINALITY AS s(id, score, o);
        RETURN;
    END IF;
    SELECT pg_catalog.array_agg(s.id ORDER BY s.o), pg_catalog.array_agg(s.score ORDER BY s.o)
      INTO ranked_ids, ranked_scores
      FROM maxsim._score(index_id, query, ids, k) WITH ORDINALITY AS s(id, score, o);
END
$$;

CREATE OR REPLACE FUNCTION maxsim._timing() RETURNS boolean
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT pg_catalog.current_setting('pgmaxsim.timing', true) IN ('on', 'true', '1') $$;

CREATE OR REPLACE FUNCTION maxsim._ms_since(t0 timestamptz) RETURNS numeric
LANGUAGE sql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT pg_catalog.round((EXTRACT(epoch FROM pg_catalog.clock_timestamp() - t0) * 1000)::numeric, 1) $$;

-- Top-k rows by MaxSim. id is the source key as text (lossless for integer, bigint, uuid and
-- text keys); join back with a cast to the key's type so the source's primary key index is used:
--   SELECT d.*, s.score FROM maxsim.search('docs', q, 10) s JOIN docs d ON d.id = s.id::bigint
-- candidates: rows passed from the ANN prefilter to exact scoring (NULL = the index's default;
-- a value >= the row count means exact search over every row). Only rows the caller can see.
-- Queued rows of an index that have no embedding yet, so search cannot find them (queued rows that
-- have one, re-queued after an update, are searched at their previous version). Privileged: the
-- queue and token table are the owner's. Looks at no more than the oldest 100000 queue entries (the
-- queue's (index_id, qid) index, one key lookup each), so a search stays cheap under any backlog;
-- returns {count, 1 when that cap was reached}.
CREATE OR REPLACE FUNCTION maxsim._unembedded(index_id integer) RETURNS bigint[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    missing bigint;
    seen bigint;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_unembedded', _unembedded.index_id);
    IF maxsim._citus_index(r) THEN
        RETURN maxsim._citus_unembedded(r);   -- queue and outbox against the shards (085_citus.sql)
    END IF;
    EXECUTE pg_catalog.format(
        'SELECT count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM maxsim.%I t WHERE t.id = q.row_id::%s)), count(*)'
        ' FROM (SELECT row_id FROM maxsim.queue WHERE index_id = $1 ORDER BY qid LIMIT 100000) q',
        r.token_table, r.id_type) INTO missing, seen USING r.id;
    RETURN ARRAY[missing, (seen >= 100000)::integer];
END
$$;

-- How many rows of index r the caller sees if it sees `share` of them: the token table's row count
-- as the planner keeps it (pg_class.reltuples, readable by every role; NULL before the table was
-- first vacuumed or analyzed, when nothing is estimated, and for a distributed index, whose
-- coordinator table holds no rows: reltuples 0 would make every search take all visible rows).
CREATE OR REPLACE FUNCTION maxsim._visible_estimate(r maxsim.indexes, share double precision) RETURNS double precision
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    est double precision;
BEGIN
    IF maxsim._citus_index(r) THEN
        RETURN NULL;   -- (085_citus.sql)
    END IF;
    SELECT share * c.reltuples INTO est FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace
     WHERE s.nspname = 'maxsim' AND c.relname = r.token_table AND c.reltuples >= 0;
    RETURN est;
END
$$;

-- The rows maxsim.search scores exactly for this query and caller (ids NULL: every row), and the
-- index's id: the checks, the pending-rows NOTICE, the prefilter widened under row-level security
-- and the centroid rescoring. Runs as the caller; maxsim.search and maxsim.search_tokens share it.
CREATE OR REPLACE FUNCTION maxsim._search_candidates(name text, query @vector@.halfvec[], k integer,
                                                    candidates integer, OUT index_id integer, OUT ids text[])
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    n integer;
    wide integer;
    cand text[];
    filtered boolean;
    round integer := 0;
    seen integer;
    t0 timestamptz;
    pending bigint[];
    timing boolean := maxsim._timing();
BEGIN
    r := maxsim._index_to_read(name);
    IF k IS NULL THEN
        RAISE EXCEPTION 'pgmaxsim: k is NULL (it must be a positive integer)' USING ERRCODE = '22023';
    END IF;
    PERFORM maxsim._check_query(r, query, k);
    n := coalesce(candidates, (r.options ->> 'candidates')::integer);
    IF n <= 0 THEN
        RAISE EXCEPTION 'pgmaxsim: candidates must be positive, got %', n USING ERRCODE = '22023';
    END IF;
    n := greatest(n, k);
    filtered := pg_catalog.row_security_active(r.source);
    -- Queued rows are not searchable yet: say so instead of returning fewer rows silently. Not
    -- under row-level security, where the count would tell the caller about rows it cannot see.
    IF r.model IS NOT NULL AND NOT filtered THEN
        pending := maxsim._unembedded(r.id);
        IF pending[1] > 0 THEN
            RAISE NOTICE 'pgmaxsim: index "%" has % queued row% not embedded yet (not searched); embed them with: pgmaxsim worker --once',
                r.name, CASE WHEN pending[2] = 1 THEN 'at least ' ELSE '' END || pending[1],
                CASE WHEN pending[1] = 1 THEN '' ELSE 's' END;
        END IF;
    END IF;
    t0 := pg_catalog.clock_timestamp();
    wide := n;
    LOOP
        cand := maxsim._candidates(r, query, wide);
        -- the prefilter already covers every row (cand NULL), or no row-level security
        EXIT WHEN cand IS NULL OR NOT filtered;
        seen := pg_catalog.cardinality(cand);
        cand := maxsim._visible(r, cand);
        EXIT WHEN pg_catalog.cardinality(cand) >= n OR round >= 3;   -- enough visible candidates
        -- Too few were visible. The share this round saw estimates how many rows of the index the
        -- caller sees; when that is a few times the budget, all of them, ranked by the centroid
        -- rescoring below, cost less than an ANN search deep enough to reach them (bench/security.py;
        -- without that rescoring every one is scored exactly, so only up to twice the budget).
        IF maxsim._visible_estimate(r, (pg_catalog.cardinality(cand) + 1)::double precision / (seen + 1))
           <= n::bigint * (CASE WHEN r.pooling = 'centroids' OR (r.pooling = 'codebook' AND maxsim.has_plpython())
                                THEN 32 ELSE 2 END) THEN
            cand := maxsim._visible(r, NULL);
            EXIT;
        END IF;
        -- else widen in proportion to that share (x1.5 margin), not by a fixed factor
        wide := least(wide::bigint * least(64, greatest(2, pg_catalog.ceil(
                    1.5 * n / greatest(pg_catalog.cardinality(cand), 1)))), 100000000)::integer;
        round := round + 1;
    END LOOP;
    IF cand IS NULL AND filtered THEN
        cand := maxsim._visible(r, NULL);   -- exact search over the rows the caller can see
    ELSIF cand IS NOT NULL AND filtered AND pg_catalog.cardinality(cand) < n AND round >= 3 THEN
        cand := maxsim._visible(r, NULL);   -- still short after widening: exact over the visible rows
    END IF;
    IF timing THEN
        RAISE NOTICE 'pgmaxsim: candidates % (% ms, pooling %)', coalesce(pg_catalog.cardinality(cand)::text, 'all rows'),
            maxsim._ms_since(t0), r.pooling || CASE WHEN filtered THEN ', row-level security, prefilter rounds ' || round + 1 ELSE '' END;
    END IF;
    IF cand IS NOT NULL AND (r.pooling = 'centroids' OR (r.pooling = 'codebook' AND maxsim.has_plpython()))
       AND pg_catalog.cardinality(cand) > n
       AND pg_catalog.cardinality(cand) < 1000000 THEN
        t0 := pg_catalog.clock_timestamp();
        cand := maxsim._rescore_ids(r.id, query, cand, n);
        IF timing THEN
            RAISE NOTICE 'pgmaxsim: rescored to % by centroid interaction (% ms)', pg_catalog.cardinality(cand),
                maxsim._ms_since(t0);
        END IF;
    END IF;
    index_id := r.id;
    ids := cand;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.search(name text, query @vector@.halfvec[], k integer DEFAULT 10,
                                         candidates integer DEFAULT NULL)
RETURNS TABLE (id text, score real)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    cand record;
    res record;
BEGIN
    cand := maxsim._search_candidates(name, query, k, candidates);
    res := maxsim._scores(cand.index_id, query, cand.ids, k);
    RETURN QUERY SELECT u.id, u.score FROM ROWS FROM (pg_catalog.unnest(res.ranked_ids), pg_catalog.unnest(res.ranked_scores)) WITH ORDINALITY
                                           AS u(id, score, o) ORDER BY u.o;
END
$$;

-- The stored bytes of rows `ids` (text keys; NULL = every row) as three parallel arrays
-- (privileged: reads the token table). Tokens as the tier stores them (pgmaxsim.kernels.quantize).
CREATE OR REPLACE FUNCTION maxsim._token_bytes(index_id integer, ids text[], OUT row_ids text[],
                                               OUT blobs bytea[], OUT n_tokens integer[])
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_token_bytes', index_id);
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.array_agg(t.id::text), pg_catalog.array_agg(t.tokens), pg_catalog.array_agg(t.n_tokens)'
        ' FROM maxsim.%I t WHERE $1 IS NULL OR t.id = ANY ($1::%s[])', r.token_table, r.id_type)
        INTO row_ids, blobs, n_tokens USING ids;
END
$$;

-- What maxsim.search would score for this query and caller, with each row's stored token bytes, for
-- a client that scores them itself: on a server without plpython3u, MaxSim in SQL arithmetic takes
-- seconds where NumPy takes milliseconds (pgmaxsim.search scores them so, with the ranking of
-- maxsim.search: score descending, then id). Only rows the caller can see, as maxsim.search.
CREATE OR REPLACE FUNCTION maxsim.search_tokens(name text, query @vector@.halfvec[], k integer DEFAULT 10,
                                                candidates integer DEFAULT NULL)
RETURNS TABLE (id text, tokens bytea, n_tokens integer)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    cand record;
    res record;
BEGIN
    cand := maxsim._search_candidates(name, query, k, candidates);
    res := maxsim._token_bytes(cand.index_id, cand.ids);
    RETURN QUERY SELECT u.id, u.tokens, u.n FROM ROWS FROM (pg_catalog.unnest(res.row_ids), pg_catalog.unnest(res.blobs),
                                                            pg_catalog.unnest(res.n_tokens)) AS u(id, tokens, n);
END
$$;

-- Exact MaxSim over any id set, typed like the ids given (compose with WHERE, full-text
-- search). Ids not in the index, or not visible to the caller, are ignored; NULL k = every id given.
CREATE OR REPLACE FUNCTION maxsim.rerank(name text, query @vector@.halfvec[], ids anyarray, k integer DEFAULT NULL)
RETURNS TABLE (id anyelement, score real)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    keys text[];
    res record;
BEGIN
    r := maxsim._index_to_read(name);
    PERFORM maxsim._check_query(r, query, k);
    keys := ARRAY(SELECT DISTINCT g.x::text FROM pg_catalog.unnest(ids) AS g(x) WHERE g.x IS NOT NULL);
    IF pg_catalog.row_security_active(r.source) THEN
        keys := maxsim._visible(r, keys);
    END IF;
    IF pg_catalog.cardinality(keys) = 0 THEN
        RETURN;
    END IF;
    res := maxsim._scores(r.id, query, keys, k);
    RETURN QUERY
        SELECT g.x, u.score
          FROM ROWS FROM (pg_catalog.unnest(res.ranked_ids), pg_catalog.unnest(res.ranked_scores)) WITH ORDINALITY AS u(key, score, o)
          JOIN (SELECT DISTINCT ON (g0.x::text) g0.x FROM pg_catalog.unnest(ids) AS g0(x) WHERE g0.x IS NOT NULL) g
            ON g.x::text = u.key
         ORDER BY u.o;
END
$$;

CREATE OR REPLACE FUNCTION maxsim._row_tokens(index_id integer, id text) RETURNS @vector@.halfvec[]
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    t @vector@.halfvec[];
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_row_tokens', index_id);
    -- decoded from the tier's bytes (int8: the dequantized values, rounded to halfvec)
    EXECUTE pg_catalog.format('SELECT maxsim._decode(t.tokens, %s, %L) FROM maxsim.%I t WHERE t.id = $1::%s',
                              r.dim, coalesce(r.options ->> 'storage', 'fp16'), r.token_table, r.id_type)
        INTO t USING id;
    RETURN t;
END
$$;

-- A row's stored tokens as pgvector values (NULL when the row is not in the index or not visible).
CREATE OR REPLACE FUNCTION maxsim.tokens(name text, id anyelement) RETURNS @vector@.halfvec[]
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    t @vector@.halfvec[];
BEGIN
    r := maxsim._index_to_read(name);
    IF id IS NULL OR (pg_catalog.row_security_active(r.source)
                      AND pg_catalog.cardinality(maxsim._visible(r, ARRAY[id::text])) = 0) THEN
        RETURN NULL;
    END IF;
    t := maxsim._row_tokens(r.id, id::text);
    RETURN t;
END
$$;
