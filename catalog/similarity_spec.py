"""The similarity clause (request model) and what a similarity search returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embcat.catalog.errors import InvalidInput
from embcat.catalog.store.spaces import Space


class ItemRef(BaseModel):
    """An item by collection and id."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, max_length=255)
    id: str = Field(min_length=1, max_length=1024)


class SimilaritySpec(BaseModel):
    """The ``similarity`` clause of a search: exactly one of item, vector or positive."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"item": {"collection": "s2-mosaiks", "id": "tile-0001"}},
                {"vector": [0.12, -0.03, 0.88], "collection": "s2-mosaiks", "exact": True},
                {
                    "positive": [
                        {"collection": "s2-mosaiks", "id": "tile-0001"},
                        {"collection": "s2-mosaiks", "id": "tile-0042"},
                    ],
                    "negative": [{"collection": "s2-mosaiks", "id": "tile-0007"}],
                    "method": "linear",
                    "ef_search": 200,
                },
            ]
        },
    )

    item: ItemRef | None = Field(default=None, description="Find items similar to this item.")
    vector: list[float] | None = Field(
        default=None, min_length=1, max_length=16_000, description="A raw query vector."
    )
    collection: str | None = Field(
        default=None, description="Collection whose space a raw vector belongs to."
    )
    positive: list[ItemRef] | None = Field(
        default=None, min_length=1, description="Positive examples."
    )
    negative: list[ItemRef] = Field(default_factory=list, description="Negative examples.")
    method: Literal["prototype", "linear"] = Field(
        "prototype", description="How examples become a query (see catalog.similarity)."
    )
    exact: bool = Field(default=False, description="Exact search (no approximate index).")
    ef_search: int | None = Field(default=None, ge=1, le=1000, description="HNSW search effort.")

    @model_validator(mode="after")
    def _one_query(self) -> SimilaritySpec:
        given = [name for name in ("item", "vector", "positive") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of 'item', 'vector' or 'positive'"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.vector is not None and not all(math.isfinite(v) for v in self.vector):
            raise ValueError("'vector' holds a value that is not a finite number")
        if self.negative and not self.positive:
            raise ValueError("'negative' examples need 'positive' ones")
        return self

    @property
    def references(self) -> list[ItemRef]:
        """The items named by the clause (excluded from its results)."""
        if self.item is not None:
            return [self.item]
        return [*(self.positive or []), *self.negative]


@dataclass(frozen=True)
class Hit:
    collection_id: str
    item_id: str
    distance: float
    score: float
    # The item's columns, read in the same query when ``item_columns`` was asked for.
    item: dict[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Plan:
    """How a query ran (for tests, logs and EXPLAIN-minded users)."""

    space: Space
    strategy: Literal["exact", "index"]
    estimated_rows: float
    ef_search: int | None


def parse_spec(clause: Any) -> SimilaritySpec:
    """Validate a clause (dict or model), raising InvalidInput with pydantic's message."""
    if isinstance(clause, SimilaritySpec):
        return clause
    from pydantic import ValidationError

    try:
        return SimilaritySpec.model_validate(clause)
    except ValidationError as exc:
        raise InvalidInput.from_validation("invalid similarity clause", exc) from exc
