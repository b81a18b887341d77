"""The one map from domain errors to HTTP statuses, and the STAC-style error bodies.

Every error response is ``{"code": <class name>, "description": <message>}``. Bad
requests get 4xx with a message; only bugs reach 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from stac_fastapi.types.errors import (
    ConflictError,
    DatabaseError,
    ForeignKeyError,
    InvalidQueryParameter,
    NotFoundError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from embcat.catalog.errors import (
    Conflict,
    DatabaseTooOld,
    DatabaseUnavailable,
    Forbidden,
    InvalidInput,
    NotFound,
    QueryTimeout,
    ServerPrivilege,
    StorageFull,
    StorageUnavailable,
    TooManyRequests,
    Unauthorized,
)
from embcat.errors import EmbcatError

log = logging.getLogger(__name__)

RETRY_AFTER_S = 2  # what a 503 (database unreachable, pool or export slots busy) advises

STATUS: dict[type[Exception], int] = {
    InvalidInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    DatabaseUnavailable: 503,
    QueryTimeout: 504,
    DatabaseTooOld: 503,
    ServerPrivilege: 503,
    TooManyRequests: 429,
    StorageFull: 507,
    StorageUnavailable: 503,
    # the root (embcat.errors): any other embcat error (encoder, mirror...) is the user's
    EmbcatError: 400,
    # stac-fastapi's own errors (raised by its request models and helpers)
    NotFoundError: 404,
    ConflictError: 409,
    ForeignKeyError: 422,
    InvalidQueryParameter: 400,
    DatabaseError: 503,
}


def error_body(code: str, description: str) -> dict[str, str]:
    return {"code": code, "description": description}


def status_of(exc: BaseException) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def _handle_known(request: Request, exc: Exception) -> JSONResponse:
    status = status_of(exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S)}
    return JSONResponse(
        error_body(type(exc).__name__, str(exc) or type(exc).__name__),
        status_code=status,
        headers=headers,
    )


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def _handle_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body("InvalidInput", _validation_message(exc)), status_code=400)


def _handle_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {
        400: "InvalidInput",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        413: "PayloadTooLarge",
        429: "TooManyRequests",
    }.get(exc.status_code, "HTTPError")
    return JSONResponse(
        error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


def _handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Called by the exception middleware, outside any ``except`` block: pass the error
    # itself (``log.exception`` would log ``NoneType: None`` instead of the traceback).
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("InternalError", "internal server error"), status_code=500)


def add_exception_handlers(app: FastAPI) -> None:
    for cls in STATUS:
        app.add_exception_handler(cls, _handle_known)
    app.add_exception_handler(RequestValidationError, _handle_validation)
    app.add_exception_handler(StarletteHTTPException, _handle_http)
    app.add_exception_handler(Exception, _handle_unexpected)
