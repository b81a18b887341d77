"""What a mirror is asked to do (``MirrorOptions``), what it did (``MirrorResult``) and how
it reports progress (``MirrorProgress``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from embcat.catalog.quantize import LOSSLESS_FOR, bytes_per_vector
from embcat.catalog.search_request import parse_filter, parse_json

if TYPE_CHECKING:
    from embcat.catalog.store.spaces import IndexSettings


@dataclass
class MirrorOptions:
    remote_url: str
    collection_id: str
    bbox: list[float] | None = None
    datetime: str | None = None
    filter: str | dict[str, Any] | None = None
    # "auto": the smallest lossless transfer for the space's storage (float16 for halfvec,
    # float32 for vector; an existing mirror keeps the dtype it was started with). float16
    # halved the bytes of a 300k x 768 halfvec mirror (487 against 948 MB) at the same
    # rate (benchmarks/README.md, issue 18 round 6).
    dtype: str = "auto"
    # rows per export part: 0.61x publish's rows/s at 10000 against 0.48x at 5000, peak RSS
    # 687 against 493 MB (benchmarks/README.md, "Mirror at export speed")
    page_rows: int = 10000
    change_limit: int = 1000
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 120.0
    # Bounds against hostile or broken sources (catalog.settings.MirrorSettings): bytes of
    # one export page and of one JSON answer, seconds per request in total (a body that
    # trickles), and pages per run (a change feed that says ``more`` for ever).
    max_page_bytes: int = 1 << 30
    max_json_bytes: int = 64 << 20
    request_deadline_s: float = 600.0
    max_pages: int = 100_000
    # Retries of connection failures and 429/502/503/504 answers (catalog.http): attempts
    # per request, seconds they may take in all, exponential backoff from wait_initial_s
    # up to wait_max_s (plus up to wait_jitter_s of jitter); Retry-After is honoured.
    retry_attempts: int = 5
    retry_timeout_s: float = 120.0
    retry_wait_initial_s: float = 0.5
    retry_wait_max_s: float = 30.0
    retry_wait_jitter_s: float = 1.0
    # The local space's index kind and graph (the caller's settings tree; default: the code's).
    index: IndexSettings | None = None

    def filters(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.bbox is not None:
            out["bbox"] = list(self.bbox)
        if self.datetime:
            out["datetime"] = self.datetime
        flt, lang = parse_filter(self.filter, None)
        if flt is not None:
            if lang == "cql2-json" and isinstance(flt, str):  # CQL2 JSON as text: an object
                flt = parse_json("filter", flt)
            out["filter"] = flt
            out["filter-lang"] = lang
        return out


@dataclass
class MirrorResult:
    mode: str  # "bulk" or "items"
    upserted: int = 0
    deleted: int = 0
    verified: int = 0
    bytes: int = 0
    seconds: float = 0.0
    cursor: int | None = None
    pages: int = 0
    load_s: float = 0.0
    index_s: float = 0.0

    def summary(self) -> str:
        """One line: rows, rows/s, the load and index phases, bytes, the cursor."""
        rate = self.upserted / self.seconds if self.seconds else 0.0
        return (
            f"mirror ({self.mode}): {self.upserted} rows upserted, {self.deleted} deleted,"
            f" {self.verified} checksums verified, {self.bytes / 1e6:.1f} MB in"
            f" {self.seconds:.1f} s ({rate:.0f} rows/s; load {self.load_s:.1f} s, index"
            f" {self.index_s:.1f} s); cursor {self.cursor}"
        )


@dataclass
class MirrorProgress:
    """What a mirror reports after each committed page (``on_progress``): rows done so far
    (``rows``, including rows of earlier runs of an interrupted mirror), the rows expected
    in all (``total``: the remote's ``numberMatched``, None if it does not say), bytes
    received in this run and seconds since this run started. The CLI draws the bar."""

    phase: str  # "initial", "incremental" or "items"
    rows: int
    total: int | None
    bytes: int
    elapsed_s: float
    run_rows: int = 0  # rows of this run (what the rate is made of)

    @property
    def rate(self) -> float:
        return self.run_rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.total is None or not self.rate:
            return None
        return max(0, self.total - self.rows) / self.rate


ProgressHook = Callable[[MirrorProgress], None]


class _Reporter:
    def __init__(self, hook: ProgressHook | None, phase: str, done: int, total: int | None):
        self.hook, self.phase, self.done, self.total = hook, phase, done, total
        self.started = time.perf_counter()
        self.run_rows = 0
        self.bytes = 0

    def received(self, nbytes: int) -> None:
        self.bytes += nbytes

    def rows(self, n: int) -> None:
        self.done += n
        self.run_rows += n
        if self.hook is not None:
            self.hook(
                MirrorProgress(
                    phase=self.phase, rows=self.done, total=self.total, bytes=self.bytes,
                    elapsed_s=time.perf_counter() - self.started, run_rows=self.run_rows,
                )
            )  # fmt: skip


def auto_dtype(storage: str) -> str:
    """The transfer dtype of ``dtype="auto"`` for a space stored as ``storage``: the
    smallest that is lossless for it (``quantize.LOSSLESS_FOR``; float32 for a storage it
    does not name, which the local space then refuses as before)."""
    lossless = [d for d, storages in LOSSLESS_FOR.items() if storage in storages]
    return min(lossless, key=lambda d: bytes_per_vector(d, 1), default="float32")
