"""``pgmaxsim index create|list|show|drop|reindex``: manage MaxSim indexes from the shell.

Everything goes through the public SQL functions (``maxsim.create_index``,
``maxsim.drop_index``, ``maxsim.index_info``), so what the CLI does is what a
SQL user would do.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import psycopg

from pgmaxsim.errors import PgmaxsimError, one_line
from pgmaxsim.registry import (
    canonical_model,
    check_model_name,
    create_index,
    get_index,
    requeue_all,
    require_schema,
)

EPILOG = """\
examples:
  pgmaxsim index create docs --table documents --text-column body            # offline MiniLM
  pgmaxsim index create pages --table documents --image-column image --text-column body \\
      --model vidore/colqwen2.5-v0.2 --pooling centroids
  pgmaxsim index create mine --table items --model none --dim 128             # you write the embeddings
  pgmaxsim index list
  pgmaxsim index show docs
  pgmaxsim index reindex docs                  # encode every row again (same model)
  pgmaxsim index reindex docs --model text:BAAI/bge-small-en-v1.5   # re-embed under a new model
  pgmaxsim index drop docs --yes
"""

def embed_now(dsn: str, names: list[str] | None = None) -> None:
    """Run the worker until the queues of ``names`` (default: all) are empty."""
    from pgmaxsim.worker.loop import run_worker

    stats = run_worker(dsn, indexes=names, once=True, progress=True)
    print(f"worker: {stats.done} row(s) embedded, {stats.skipped} unchanged, {stats.failed} failed")
    for err in stats.errors[:5]:
        print(f"  {err}")


def _options(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise PgmaxsimError(f"--option expects KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


# ---------------------------------------------------------------- subcommands

def register(sub: Any) -> None:
    p = sub.add_parser(
        "index",
        help="create, list, show, drop or re-embed MaxSim indexes",
        description="Manage MaxSim indexes (token tables + pooled-vector ANN + change capture on a source table).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    isub.required = True

    c = isub.add_parser("create", help="index a table (its existing rows are queued for the worker)",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("name", help="index name (any text, 1 to 200 characters)")
    c.add_argument("--table", required=True, help="source table, [schema.]name")
    c.add_argument("--id-column", default="id", help="primary key column (default: id)")
    c.add_argument("--text-column", help="column with the text to embed")
    c.add_argument("--image-column", help="column with image/PDF bytes (bytea) or a local file path (text)")
    c.add_argument("--model", help="model name (default: the offline MiniLM; 'none' = you write embeddings)")
    c.add_argument("--dim", type=int, help="embedding size (default: the model's)")
    c.add_argument("--pooling", "--first-stage", dest="pooling", choices=["codebook", "centroids", "mean"],
                   help="first stage: codebook (token level, PLAID-style; the default), centroids or mean")
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="index option, e.g. candidates=200 ef_search=100 (repeatable)")
    c.set_defaults(func=run_create)

    ls = isub.add_parser("list", help="all indexes with row counts")
    ls.set_defaults(func=run_list)

    s = isub.add_parser("show", help="one index in detail")
    s.add_argument("name")
    s.set_defaults(func=run_show)

    d = isub.add_parser("drop", help="remove an index and everything it created (not the source table)")
    d.add_argument("name")
    d.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    d.set_defaults(func=run_drop)

    r = isub.add_parser("reindex", help="encode every row again, re-embed under a new model, or change the"
                        " storage tier / pool factor from the stored tokens")
    r.add_argument("name")
    r.add_argument("--storage", choices=["fp16", "int8"],
                   help="store the tokens in this tier (fp16 -> int8 from the stored tokens; searches keep answering)")
    r.add_argument("--pool-factor", type=int, metavar="N",
                   help="pool each row's tokens to ~n/N (from unpooled stored tokens; 1 = no pooling)")
    r.add_argument("--first-stage", action="store_true",
                   help="(re)train the index's codebook first stage from its stored tokens and switch to it"
                   " (searches keep answering)")
    r.add_argument("--model", help="re-embed under this model (runs alongside the old one, then switches)")
    r.add_argument("--revision", help="model revision for --model")
    r.set_defaults(func=run_reindex)


def _conn(args: argparse.Namespace) -> psycopg.Connection[Any]:
    from pgmaxsim.db.connect import connect

    conn = connect(args.dsn)
    try:
        require_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _sql_error(e: psycopg.Error) -> PgmaxsimError:
    return PgmaxsimError(one_line(e))


def run_create(args: argparse.Namespace) -> int:
    if not args.text_column and not args.image_column and canonical_model(args.model) is not None:
        raise PgmaxsimError("an index with a model needs --text-column or --image-column")
    with _conn(args) as conn:
        try:
            create_index(conn, args.name, args.table, args.id_column, text_column=args.text_column,
                         image_column=args.image_column, model=args.model, dim=args.dim,
                         pooling=args.pooling, options=_options(args.option))
        except psycopg.Error as e:
            raise _sql_error(e) from None
        info = _info(conn, args.name)
    model = info["model"] or "none (embeddings written by the application)"
    print(f"index {args.name} created: source {info['source']}, model {model}, dim {info['dim']},"
          f" pooling {info['pooling']}; {info['pending']} row(s) queued")
    if info["model"]:
        print("next: pgmaxsim worker --once")
    return 0


def _info(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    try:
        cur = conn.execute("SELECT * FROM maxsim.index_info(%s)", (name,))
    except psycopg.errors.UndefinedObject:
        raise PgmaxsimError(f"index {name!r} does not exist (see `pgmaxsim index list`)") from None
    row = cur.fetchone()
    assert row is not None and cur.description is not None
    return {d.name: v for d, v in zip(cur.description, row)}


def run_list(args: argparse.Namespace) -> int:
    from pgmaxsim.display import table

    with _conn(args) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM maxsim.indexes ORDER BY name")]
        rows = []
        for name in names:
            i = _info(conn, name)
            failed = conn.execute("SELECT count(*) FROM maxsim.failed WHERE index_id = %s", (i["id"],)).fetchone()
            rows.append([name, str(i["source"]), i["model"] or "-", i["dim"], i["pooling"], i["rows"],
                         i["pending"], failed[0] if failed else 0])
    if not rows:
        print("no indexes yet: pgmaxsim index create NAME --table T --text-column C  (or pgmaxsim demo)")
        return 0
    table(["name", "source", "model", "dim", "pooling", "rows", "pending", "failed"], rows, right=[3, 5, 6, 7])
    return 0


def run_show(args: argparse.Namespace) -> int:
    from pgmaxsim.display import human_bytes

    with _conn(args) as conn:
        i = _info(conn, args.name)
        reg = conn.execute(
            "SELECT text_column, image_column, model_revision, created_at FROM maxsim.indexes WHERE id = %s",
            (i["id"],)).fetchone()
        assert reg is not None
        failed = conn.execute(
            "SELECT row_id, step, error FROM maxsim.failed WHERE index_id = %s ORDER BY failed_at DESC LIMIT 5",
            (i["id"],)).fetchall()
        nfailed = conn.execute("SELECT count(*) FROM maxsim.failed WHERE index_id = %s", (i["id"],)).fetchone()
    total = int(i["bytes"] or 0)
    rows = int(i["rows"])
    lines = [
        ("name", args.name),
        ("source", f"{i['source']} (key {i['id_column']} {i['id_type']})"),
        ("text column", reg[0] or "-"),
        ("image column", reg[1] or "-"),
        ("model", (i["model"] or "none (embeddings written by the application)")
         + (f" @ {reg[2]}" if reg[2] else "")),
        ("dim", i["dim"]),
        ("pooling", i["pooling"]),
        ("options", json.dumps(i["options"], sort_keys=True)),
        ("token table", f"maxsim.{i['token_table']}"),
        ("rows", rows),
        ("tokens", f"{i['tokens']} ({i['tokens'] / rows:.0f} per row)" if rows else i["tokens"]),
        ("storage", f"{i['storage']}, pool factor {i['pool_factor']}"),
        ("bytes", f"{human_bytes(total)}" + (f" ({human_bytes(i['bytes_per_row'])} per row)" if rows else "")
         + " (tokens with TOAST, pooled vectors, centroids, their indexes)"),
        ("first stage", "-" if i.get("first_stage_bytes") is None
         else f"{human_bytes(i['first_stage_bytes'])} of those (its tables and indexes)"),
        ("pending", i["pending"]),
        ("failed", nfailed[0] if nfailed else 0),
        ("created", reg[3].isoformat(timespec="seconds") if reg[3] else "-"),
    ]
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        print(f"{k.ljust(width)}  {v}")
    for row_id, step, error in failed:
        print(f"  failed row {row_id} ({step}): {error}")
    return 0


def run_drop(args: argparse.Namespace) -> int:
    import sys

    with _conn(args) as conn:
        _info(conn, args.name)  # a clear error for an unknown index
        if not args.yes:
            if not sys.stdin.isatty():
                raise PgmaxsimError(f"refusing to drop index {args.name!r} without --yes (stdin is not a terminal)")
            answer = input(f"drop index {args.name!r} and its embeddings (the source table stays)? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not dropped")
                return 1
        try:
            conn.execute("SELECT maxsim.drop_index(%s)", (args.name,))
        except psycopg.Error as e:
            raise _sql_error(e) from None
    print(f"index {args.name} dropped")
    return 0


def run_reindex(args: argparse.Namespace) -> int:
    with _conn(args) as conn:
        i = _info(conn, args.name)
        if args.first_stage:
            if args.model or args.storage is not None or args.pool_factor is not None:
                raise PgmaxsimError("--first-stage retrains the first stage only: give it without --model/--storage/--pool-factor")
            return _retrain(conn, args)
        if args.storage is not None or args.pool_factor is not None:
            if args.model:
                raise PgmaxsimError("--model with --storage/--pool-factor: re-embed first, then change the storage")
            return _retier(conn, args)
        if args.model:
            return _reembed(conn, args, i)
        if not i["model"]:
            raise PgmaxsimError(f"index {args.name!r} has no model: its embeddings are written by the application")
        n = requeue_all(conn, get_index(conn, args.name))
    print(f"index {args.name}: {n} row(s) queued to be encoded again; run pgmaxsim worker --once")
    return 0


def _retier(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    from pgmaxsim.display import human_bytes
    from pgmaxsim.retier import retier

    try:
        done = retier(conn, args.name, storage_tier=args.storage, pool_factor=args.pool_factor)
    except psycopg.Error as e:
        raise _sql_error(e) from None
    print(f"index {args.name}: {done.rows} row(s) now stored as {done.storage}, pool factor {done.pool_factor}"
          f" ({human_bytes(done.bytes_before)} -> {human_bytes(done.bytes_after)})")
    return 0


def _retrain(conn: psycopg.Connection[Any], args: argparse.Namespace) -> int:
    from pgmaxsim.codebook import train

    conn.autocommit = True
    try:
        done = train(conn, args.name)
    except psycopg.Error as e:
        raise _sql_error(e) from None
    print(f"index {args.name}: first stage codebook {done.n_coarse} x {done.n_fine} (generation {done.gen})"
          f" trained on {done.sample_tokens} tokens in {done.seconds_train:.1f} s; codes of {done.rows} row(s)"
          f" assigned in {done.seconds_fill:.1f} s")
    return 0


def _reembed(conn: psycopg.Connection[Any], args: argparse.Namespace, info: dict[str, Any]) -> int:
    from pgmaxsim.worker.reembed import start_reembed

    check_model_name(args.model)
    model = canonical_model(args.model)
    if model is None:
        raise PgmaxsimError("--model none: an index cannot be re-embedded into application-written embeddings")
    try:
        state = start_reembed(conn, args.name, model, revision=args.revision)
    except psycopg.Error as e:
        raise _sql_error(e) from None
    del state
    print(f"index {args.name}: re-embedding under {model} started; search keeps using the current"
          " embeddings until the new ones are complete, then switches over. Run pgmaxsim worker to do the work.")
    return 0
