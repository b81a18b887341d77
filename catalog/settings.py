"""Typed settings read from the environment (prefix ``EMBCAT_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
