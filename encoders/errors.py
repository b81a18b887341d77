"""Errors of the encode side, under the one root :class:`embcat.errors.EmbcatError`
(a module without imports: ``encoders/`` never imports the database).

The CLI turns every ``EmbcatError`` into a one-line message and exit status 1. Every
message names the file (or encoder) and the cause, so that a failed HPC job log says
what to fix.
"""

from __future__ import annotations

from embcat.errors import EmbcatError


class EncodeError(EmbcatError):
    """Base class of every error the encoders package reports to a user.

    Takes exactly one message argument, so that torch's DataLoader can re-raise it from
    a worker process with its type intact.
    """


class EncoderNotFound(EncodeError):
    """No encoder is registered under the requested name."""


class DuplicateEncoder(EncodeError):
    """Two entry points register the same encoder name."""


class EncoderOptionError(EncodeError):
    """An encoder was given options it does not accept, or a bad model card."""


class InputError(EncodeError):
    """Source imagery is unreadable, not georeferenced, or lacks what the encoder needs."""


class OutputError(EncodeError):
    """The output directory cannot be written (read-only, full, missing)."""
