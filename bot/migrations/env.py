"""Alembic environment: migrations run on the connection `Storage.migrate` hands over."""

from __future__ import annotations

from alembic import context

from bot.storage import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through bot.storage.Storage.migrate()")

# render_as_batch: SQLite cannot ALTER most things, so Alembic rebuilds the table instead.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
