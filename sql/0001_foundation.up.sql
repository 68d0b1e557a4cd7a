-- pgmaxsim 0001: schema, extensions, registry, work queue, failed items, worker heartbeats.
-- Released file: never edit (its sha256 is pinned in migrations/versions/0001_foundation.py).

CREATE SCHEMA IF NOT EXISTS maxsim;

CREATE TABLE maxsim.meta (
    key   text PRIMARY KEY,
    value jsonb NOT NULL
);

-- Extensions: vector is required, in schema public (functions name its types as
-- public.halfvec); plpython3u is used when the server has it and we may create it.
-- What we created is recorded so the downgrade removes only that.
DO $$
DECLARE
    created text[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'vector') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'vector') THEN
            RAISE EXCEPTION 'pgvector is not installed on this server (extension "vector" is not available)'
                USING ERRCODE = 'undefined_file', HINT = 'install pgvector >= 0.7 on the server';
        END IF;
        CREATE EXTENSION vector SCHEMA public;
        created := created || 'vector'::text;
    ELSIF (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
           WHERE e.extname = 'vector') <> 'public' THEN
        RAISE EXCEPTION 'pgmaxsim needs the vector extension in schema public'
            USING HINT = 'ALTER EXTENSION vector SET SCHEMA public';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'plpython3u')
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'plpython3u') THEN
        BEGIN
            CREATE EXTENSION plpython3u;
            created := created || 'plpython3u'::text;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pgmaxsim: no right to create plpython3u; using the pure-SQL scoring functions';
        END;
    END IF;
    INSERT INTO maxsim.meta VALUES ('created_extensions', pg_catalog.to_jsonb(created));
END
$$;

-- Version counter shared by every token table: each write of a row's embeddings
-- takes a new value, so a reader (the scorer) can tell exactly which content it holds.
CREATE SEQUENCE maxsim.version_seq AS bigint;

CREATE TABLE maxsim.indexes (
    id             serial PRIMARY KEY,
    name           text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    source         regclass,
    id_column      text,
    id_type        regtype NOT NULL,
    text_column    text,
    image_column   text,
    model          text,
    model_revision text,
    dim            integer NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    pooling        text NOT NULL DEFAULT 'centroids',
    options        jsonb NOT NULL DEFAULT '{}',
    token_table    text NOT NULL UNIQUE,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Work queue: filled by triggers on source tables, drained by workers with
-- FOR UPDATE SKIP LOCKED. Duplicates are allowed on purpose: a row changed while
-- a worker encodes it is queued again rather than lost.
CREATE TABLE maxsim.queue (
    qid        bigserial PRIMARY KEY,
    index_id   integer NOT NULL REFERENCES maxsim.indexes (id) ON DELETE CASCADE,
    row_id     text NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT now(),
    attempts   integer NOT NULL DEFAULT 0,
    not_before timestamptz NOT NULL DEFAULT now(),
    last_error text
);
CREATE INDEX queue_claim_idx ON maxsim.queue (index_id, not_before, qid);

CREATE TABLE maxsim.failed (
    index_id  integer NOT NULL REFERENCES maxsim.indexes (id) ON DELETE CASCADE,
    row_id    text NOT NULL,
    step      text NOT NULL,
    error     text NOT NULL,
    attempts  integer NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (index_id, row_id)
);

CREATE TABLE maxsim.workers (
    worker_id    text PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    rows_done    bigint NOT NULL DEFAULT 0,
    rows_failed  bigint NOT NULL DEFAULT 0
);

CREATE FUNCTION maxsim.has_plpython() RETURNS boolean
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'plpython3u') $$;

CREATE FUNCTION maxsim.version() RETURNS text
LANGUAGE sql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$ SELECT version_num::text FROM maxsim.alembic_version LIMIT 1 $$;
