"""The registry model: one index as the Python side sees it, read in one place.

:class:`IndexSpec` is one row of ``maxsim.indexes`` plus what the catalog
knows about it (the source table's schema and name, the halfvec type oid of
the token table). The worker, the scorer, the query path, ``Index`` and the
CLI all read it with :func:`read_indexes` (one SELECT; :func:`get_index`,
:func:`get_index_by_id` and :func:`all_indexes` are that SELECT with a WHERE).

Columns are selected by name, so columns added to ``maxsim.indexes`` later do
not change what is read here. Identifiers are kept as catalog names and reach
SQL only through :class:`psycopg.sql.Identifier`; ``id_type`` is the server's
``format_type`` output and ``source`` its ``regclass`` output (both already
quoted by the server), so they may be spliced with :class:`psycopg.sql.SQL`.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgmaxsim.encoders.registry import DEFAULT_ALIASES, model_dim, resolve_family
from pgmaxsim.encoders.text import DEFAULT_MODEL_NAME
from pgmaxsim.errors import PgmaxsimError
from pgmaxsim.ingest import parse_table_name

#: Model names meaning "no model: the application writes the embeddings".
NO_MODEL = {"none", "null", "app", "application"}
#: Rows passed from the ANN prefilter to exact scoring when neither the call nor
#: the index's options say (the SQL side's ``maxsim.default_options()`` holds the same).
DEFAULT_CANDIDATES = 64
#: Token cost of one image/page when sizing a worker's claim (ColQwen-style pages give ~1,000 tokens).
DEFAULT_IMAGE_COST = 1024

_INT_TYPES = {"smallint": "!h", "integer": "!i", "bigint": "!q"}

_SELECT = sql.SQL("""
SELECT i.id, i.name, i.source::text AS source, n.nspname AS source_schema, c.relname AS source_table,
       i.id_column, pg_catalog.format_type(i.id_type, NULL) AS id_type, i.text_column, i.image_column,
       i.model, i.model_revision, i.dim, i.pooling, i.options, i.token_table,
       tt.halfvec_oid, tt.halfvec_array_oid
  FROM maxsim.list_indexes() i
  LEFT JOIN pg_catalog.pg_class c ON c.oid = i.source
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN LATERAL (
    SELECT t.oid AS halfvec_oid, t.typarray AS halfvec_array_oid
      FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
     WHERE a.attrelid = pg_catalog.to_regclass('maxsim.' || pg_catalog.quote_ident(i.token_table))
       AND a.attname = 'pooled') tt ON true
""")


@dataclass(frozen=True)
class IndexSpec:
    """One index (a snapshot of its registry row)."""

    id: int
    name: str
    source: str | None            # regclass text, quoted by the server; None: no source table
    source_schema: str | None
    source_table: str | None
    id_column: str | None
    id_type: str                  # format_type output, e.g. "integer", "uuid", "text"
    text_column: str | None
    image_column: str | None
    model: str | None             # None: the application writes the embeddings
    model_revision: str | None
    dim: int
    pooling: str = "centroids"
    options: dict[str, Any] = field(default_factory=dict)
    token_table: str = ""
    halfvec_oid: int = 0          # pgvector's halfvec type, and its array type (the tokens column's)
    halfvec_array_oid: int = 0

    # ------------------------------------------------------------ identifiers
    def source_ident(self) -> sql.Composable:
        if self.source_schema is None or self.source_table is None:
            raise PgmaxsimError(f"index {self.name!r} has no source table")
        return sql.Identifier(self.source_schema, self.source_table)

    def id_type_sql(self) -> sql.Composable:
        return sql.SQL(self.id_type)  # format_type output: quoted by the server

    def token_ident(self) -> sql.Composable:
        return sql.Identifier("maxsim", self.token_table)

    @property
    def centroid_table(self) -> str | None:
        return f"cen_{self.id}" if self.pooling == "centroids" else None

    # ------------------------------------------------------------ options
    @property
    def storage(self) -> str:
        """Storage tier of the stored tokens: ``fp16`` or ``int8`` (pgmaxsim.kernels.quantize)."""
        return str(self.options.get("storage", "fp16"))

    @property
    def pool_factor(self) -> int:
        """Token pooling at ingest: ~n / pool_factor vectors kept per row (1 = off)."""
        return int(self.options.get("pool_factor", 1))

    @property
    def candidates(self) -> int:
        """The index's default number of ANN candidates."""
        return int(self.options.get("candidates", DEFAULT_CANDIDATES))

    @property
    def image_cost(self) -> int:
        return int(self.options.get("image_tokens", DEFAULT_IMAGE_COST))

    @property
    def model_key(self) -> tuple[str | None, str | None]:
        return (self.model, self.model_revision)

    # ------------------------------------------------------------ keys
    def key_text(self, key: Any) -> str:
        """A row key as its text form in the database (what ``id::text`` gives)."""
        if key is None:
            raise PgmaxsimError(f"index {self.name!r}: a row id is None")
        if self.id_type in _INT_TYPES:
            if isinstance(key, (bool, float)) or not isinstance(key, (int, np.integer, str)):
                raise PgmaxsimError(f"index {self.name!r} has {self.id_type} keys, got {key!r}")
            try:
                return str(int(key))
            except ValueError:
                raise PgmaxsimError(f"index {self.name!r} has {self.id_type} keys, got {key!r}") from None
        if self.id_type == "uuid":
            try:
                return str(key if isinstance(key, uuid.UUID) else uuid.UUID(str(key)))
            except ValueError:
                raise PgmaxsimError(f"index {self.name!r} has uuid keys, got {key!r}") from None
        return str(key)

    def key_from_text(self, text: str) -> Any:
        """The Python value of a key rendered as text (``maxsim.search`` ids)."""
        if self.id_type in _INT_TYPES:
            return int(text)
        if self.id_type == "uuid":
            return uuid.UUID(text)
        return text

    def key_value(self, text: str) -> Any:
        """A key (as text) as the Python value binary COPY sends for ``id_type``."""
        if self.id_type in _INT_TYPES:
            value = int(text)
            bits = 8 * struct.calcsize(_INT_TYPES[self.id_type])
            if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
                raise PgmaxsimError(f"row id {text} is out of range for {self.id_type}")
            return value
        if self.id_type == "uuid":
            return uuid.UUID(text)
        return text


def read_indexes(conn: psycopg.Connection[Any], where: sql.Composable | None = None,
                 params: Any = None) -> list[IndexSpec]:
    """THE read of ``maxsim.indexes``: the indexes matching ``where`` (a condition on ``i``), by id."""
    query = _SELECT + (sql.SQL("WHERE ") + where if where is not None else sql.SQL("")) + sql.SQL(" ORDER BY i.id")
    with conn.cursor(row_factory=dict_row) as cur:
        return [_spec(r) for r in cur.execute(query, params).fetchall()]


def _spec(r: dict[str, Any]) -> IndexSpec:
    options = r["options"] if isinstance(r["options"], dict) else json.loads(r["options"] or "{}")
    return IndexSpec(
        id=int(r["id"]), name=r["name"], source=r["source"], source_schema=r["source_schema"],
        source_table=r["source_table"], id_column=r["id_column"], id_type=r["id_type"],
        text_column=r["text_column"], image_column=r["image_column"], model=r["model"],
        model_revision=r["model_revision"], dim=int(r["dim"]), pooling=r["pooling"], options=dict(options),
        token_table=r["token_table"], halfvec_oid=int(r["halfvec_oid"] or 0),
        halfvec_array_oid=int(r["halfvec_array_oid"] or 0))


def get_index(conn: psycopg.Connection[Any], name: str) -> IndexSpec:
    """Index ``name``, or a PgmaxsimError naming it."""
    found = read_indexes(conn, sql.SQL("i.name = %s"), (name,))
    if not found:
        raise PgmaxsimError(f'index "{name}" does not exist')
    return found[0]


def get_index_by_id(conn: psycopg.Connection[Any], index_id: int) -> IndexSpec | None:
    found = read_indexes(conn, sql.SQL("i.id = %s"), (index_id,))
    return found[0] if found else None


def all_indexes(conn: psycopg.Connection[Any], names: list[str] | None = None) -> list[IndexSpec]:
    """Every index (optionally only ``names``), by id."""
    if names is None:
        return read_indexes(conn)
    return read_indexes(conn, sql.SQL("i.name = ANY(%s)"), (list(names),))


# ---------------------------------------------------------------- index management (the CLI's and the demo's)

def canonical_model(model: str | None) -> str | None:
    """The model name stored in the registry: ``None``/``default`` → the bundled MiniLM's name,
    ``none`` → NULL (the application writes the embeddings)."""
    if model is None or model.strip().lower() in DEFAULT_ALIASES:
        return DEFAULT_MODEL_NAME
    if model.strip().lower() in NO_MODEL:
        return None
    return model.strip()


def check_model_name(model: str | None) -> None:
    """Raise a one-line PgmaxsimError for a model name no encoder family knows."""
    name = canonical_model(model)
    if name is not None:
        resolve_family(name)


def columns_for_model(model: str | None) -> dict[str, str | None]:
    """Which ingest-table columns an index of ``model`` reads: text models the text,
    image models the page image (and the text of rows without one)."""
    name = canonical_model(model)
    family = resolve_family(name)[0] if name else "text"
    if family == "text":
        return {"text_column": "body", "image_column": None}
    if family == "nemoretriever":
        return {"text_column": None, "image_column": "image"}
    return {"text_column": "body", "image_column": "image"}


def index_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM maxsim.list_indexes() WHERE name = %s)", (name,)).fetchone()
    return bool(row and row[0])


def require_schema(conn: psycopg.Connection[Any]) -> None:
    """Raise a PgmaxsimError saying to migrate when the database has no ``maxsim`` schema."""
    row = conn.execute("SELECT to_regclass('maxsim.indexes') IS NOT NULL").fetchone()
    if not row or not row[0]:
        raise PgmaxsimError(f"database {conn.info.dbname!r} has no maxsim schema: run `pgmaxsim migrate` first")


def create_index(conn: psycopg.Connection[Any], name: str, table: str, id_column: str = "id", *,
                 text_column: str | None = None, image_column: str | None = None, model: str | None = None,
                 dim: int | None = None, pooling: str | None = None,
                 options: dict[str, Any] | None = None) -> int:
    """``maxsim.create_index`` with the CLI's model defaults; returns the index id."""
    require_schema(conn)
    check_model_name(model)
    stored = canonical_model(model)
    opts = dict(options or {})
    if pooling:
        opts["pooling"] = pooling
    if stored is not None and dim is None:
        dim = model_dim(stored)
    source = parse_table_name(table).as_string(conn)
    if conn.execute("SELECT to_regclass(%s)", (source,)).fetchone()[0] is None:  # type: ignore[index]
        raise PgmaxsimError(f"table {table!r} does not exist")
    return int(conn.execute(
        "SELECT maxsim.create_index(%s, %s::regclass, %s, %s, %s, %s, %s, %s::jsonb)",
        (name, source, id_column, text_column, image_column, stored, dim, json.dumps(opts)),
    ).fetchone()[0])  # type: ignore[index]


def requeue_all(conn: psycopg.Connection[Any], index: IndexSpec) -> int:
    """Forget the content hashes (so unchanged rows are encoded again) and queue every source row."""
    with conn.transaction():
        conn.execute(sql.SQL("UPDATE {} SET content_hash = NULL WHERE content_hash IS NOT NULL").format(
            index.token_ident()))
        cur = conn.execute(
            sql.SQL("INSERT INTO maxsim.queue (index_id, row_id) SELECT %s, {}::text FROM {}").format(
                sql.Identifier(index.id_column or "id"), index.source_ident()),
            (index.id,))
    return cur.rowcount
