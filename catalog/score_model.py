"""The score request and the fitted score model: what an area is scored with, and the record
saved with every result (see catalog.score for the method)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from embcat.catalog.errors import InvalidInput
from embcat.catalog.search import SearchQuery
from embcat.catalog.similarity_fewshot import _unit
from embcat.catalog.similarity_spec import ItemRef
from embcat.catalog.store.spaces import Space

MODEL_TYPE = "embcat:score-model"
MODEL_VERSION = 1
META_KEY = "embcat:score"
DEFAULT_THRESHOLD = 0.5
MAX_TOP = 1_000_000
BATCH_ROWS = 5_000
MAX_PNG_SIDE = 2048
Format = Literal["geojson", "parquet", "png"]
FORMATS: tuple[str, ...] = ("geojson", "parquet", "png")
MEDIA_TYPES = {
    "geojson": "application/geo+json",
    "parquet": "application/vnd.apache.parquet",
    "png": "image/png",
}


class ScoreRequest(BaseModel):
    """What to score: examples, method, cut-off and the area (filters) of one collection."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "positive": ["tile-0001", "tile-0042"],
                    "negative": ["tile-0007"],
                    "method": "linear",
                    "bbox": [5.0, 45.0, 8.0, 48.0],
                    "threshold": 0.5,
                    "format": "geojson",
                }
            ]
        },
    )

    positive: list[str | ItemRef] = Field(
        min_length=1, description="Positive examples: item ids of the collection (or refs)."
    )
    negative: list[str | ItemRef] = Field(default_factory=list, description="Negative examples.")
    method: Literal["linear", "prototype"] = Field(
        "linear", description="Few-shot model (as in the similarity clause)."
    )
    threshold: float | None = Field(
        default=None,
        description="Keep chips scoring at least this (default 0.5 unless 'top' is given).",
    )
    top: int | None = Field(
        default=None, ge=1, le=MAX_TOP, description="Keep the N best chips instead."
    )
    bbox: list[float] | None = Field(default=None, description="minx, miny, maxx, maxy.")
    intersects: dict[str, Any] | None = Field(default=None, description="GeoJSON geometry.")
    datetime: str | None = Field(default=None, description="RFC 3339 instant or interval.")
    filter: dict[str, Any] | str | None = Field(default=None, description="CQL2 filter.")
    filter_lang: Literal["cql2-json", "cql2-text"] | None = Field(default=None, alias="filter-lang")
    format: Format = Field("geojson", description="geojson, parquet or png (a heat map).")
    width: int | None = Field(default=None, ge=1, le=MAX_PNG_SIDE, description="PNG width.")
    height: int | None = Field(default=None, ge=1, le=MAX_PNG_SIDE, description="PNG height.")

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(value) not in (4, 6):
            raise ValueError("bbox must have 4 (or 6) numbers")
        return value

    @model_validator(mode="after")
    def _one_cut(self) -> ScoreRequest:
        if self.threshold is not None and self.top is not None:
            raise ValueError("give 'threshold' or 'top', not both")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ValueError("threshold must be a finite number")
        if self.bbox is not None and self.intersects is not None:
            raise ValueError("bbox and intersects are mutually exclusive")
        return self

    def refs(self, collection_id: str) -> tuple[list[ItemRef], list[ItemRef]]:
        def ref(r: str | ItemRef) -> ItemRef:
            return ItemRef(collection=collection_id, id=r) if isinstance(r, str) else r

        return [ref(r) for r in self.positive], [ref(r) for r in self.negative]

    def search(self, collection_id: str) -> SearchQuery:
        from embcat.catalog.search_request import parse_filter

        flt, lang = parse_filter(self.filter, self.filter_lang)
        return SearchQuery(
            collections=[collection_id],
            bbox=self.bbox,
            intersects=self.intersects,
            datetime=self.datetime,
            filter=flt,
            filter_lang=lang,
        )


def parse_request(body: Any) -> ScoreRequest:
    """Validate a request (dict or model), raising InvalidInput with pydantic's message."""
    if isinstance(body, ScoreRequest):
        return body
    from pydantic import ValidationError

    try:
        return ScoreRequest.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput.from_validation("invalid score request", exc) from exc


@dataclass(frozen=True)
class ScoreModel:
    """A fitted few-shot model and the request it came from (what is saved with a result)."""

    collection_id: str
    space: Space
    method: str
    positive: tuple[ItemRef, ...]
    negative: tuple[ItemRef, ...]
    query: np.ndarray  # the direction q of the similarity clause
    operator: str  # pgvector operator comparing a chip with q
    level_positive: float  # mean raw similarity of the positives
    level_negative: float  # ... of the negatives (or the background sample)
    negative_source: Literal["examples+background", "background"]
    threshold: float | None
    top: int | None
    filters: dict[str, Any]
    created: str

    def raw(self, vectors: np.ndarray) -> np.ndarray:
        """Raw similarity of each row of ``vectors`` (numpy; what the SQL computes)."""
        v = np.asarray(vectors, dtype=np.float64)
        if self.operator == "<=>":
            return (_unit(v) @ _unit(self.query[None])[0]).astype(np.float64)
        return v @ self.query

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        """Scores of ``vectors`` computed in numpy (the reference for tests and benchmarks)."""
        return (self.raw(vectors) - self.level_negative) / self.spread

    @property
    def spread(self) -> float:
        return self.level_positive - self.level_negative

    def as_json(self) -> dict[str, Any]:
        s = self.space
        return {
            "type": MODEL_TYPE,
            "version": MODEL_VERSION,
            "collection": self.collection_id,
            "space": {
                "encoder_name": s.encoder_name,
                "encoder_version": s.encoder_version,
                "dimensions": s.dimensions,
                "storage": s.storage,
                "metric": s.metric,
            },
            "method": self.method,
            "positive": [r.model_dump() for r in self.positive],
            "negative": [r.model_dump() for r in self.negative],
            "negative_source": self.negative_source,
            "filters": self.filters,
            "threshold": self.threshold,
            "top": self.top,
            "score": "(s - level_negative) / (level_positive - level_negative)",
            "raw_similarity": "1 - cosine distance" if self.operator == "<=>" else "inner product",
            "levels": {"positive": self.level_positive, "negative": self.level_negative},
            "operator": self.operator,
            "query_vector": [float(v) for v in self.query],
            "created": self.created,
        }


def model_from_json(text: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """A saved model record, checked for its type (as stored with a result)."""
    value = json.loads(text) if isinstance(text, str | bytes) else text
    if not isinstance(value, dict) or value.get("type") != MODEL_TYPE:
        raise InvalidInput(f"not a {MODEL_TYPE} record")
    return value


def describe(refs: Sequence[ItemRef]) -> list[str]:
    return [r.id for r in refs]
