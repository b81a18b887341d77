"""``embcat mirror``: pull a remote collection (metadata, items, vectors) into this catalogue.

Against an embcat server (``GET /exchange`` answers) the mirror uses the bulk path:

1. initial phase: pages of the bulk export (``limit`` rows, ordered by id) with the
   remote's ``as_of`` pinned by the first page; each page is verified (every vector's
   checksum against the item's ``file:checksum``) and written in one transaction together
   with ``mirror_state.after_id``. A killed mirror restarts after the last committed page,
   with the same ``as_of``, and ends in the same state. Fetching, decoding and writing run
   in three threads (``_initial``); the index is built once, when the phase ends.
2. incremental phase (from ``cursor = as_of``): pages of the change feed; upserted ids are
   fetched through the export (``ids=``), deleted ids are deleted; each page is one
   transaction with the new cursor. Items that no longer match the mirror's filters are
   removed too.

Against a plain STAC API the mirror falls back to item pages (``GET /search`` and its
``next`` links, through the same bounded client) plus
each item's ``embeddings`` asset (``.npy``), skipping vectors whose checksum is unchanged,
and deletes local items the remote no longer lists once a full pass has completed.

Every request goes through ``catalog.http.HttpClient`` (retries with backoff, credentials
to the origin only, byte and time bounds); progress is reported through ``on_progress``.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
import orjson
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg.types.json import Jsonb

from embcat.catalog import partitions
from embcat.catalog.db import connect
from embcat.catalog.errors import Conflict, EmbcatError, InvalidInput, NotFound
from embcat.catalog.export import read_metadata
from embcat.catalog.http import HttpClient, RemoteError, RetryPolicy, origin_of
from embcat.catalog.imagery import QUICKLOOK_ASSET_PREFIX
from embcat.catalog.mirror_columns import encode_page, page_file_fields
from embcat.catalog.mirror_rows import (
    _item_to_row,
    _local_href,
    rows_from_table,
    verify,
)
from embcat.catalog.mirror_write import Row as _Row
from embcat.catalog.mirror_write import encode_rows, write_copy, write_page
from embcat.catalog.publish import ANALYZE_ITEM_COLUMNS
from embcat.catalog.quantize import LOSSLESS_FOR, Quantization, check_dtype, from_arrow
from embcat.catalog.settings import DatabaseSettings
from embcat.catalog.space_index import ensure_index
from embcat.catalog.spaces import IndexSettings, Space, get_or_create_space, get_space
from embcat.catalog.stac import GENERATED_RELS
from embcat.catalog.vectors import (
    EMBEDDINGS_ASSET,
    multihash_sha256,
)

log = logging.getLogger(__name__)


@dataclass
class MirrorOptions:
    remote_url: str
    collection_id: str
    bbox: list[float] | None = None
    datetime: str | None = None
    filter: str | dict[str, Any] | None = None
    dtype: str = "float32"
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
        if self.filter not in (None, ""):
            out["filter"] = self.filter
            out["filter-lang"] = "cql2-json" if isinstance(self.filter, dict) else "cql2-text"
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


# --------------------------------------------------------------------------- helpers


def _strip_collection(stac: dict[str, Any], remote_base: str) -> dict[str, Any]:
    out = dict(stac)
    # the origin's queryables link is replaced by this server's (generated); the origin
    # collection itself is linked as `via`
    out["links"] = [
        {**link, "href": _local_href(link.get("href"), remote_base)}
        for link in stac.get("links", [])
        if link.get("rel") not in GENERATED_RELS and link.get("rel") not in ("queryables", "via")
    ]
    origin = (
        next(
            (link.get("href") for link in stac.get("links", []) if link.get("rel") == "self"), None
        )
        or f"{remote_base.rstrip('/')}/collections/{quote(str(stac.get('id')), safe='')}"
    )
    out["links"].append(
        {"rel": "via", "href": origin, "type": "application/json", "title": "Origin of this mirror"}
    )
    if isinstance(out.get("assets"), dict):
        out["assets"] = {  # scene quicklooks stay on the origin (a mirror holds no PNGs)
            k: a
            if k.startswith(QUICKLOOK_ASSET_PREFIX)
            else {**a, "href": _local_href(a.get("href"), remote_base)}
            for k, a in out["assets"].items()
        }
    return out


def space_from_collection(stac: dict[str, Any]) -> dict[str, Any]:
    """The space of a collection from its STAC fields (plain STAC APIs have no /space)."""
    declared = stac.get("embcat:space")
    if isinstance(declared, dict) and {"encoder", "version", "dimensions"} <= set(declared):
        return {
            "encoder_name": declared["encoder"],
            "encoder_version": declared["version"],
            "dimensions": int(declared["dimensions"]),
            "storage": declared.get("storage", "halfvec"),
            "metric": declared.get("metric", "cosine"),
            "normalized": bool(declared.get("normalized", False)),
            "mlm": {},
            "options": declared.get("options"),
        }
    dims = stac.get("emb:dimensions")
    if not isinstance(dims, int):
        raise InvalidInput(
            f"collection {stac.get('id')!r} has no emb:dimensions; cannot mirror its vectors"
        )
    name = stac.get("mlm:name") or stac.get("embcat:encoder") or stac.get("id")
    return {
        "encoder_name": str(name),
        "encoder_version": str(stac.get("embcat:encoder_version") or stac.get("version") or "1"),
        "dimensions": dims,
        "storage": "halfvec" if stac.get("data_type") == "float16" else "vector",
        "metric": stac.get("embcat:metric") or "cosine",
        "normalized": bool(stac.get("embcat:normalized", False)),
        "mlm": {},
    }


# --------------------------------------------------------------------------- local writes


def _prepare_local(
    conn: psycopg.Connection, opts: MirrorOptions, stac: dict[str, Any], space_json: dict
) -> tuple[Space, dict[str, Any] | None]:
    """Create or check the local collection + space; return the space and the state row."""
    cid = opts.collection_id
    remote = opts.remote_url
    state = conn.execute(
        "SELECT phase, as_of, after_id, cursor, dtype, filters, rows_total FROM mirror_state"
        " WHERE remote_url = %s AND remote_collection = %s",
        (remote, cid),
    ).fetchone()
    row = conn.execute("SELECT space_id FROM collections WHERE id = %s", (cid,)).fetchone()
    if row is not None and state is None:
        raise Conflict(
            f"collection {cid!r} exists locally and is not a mirror of {remote}; remove it first"
        )
    space = get_or_create_space(
        conn,
        encoder_name=space_json["encoder_name"],
        encoder_version=space_json["encoder_version"],
        dimensions=int(space_json["dimensions"]),
        storage=space_json["storage"],
        metric=space_json["metric"],
        normalized=bool(space_json.get("normalized", False)),
        mlm=space_json.get("mlm") or {},
        options=space_json["options"] if isinstance(space_json.get("options"), dict) else None,
        index=opts.index,
    )
    local_stac = _strip_collection(stac, remote)
    if isinstance(local_stac.get("embcat:space"), dict):
        local_stac["embcat:space"] = {**local_stac["embcat:space"], "id": space.id}
    body = Jsonb(local_stac)
    if row is None:
        conn.execute(
            "INSERT INTO collections (id, stac, space_id) VALUES (%s, %s, %s)",
            (cid, body, space.id),
        )
    else:
        if row[0] is not None and row[0] != space.id:
            raise Conflict(f"local collection {cid!r} holds another embedding space")
        conn.execute(
            "UPDATE collections SET stac = %s, space_id = %s, updated_at = now() WHERE id = %s",
            (body, space.id, cid),
        )
    if state is None:
        conn.execute(
            "INSERT INTO mirror_state (remote_url, remote_collection, collection_id, phase,"
            " dtype, filters) VALUES (%s, %s, %s, 'initial', %s, %s)",
            (remote, cid, cid, opts.dtype, Jsonb(opts.filters())),
        )
        return space, None
    keys = ("phase", "as_of", "after_id", "cursor", "dtype", "filters", "rows_total")
    return space, dict(zip(keys, state, strict=True))


def _dumps(obj: Any) -> bytes:
    """JSON for the jsonb columns (orjson: several times json.dumps's speed)."""
    return orjson.dumps(obj)


def _write_rows(conn: psycopg.Connection, cid: str, space: Space, rows: list[_Row]) -> None:
    """Upsert items + embeddings (binary COPY into staging, then merge), in the caller's tx."""
    write_page(conn, cid, space, rows)


def _delete(conn: psycopg.Connection, cid: str, ids: list[str]) -> int:
    if not ids:
        return 0
    cur = conn.execute("DELETE FROM items WHERE collection_id = %s AND id = ANY(%s)", (cid, ids))
    return cur.rowcount


# --------------------------------------------------------------------------- progress


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


# --------------------------------------------------------------------------- requests


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
    if "embedding" not in table.column_names:
        raise RemoteError(f"{what}: the page has no embedding column; nothing was written")
    width = getattr(table.schema.field("embedding").type, "list_size", meta_dims)
    for dims in (meta_dims, width):
        if dims != space.dimensions:
            _check_dimensions(what, space, dims, np.zeros((0, dims)))
    q = meta.get("emb:quantization")
    try:
        quant = Quantization.from_stac(q) if q else None
        vectors = from_arrow(table.column("embedding"), meta["dtype"], meta_dims, quant)
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


# --------------------------------------------------------------------------- bulk path


def _ensure_index(
    conn: psycopg.Connection, space: Space, analyze: bool, index: IndexSettings | None
) -> None:
    """Build the space's index if it is absent or invalid (also on a rerun after a mirror
    killed between its last page and the build), under the publish merge lock, once for
    the whole initial phase."""
    # the merge locks as catalog.publish.build_index takes them (global exclusively only to
    # attach the space's partition, then the space's exclusively)
    partitions.merge_lock(conn, exclusive=not partitions.has_partition(conn, space.id))
    partitions.merge_lock(conn, space.id, exclusive=True)
    built = ensure_index(conn, space, index=index)
    if built or analyze:
        conn.execute(f"analyze items ({ANALYZE_ITEM_COLUMNS})")
        table = partitions.space_table(conn, space.id)  # its partition only (migration 0021)
        conn.execute(f"analyze {table} (collection_id, item_id, space_id)")
    conn.commit()


def _initial(
    http: HttpClient,
    opts: MirrorOptions,
    conn: psycopg.Connection,
    space: Space,
    state: dict[str, Any] | None,
    base: str,
    reporter: _Reporter,
    result: MirrorResult,
    on_page: Callable[[MirrorResult], None] | None,
) -> int:
    """The initial phase: export pages in id order after the last committed id, each
    written in one transaction with ``mirror_state.after_id`` (a killed mirror resumes
    after the last committed page). Three stages run at once, as in publish: a fetcher
    thread asks for page k+2 as soon as page k+1 has arrived (the next ``after`` is its
    last id), a decoder thread turns page k+1 into rows and verifies its checksums, and
    this thread writes page k. At most ``_QUEUED_PAGES`` decoded pages wait, so memory is
    bounded by the page size. Returns the change cursor."""
    cid = opts.collection_id
    start_as_of: int | None = state["as_of"] if state else None
    start_after: str | None = state["after_id"] if state else None
    pipe: queue.Queue[Any] = queue.Queue(maxsize=_QUEUED_PAGES)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                pipe.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def fetcher(decoder: ThreadPoolExecutor) -> None:
        after, as_of, pages = start_after, start_as_of, 0
        try:
            while not stop.is_set():
                pages += 1
                _page_budget(opts, pages, "export")
                body = {**opts.filters(), "dtype": opts.dtype, "limit": opts.page_rows}
                if after is not None:
                    body["after"] = after
                if as_of is not None:
                    body["as_of"] = as_of
                table, meta, nbytes = _export_page(http, opts, reporter, body)
                as_of = int(meta["as_of"])
                more = bool(meta["more"])
                ids = table.column("id") if "id" in table.column_names else None
                if more and (ids is None or len(ids) == 0):
                    raise RemoteError(
                        f"export of {cid!r}: the remote says more rows follow but sent none"
                    )
                if not put(decoder.submit(_decode_page, opts, space, base, table, meta, nbytes)):
                    return
                if not more:
                    return
                assert ids is not None
                after = str(ids[-1].as_py())
        except BaseException as exc:  # noqa: BLE001 - handed to the writing thread
            put(exc)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirror-decode") as decoder:
        fetch = threading.Thread(target=fetcher, args=(decoder,), name="mirror-fetch", daemon=True)
        fetch.start()
        try:
            while True:
                item = pipe.get()
                if isinstance(item, BaseException):
                    raise item
                page: _Page = item.result()
                # initial phase: the rows after the last committed id are not here yet
                if page.data is not None:
                    write_copy(conn, cid, space, page.data, insert_only=True)
                done = not page.more
                conn.execute(
                    "UPDATE mirror_state SET phase = %s, as_of = %s,"
                    " after_id = coalesce(%s, after_id), cursor = %s,"
                    " rows_total = rows_total + %s, bytes_total = bytes_total + %s,"
                    " updated_at = now() WHERE remote_url = %s AND remote_collection = %s",
                    ("incremental" if done else "initial", page.as_of, page.last_id,
                     page.as_of if done else 0, len(page.ids), page.nbytes, opts.remote_url,
                     cid),
                )  # fmt: skip
                conn.commit()
                result.verified += page.verified
                result.upserted += len(page.ids)
                result.bytes += page.nbytes
                result.pages += 1
                reporter.rows(len(page.ids))
                if on_page is not None:
                    on_page(result)
                if done:
                    return page.as_of
        finally:
            stop.set()
            # a fetch under way ends at its deadline; the writer does not wait for it (the
            # thread is a daemon, its answer is dropped)
            fetch.join(timeout=5)


def _bulk(
    http: HttpClient,
    opts: MirrorOptions,
    settings: DatabaseSettings,
    stac: dict[str, Any],
    result: MirrorResult,
    on_page: Callable[[MirrorResult], None] | None,
    on_progress: ProgressHook | None,
) -> None:
    cid = opts.collection_id
    space_json = _get_json(http, opts, f"/collections/{quote(cid, safe='')}/space",
                           f"space of {cid!r}")  # fmt: skip
    base = opts.remote_url
    started = time.perf_counter()
    with connect(settings) as conn:
        try:
            space, state = _prepare_local(conn, opts, stac, space_json)
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"space of {cid!r}: not an embedding space ({exc!r})") from None
        if state is not None and (state["dtype"], state["filters"]) != (
            opts.dtype,
            opts.filters(),
        ):
            raise Conflict(
                f"collection {cid!r} is mirrored with dtype {state['dtype']} and filters"
                f" {state['filters']}; remove it to mirror with other options"
            )
        if state is not None:
            conn.commit()
        # else: the new collection and its state row commit with the first page, so a
        # source refused on its first page leaves nothing behind.
        initial = state is None or state["phase"] == "initial"
        if initial:
            done = int(state["rows_total"]) if state else 0
            total = _number_matched(http, opts) if on_progress is not None else None
            reporter = _Reporter(on_progress, "initial", done, total)
            cursor = _initial(http, opts, conn, space, state, base, reporter, result, on_page)
        else:
            assert state is not None
            cursor = int(state["cursor"])
        result.load_s = time.perf_counter() - started
        t = time.perf_counter()
        _ensure_index(conn, space, analyze=initial, index=opts.index)
        result.index_s = time.perf_counter() - t
        reporter = _Reporter(on_progress, "incremental", 0, None)
        _incremental(http, opts, conn, space, cursor, base, reporter, result, on_page)


def _incremental(
    http: HttpClient,
    opts: MirrorOptions,
    conn: psycopg.Connection,
    space: Space,
    cursor: int,
    base: str,
    reporter: _Reporter,
    result: MirrorResult,
    on_page: Callable[[MirrorResult], None] | None,
) -> None:
    cid = opts.collection_id
    what = f"changes of {cid!r}"
    pages = 0
    while True:
        pages += 1
        _page_budget(opts, pages, "change feed")
        page = _get_json(
            http, opts, f"/collections/{quote(cid, safe='')}/changes", what, reporter,
            params={"since": cursor, "limit": opts.change_limit},
        )  # fmt: skip
        try:
            changes = [(str(c["op"]), str(c["id"])) for c in page["changes"]]
            new_cursor, more = int(page["next"]), bool(page["more"])
        except (KeyError, TypeError, ValueError):
            raise RemoteError(f"{what}: the remote's answer is not a change feed page") from None
        if more and new_cursor <= cursor:
            raise RemoteError(
                f"{what}: the remote says more changes follow but its cursor does not advance"
                f" ({cursor} -> {new_cursor}); stopped"
            )
        upserts = [i for op, i in changes if op == "upsert"]
        deletes = [i for op, i in changes if op == "delete"]
        rows: list[_Row] = []
        nbytes = 0
        if upserts:
            body = {**opts.filters(), "dtype": opts.dtype, "ids": upserts}
            table, meta, nbytes = _export_page(http, opts, reporter, body)
            rows, _ = _rows(table, meta, cid, base, space)
            result.verified += verify(rows, opts.dtype, space.storage)
            got = {row.id for row in rows}
            deletes += [i for i in upserts if i not in got]  # gone, or outside the filters
        _write_rows(conn, cid, space, rows)
        result.deleted += _delete(conn, cid, deletes)
        conn.execute(
            "UPDATE mirror_state SET cursor = %s, rows_total = rows_total + %s,"
            " bytes_total = bytes_total + %s, updated_at = now()"
            " WHERE remote_url = %s AND remote_collection = %s",
            (new_cursor, len(rows), nbytes, opts.remote_url, cid),
        )
        conn.commit()
        result.upserted += len(rows)
        result.bytes += nbytes
        if changes:
            reporter.rows(len(rows))
            result.pages += 1
            if on_page is not None:
                on_page(result)
        cursor = new_cursor
        result.cursor = cursor
        if not more:
            if page.get("pending_writers"):
                log.warning(
                    "the remote has %d open write transaction(s); their changes come next run",
                    page["pending_writers"],
                )
            return


# --------------------------------------------------------------------------- fallback


def _search_params(opts: MirrorOptions) -> dict[str, Any]:
    """The item search of a plain STAC API (GET /search) for the mirror's filters."""
    params: dict[str, Any] = {
        "collections": opts.collection_id,
        "limit": min(opts.page_rows, 1000),
    }
    for key, value in opts.filters().items():
        if key == "bbox":
            value = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = json.dumps(value)
        params[key] = value
    return params


def _fallback_pages(
    http: HttpClient, opts: MirrorOptions, reporter: _Reporter
) -> Iterator[list[dict[str, Any]]]:
    """Pages of STAC items (dicts) from the remote's item search, following its ``next``
    links (GET, or POST with the link's body). Every page goes through the one client:
    at most ``max_json_bytes``, ``request_deadline_s`` seconds, ``max_pages`` pages per
    run; credentials only to the origin (a next link may name another host)."""
    what = f"item search of {opts.collection_id!r}"
    request: dict[str, Any] = {"method": "GET", "url": "/search", "params": _search_params(opts)}
    pages = 0
    while True:
        pages += 1
        _page_budget(opts, pages, "item search")
        answer = http.fetch(
            request.pop("method"), request.pop("url"), what, limit=opts.max_json_bytes,
            on_bytes=reporter.received, **request,
        )  # fmt: skip
        try:
            page = answer.json()
            features = page["features"]
            if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise RemoteError(f"{what}: the remote's answer is not an item page") from None
        yield features
        link = next(
            (lk for lk in page.get("links") or [] if isinstance(lk, dict)
             and lk.get("rel") == "next" and isinstance(lk.get("href"), str)),
            None,
        )  # fmt: skip
        if link is None or not features:
            return
        method = str(link.get("method") or "GET").upper()
        if method == "POST":
            given = link.get("body")
            body: dict[str, Any] = given if isinstance(given, dict) else {}
            if link.get("merge"):
                body = {**_search_params(opts), **body}
            request = {"method": "POST", "url": link["href"], "json": body}
        else:
            request = {"method": "GET", "url": link["href"]}


def _fallback_vector(
    http: HttpClient, opts: MirrorOptions, reporter: _Reporter, space: Space,
    item: dict[str, Any], asset: dict[str, Any], result: MirrorResult,
) -> np.ndarray:  # fmt: skip
    what = f"vector of {item['id']!r}"
    checksum = asset.get("file:checksum")
    content = http.fetch(
        "GET", str(asset["href"]), what, limit=opts.max_json_bytes, on_bytes=reporter.received,
        follow_redirects=True,  # Authorization stays with the origin (OriginAuth, httpx)
    ).content  # fmt: skip
    result.bytes += len(content)
    if checksum and multihash_sha256(content) != checksum:
        raise Conflict(f"checksum mismatch for item {item['id']!r}")
    try:
        vector = np.load(io.BytesIO(content)).astype(np.float32)
    except (ValueError, OSError, EOFError):
        raise RemoteError(f"{what}: not a .npy array") from None
    if vector.shape != (space.dimensions,):
        raise RemoteError(
            f"{what}: {vector.shape} values, the collection's space has {space.dimensions}"
            " dimensions; nothing of the page was written"
        )
    result.verified += 1 if checksum else 0
    return vector


def _fallback(
    http: HttpClient,
    opts: MirrorOptions,
    settings: DatabaseSettings,
    stac: dict[str, Any],
    result: MirrorResult,
    on_page: Callable[[MirrorResult], None] | None,
    on_progress: ProgressHook | None,
) -> None:
    if opts.dtype not in ("float32",):
        raise InvalidInput("a plain STAC API serves float32 .npy vectors only; use --dtype float32")
    cid = opts.collection_id
    base = opts.remote_url
    space_json = space_from_collection(stac)
    started = time.perf_counter()
    with connect(settings) as conn:
        space, state = _prepare_local(conn, opts, stac, space_json)
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS mirror_seen (id text PRIMARY KEY)")
        conn.execute("TRUNCATE mirror_seen")
        if state is not None:
            conn.commit()  # a new mirror commits with its first page (nothing on refusal)
        total = _number_matched(http, opts) if on_progress is not None else None
        reporter = _Reporter(on_progress, "items", 0, total)
        for features in _fallback_pages(http, opts, reporter):
            ids = [str(f.get("id")) for f in features]
            local = dict(
                conn.execute(
                    "SELECT i.id, i.assets -> 'embeddings' ->> 'file:checksum' FROM items i"
                    " WHERE i.collection_id = %s AND i.id = ANY(%s)",
                    (cid, ids),
                ).fetchall()
            )
            rows = []
            for item in features:
                asset = (item.get("assets") or {}).get(EMBEDDINGS_ASSET)
                if asset is None:
                    continue
                checksum = asset.get("file:checksum")
                vector = None
                if checksum and local.get(item["id"]) == checksum:
                    stored = conn.execute(
                        f"SELECT {space.vector_sql('e')}::vector FROM embeddings e"
                        " WHERE e.collection_id = %s AND e.item_id = %s AND e.space_id = %s",
                        (cid, item["id"], space.id),
                    ).fetchone()
                    vector = np.asarray(stored[0].to_numpy(), np.float32) if stored else None
                if vector is None:
                    vector = _fallback_vector(http, opts, reporter, space, item, asset, result)
                rows.append(_item_to_row(item, vector, cid, base))
            _write_rows(conn, cid, space, rows)
            # a source may list an item twice (or repeat a page): seen once is enough
            conn.execute(
                "INSERT INTO mirror_seen SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (ids,)
            )
            conn.commit()
            result.upserted += len(rows)
            result.pages += 1
            reporter.rows(len(rows))
            if on_page is not None:
                on_page(result)
        cur = conn.execute(
            "DELETE FROM items i WHERE i.collection_id = %s"
            " AND NOT EXISTS (SELECT 1 FROM mirror_seen s WHERE s.id = i.id)",
            (cid,),
        )
        result.deleted += cur.rowcount
        conn.execute(
            "UPDATE mirror_state SET phase = 'incremental', updated_at = now()"
            " WHERE remote_url = %s AND remote_collection = %s",
            (opts.remote_url, cid),
        )
        conn.commit()
        result.load_s = time.perf_counter() - started
        t = time.perf_counter()
        _ensure_index(conn, space, analyze=True, index=opts.index)
        result.index_s = time.perf_counter() - t


# --------------------------------------------------------------------------- entry point


def mirror(
    opts: MirrorOptions,
    settings: DatabaseSettings | None = None,
    on_page: Callable[[MirrorResult], None] | None = None,
    on_progress: ProgressHook | None = None,
) -> MirrorResult:
    """Bring the local copy of ``opts.collection_id`` up to date with the remote.

    ``on_progress`` is called after each committed page with a ``MirrorProgress`` (rows,
    total, bytes, rate, ETA); ``on_page`` with the running ``MirrorResult``.
    """
    settings = settings or DatabaseSettings()
    check_dtype(opts.dtype)
    if opts.dtype == "binary":
        raise InvalidInput(
            "binary vectors keep one bit per dimension and cannot be stored as a space;"
            " mirror with float32, float16 or int8"
        )
    if opts.page_rows < 1 or opts.change_limit < 1:
        raise InvalidInput("page_rows and change_limit must be >= 1")
    if min(opts.max_page_bytes, opts.max_json_bytes, opts.max_pages, opts.retry_attempts) < 1 or (
        opts.request_deadline_s <= 0
    ):
        raise InvalidInput("the mirror's size, time, page and retry bounds must be positive")
    opts.remote_url = opts.remote_url.rstrip("/")
    try:
        origin_of(opts.remote_url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise InvalidInput(f"not an http(s) URL: {opts.remote_url!r}") from None
    started = time.perf_counter()
    # Credentials go to the origin on the command line only (asset hrefs and links may
    # name other hosts), and the API calls follow no redirects.
    with _client(opts) as http:
        try:
            stac = _get_json(
                http, opts, f"/collections/{quote(opts.collection_id, safe='')}",
                f"remote collection {opts.collection_id!r}",
            )  # fmt: skip
            if not isinstance(stac, dict):
                raise RemoteError(f"remote collection {opts.collection_id!r}: not a JSON object")
            status = http.fetch(
                "GET", "/exchange", "exchange capabilities", limit=opts.max_json_bytes,
                check=False,
            ).status  # fmt: skip
            bulk = status == 200
        except httpx.HTTPError as exc:
            raise RemoteError(f"cannot reach {opts.remote_url}: {exc}") from exc
        result = MirrorResult(mode="bulk" if bulk else "items")
        try:
            if bulk:
                _bulk(http, opts, settings, stac, result, on_page, on_progress)
            else:
                _fallback(http, opts, settings, stac, result, on_page, on_progress)
        except httpx.HTTPError as exc:
            raise RemoteError(f"transfer from {opts.remote_url} failed: {exc}") from exc
    result.seconds = time.perf_counter() - started
    return result


def local_space(conn: psycopg.Connection, collection_id: str) -> Space:
    row = conn.execute("SELECT space_id FROM collections WHERE id = %s", (collection_id,))
    found = row.fetchone()
    if found is None or found[0] is None:
        raise NotFound(f"collection {collection_id!r} does not exist locally")
    return get_space(conn, found[0])
