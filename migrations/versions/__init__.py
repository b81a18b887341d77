"""The revisions (plain SQL through ``op.execute``); Alembic loads them by path."""
