"""What the worker needs to know about one index, read from ``maxsim.indexes``.

Identifiers are kept as catalog names and only ever reach SQL through
:class:`psycopg.sql.Identifier`; the key type is PostgreSQL's own
``format_type`` output (already quoted by the server).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgmaxsim.errors import PgmaxsimError

# Token cost of one image/page when sizing a claim (ColQwen-style pages give ~1,000 tokens).
DEFAULT_IMAGE_COST = 1024

_SPEC_SQL = """
SELECT i.id, i.name, n.nspname, c.relname, i.id_column, format_type(i.id_type, NULL),
       i.text_column, i.image_column,
       (SELECT format_type(a.atttypid, NULL) FROM pg_catalog.pg_attribute a
         WHERE a.attrelid = i.source AND a.attname = i.image_column AND NOT a.attisdropped),
       i.model, i.model_revision, i.dim, i.token_table, i.options
  FROM maxsim.indexes i
  JOIN pg_catalog.pg_class c ON c.oid = i.source
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
"""


@dataclass(frozen=True)
class IndexSpec:
    """One index the worker serves (a snapshot of its registry row)."""

    id: int
    name: str
    source_schema: str
    source_table: str
    id_column: str
    id_type: str
    text_column: str | None
    image_column: str | None
    image_type: str | None
    model: str
    model_revision: str | None
    dim: int
    token_table: str
    options: dict[str, Any] = field(default_factory=dict)

    def source_ident(self) -> sql.Composable:
        return sql.Identifier(self.source_schema, self.source_table)

    def id_type_sql(self) -> sql.Composable:
        return sql.SQL(self.id_type)  # format_type output: quoted by the server

    def token_ident(self) -> sql.Composable:
        schema, _, table = self.token_table.rpartition(".")
        return sql.Identifier(schema or "maxsim", table)

    @property
    def image_cost(self) -> int:
        return int(self.options.get("image_tokens", DEFAULT_IMAGE_COST))

    @property
    def model_key(self) -> tuple[str, str | None]:
        return (self.model, self.model_revision)


def _row_to_spec(r: tuple[Any, ...]) -> IndexSpec:
    return IndexSpec(
        id=r[0], name=r[1], source_schema=r[2], source_table=r[3], id_column=r[4], id_type=r[5],
        text_column=r[6], image_column=r[7], image_type=r[8], model=r[9], model_revision=r[10],
        dim=r[11], token_table=r[12], options=dict(r[13] or {}),
    )


def load_specs(conn: psycopg.Connection[Any], names: list[str] | None = None, *,
               missing_ok: bool = False) -> list[IndexSpec]:
    """Indexes with a model (the ones a worker embeds), optionally only ``names``.

    Raises PgmaxsimError naming an index in ``names`` that does not exist or
    has no model (its embeddings are written by the application), unless
    ``missing_ok`` (a worker already running skips an index dropped meanwhile).
    """
    rows = conn.execute(_SPEC_SQL + " WHERE i.source IS NOT NULL ORDER BY i.id").fetchall()
    specs = [_row_to_spec(r) for r in rows]
    if names:
        by_name = {s.name: s for s in specs}
        for n in names:
            if missing_ok:
                break
            if n not in by_name:
                raise PgmaxsimError(f"index {n!r} does not exist (see pgmaxsim status)")
            if not by_name[n].model:
                raise PgmaxsimError(
                    f"index {n!r} has no model: its embeddings are written by the application, not a worker"
                )
        wanted = set(names)
        specs = [s for s in specs if s.name in wanted]
        # Shadow indexes of a re-embedding in progress come with their index.
        from pgmaxsim.worker.reembed import shadow_ids_of

        shadows = shadow_ids_of(conn, [s.id for s in specs])
        if shadows:
            specs += [_row_to_spec(r) for r in conn.execute(
                _SPEC_SQL + " WHERE i.id = ANY(%s) ORDER BY i.id", (shadows,)).fetchall()]
    return [s for s in specs if s.model]


def load_spec(conn: psycopg.Connection[Any], index_id: int) -> IndexSpec | None:
    row = conn.execute(_SPEC_SQL + " WHERE i.id = %s", (index_id,)).fetchone()
    return _row_to_spec(row) if row else None
