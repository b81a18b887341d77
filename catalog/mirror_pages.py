"""Export pages of the remote (the bulk path of a mirror): the bounded HTTP client, one
page fetched and decoded (checksums verified) into COPY rows."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embcat.catalog.errors import EmbcatError
from embcat.catalog.exchange_format import EMBEDDING_COLUMN, read_metadata
from embcat.catalog.http import HttpClient, RemoteError, RetryPolicy
from embcat.catalog.item_shape import EMB_QUANTIZATION
from embcat.catalog.mirror_columns import encode_page, page_file_fields
from embcat.catalog.mirror_options import MirrorOptions, _Reporter
from embcat.catalog.mirror_rows import (
    rows_from_table,
    verify,
)
from embcat.catalog.mirror_write import Row as _Row
from embcat.catalog.mirror_write import encode_rows
from embcat.catalog.quantize import LOSSLESS_FOR, Quantization, from_arrow
from embcat.catalog.store.spaces import Space

log = logging.getLogger(__name__)


def _client(opts: MirrorOptions) -> HttpClient:
    retry = RetryPolicy(
        attempts=opts.retry_attempts,
        retry_timeout_s=opts.retry_timeout_s,
        wait_initial_s=opts.retry_wait_initial_s,
        wait_max_s=opts.retry_wait_max_s,
        wait_jitter_s=opts.retry_wait_jitter_s,
    )
    return HttpClient(
        opts.remote_url,
        opts.headers,
        timeout_s=opts.timeout_s,
        deadline_s=opts.request_deadline_s,
        retry=retry,
    )


def _get_json(
    http: HttpClient, opts: MirrorOptions, url: str, what: str,
    reporter: _Reporter | None = None, **kwargs: Any,
) -> Any:  # fmt: skip
    on_bytes = reporter.received if reporter is not None else None
    return http.get_json(url, what, limit=opts.max_json_bytes, on_bytes=on_bytes, **kwargs)


def _number_matched(http: HttpClient, opts: MirrorOptions) -> int | None:
    """How many items the mirror will bring (``numberMatched`` of a one-item search with
    the mirror's filters), for the progress's total and ETA; None if the remote says not."""
    params: dict[str, Any] = {"collections": opts.collection_id, "limit": 1}
    for key, value in opts.filters().items():
        if key == "bbox":
            value = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value)
        params[key] = value
    try:
        page = _get_json(http, opts, "/search", "item count", params=params)
    except (EmbcatError, httpx.HTTPError):
        return None
    n = page.get("numberMatched") if isinstance(page, dict) else None
    return n if isinstance(n, int) and n >= 0 else None


@dataclass
class _Page:
    """One export page, fetched, decoded, verified and encoded (nothing written yet)."""

    ids: list[str]
    as_of: int
    more: bool
    nbytes: int
    verified: int
    data: memoryview | None  # the rows' COPY bytes (None: no rows)

    @property
    def last_id(self) -> str | None:
        return self.ids[-1] if self.ids else None


def _export_page(
    http: HttpClient, opts: MirrorOptions, reporter: _Reporter, body: dict[str, Any]
) -> tuple[pa.Table, dict[str, Any], int]:
    url = f"/collections/{quote(opts.collection_id, safe='')}/export"
    what = f"export of {opts.collection_id!r}"
    data = http.fetch(
        "POST", url, what, limit=opts.max_page_bytes, on_bytes=reporter.received, json=body
    ).content
    try:
        table = pq.read_table(io.BytesIO(data))
        meta = read_metadata(io.BytesIO(data))
        int(meta["as_of"]), int(meta["space"]["dimensions"]), meta["dtype"], meta["more"]
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError) as exc:
        raise RemoteError(
            f"{what}: the page ({len(data):,} bytes) is not a complete embcat export"
            f" (truncated or foreign): {str(exc).splitlines()[0] if str(exc) else exc!r};"
            " nothing of it was written"
        ) from None
    return table, meta, len(data)


def _check_dimensions(what: str, space: Space, meta_dims: int, vectors: np.ndarray) -> None:
    """The page's vectors must have the local space's dimensions (checked before writing)."""
    got = {meta_dims, int(vectors.shape[1]) if vectors.ndim == 2 else -1}
    if got != {space.dimensions}:
        raise RemoteError(
            f"{what}: the remote's space has {space.dimensions} dimensions but its vectors"
            f" carry {sorted(got - {space.dimensions})}; refused, nothing of the page was"
            " written"
        )


def _page_vectors(table: pa.Table, meta: dict[str, Any], cid: str, space: Space) -> np.ndarray:
    """The page's float32 vectors, refused before anything is written if they do not fit
    the local space (the remote's /space and its export disagree) or do not decode."""
    what = f"export of {cid!r}"
    meta_dims = int(meta["space"]["dimensions"])
    if EMBEDDING_COLUMN not in table.column_names:
        raise RemoteError(f"{what}: the page has no embedding column; nothing was written")
    width = getattr(table.schema.field(EMBEDDING_COLUMN).type, "list_size", meta_dims)
    for dims in (meta_dims, width):
        if dims != space.dimensions:
            _check_dimensions(what, space, dims, np.zeros((0, dims)))
    q = meta.get(EMB_QUANTIZATION)
    try:
        quant = Quantization.from_stac(q) if q else None
        vectors = from_arrow(table.column(EMBEDDING_COLUMN), meta["dtype"], meta_dims, quant)
    except (pa.ArrowException, ValueError, KeyError, TypeError) as exc:
        raise RemoteError(f"{what}: the page does not decode: {exc}; nothing was written") from None
    if table.num_rows:
        _check_dimensions(what, space, meta_dims, np.asarray(vectors))
    return vectors


def _rows(
    table: pa.Table, meta: dict[str, Any], cid: str, base: str, space: Space
) -> tuple[list[_Row], np.ndarray]:
    """The page's rows, refused before anything is written if its vectors do not fit the
    local space or do not decode (``_page_vectors``)."""
    _page_vectors(table, meta, cid, space)
    try:
        return rows_from_table(table, meta, cid, base)
    except (pa.ArrowException, ValueError, KeyError, TypeError) as exc:
        raise RemoteError(
            f"export of {cid!r}: the page does not decode: {exc}; nothing was written"
        ) from None


def _decode_page(
    opts: MirrorOptions, space: Space, base: str, table: pa.Table, meta: dict[str, Any],
    nbytes: int,
) -> _Page:  # fmt: skip
    """Decode, verify and encode one fetched export page (nothing written). A lossless
    page is encoded column-wise (catalog.mirror_columns); a lossy one (int8, or float16
    into float32 storage), or one with vectors without a checksum, goes row by row, which
    gives those assets new file fields."""
    as_of, more = int(meta["as_of"]), bool(meta["more"])
    lossless = space.storage in LOSSLESS_FOR.get(opts.dtype, set())
    # every row has a checksum to verify (an embcat export always has): the column path
    if lossless and None not in page_file_fields(table)[0]:
        vectors = _page_vectors(table, meta, opts.collection_id, space)
        if table.num_rows == 0:
            return _Page([], as_of, more, nbytes, 0, None)
        try:
            ids, verified, data = encode_page(table, meta, vectors, opts.collection_id, base, space)
        except (pa.ArrowException, ValueError, KeyError, TypeError) as exc:
            raise RemoteError(
                f"export of {opts.collection_id!r}: the page does not decode: {exc}; nothing"
                " was written"
            ) from exc
        return _Page(ids, as_of, more, nbytes, verified, data)
    rows, _ = _rows(table, meta, opts.collection_id, base, space)
    verified = verify(rows, opts.dtype, space.storage)  # lossy dtypes: new file fields first
    encoded = encode_rows(rows, space) if rows else None
    return _Page([r.id for r in rows], as_of, more, nbytes, verified, encoded)


_QUEUED_PAGES = 2  # decoded pages the fetcher may run ahead of the writer


def _page_budget(opts: MirrorOptions, pages: int, what: str) -> None:
    if pages > opts.max_pages:
        raise RemoteError(
            f"the remote's {what} did not end within {opts.max_pages} pages in one run;"
            " stopped (what was committed stays; EMBCAT_MIRROR_MAX_PAGES raises the bound)"
        )
