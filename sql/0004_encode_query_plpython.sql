-- pgmaxsim 0004, servers WITH plpython3u: maxsim._encode_remote asks the scorer service, which hosts
-- the query encoder of every index that has a model (the model is loaded once, in the scorer, never in
-- a database backend). maxsim.encode_query (0004_encode_query.up.sql) calls it after the query cache.
-- The scorer's address: setting pgmaxsim.scorer (Unix socket path, unix:PATH or HOST:PORT), else the
-- scorer's default socket /tmp/pgmaxsim-scorer.sock. Failures come back in `error` / `hint` (raised by
-- encode_query as clean SQL errors). Encodings are remembered per backend (256 at most).
-- Imports only the standard library, NumPy and pgmaxsim.scorer.{client,protocol} (stdlib + NumPy).
-- Released file: never edit once its revision is released (sha256 pinned in the revision).

CREATE FUNCTION maxsim._encode_remote(index_id integer, dim integer, query text,
                                      OUT tokens @vector@.halfvec[], OUT error text, OUT hint text)
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $py$
import numpy as np
from pgmaxsim.scorer.client import ScorerClient
from pgmaxsim.scorer.protocol import DEFAULT_SOCKET, ProtocolError, ScorerError

plans = SD.setdefault("plans", {})
if "setting" not in plans:
    plans["setting"] = plpy.prepare(
        "SELECT pg_catalog.current_setting('pgmaxsim.scorer', true) AS a,"
        " pg_catalog.current_setting('pgmaxsim.scorer_timeout_ms', true) AS t,"
        " (SELECT i.model FROM maxsim.indexes i WHERE i.id = $1) AS model,"
        " (SELECT i.model_revision FROM maxsim.indexes i WHERE i.id = $1) AS rev", ["integer"])
setting = plpy.execute(plans["setting"], [index_id])[0]
memo = SD.setdefault("memo", {})
key = (index_id, setting["model"], setting["rev"], query)
if key in memo:
    return memo[key], None, None
configured = (setting["a"] or "").strip()
address = configured or DEFAULT_SOCKET
try:
    timeout = max(float(setting["t"]) / 1000.0, 1.0) if setting["t"] else 30.0
except ValueError:
    timeout = 30.0
clients = SD.setdefault("clients", {})
client = clients.get(address)
if client is None:
    try:
        client = clients[address] = ScorerClient(address, timeout=timeout)
    except ValueError as exc:
        return None, f"bad scorer address in setting pgmaxsim.scorer: {exc}", None
client.timeout = timeout
try:
    head, arrays = client.request({"op": "encode_query", "index": int(index_id), "text": query})
except ScorerError as exc:
    if exc.code == "unknown_index":
        return None, f"the scorer at {address} does not serve this index: {exc.message}", \
            "the scorer loads the indexes it serves when it starts or reloads (pgmaxsim scorer --index NAME)"
    return None, f"scorer at {address}: {exc.message}", None
except (ProtocolError, OSError) as exc:
    client.close()
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
    hint = "start it: pgmaxsim scorer --dsn <this database>"
    if not configured:
        hint += " (or SET pgmaxsim.scorer to the address of a scorer running elsewhere)"
    return None, f"maxsim.encode_query needs the scorer service, which is not reachable at {address} ({reason})", hint
tokens = np.asarray(arrays.get("tokens"), dtype=np.float32)
if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] != dim:
    return None, f"the scorer encoded the query as shape {tokens.shape}, expected (n, {dim})", None
if not np.isfinite(tokens).all():
    return None, "the scorer returned non-finite query embeddings", None
half = tokens.astype(np.float16).astype(np.float32)
out = ["[" + ",".join(repr(float(x)) for x in row) + "]" for row in half]
if len(memo) >= 256:
    memo.clear()
memo[key] = out
return out, None, None
$py$;
