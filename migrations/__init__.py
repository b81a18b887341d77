"""Alembic revisions of the catalogue schema, installed as ``embcat.migrations`` (package
data found by ``embcat.catalog.migrate.migrations_dir``)."""
