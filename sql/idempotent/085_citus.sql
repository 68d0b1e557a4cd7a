-- pgmaxsim functions: indexes over Citus distributed tables (README "Sharding on Citus",
-- docs/SCALING.md). Idempotent file (see 010_registry.sql for the privilege layering). Every
-- function here also installs on a server without Citus: Citus's catalogs and functions are only
-- reached through EXECUTE, after maxsim._citus_distributed said they exist.
--
-- Layout of an index whose source table is distributed (hash, by its key):
--   * maxsim.tok_N (tokens, and the pooled vector with its HNSW index per shard) is distributed by
--     id and colocated with the source: a row and its tokens live in shards of the same node.
--   * maxsim.q_N, the index's outbox, likewise. Triggers on distributed tables run on the shard,
--     on its node, and may touch only colocated shards there (Citus refuses remote work from a
--     trigger), so the source's triggers queue a changed row into the outbox next to it; the
--     coordinator's maxsim.queue (the worker's queue) takes the outbox in when a worker claims
--     (maxsim._citus_collect), in the worker's own transaction: a claim that is rolled back, or
--     a worker killed mid-batch, leaves the rows in the outbox.
--   * The registry, queue, failures and settings stay ordinary tables on the coordinator: every
--     client (the worker included) talks to the coordinator.
--   * The first stage is the pooled vector (pooling "mean"): it lives in the token row, so it is
--     colocated by construction. Search fans out in two pushed-down statements: each shard's HNSW
--     gives its best `candidates` rows by pooled similarity and the coordinator keeps the best
--     `candidates` of all (the single-node candidate set); then each shard computes the exact
--     MaxSim of its own candidates next to their tokens and returns its top k, which the
--     coordinator merges. Tokens never leave their node; only ids and scores travel.

-- Whether `rel` is a Citus hash-distributed table (false where Citus is not installed).
CREATE OR REPLACE FUNCTION maxsim._citus_distributed(rel regclass) RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    found boolean;
BEGIN
    IF rel IS NULL OR pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1 AND p.partmethod = ''h'')'
        INTO found USING rel;
    RETURN found;
END
$$;

-- Whether an index's token table is distributed (the index was created over a distributed source).
CREATE OR REPLACE FUNCTION maxsim._citus_index(r maxsim.indexes) RETURNS boolean
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT maxsim._citus_distributed(pg_catalog.to_regclass(pg_catalog.format('maxsim.%I', r.token_table))) $$;

-- create_index's options for `source`: unchanged for a local table. For a distributed one the
-- first stage is the pooled vector (pooling "mean", the one that lives in the token row); any other
-- pooling asked for is refused. Also allows the triggers create_index puts on the source (Citus
-- creates them on every shard; they touch only colocated shards, see the header).
CREATE OR REPLACE FUNCTION maxsim._citus_options(source regclass, options jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    IF options IS NULL OR NOT maxsim._citus_distributed(source) THEN
        RETURN options;   -- (NULL options: create_index's own error)
    END IF;
    IF coalesce(options ->> 'first_stage', options ->> 'pooling', 'mean') <> 'mean' THEN
        RAISE EXCEPTION 'pgmaxsim: % is distributed (Citus): its index uses first stage "mean", not %',
            source, coalesce(options -> 'first_stage', options -> 'pooling') USING ERRCODE = 'feature_not_supported',
            HINT = 'leave option first_stage out, or give "mean"';
    END IF;
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    RETURN (coalesce(options, '{}') - 'first_stage') || '{"pooling": "mean"}';
END
$$;

-- BEFORE ROW trigger of a distributed token table's shards: a new version per write (Citus gives
-- the sequence a range of its own on every node, so a version names one write cluster-wide). No
-- change log: a node's scorer follows its shards by their versions (pgmaxsim.scorer.citus_node).
CREATE OR REPLACE FUNCTION maxsim._citus_tok_row() RETURNS trigger
LANGUAGE plpgsql
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    NEW.version := pg_catalog.nextval('maxsim.version_seq');
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END
$$;

-- Distribute a freshly created index over a distributed source: its token table and outbox become
-- distributed tables colocated with the source, and the source's trigger function is replaced by
-- one that queues into the outbox. Called by create_index in the same transaction.
CREATE OR REPLACE FUNCTION maxsim._citus_distribute(index_id integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $fn$
DECLARE
    ctx text;
    r maxsim.indexes;
    v_type text;
    v_key text;
    v_changed text := '';
    v_body text;
    col text;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_citus_distribute', index_id);
    -- A storage switch or re-embedding fills a shadow index and catches up from the change log,
    -- which shards do not write (see maxsim._citus_tok_row): refused here, in the transaction that
    -- would create the shadow, so nothing is left behind.
    IF r.name LIKE '%#retier' OR r.name LIKE '%#reembed' THEN
        RAISE EXCEPTION 'pgmaxsim: index "%" is distributed (Citus): % is not supported on distributed indexes',
            pg_catalog.regexp_replace(r.name, '#(retier|reembed)$', ''),
            CASE WHEN r.name LIKE '%#retier' THEN 'changing its storage (reindex --storage/--pool-factor)'
                 ELSE 're-embedding under another model (reindex --model)' END
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'create a new index with the new model or options beside it, fill it, search it, then drop the old one (docs/SCALING.md)';
    END IF;
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    PERFORM maxsim._citus_install_sampler();   -- (Citus was installed after pgmaxsim migrate)
    v_type := pg_catalog.format_type(r.id_type, NULL);
    v_key := pg_catalog.format('%I', r.id_column);

    -- Token table: the change-log triggers write maxsim.changes, a coordinator table a shard
    -- cannot reach; a shard keeps only the versioning.
    EXECUTE pg_catalog.format('DROP TRIGGER maxsim_row ON maxsim.%I', r.token_table);
    EXECUTE pg_catalog.format('DROP TRIGGER maxsim_truncate ON maxsim.%I', r.token_table);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER maxsim_row BEFORE INSERT OR UPDATE ON maxsim.%I FOR EACH ROW EXECUTE FUNCTION maxsim._citus_tok_row()',
        r.token_table);
    EXECUTE 'SELECT pg_catalog.create_distributed_table($1, $2, colocate_with => $3)'
        USING pg_catalog.format('maxsim.%I', r.token_table), 'id', r.source::text;

    -- The outbox (duplicates allowed, as in maxsim.queue). No key, so its whole row identifies a row
    -- to logical replication, which is how Citus moves shards while they stay writable (rebalancing).
    EXECUTE pg_catalog.format(
        'CREATE TABLE maxsim.%I (row_id %s NOT NULL, queued_at timestamptz NOT NULL DEFAULT pg_catalog.now())',
        'q_' || r.id, v_type);
    EXECUTE pg_catalog.format('ALTER TABLE maxsim.%I REPLICA IDENTITY FULL', 'q_' || r.id);
    EXECUTE 'SELECT pg_catalog.create_distributed_table($1, $2, colocate_with => $3)'
        USING pg_catalog.format('maxsim.%I', 'q_' || r.id), 'row_id', r.source::text;

    -- The source's trigger function, as create_index wrote it but queueing into the outbox. Citus
    -- forbids changing a row's distribution key, so an update never moves a row to another shard.
    -- TRUNCATE fires on the coordinator (the distributed table's own statement trigger), where
    -- truncating the distributed token table and outbox is allowed.
    IF r.model IS NOT NULL THEN
        FOREACH col IN ARRAY ARRAY[r.text_column, r.image_column] LOOP
            IF col IS NOT NULL THEN
                v_changed := v_changed || pg_catalog.format(' OR NEW.%1$I IS DISTINCT FROM OLD.%1$I', col);
            END IF;
        END LOOP;
    END IF;
    v_body := pg_catalog.format($b$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE maxsim.%1$I, maxsim.%2$I;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM maxsim.%1$I WHERE id = OLD.%3$s;
    END IF;
    IF %4$L AND (TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND (false%5$s))) THEN
        INSERT INTO maxsim.%2$I (row_id) VALUES (NEW.%3$s);
    END IF;
    RETURN NULL;
END
$b$, r.token_table, 'q_' || r.id, v_key, r.model IS NOT NULL, v_changed);
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE FUNCTION maxsim.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER'
        ' SET search_path TO pg_catalog, pg_temp AS %L', 'src_' || r.id, v_body);
    RETURN true;
END
$fn$;

-- Move an index's outbox into maxsim.queue, in the caller's transaction (the worker's claim):
-- rolled back with it, so a row leaves the outbox only together with the batch that embedded
-- it. One mover at a time per index (a transaction-scoped try-lock): a second worker claims from
-- what is queued already instead of waiting for the first one's batch. Returns rows moved.
CREATE OR REPLACE FUNCTION maxsim._citus_collect(index_id integer) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    ctx text;
    r maxsim.indexes;
    moved bigint;
BEGIN
    GET DIAGNOSTICS ctx = PG_CONTEXT;
    r := maxsim._guarded_index(ctx, '_citus_collect', index_id);
    IF NOT maxsim._citus_index(r) OR NOT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('maxsim.q'), r.id) THEN
        RETURN 0;
    END IF;
    EXECUTE pg_catalog.format(
        'WITH m AS (DELETE FROM maxsim.%I RETURNING row_id, queued_at)'
        ' INSERT INTO maxsim.queue (index_id, row_id, queued_at) SELECT $1, m.row_id::text, m.queued_at FROM m',
        'q_' || r.id) USING r.id;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;

-- SET LOCAL `setting` here and on the nodes this transaction reads shards on (hnsw.ef_search for
-- the shards' HNSW scans), until the transaction ends: callers set it back when done. Citus
-- forwards a SET LOCAL only from inside a function call run by the executor (and with
-- citus.propagate_set_commands 'local'): callers PERFORM this function, so it is one.
CREATE OR REPLACE FUNCTION maxsim._citus_set_local(setting text, value integer) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    was text := pg_catalog.current_setting('citus.propagate_set_commands', true);
BEGIN
    PERFORM pg_catalog.set_config('citus.propagate_set_commands', 'local', true);
    EXECUTE pg_catalog.format('SET LOCAL %s = %s', setting, value);
    PERFORM pg_catalog.set_config('citus.propagate_set_commands', coalesce(was, 'none'), true);
END
$$;

-- One shard's best n rows by pooled similarity, nearest first: its own HNSW index, with
-- hnsw.ef_search `ef` for this scan only. Run on the shard's node by maxsim._citus_candidates.
CREATE OR REPLACE FUNCTION maxsim._citus_shard_pooled(shard regclass, qmean @vector@.halfvec, n integer, ef integer)
RETURNS TABLE (id text, d double precision)
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    old_ef text := coalesce(pg_catalog.current_setting('hnsw.ef_search', true), '40');
BEGIN
    PERFORM pg_catalog.set_config('hnsw.ef_search', ef::text, true);
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT t.id::text, (t.pooled OPERATOR(@vector@.<#>) $1)::double precision FROM %s t'
        ' ORDER BY t.pooled OPERATOR(@vector@.<#>) $1 LIMIT $2', shard) USING qmean, n;
    PERFORM pg_catalog.set_config('hnsw.ef_search', old_ef, true);
END
$$;

-- The prefilter of a distributed index: the best n rows by pooled similarity (NULL when the index
-- has at most n rows: exact search). Each shard answers from its own HNSW index with
-- hnsw.ef_search as single-node search sets it; the coordinator merges.
--
-- One distributed statement in the common case, read row by row (no subquery: Citus would plan it
-- apart, through an intermediate result and a transaction block on every node: 15.6 ms instead of
-- 7.8 per prefilter, 2,000 pages on 8 shards, load 7.5). It asks for n + 1 rows, and only when fewer come
-- back (a small index, or an HNSW scan that ran dry) counts the rows, as single-node search
-- always does; the nearest n of those n + 1 are single-node search's n (the same ef_search, so
-- the same HNSW scans). With tsm_system_rows the statement calls maxsim._citus_shard_pooled once
-- per shard (as maxsim._citus_score_ids does), which sets ef_search on the shard for its scan;
-- without, ef_search reaches the shards by SET LOCAL, which Citus forwards only inside a
-- transaction block (the subquery form below opens one).
CREATE OR REPLACE FUNCTION maxsim._citus_candidates(r maxsim.indexes, query @vector@.halfvec[], n integer)
RETURNS text[]
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    present bigint;
    ef integer := greatest((r.options ->> 'ef_search')::integer, n);
    old_ef text := coalesce(pg_catalog.current_setting('hnsw.ef_search', true), '40');
    sampler text := maxsim._citus_sampler();
    qmean @vector@.halfvec;
    rec record;
    result text[] := '{}';
BEGIN
    SELECT @vector@.l2_normalize(@vector@.avg(q::@vector@.vector))::@vector@.halfvec INTO qmean
      FROM pg_catalog.unnest(query) AS u(q);
    IF n <= 1000 AND sampler IS NOT NULL THEN
        FOR rec IN EXECUTE pg_catalog.format(
            'SELECT u.id FROM maxsim.%I t TABLESAMPLE %s (1)'
            ' CROSS JOIN LATERAL maxsim._citus_shard_pooled(t.tableoid::regclass, $1, $2, $3) u ORDER BY u.d LIMIT $2',
            r.token_table, sampler) USING qmean, n + 1, ef LOOP
            result := result || rec.id;
        END LOOP;
    ELSIF n <= 1000 THEN
        PERFORM maxsim._citus_set_local('hnsw.ef_search', ef);
        EXECUTE pg_catalog.format(
            'SELECT pg_catalog.array_agg(s.id::text ORDER BY s.d, s.id) FROM (SELECT t.id, t.pooled OPERATOR(@vector@.<#>) $1 AS d'
            ' FROM maxsim.%I t ORDER BY t.pooled OPERATOR(@vector@.<#>) $1 LIMIT $2) s', r.token_table)
            INTO result USING qmean, n + 1;
        PERFORM maxsim._citus_set_local('hnsw.ef_search', old_ef::integer);
    ELSE
        -- beyond HNSW's ef_search ceiling: a flat scan over the pooled vectors, as on one node
        FOR rec IN EXECUTE pg_catalog.format(
            'SELECT t.id::text AS id FROM maxsim.%I t ORDER BY (t.pooled OPERATOR(@vector@.<#>) $1) + 0 LIMIT $2',
            r.token_table) USING qmean, n + 1 LOOP
            result := result || rec.id;
        END LOOP;
    END IF;
    IF coalesce(pg_catalog.cardinality(result), 0) <= n THEN
        EXECUTE pg_catalog.format('SELECT count(*) FROM (SELECT 1 FROM maxsim.%I LIMIT $1) s', r.token_table)
            INTO present USING n::bigint + 1;
        IF present <= n THEN
            RETURN NULL;
        END IF;
        RETURN coalesce(result, '{}');
    END IF;
    RETURN result[1:n];
END
$$;

-- The TABLESAMPLE method that reads one row of a table (tsm_system_rows), schema-qualified; NULL
-- when it is not installed here.
CREATE OR REPLACE FUNCTION maxsim._citus_sampler() RETURNS text
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.format('%I.system_rows', n.nspname)
      FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'tsm_system_rows'
$$;

-- Install tsm_system_rows (a trusted contrib extension, in pgvector's schema) where Citus is, so
-- that maxsim._citus_score_ids scores each shard in one call; Citus creates it on every node.
-- Leaves things as they are where it cannot (not available, no CREATE on the database): search then
-- scores one row per call.
CREATE OR REPLACE FUNCTION maxsim._citus_install_sampler() RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    IF maxsim._citus_sampler() IS NOT NULL THEN
        RETURN true;
    END IF;
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL
       OR NOT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions a WHERE a.name = 'tsm_system_rows')
       OR NOT pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE') THEN
        RETURN false;
    END IF;
    CREATE EXTENSION IF NOT EXISTS tsm_system_rows SCHEMA @vector@;
    RETURN true;
END
$$;

SELECT maxsim._citus_install_sampler();

-- Exact MaxSim of rows `ids` (text keys; NULL = every row) of a distributed index, best k first
-- (NULL = all), ranked like maxsim._score (score descending, then key text). One pushed-down
-- statement: each shard scores its own rows next to their tokens and returns its best k; the
-- coordinator merges. SECURITY INVOKER: called by maxsim._scores as the schema owner.
--
-- With PL/Python each shard is scored in one call (maxsim._citus_shard_score: its candidates
-- fetched and scored in chunks of up to 128 rows per NumPy product, as on one node). A query
-- over a distributed table calls a function once per row, never once per shard, so the
-- statement reads one row of each shard (TABLESAMPLE system_rows(1): a shard with no rows has
-- nothing to score) and calls the function laterally with that row's tableoid, which on the
-- shard's node is the shard itself. Without PL/Python or tsm_system_rows: one call per row.
CREATE OR REPLACE FUNCTION maxsim._citus_score_ids(r maxsim.indexes, query @vector@.halfvec[], ids text[], k integer)
RETURNS TABLE (id text, score real)
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    storage text := coalesce(r.options ->> 'storage', 'fp16');
    sampler text := maxsim._citus_sampler();
    scored text;
    scorer text;
BEGIN
    IF maxsim._citus_batched() AND sampler IS NOT NULL THEN
        -- The scorer an admin configured (maxsim.set_scorer): each node's shards then ask the
        -- scorer of their node, at the same address ({port}: that node's port).
        SELECT pg_catalog.jsonb_object_agg(s.key, s.value)::text INTO scorer
          FROM maxsim.settings s
         WHERE s.key IN ('scorer', 'scorer_timeout_ms', 'scorer_secret_file', 'scorer_user')
           AND coalesce(pg_catalog.btrim(s.value), '') <> ''
        HAVING pg_catalog.bool_or(s.key = 'scorer');
        RETURN QUERY EXECUTE pg_catalog.format(
            'SELECT u.id, u.score FROM maxsim.%I t TABLESAMPLE %s (1)'
            ' CROSS JOIN LATERAL maxsim._citus_shard_score(t.tableoid::regclass, $1, $2, $3, %s, %L, %L::regtype, %L, $4) u'
            ' ORDER BY u.score DESC, u.id COLLATE "C" LIMIT $3',
            r.token_table, sampler, r.dim, storage, pg_catalog.format_type(r.id_type, NULL), r.name)
            USING pg_catalog.array_send(query), ids, k, scorer;
        RETURN;
    END IF;
    scored := pg_catalog.format('SELECT t.id::text AS id, maxsim._citus_score(t.tokens, t.n_tokens, $1, %s, %L) AS score'
                                ' FROM maxsim.%I t', r.dim, storage, r.token_table);
    IF ids IS NOT NULL THEN
        scored := scored || pg_catalog.format(' WHERE t.id = ANY ($2::%s[])', pg_catalog.format_type(r.id_type, NULL));
    END IF;
    RETURN QUERY EXECUTE scored || ' ORDER BY score DESC, t.id::text COLLATE "C" LIMIT $3' USING query, ids, k;
END
$$;

-- maxsim._unembedded of a distributed index: queued entries (the coordinator's queue, its oldest
-- 100000, and the outbox on the shards) whose row has no embedding yet; {count, 1 when the queue
-- part reached its cap}. The queue's keys are looked up in the token table in one pushed-down
-- statement; the outbox is checked next to its colocated token shards.
CREATE OR REPLACE FUNCTION maxsim._citus_unembedded(r maxsim.indexes) RETURNS bigint[]
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
DECLARE
    keys text[];
    found text[];
    missing bigint;
    outbox bigint;
BEGIN
    keys := ARRAY(SELECT q.row_id FROM maxsim.queue q WHERE q.index_id = r.id ORDER BY q.qid LIMIT 100000);
    IF pg_catalog.cardinality(keys) > 0 THEN   -- (an empty queue costs no distributed statement)
        EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(t.id::text) FROM maxsim.%I t WHERE t.id = ANY ($1::%s[])',
                                  r.token_table, pg_catalog.format_type(r.id_type, NULL))
            INTO found USING keys;
    END IF;
    SELECT count(*) INTO missing FROM pg_catalog.unnest(keys) AS u(k) WHERE u.k <> ALL (coalesce(found, '{}'));
    EXECUTE pg_catalog.format('SELECT count(*) FROM maxsim.%I q WHERE NOT EXISTS (SELECT 1 FROM maxsim.%I t WHERE t.id = q.row_id)',
                              'q_' || r.id, r.token_table)
        INTO outbox;
    RETURN ARRAY[missing + outbox, (pg_catalog.cardinality(keys) >= 100000)::integer];
END
$$;
