"""API settings: the database settings plus the HTTP surface (prefix ``EMBCAT_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict
from stac_fastapi.types.config import ApiSettings as StacApiSettings

from embcat.catalog.settings import DatabaseSettings


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
