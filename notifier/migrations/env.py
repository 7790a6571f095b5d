"""Alembic's entry point: migrates the connection :mod:`notifier.store` hands it.

notifier runs Alembic programmatically (``notifier db upgrade``, or on first use of the
embedded SQLite file); there is no ``alembic.ini``. Given only a URL (``sqlalchemy.url``,
e.g. from the ``alembic`` command for a developer), it connects itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from notifier.store import metadata


def _run(connection: Connection) -> None:
    # render_as_batch: SQLite alters tables by copying them; Alembic's batch mode does that.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Migrate the given connection, or one to ``sqlalchemy.url``."""
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(str(url))
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


main()
