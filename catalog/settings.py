"""Typed settings read from the environment (prefix ``EMBCAT_``), and the settings tree.

``Settings`` is the one object that holds them: built once from the environment at a
composition root (the CLI; the API's ``api.settings.AppSettings`` extends it) and passed
down. Library code takes the sub-settings it needs as arguments and never reads the
environment itself; where an argument is left out it uses the code defaults
(``defaults(cls)``), not the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar, cast

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from embcat.catalog.similarity import SimilaritySettings
    from embcat.catalog.store.spaces import IndexSettings

DEFAULT_DATABASE_URL = "postgresql://embcat:embcat@127.0.0.1:5432/embcat"


class DatabaseSettings(BaseSettings):
    """How to reach the catalogue database."""

    model_config = SettingsConfigDict(env_prefix="EMBCAT_", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="PostgreSQL URL (postgresql://user:password@host:port/database).",
    )
    db_pool_min: int = Field(1, ge=0, description="Connections kept open by each process.")
    db_pool_max: int = Field(10, ge=1, description="Upper bound on open connections per process.")
    statement_timeout_ms: int = Field(
        30_000, ge=0, description="Statement timeout for API queries (0 = none)."
    )
    # Dead peers (issue 15, findings 9 and 10): libpq's TCP keepalives and
    # tcp_user_timeout on every connection, and the server's own keepalives and
    # client_connection_check_interval as session settings, so that a killed client's
    # backend stops within seconds and a silent partition fails instead of hanging.
    tcp_keepalives_idle_s: int = Field(
        2, ge=1, description="Seconds of silence before TCP keepalive probes (both ends)."
    )
    tcp_keepalives_interval_s: int = Field(
        1, ge=1, description="Seconds between TCP keepalive probes (both ends)."
    )
    tcp_keepalives_count: int = Field(
        3, ge=1, description="Unanswered keepalive probes before a connection is dead."
    )
    tcp_user_timeout_ms: int = Field(
        4_000, ge=0, description="Unacknowledged data older than this drops a connection."
    )
    client_connection_check_interval_ms: int = Field(
        2_000,
        ge=0,
        description="How often a backend running a long statement checks that its client"
        " is still connected (0 = never).",
    )
    idle_in_transaction_timeout_ms: int = Field(
        60_000,
        ge=0,
        description="API sessions (pool, export streams) left idle inside a transaction"
        " longer than this are ended by the server (0 = never).",
    )
    db_deadline_margin_ms: int = Field(
        30_000,
        ge=0,
        description="An API request's database work that has not ended statement_timeout_ms"
        " plus this long is abandoned on the client side (its socket closed; 503). A"
        " backstop: a request may run several statements, and a partition is found sooner"
        " by the pool's liveness probe.",
    )

    def libpq_kwargs(self) -> dict[str, Any]:
        """Connection keywords for libpq: TCP liveness and the server-side session settings
        that every embcat connection (API and jobs) carries."""
        options = (
            f"-c tcp_keepalives_idle={self.tcp_keepalives_idle_s}"
            f" -c tcp_keepalives_interval={self.tcp_keepalives_interval_s}"
            f" -c tcp_keepalives_count={self.tcp_keepalives_count}"
            f" -c client_connection_check_interval={self.client_connection_check_interval_ms}"
        )
        return {
            "keepalives": 1,
            "keepalives_idle": self.tcp_keepalives_idle_s,
            "keepalives_interval": self.tcp_keepalives_interval_s,
            "keepalives_count": self.tcp_keepalives_count,
            "tcp_user_timeout": self.tcp_user_timeout_ms,
            "options": options,
        }

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with the psycopg 3 driver that SQLAlchemy needs."""
        return to_sqlalchemy_url(self.database_url)

    @property
    def libpq_url(self) -> str:
        """The URL as libpq (psql, psycopg.connect) understands it."""
        return to_libpq_url(self.database_url)


def to_sqlalchemy_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def to_libpq_url(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


class MirrorSettings(BaseSettings):
    """Bounds of ``embcat mirror`` against hostile or broken sources (``EMBCAT_MIRROR_*``)."""

    model_config = SettingsConfigDict(env_prefix="EMBCAT_MIRROR_", extra="ignore")

    max_page_bytes: int = Field(
        1 << 30, ge=1, description="Largest export page (bytes) accepted from the source."
    )
    max_json_bytes: int = Field(
        64 << 20, ge=1, description="Largest JSON answer or vector (bytes) accepted."
    )
    request_deadline_s: float = Field(
        600.0, gt=0, description="Seconds one request may take in total (slow bodies end)."
    )
    timeout_s: float = Field(
        120.0, gt=0, description="Seconds of silence (connect, each read) before giving up."
    )
    max_pages: int = Field(
        100_000, ge=1, description="Export / change-feed pages one run reads at most."
    )
    retry_attempts: int = Field(
        5, ge=1, description="Tries of a request on connection failures and 429/502/503/504."
    )
    retry_timeout_s: float = Field(
        120.0, gt=0, description="Seconds the tries of one request may take in all."
    )


S = TypeVar("S", bound=BaseSettings)


def read_env(cls: type[S]) -> S:
    """``cls()`` from the environment; a bad value is an InvalidInput naming its variable
    (what a composition root reports as one line)."""
    from pydantic import ValidationError

    from embcat.catalog.errors import InvalidInput

    try:
        return cls()
    except ValidationError as exc:
        prefix = str(cls.model_config.get("env_prefix", ""))
        errors = exc.errors()
        first: dict[str, Any] = dict(errors[0]) if errors else {}
        field = ".".join(str(p) for p in first.get("loc", ())) or "?"
        raise InvalidInput(
            f"invalid setting: {prefix}{field.upper()}={first.get('input')!r}:"
            f" {first.get('msg', exc)} (fix the environment variable or the .env file)"
        ) from exc


def defaults(cls: type[S]) -> S:
    """The code defaults of a settings class, without reading the environment (what a
    library call uses when its caller passes no settings)."""
    return cast(S, cls.model_construct())


@dataclass(frozen=True)
class Settings:
    """The settings tree of the catalogue: built once at a composition root, passed down.

    ``database`` (``EMBCAT_DATABASE_URL``, pool, timeouts), ``similarity``
    (``EMBCAT_SIMILARITY_*``), ``index`` (``EMBCAT_HNSW_*``), ``mirror``
    (``EMBCAT_MIRROR_*``). The classes live beside the code they tune; this object is
    their one home at run time."""

    database: DatabaseSettings
    similarity: SimilaritySettings
    index: IndexSettings
    mirror: MirrorSettings

    @classmethod
    def from_env(cls, database: DatabaseSettings | None = None) -> Settings:
        """Every sub-settings read from the environment (``database`` if given)."""
        return cls(**catalog_sections(database))

    def sections(self) -> dict[str, Any]:
        """The sub-settings by name (to extend the tree)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def catalog_sections(database: DatabaseSettings | None = None) -> dict[str, Any]:
    """The catalogue's sub-settings read from the environment, by name."""
    from embcat.catalog.similarity import SimilaritySettings
    from embcat.catalog.store.spaces import IndexSettings

    return {
        "database": database if database is not None else read_env(DatabaseSettings),
        "similarity": read_env(SimilaritySettings),
        "index": read_env(IndexSettings),
        "mirror": read_env(MirrorSettings),
    }
