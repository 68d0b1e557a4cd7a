-- pgmaxsim functions: the worker's side of the queue (claim, done, retry, fail), its heartbeat and
-- batch log. Idempotent file (see 010_registry.sql for the privilege layering).
-- Any role that may manage an index (the owner of its source table, an admin) can run a worker for
-- it: these entry points check that, then the privileged functions touch the owner's tables. They
-- run in the caller's transaction: claim locks (FOR UPDATE SKIP LOCKED) last until it ends, so the
-- worker's contract (claim, encode, write, dequeue in one transaction; pgmaxsim.worker.queue) holds.

-- Lock up to n ready entries (qids NULL), or those of `qids` still free, of an index; in qid order.
CREATE OR REPLACE FUNCTION maxsim._queue_claim(index_id integer, n integer, among bigint[],
                                               OUT qids bigint[], OUT row_ids text[], OUT attempts integer[])
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_queue_claim');
    SELECT pg_catalog.array_agg(x.qid ORDER BY x.qid), pg_catalog.array_agg(x.row_id ORDER BY x.qid),
           pg_catalog.array_agg(x.attempts ORDER BY x.qid)
      INTO qids, row_ids, attempts
      FROM (SELECT q.qid, q.row_id, q.attempts FROM maxsim.queue q
             WHERE q.index_id = _queue_claim.index_id
               AND (among IS NULL AND q.not_before <= pg_catalog.now() OR q.qid = ANY (among))
             ORDER BY q.qid LIMIT n FOR UPDATE SKIP LOCKED) x;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.queue_claim(name text, n integer, among bigint[] DEFAULT NULL)
RETURNS TABLE (qid bigint, row_id text, attempts integer)
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    res record;
    moved bigint;
BEGIN
    r := maxsim._index_to_manage(name);
    IF among IS NULL THEN
        moved := maxsim._citus_collect(r.id);   -- a distributed index's outbox (085_citus.sql)
    END IF;
    res := maxsim._queue_claim(r.id, n, among);
    RETURN QUERY SELECT u.q, u.r, u.a
                   FROM ROWS FROM (pg_catalog.unnest(res.qids), pg_catalog.unnest(res.row_ids),
                                   pg_catalog.unnest(res.attempts)) AS u(q, r, a) ORDER BY u.q;
END
$$;

-- Settle claimed entries: done ('done': dequeued, earlier failures of the rows forgotten), backed
-- off ('retry': attempts and a delay), or given up ('failed': into maxsim.failed, dequeued).
CREATE OR REPLACE FUNCTION maxsim._queue_settle(index_id integer, outcome text, qids bigint[], row_ids text[],
                                                attempts integer, step text, error text, delay_s double precision)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_queue_settle');
    IF outcome = 'done' THEN
        DELETE FROM maxsim.queue q WHERE q.index_id = _queue_settle.index_id AND q.qid = ANY (qids);
        DELETE FROM maxsim.failed f WHERE f.index_id = _queue_settle.index_id AND f.row_id = ANY (row_ids);
    ELSIF outcome = 'retry' THEN
        UPDATE maxsim.queue q SET attempts = _queue_settle.attempts, last_error = step || ': ' || error,
               not_before = pg_catalog.now() + pg_catalog.make_interval(secs => delay_s)
         WHERE q.index_id = _queue_settle.index_id AND q.qid = ANY (qids);
    ELSIF outcome = 'failed' THEN
        INSERT INTO maxsim.failed AS f (index_id, row_id, step, error, attempts)
        VALUES (_queue_settle.index_id, row_ids[1], step, error, _queue_settle.attempts)
        ON CONFLICT ON CONSTRAINT failed_pkey DO UPDATE SET step = EXCLUDED.step, error = EXCLUDED.error,
            attempts = EXCLUDED.attempts, failed_at = pg_catalog.now();
        DELETE FROM maxsim.queue q WHERE q.index_id = _queue_settle.index_id AND q.qid = ANY (qids);
    ELSIF outcome = 'forget' THEN
        DELETE FROM maxsim.failed f WHERE f.index_id = _queue_settle.index_id AND f.row_id = ANY (row_ids);
    ELSE
        RAISE EXCEPTION 'pgmaxsim: unknown queue outcome %', outcome USING ERRCODE = '22023';
    END IF;
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.queue_settle(name text, outcome text, qids bigint[], row_ids text[],
                                               attempts integer DEFAULT NULL, step text DEFAULT NULL,
                                               error text DEFAULT NULL, delay_s double precision DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._index_to_manage(name);
    done := maxsim._queue_settle(r.id, outcome, qids, row_ids, attempts, step, error, delay_s);
END
$$;

-- What the worker reads of an index's own state: queued entries and when the next backed-off one is
-- due, rows waiting for a retry, failed rows, stored content hashes.
CREATE OR REPLACE FUNCTION maxsim._queue_state(index_id integer, hash_ids text[],
                                               OUT queued bigint, OUT due_in double precision,
                                               OUT retrying bigint, OUT failed_ids text[],
                                               OUT hash_keys text[], OUT hashes bytea[])
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_queue_state', _queue_state.index_id);
    SELECT count(*), EXTRACT(epoch FROM min(q.not_before) FILTER (WHERE q.not_before > pg_catalog.now()) - pg_catalog.now()),
           count(DISTINCT q.row_id) FILTER (WHERE q.attempts > 0)
      INTO queued, due_in, retrying
      FROM maxsim.queue q WHERE q.index_id = r.id;
    failed_ids := ARRAY(SELECT f.row_id FROM maxsim.failed f WHERE f.index_id = r.id);
    IF hash_ids IS NOT NULL THEN
        EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(t.id::text), pg_catalog.array_agg(t.content_hash)'
                                  ' FROM maxsim.%I t WHERE t.id = ANY ($1::%s[]) AND t.content_hash IS NOT NULL',
                                  r.token_table, r.id_type)
            INTO hash_keys, hashes USING hash_ids;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.queue_state(name text, hash_ids text[] DEFAULT NULL,
                                              OUT queued bigint, OUT due_in double precision,
                                              OUT retrying bigint, OUT failed_ids text[],
                                              OUT hash_keys text[], OUT hashes bytea[])
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    res record;
BEGIN
    r := maxsim._index_to_manage(name);
    res := maxsim._queue_state(r.id, hash_ids);
    queued := res.queued; due_in := res.due_in; retrying := res.retrying; failed_ids := res.failed_ids;
    hash_keys := res.hash_keys; hashes := res.hashes;
END
$$;

-- queue_state's counts for several indexes in one statement (the worker's idle round asks for every
-- index it serves at once): per index of `index_ids`, in that order, queued entries, seconds until
-- the earliest backed-off one is due, rows waiting for a retry.
CREATE OR REPLACE FUNCTION maxsim._queue_totals(index_ids integer[], OUT queued bigint[],
                                                OUT due_in double precision[], OUT retrying bigint[])
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_queue_totals');
    SELECT pg_catalog.array_agg(coalesce(s.queued, 0) ORDER BY g.o), pg_catalog.array_agg(s.due_in ORDER BY g.o),
           pg_catalog.array_agg(coalesce(s.retrying, 0) ORDER BY g.o)
      INTO queued, due_in, retrying
      FROM pg_catalog.unnest(index_ids) WITH ORDINALITY AS g(index_id, o)
      LEFT JOIN (SELECT q.index_id, count(*) AS queued,
                        EXTRACT(epoch FROM min(q.not_before) FILTER (WHERE q.not_before > pg_catalog.now())
                                           - pg_catalog.now())::double precision AS due_in,
                        count(DISTINCT q.row_id) FILTER (WHERE q.attempts > 0) AS retrying
                   FROM maxsim.queue q WHERE q.index_id = ANY (index_ids) GROUP BY q.index_id) s
        ON s.index_id = g.index_id;
END
$$;

-- queue_state's counts of several indexes (each one the caller manages), one row per name given.
CREATE OR REPLACE FUNCTION maxsim.queue_totals(names text[])
RETURNS TABLE (name text, queued bigint, due_in double precision, retrying bigint)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    ids integer[] := '{}';
    n text;
    res record;
BEGIN
    FOREACH n IN ARRAY coalesce(names, '{}') LOOP
        r := maxsim._index_to_manage(n);
        ids := ids || r.id;
    END LOOP;
    IF pg_catalog.cardinality(ids) = 0 THEN
        RETURN;
    END IF;
    res := maxsim._queue_totals(ids);
    RETURN QUERY SELECT u.n, u.q, u.d, u.r
                   FROM ROWS FROM (pg_catalog.unnest(names), pg_catalog.unnest(res.queued),
                                   pg_catalog.unnest(res.due_in), pg_catalog.unnest(res.retrying))
                        WITH ORDINALITY AS u(n, q, d, r, o) ORDER BY u.o;
END
$$;

-- Share-lock an index's registry row for a batch (a re-embedding switch-over or a drop waits for
-- the batch); returns what the batch must still agree with.
CREATE OR REPLACE FUNCTION maxsim._index_share(index_id integer, OUT model text, OUT model_revision text, OUT dim integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_index_share');
    SELECT i.model, i.model_revision, i.dim INTO model, model_revision, dim
      FROM maxsim.indexes i WHERE i.id = _index_share.index_id FOR SHARE;
END
$$;

CREATE OR REPLACE FUNCTION maxsim.batch_begin(name text, OUT model text, OUT model_revision text, OUT dim integer)
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    res record;
BEGIN
    r := maxsim._index_to_manage(name);
    res := maxsim._index_share(r.id);
    model := res.model; model_revision := res.model_revision; dim := res.dim;
END
$$;

CREATE OR REPLACE FUNCTION maxsim._log_batch(index_id integer, worker_id text, counts bigint[], seconds real)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_log_batch');
    INSERT INTO maxsim.ingest_log (index_id, worker_id, rows_done, rows_skipped, rows_failed, tokens, seconds)
    VALUES (index_id, worker_id, counts[1], counts[2], counts[3], counts[4], seconds);
    RETURN true;
END
$$;

-- One committed batch in maxsim.ingest_log (rows done, skipped, failed, tokens; seconds).
CREATE OR REPLACE FUNCTION maxsim.log_batch(name text, worker_id text, counts bigint[], seconds real) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    r maxsim.indexes;
    done boolean;
BEGIN
    r := maxsim._index_to_manage(name);
    done := maxsim._log_batch(r.id, worker_id, counts, seconds);
END
$$;

CREATE OR REPLACE FUNCTION maxsim._heartbeat(worker_id text, hostname text, pid integer, counts bigint[],
                                             state text, indexes text[], last_error text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    PERFORM maxsim._guard(ctx, '_heartbeat');
    INSERT INTO maxsim.workers AS w (worker_id, hostname, pid, rows_done, rows_failed, state, indexes, last_error)
    VALUES (worker_id, hostname, pid, counts[1], counts[2], state, indexes, last_error)
    ON CONFLICT ON CONSTRAINT workers_pkey DO UPDATE SET heartbeat_at = pg_catalog.now(),
        rows_done = EXCLUDED.rows_done, rows_failed = EXCLUDED.rows_failed, state = EXCLUDED.state,
        indexes = EXCLUDED.indexes, last_error = EXCLUDED.last_error;
    -- a day of history is what `pgmaxsim status` reads; older batches and silent workers go
    DELETE FROM maxsim.ingest_log l WHERE l.at < pg_catalog.now() - interval '1 day';
    DELETE FROM maxsim.workers w WHERE w.heartbeat_at < pg_catalog.now() - interval '1 day';
    RETURN true;
END
$$;

-- A worker's heartbeat (maxsim.workers): any role that may manage one of the indexes it serves.
CREATE OR REPLACE FUNCTION maxsim.worker_heartbeat(worker_id text, hostname text, pid integer, counts bigint[],
                                                   state text, indexes text[], last_error text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    regs maxsim.indexes[];
    done boolean;
BEGIN
    regs := maxsim._registry();
    IF NOT maxsim._is_admin(current_user) AND pg_catalog.cardinality(indexes) > 0 AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.unnest(regs) AS g WHERE g.name = ANY (indexes) AND maxsim._may_manage(g.source)) THEN
        RAISE EXCEPTION 'pgmaxsim: permission denied: a worker must serve an index its role manages'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    done := maxsim._heartbeat(worker_id, hostname, pid, counts, state, indexes, last_error);
END
$$;
