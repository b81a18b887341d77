"""Alembic environment. The URL comes from the Alembic config (set by catalog.migrate) or
from EMBCAT_DATABASE_URL; migrations are plain SQL through op.execute."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from embcat.catalog.settings import DatabaseSettings, to_sqlalchemy_url

config = context.config
url = config.get_main_option("sqlalchemy.url") or DatabaseSettings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=to_sqlalchemy_url(url), literal_binds=True, transaction_per_migration=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(to_sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Serialise concurrent `embcat db upgrade` runs (several API replicas starting at once).
        connection.exec_driver_sql("select pg_advisory_lock(hashtext('embcat-migrations'))")
        # The lock is the session's and outlives this commit; ending the transaction that
        # took it lets Alembic begin its own per migration (which an autocommit_block needs).
        connection.commit()
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
