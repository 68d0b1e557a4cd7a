-- pgmaxsim 0004, servers WITH plpython3u: maxsim.encode_query asks the scorer service, which hosts
-- the query encoder of every index that has a model (the model is loaded once, in the scorer, never
-- in a database backend). Order: this backend's memory -> maxsim.query_cache -> the scorer.
-- The scorer's address: setting pgmaxsim.scorer (Unix socket path, unix:PATH or HOST:PORT), else
-- the scorer's default socket /tmp/pgmaxsim-scorer.sock.
-- Imports only the standard library, NumPy and pgmaxsim.scorer.{client,protocol} (stdlib + NumPy).
-- Released file: never edit once its revision is released (sha256 pinned in the revision).

CREATE FUNCTION maxsim.encode_query(name text, query text)
RETURNS @vector@.halfvec[]
LANGUAGE plpython3u STABLE
SET search_path TO pg_catalog, pg_temp
AS $py$
import numpy as np
from pgmaxsim.scorer.client import ScorerClient
from pgmaxsim.scorer.protocol import DEFAULT_SOCKET, ProtocolError, ScorerError

plans = SD.setdefault("plans", {})
if "index" not in plans:
    plans["index"] = plpy.prepare(
        "SELECT id, model, model_revision, dim FROM maxsim.indexes WHERE name = $1", ["text"])
    plans["cached"] = plpy.prepare(
        "SELECT t::text AS v FROM pg_catalog.unnest(maxsim._cached_query($1, $2, $3, $4)) AS t",
        ["integer", "text", "text", "text"])
    plans["setting"] = plpy.prepare(
        "SELECT pg_catalog.current_setting('pgmaxsim.scorer', true) AS a,"
        " pg_catalog.current_setting('pgmaxsim.scorer_timeout_ms', true) AS t")
rows = plpy.execute(plans["index"], [name])
if len(rows) == 0:
    plpy.error(f'pgmaxsim: index "{name}" does not exist', hint="see SELECT name FROM maxsim.indexes",
               sqlstate="42704")
idx = rows[0]
if idx["model"] is None:
    plpy.error(f'pgmaxsim: index "{name}" has no model (its embeddings are written by the application):'
               ' encode the query in the application and pass it as halfvec[]', sqlstate="22023")
if query is None or not query.strip():
    plpy.error("pgmaxsim: query text is empty", sqlstate="22023")

key = (idx["id"], idx["model"], idx["model_revision"] or "", query)
memo = SD.setdefault("memo", {})
if key in memo:
    return memo[key]
cached = plpy.execute(plans["cached"], list(key))
if len(cached) > 0:
    out = [r["v"] for r in cached]
else:
    setting = plpy.execute(plans["setting"])[0]
    address = (setting["a"] or "").strip() or DEFAULT_SOCKET
    try:
        timeout = float(setting["t"]) / 1000.0 if setting["t"] else 30.0
    except ValueError:
        timeout = 30.0
    clients = SD.setdefault("clients", {})
    client = clients.get(address)
    if client is None:
        try:
            client = clients[address] = ScorerClient(address, timeout=max(timeout, 30.0))
        except ValueError as exc:
            plpy.error(f"pgmaxsim: bad scorer address in pgmaxsim.scorer: {exc}", sqlstate="22023")
    start = ("start it: pgmaxsim scorer --dsn <this database>"
             + ("" if (setting["a"] or "").strip() else
                " (or SET pgmaxsim.scorer to the address of a scorer running elsewhere)"))
    try:
        head, arrays = client.request({"op": "encode_query", "index": int(idx["id"]), "text": query})
    except ScorerError as exc:
        if exc.code == "unknown_index":
            plpy.error(f'pgmaxsim: the scorer at {address} does not serve index "{name}": {exc.message}',
                       hint="the scorer loads every index with a model when it starts and when it is reloaded",
                       sqlstate="55000")
        if exc.code == "not_ready":
            plpy.error(f'pgmaxsim: the query encoder of index "{name}" is not ready in the scorer at {address}:'
                       f" {exc.message}", sqlstate="55000")
        plpy.error(f"pgmaxsim: scorer at {address}: {exc.message}", sqlstate="55000")
    except (ProtocolError, OSError) as exc:
        client.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        plpy.error(f"pgmaxsim: maxsim.encode_query needs the scorer service, which is not reachable at"
                   f" {address} ({reason})", hint=start, sqlstate="55000")
    tokens = np.asarray(arrays.get("tokens"), dtype=np.float32)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] != idx["dim"]:
        plpy.error(f"pgmaxsim: the scorer encoded the query as shape {tokens.shape}, expected (n, {idx['dim']})",
                   sqlstate="XX000")
    if not np.isfinite(tokens).all():
        plpy.error("pgmaxsim: the scorer returned non-finite query embeddings", sqlstate="XX000")
    half = tokens.astype(np.float16).astype(np.float32)
    out = ["[" + ",".join(repr(float(x)) for x in row) + "]" for row in half]
if len(memo) > 256:
    memo.clear()
memo[key] = out
return out
$py$;
