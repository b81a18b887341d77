"""API keys: creation, listing, revocation and verification.

A key is presented as ``<key_id>.<token>``; only ``sha256(token)`` is stored, and the
comparison uses ``hmac.compare_digest``. Scopes: ``read``, ``write`` (implies read) and
``admin`` (implies everything). A key may be limited to one collection.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from embcat.catalog.errors import InvalidInput, NotFound, Unauthorized, translated
from embcat.catalog.store import api_keys
from embcat.catalog.store import collections as store_collections

SCOPES = ("read", "write", "admin")
_IMPLIES = {"read": {"read"}, "write": {"read", "write"}, "admin": {"read", "write", "admin"}}


@dataclass(frozen=True)
class Principal:
    """Who made a request, and what it may do."""

    key_id: str | None
    name: str
    scopes: frozenset[str] = field(default_factory=frozenset)
    collection_id: str | None = None

    def allows(self, scope: str, collection_id: str | None = None) -> bool:
        """Whether this principal holds ``scope`` for ``collection_id`` (None: catalogue-wide)."""
        granted = set().union(*(_IMPLIES.get(s, set()) for s in self.scopes))
        if scope not in granted:
            return False
        if self.collection_id is None:
            return True
        return collection_id == self.collection_id


ANONYMOUS = Principal(key_id=None, name="anonymous", scopes=frozenset({"read"}))


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    scopes: list[str]
    collection_id: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": self.scopes,
            "collection": self.collection_id,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
        }


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_key(
    conn: psycopg.Connection,
    name: str,
    scopes: list[str] | tuple[str, ...],
    collection_id: str | None = None,
) -> tuple[str, str]:
    """Create a key; return ``(key_id, secret)``. The secret is not stored and never shown again."""
    if not name or not name.strip():
        raise InvalidInput("a key needs a non-empty name")
    scopes = sorted(set(scopes))
    if not scopes:
        raise InvalidInput("a key needs at least one scope")
    bad = [s for s in scopes if s not in SCOPES]
    if bad:
        raise InvalidInput(f"unknown scope(s) {bad}; choose from {list(SCOPES)}")
    with translated():
        if collection_id is not None:
            if not store_collections.exists(conn, collection_id):
                raise NotFound(
                    f"collection {collection_id!r} does not exist; reserve it first with"
                    f" `embcat collections create {collection_id}`"
                )
        key_id = "k_" + secrets.token_hex(6)
        token = secrets.token_urlsafe(32)
        api_keys.insert(conn, key_id, name.strip(), _hash(token), scopes, collection_id)
    return key_id, f"{key_id}.{token}"


def list_keys(conn: psycopg.Connection, *, include_revoked: bool = True) -> list[KeyInfo]:
    """All keys (never their secrets), oldest first."""
    with translated():
        rows = api_keys.rows(conn, include_revoked=include_revoked)
    return [KeyInfo(r[0], r[1], list(r[2]), r[3], r[4], r[5], r[6]) for r in rows]


def revoke_key(conn: psycopg.Connection, key_id: str) -> None:
    """Revoke a key (idempotent for an already revoked key); NotFound for an unknown id."""
    with translated():
        found = api_keys.revoke(conn, key_id)
    if not found:
        raise NotFound(f"no API key with id {key_id!r}")


# ``last_used_at`` is advisory: refreshed at most this often, so reads do not write on
# every request.
LAST_USED_RESOLUTION_S = 60


def _touch(conn: psycopg.Connection, key_id: str) -> None:
    """Best-effort ``last_used_at = now()``: skipped where the database refuses writes (a
    read-only replica, ``default_transaction_read_only``, a role without UPDATE), so that
    keys work for reads there (docs/scaling.md §3). A savepoint keeps the request's own
    transaction usable when the update is refused."""
    try:
        with conn.transaction():
            api_keys.touch(conn, key_id)
    except (psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege):
        pass


def verify(conn: psycopg.Connection, presented: str) -> Principal:
    """The principal of a presented key; Unauthorized when unknown, malformed or revoked."""
    key_id, sep, token = presented.strip().partition(".")
    if not sep or not key_id or not token or len(presented) > 512:
        raise Unauthorized("malformed API key")
    with translated():
        row = api_keys.for_verify(conn, key_id, LAST_USED_RESOLUTION_S)
    # Compare against a dummy hash when the id is unknown, so timing does not tell.
    stored = row[1] if row is not None else _hash("")
    matches = hmac.compare_digest(stored, _hash(token))
    if row is None or not matches or row[4] is not None:
        raise Unauthorized("invalid or revoked API key")
    if row[5]:
        with translated():
            _touch(conn, key_id)
    return Principal(key_id=key_id, name=row[0], scopes=frozenset(row[2]), collection_id=row[3])
