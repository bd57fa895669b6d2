"""Alembic environment of cgsnap's catalog: online only, on the connection
that :func:`cgsnap.db.upgrade` passes in ``config.attributes``."""

from alembic import context

from cgsnap.db import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, version_table=VERSION_TABLE,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
