"""API settings: the database settings plus the HTTP surface (prefix ``EMBCAT_``), and
the app's settings tree ``AppSettings`` (the catalogue's ``Settings`` + HTTP, uploads,
observability), built once by ``create_app`` (or ``embcat serve``) and passed down."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from stac_fastapi.types.config import ApiSettings as StacApiSettings

from embcat.catalog.settings import DatabaseSettings, Settings, catalog_sections, read_env


class ApiSettings(DatabaseSettings, StacApiSettings):
    """Everything ``create_app`` needs; every field can be set as ``EMBCAT_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="EMBCAT_", extra="ignore", env_file=None)

    stac_fastapi_title: str = "embcat"
    stac_fastapi_description: str = (
        "STAC catalogue of Earth-observation embeddings with similarity search"
    )
    stac_fastapi_version: str = "0.1.0"
    stac_fastapi_landing_id: str = "embcat"

    host: str = Field("127.0.0.1", description="Address `embcat serve` binds to.")
    port: int = Field(8080, ge=0, le=65535, description="Port `embcat serve` listens on.")
    base_url: str | None = Field(
        None,
        description="Public base URL used in links (default: taken from the request).",
    )
    default_limit: int = Field(10, ge=1, description="Page size when a request names none.")
    max_limit: int = Field(1000, ge=1, description="Largest page size a request may ask for.")
    max_body_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Requests with larger bodies get 413."
    )
    require_read_key: bool = Field(
        False, description="Require an API key with the read scope for every read endpoint."
    )
    pool_timeout_s: float = Field(
        3.0, gt=0, description="Seconds to wait for a free database connection."
    )
    trusted_proxies: str = Field(
        "",
        description=(
            "Comma-separated addresses or networks (CIDR) of the reverse proxies whose"
            " Forwarded / X-Forwarded-* headers are honoured; those headers of any other"
            " client are ignored (default: none)."
        ),
    )
    max_requests_per_client: int = Field(
        8,
        ge=0,
        description=(
            "Requests of one client address in flight at once; the next is answered 429"
            " (0: no limit)."
        ),
    )
    max_expensive_requests: int = Field(
        2,
        ge=0,
        description=(
            "Expensive requests (bodies above expensive_body_bytes, exact similarity,"
            " scoring) in flight at once per process, from all clients together; the next"
            " is answered 503 with Retry-After (0: no limit)."
        ),
    )
    expensive_body_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="A request whose body is larger than this counts as expensive.",
    )
    max_search_body_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        description=(
            "Largest body of POST /search, .../export and .../score; larger ones get 413"
            " before they are read (by Content-Length) or as soon as they pass it."
        ),
    )
    request_body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds an expensive or search request's body may take to arrive (408).",
    )
    export_max_streams: int = Field(
        4,
        ge=1,
        description="Export streams served at once by each process (each holds one database"
        " connection outside the pool); more get 503 with Retry-After.",
    )

    number_matched: Literal["estimate", "exact", "off"] = Field(
        "estimate",
        description="numberMatched of search pages: 'estimate' (the planner's row estimate,"
        " flagged embcat:numberMatched_estimated; exact when the page holds every match),"
        " 'exact' (counted up to 10,000 matches, estimated past it) or 'off'.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        from embcat.api.limits import parse_networks

        parse_networks(value)  # ValueError names the bad entry
        return value


class UploadSettings(BaseSettings):
    """Where uploads are spooled and how large they may be (prefix ``EMBCAT_``)."""

    model_config = SettingsConfigDict(env_prefix="EMBCAT_", extra="ignore")

    upload_dir: Path = Field(
        Path(tempfile.gettempdir()) / "embcat-uploads",
        description="Spool folder of remote publishes (needs room for the largest run).",
    )
    upload_max_bytes: int = Field(
        200 << 30, ge=1, description="Largest run (sum of shard sizes) one upload may hold."
    )
    upload_chunk_bytes: int = Field(
        8 << 20, ge=1 << 16, description="Largest chunk of a shard per request."
    )
    upload_key_max_bytes: int = Field(
        200 << 30,
        ge=1,
        description="Most bytes of shards the uploads of one key may hold at once.",
    )
    upload_expire_s: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="Uploads untouched this long are deleted (swept when a manifest arrives).",
    )


class ObservabilitySettings(BaseSettings):
    """``EMBCAT_ACCESS_LOG`` (default on) and ``EMBCAT_METRICS`` (default on)."""

    model_config = SettingsConfigDict(env_prefix="EMBCAT_", extra="ignore", env_file=None)

    access_log: bool = True
    metrics: bool = True


@dataclass(frozen=True)
class AppSettings(Settings):
    """The settings tree of one API app: the catalogue's (``database`` is ``api``) plus the
    HTTP surface (``api``), remote publishing (``uploads``) and ``observability``."""

    api: ApiSettings
    uploads: UploadSettings
    observability: ObservabilitySettings

    @classmethod
    def from_env(  # type: ignore[override]
        cls, api: ApiSettings | None = None
    ) -> AppSettings:
        """The tree from the environment; ``api`` (e.g. a test's ApiSettings) if given."""
        api = api if api is not None else read_env(ApiSettings)
        return cls(
            **catalog_sections(api),
            api=api,
            uploads=read_env(UploadSettings),
            observability=read_env(ObservabilitySettings),
        )
