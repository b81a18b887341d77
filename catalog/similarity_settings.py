"""Limits and tuning of similarity search (``EMBCAT_SIMILARITY_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

IterativeScan = Literal["strict_order", "relaxed_order"]


class SimilaritySettings(BaseSettings):
    """Limits and tuning of similarity search (environment prefix ``EMBCAT_SIMILARITY_``)."""

    model_config = SettingsConfigDict(env_prefix="EMBCAT_SIMILARITY_", extra="ignore")

    max_k: int = Field(default=1000, ge=1, description="Largest offset + limit of a ranked result.")
    max_examples: int = Field(default=100, ge=1, description="Most positive + negative examples.")
    # 60 on the ef_construction-128 graph (catalog.spaces.IndexSettings): recall@10 0.984 or
    # more at 1M under every filter, and 2 ms faster than 100 (benchmarks/README.md).
    ef_search_default: int = Field(default=60, ge=1, le=1000, description="hnsw.ef_search default.")
    ef_search_min: int = Field(
        default=10, ge=1, le=1000, description="Smallest ef_search accepted."
    )
    ef_search_max: int = Field(
        default=1000, ge=1, le=1000, description="Largest ef_search accepted."
    )
    exact_threshold: int = Field(
        default=2_000, ge=0, description="Filtered row estimate below which the search is exact."
    )
    exact_fraction: float = Field(
        default=0.003,
        ge=0,
        le=1,
        description="Exact also below this fraction of the space's rows (filtered estimate).",
    )
    iterative_scan: IterativeScan = Field(
        default="strict_order",
        description="pgvector hnsw.iterative_scan mode for filtered queries.",
    )
    max_scan_tuples: int = Field(
        default=200_000, ge=1, description="hnsw.max_scan_tuples: index tuples one query may visit."
    )
    work_mem_mb: int = Field(default=64, ge=1, description="work_mem for similarity queries.")
    max_exact_rows: int = Field(
        default=200_000,
        ge=0,
        description="Largest filtered row estimate an 'exact' request may scan (0: no cap).",
    )
    rerank_candidates: int = Field(
        default=300,
        ge=1,
        le=100_000,
        description="Binary index kinds: fewest candidates fetched by Hamming distance and"
        " re-ranked exactly; every kind: the c of the exact bar sqrt(c x N).",
    )
    rerank_factor: int = Field(
        default=10, ge=1, le=1000, description="Binary kinds: candidates per result asked for."
    )
    ivfflat_probes: int = Field(default=10, ge=1, description="ivfflat.probes (ivfflat-bit).")
    # 10 probes are 1 % of the lists at 1M (1,000 lists, recall@10 0.998) but 0.3 % at 10M
    # (3,162 lists: 0.936, worst 0.4); a share of the lists keeps the recall as a space grows.
    # Measured at 10M: 0.5 % (16 probes) 0.960 (worst 0.5) at 24 ms, 1 % (32) 0.964 at 38 ms
    # (benchmarks/README.md, Scale, round 4).
    ivfflat_probes_fraction: float = Field(
        default=0.005,
        ge=0,
        le=1,
        description="ivfflat-bit: probe at least this share of the index's lists.",
    )
    ivfflat_max_probes: int = Field(
        default=300, ge=1, description="ivfflat.max_probes of an iterative scan (ivfflat-bit)."
    )
    negative_weight: float = Field(default=0.5, ge=0, description="γ of the prototype method.")
    linear_iterations: int = Field(
        default=300, ge=1, le=10_000, description="Gradient steps (linear)."
    )
    linear_l2: float = Field(
        default=1e-2, ge=0, description="L2 regularisation of the linear method."
    )
    background_sample: int = Field(
        default=200, ge=1, description="Background items added to the negatives of 'linear'."
    )
