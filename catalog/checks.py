"""Start-up check: the server must run PostgreSQL >= 15, PostGIS >= 3.3, pgvector >= 0.8."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from embcat.catalog.errors import DatabaseTooOld

MIN_POSTGRES = (15, 0)
MIN_POSTGIS = (3, 3)
MIN_PGVECTOR = (0, 8)


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@dataclass(frozen=True)
class ServerVersions:
    postgres: str
    postgis: str | None  # installed in this database, or None
    pgvector: str | None
    postgis_available: str | None  # version the server could create
    pgvector_available: str | None


def server_versions(conn: psycopg.Connection) -> ServerVersions:
    row = conn.execute("show server_version").fetchone()
    assert row is not None
    installed: dict[str, str] = dict(
        conn.execute("select extname, extversion from pg_extension").fetchall()
    )
    available: dict[str, str] = dict(
        conn.execute(
            "select name, default_version from pg_available_extensions"
            " where name in ('postgis', 'vector')"
        ).fetchall()
    )
    return ServerVersions(
        postgres=row[0].split()[0],
        postgis=installed.get("postgis"),
        pgvector=installed.get("vector"),
        postgis_available=available.get("postgis"),
        pgvector_available=available.get("vector"),
    )


def problems(v: ServerVersions, *, require_installed: bool = True) -> list[str]:
    """What is missing or too old, in words a user can act on (empty: all good)."""
    out: list[str] = []
    if _version(v.postgres) < MIN_POSTGRES:
        out.append(f"PostgreSQL {v.postgres} is older than {'.'.join(map(str, MIN_POSTGRES))}")
    for name, inst, avail, minimum in (
        ("PostGIS (extension postgis)", v.postgis, v.postgis_available, MIN_POSTGIS),
        ("pgvector (extension vector)", v.pgvector, v.pgvector_available, MIN_PGVECTOR),
    ):
        need = ".".join(map(str, minimum))
        found = inst if require_installed else (inst or avail)
        if found is None:
            where = "installed in this database" if require_installed else "available on the server"
            hint = "" if (require_installed and avail) else " (run scripts/provision-db.sh)"
            out.append(f"{name} >= {need} is not {where}{hint}")
        elif _version(found) < minimum:
            out.append(f"{name} {found} is older than {need}")
    return out


def check_server(conn: psycopg.Connection, *, require_installed: bool = True) -> ServerVersions:
    """Raise DatabaseTooOld naming everything that is missing or too old."""
    v = server_versions(conn)
    found = problems(v, require_installed=require_installed)
    if found:
        raise DatabaseTooOld("the catalogue database is not usable: " + "; ".join(found))
    return v
