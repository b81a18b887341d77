"""Domain errors, and the one place where database errors are translated into them.

Every class here subclasses the one root :class:`embcat.errors.EmbcatError` (re-exported
here). The API maps these classes to HTTP statuses in one dict (api/errors.py); the CLI
prints their message and exits non-zero. Nothing above catalog/ inspects psycopg
exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy.exc

from embcat.errors import EmbcatError


class InvalidInput(EmbcatError):
    """The request or the input files are malformed (the user can fix them)."""

    @classmethod
    def from_validation(cls, what: str, exc: Any, most: int | None = None) -> InvalidInput:
        """``<what>: <loc>: <msg>; ...`` from a pydantic ValidationError (its first ``most``
        problems, all when None)."""
        parts = []
        for err in exc.errors()[:most]:
            loc = ".".join(str(p) for p in err["loc"])
            parts.append(f"{loc}: {err['msg']}" if loc else err["msg"])
        return cls(f"{what}: " + "; ".join(parts))


class NotFound(EmbcatError):
    """A collection, item, space or key does not exist."""


class Conflict(EmbcatError):
    """The request conflicts with the catalogue's state (duplicate id, space mismatch)."""


class Unauthorized(EmbcatError):
    """No valid credentials were given."""


class Forbidden(EmbcatError):
    """Valid credentials without the scope the operation needs."""


class DatabaseUnavailable(EmbcatError):
    """The database cannot be reached or is restarting; retry later.

    ``detail``: the operator's message with the real cause (server, database, role),
    printed by the CLI; the message itself (what API clients see) names none of them.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class DatabaseTooOld(EmbcatError):
    """The server lacks PostGIS / pgvector or runs versions older than required."""


class QueryTimeout(EmbcatError):
    """A statement ran past its time limit."""


class ServerPrivilege(EmbcatError):
    """The server's own database role lacks a privilege the operation needs (an operator
    fixes it with a GRANT; retrying does not help)."""


class TooManyRequests(EmbcatError):
    """The client has more requests in flight than it may; retry after the others end."""


class StorageFull(EmbcatError):
    """The server's spool has no room left (disk full or over quota)."""


class StorageUnavailable(EmbcatError):
    """The server's spool cannot be written (read-only or not accessible)."""


def translate(exc: BaseException) -> EmbcatError | None:
    """Map a driver or SQLAlchemy exception to a domain error (None: not ours to map)."""
    orig = getattr(exc, "orig", None) or exc
    if isinstance(orig, psycopg.errors.QueryCanceled):
        return QueryTimeout("the query ran past the statement time limit")
    if isinstance(orig, psycopg.errors.UniqueViolation):
        return Conflict(f"already exists: {_detail(orig)}")
    if isinstance(orig, psycopg.errors.ForeignKeyViolation):
        return NotFound(f"refers to something that does not exist: {_detail(orig)}")
    if isinstance(orig, psycopg.errors.InsufficientPrivilege):
        return ServerPrivilege(
            "the catalogue's database role lacks a privilege this operation needs"
            f" ({_detail(orig)}); the operator must grant it (see docs/scaling.md)"
        )
    if isinstance(orig, psycopg.errors.ProgramLimitExceeded | psycopg.errors.StatementTooComplex):
        return InvalidInput(f"the request is too large for the database: {_detail(orig)}")
    if isinstance(orig, psycopg.DataError):
        # SQLSTATE class 22 from the server, and values the driver refuses to send
        # (e.g. a NUL byte in a text parameter).
        return InvalidInput(f"invalid value: {_detail(orig)}")
    if isinstance(
        orig,
        psycopg.OperationalError
        | psycopg.errors.AdminShutdown
        | psycopg.errors.CannotConnectNow
        | psycopg.errors.ConnectionException,
    ) or isinstance(exc, sqlalchemy.exc.DisconnectionError):
        return _unavailable(orig)
    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return DatabaseUnavailable("no database connection free in time; retry shortly")
    return None


# Causes a retry does not cure: the URL names a database, role or password that is wrong.
_CONFIGURATION = (
    "does not exist",
    "password authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "authentication failed",
    "no password supplied",
    "invalid connection option",
    "invalid dsn",
    "could not translate host name",
)


def _unavailable(err: BaseException) -> DatabaseUnavailable:
    """DatabaseUnavailable with the server's real cause as ``detail`` (FATAL message,
    refused connection, unknown host...)."""
    text = str(err).strip()
    if "FATAL:" in text:
        cause = text.split("FATAL:", 1)[1]
    else:
        cause = text.removeprefix("connection failed:")
    cause = " ".join(cause.split("\n")[0].split()) or type(err).__name__
    generic = "the catalogue database is unavailable; retry shortly"
    if any(marker in cause.lower() for marker in _CONFIGURATION):
        return DatabaseUnavailable(
            "cannot connect to the catalogue database (check its settings)",
            detail=f"cannot connect to the catalogue database: {cause}; check"
            " EMBCAT_DATABASE_URL (host, database name, role and password)",
        )
    return DatabaseUnavailable(
        generic,
        detail=f"the catalogue database is unavailable: {cause}; retry shortly, or check"
        " EMBCAT_DATABASE_URL",
    )


def _detail(err: BaseException) -> str:
    diag = getattr(err, "diag", None)
    detail = getattr(diag, "message_detail", None) if diag is not None else None
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return detail or primary or str(err).splitlines()[0]


@contextmanager
def translated() -> Iterator[None]:
    """Re-raise database exceptions inside the block as domain errors."""
    try:
        yield
    except EmbcatError:
        raise
    except (psycopg.Error, sqlalchemy.exc.SQLAlchemyError) as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        raise mapped from exc
