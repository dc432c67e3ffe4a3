"""Alembic environment: the SQLModel tables are the target; the engine comes from the caller."""

from alembic import context
from sqlmodel import SQLModel

from orchestrator.db import tables as models  # noqa: F401  (registers the tables)

config = context.config
target_metadata = SQLModel.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:  # `alembic` command line: build an engine from the configured URL
        from orchestrator.db.engine import make_engine

        with make_engine(config.get_main_option("sqlalchemy.url")).connect() as conn:
            _migrate(conn)
    else:
        _migrate(connection)


def _migrate(connection) -> None:  # noqa: ANN001
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run()
