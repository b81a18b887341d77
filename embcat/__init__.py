"""embcat: a STAC catalogue and data-exchange server for Earth-observation embeddings.

The installable distribution is this one namespace: ``embcat.catalog`` (database, STAC
and similarity logic; the checkout's ``catalog/``), ``embcat.encoders`` (encoder plugins
and the encode job; ``encoders/``), ``embcat.api`` (the stac-fastapi application;
``api/``), ``embcat.migrations`` (the Alembic scripts; ``migrations/``) and, here, the
version, the error root (``embcat.errors``), the command line and the Python client.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("embcat")
except PackageNotFoundError:  # running from a checkout without installing
    __version__ = "0.0.0"

__all__ = ["__version__"]
