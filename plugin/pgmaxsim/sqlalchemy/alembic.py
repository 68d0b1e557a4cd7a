"""Alembic operations for applications' own migrations: ``op.create_maxsim_index`` / ``op.drop_maxsim_index``.

Importing :mod:`pgmaxsim.sqlalchemy` registers them. In a migration::

    import pgmaxsim.sqlalchemy  # noqa: F401  (registers the operations)

    def upgrade():
        op.create_table("pages", ...)
        op.create_maxsim_index("pages", "pages", "id", text_column="body",
                               model="sentence-transformers/all-MiniLM-L6-v2")

    def downgrade():
        op.drop_maxsim_index("pages")
        op.drop_table("pages")

The database needs the ``maxsim`` schema first (``pgmaxsim migrate``: it keeps
its own version table, ``maxsim.alembic_version``, apart from the
application's). The operations call ``maxsim.create_index`` /
``maxsim.drop_index``; ``model=None`` means the application writes the
embeddings itself and then ``dim`` is required.
"""

from __future__ import annotations

import json
from typing import Any

from alembic.operations import MigrateOperation, Operations
from sqlalchemy import Table, text


def _source_text(source: Any, operations: Any) -> str:
    """A regclass literal for ``source``: a string as written in SQL, or a Table / ORM class."""
    table = getattr(source, "__table__", source)
    if isinstance(table, Table):
        preparer = operations.get_bind().dialect.identifier_preparer
        return preparer.format_table(table)
    if isinstance(source, str):
        return source
    raise TypeError(f"source must be a table name, a Table or an ORM class, not {type(source).__name__}")


@Operations.register_operation("create_maxsim_index")
class CreateMaxsimIndexOp(MigrateOperation):
    """``maxsim.create_index(...)`` as an alembic operation (reverse: drop it)."""

    def __init__(self, name: str, source: Any, id_column: str = "id", *, text_column: str | None = None,
                 image_column: str | None = None, model: str | None = None, dim: int | None = None,
                 options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.source = source
        self.id_column = id_column
        self.text_column = text_column
        self.image_column = image_column
        self.model = model
        self.dim = dim
        self.options = dict(options or {})

    @classmethod
    def create_maxsim_index(cls, operations: Operations, name: str, source: Any, id_column: str = "id",
                            **kw: Any) -> Any:
        """Create MaxSim index ``name`` over table ``source`` (see :func:`maxsim.create_index`)."""
        return operations.invoke(cls(name, source, id_column, **kw))

    def reverse(self) -> DropMaxsimIndexOp:
        return DropMaxsimIndexOp(self.name, _reverse=self)


@Operations.register_operation("drop_maxsim_index")
class DropMaxsimIndexOp(MigrateOperation):
    """``maxsim.drop_index(name)`` as an alembic operation."""

    def __init__(self, name: str, *, _reverse: CreateMaxsimIndexOp | None = None) -> None:
        self.name = name
        self._reverse = _reverse

    @classmethod
    def drop_maxsim_index(cls, operations: Operations, name: str) -> Any:
        """Drop MaxSim index ``name`` and everything it created (the source table stays)."""
        return operations.invoke(cls(name))

    def reverse(self) -> CreateMaxsimIndexOp:
        if self._reverse is None:
            raise ValueError("drop_maxsim_index cannot be reversed without the create operation's arguments")
        return self._reverse


@Operations.implementation_for(CreateMaxsimIndexOp)
def _create(operations: Operations, op: CreateMaxsimIndexOp) -> None:
    stmt = text(
        "SELECT maxsim.create_index(:name, CAST(:source AS regclass), :id_column, :text_column,"
        " :image_column, :model, CAST(:dim AS integer), CAST(:options AS jsonb))"
    ).bindparams(
        name=op.name, source=_source_text(op.source, operations), id_column=op.id_column,
        text_column=op.text_column, image_column=op.image_column, model=op.model, dim=op.dim,
        options=json.dumps(op.options),
    )
    operations.execute(stmt)


@Operations.implementation_for(DropMaxsimIndexOp)
def _drop(operations: Operations, op: DropMaxsimIndexOp) -> None:
    operations.execute(text("SELECT maxsim.drop_index(:name)").bindparams(name=op.name))
