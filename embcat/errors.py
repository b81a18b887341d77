"""The one root of embcat's errors: every error embcat reports to a user subclasses
:class:`EmbcatError`.

This module imports nothing, so that every package can share the root whatever it may
import: ``catalog.errors`` (domain errors and the database translation), ``encoders.errors``
(``encoders/`` never imports the database), ``embcat.client`` (no FastAPI, no database)
and ``catalog.mirror``'s ``RemoteError``. The CLI turns any ``EmbcatError`` into its
one-line ``error:`` message; ``api/errors.py`` maps the root and its subclasses to HTTP
statuses in one dict.
"""

from __future__ import annotations


class EmbcatError(Exception):
    """Base class of every error embcat reports to a user.

    Subclasses take their message as the first argument; ``detail``, where a subclass
    sets it, is the longer operator's message that the CLI prints in its place.
    """


__all__ = ["EmbcatError"]
