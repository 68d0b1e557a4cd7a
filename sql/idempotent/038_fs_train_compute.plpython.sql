-- pgmaxsim functions: the computing steps of maxsim.train_first_stage (038_fs_train.sql) in NumPy
-- (PL/Python variant; pgmaxsim.fs_train). Idempotent file. SECURITY INVOKER: called as the schema
-- owner from maxsim._fs_train_here; a caller of its own cannot read the codebook tables.

-- The codebook of a sample of stored rows (pgmaxsim.fs_train.build): centroids flattened, rounded as halfvec stores them.
CREATE OR REPLACE FUNCTION maxsim._fs_kmeans_py(tokens bytea[], n_tokens integer[], dim integer, storage text,
                                                total_tokens bigint, options jsonb, seed integer,
                                                OUT coarse real[], OUT fine real[], OUT n_coarse integer,
                                                OUT n_fine integer, OUT sample_tokens integer)
LANGUAGE plpython3u IMMUTABLE
SET search_path TO pg_catalog, pg_temp
AS $$
import json
from pgmaxsim import fs_train
cb, used = fs_train.build(tokens or [], n_tokens or [], dim, storage, total_tokens, json.loads(options), seed)
return {"coarse": cb.coarse.ravel().tolist(), "fine": cb.fine.ravel().tolist(),
        "n_coarse": cb.n_coarse, "n_fine": cb.n_fine, "sample_tokens": used}
$$;

-- Rows' distinct codes under generation `gen` of index `index_id`'s stored codebook, flattened
-- (pgmaxsim.fs_train.batch_codes).
CREATE OR REPLACE FUNCTION maxsim._fs_codes_py(index_id integer, gen integer, tokens bytea[], n_tokens integer[],
                                               dim integer, storage text, OUT flat integer[], OUT lens integer[])
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $$
from pgmaxsim.plpy import codes
return codes.batch(plpy, index_id, gen, tokens or [], n_tokens or [], dim, storage)
$$;
