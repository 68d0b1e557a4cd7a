-- pgmaxsim functions: the computing steps of maxsim.train_first_stage (038_fs_train.sql), pure-SQL
-- variant: there is none (k-means in SQL would take hours); train from a client instead
-- (pgmaxsim.codebook.train: the worker, `pgmaxsim index reindex NAME --first-stage`). Idempotent file.

CREATE OR REPLACE FUNCTION maxsim._fs_kmeans_py(tokens bytea[], n_tokens integer[], dim integer, storage text,
                                                total_tokens bigint, options jsonb, seed integer,
                                                OUT coarse real[], OUT fine real[], OUT n_coarse integer,
                                                OUT n_fine integer, OUT sample_tokens integer)
LANGUAGE plpgsql IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'pgmaxsim: training a first stage inside the server needs plpython3u'
        USING ERRCODE = 'feature_not_supported', HINT = 'pgmaxsim index reindex NAME --first-stage';
END
$$;

CREATE OR REPLACE FUNCTION maxsim._fs_codes_py(index_id integer, gen integer, tokens bytea[], n_tokens integer[],
                                               dim integer, storage text, OUT flat integer[], OUT lens integer[])
LANGUAGE plpgsql STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'pgmaxsim: training a first stage inside the server needs plpython3u'
        USING ERRCODE = 'feature_not_supported', HINT = 'pgmaxsim index reindex NAME --first-stage';
END
$$;
