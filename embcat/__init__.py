"""embcat: a STAC catalogue and data-exchange server for Earth-observation embeddings.

The installable distribution holds four packages: ``catalog`` (database, STAC and
similarity logic), ``encoders`` (encoder plugins and the encode job), ``api`` (the
stac-fastapi application) and ``embcat`` (version and the command line).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("embcat")
except PackageNotFoundError:  # running from a checkout without installing
    __version__ = "0.0.0"

__all__ = ["__version__"]
