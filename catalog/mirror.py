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

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx
import psycopg

from embcat.catalog.db import connect
from embcat.catalog.errors import Conflict, InvalidInput
from embcat.catalog.http import HttpClient, RemoteError, origin_of
from embcat.catalog.mirror_fallback import _fallback
from embcat.catalog.mirror_local import (
    _delete,
    _ensure_index,
    _prepare_local,
    _strip_collection,
    _write_rows,
    local_space,
    space_from_collection,
)
from embcat.catalog.mirror_options import (
    MirrorOptions,
    MirrorProgress,
    MirrorResult,
    ProgressHook,
    _Reporter,
    auto_dtype,
)
from embcat.catalog.mirror_pages import (
    _QUEUED_PAGES,
    _client,
    _decode_page,
    _export_page,
    _get_json,
    _number_matched,
    _Page,
    _page_budget,
    _rows,
)
from embcat.catalog.mirror_rows import (
    verify,
)
from embcat.catalog.mirror_write import Row as _Row
from embcat.catalog.mirror_write import write_copy
from embcat.catalog.quantize import check_dtype
from embcat.catalog.settings import DatabaseSettings
from embcat.catalog.store import mirror_state
from embcat.catalog.store.spaces import Space

log = logging.getLogger(__name__)

__all__ = [
    "MirrorOptions",
    "MirrorProgress",
    "MirrorResult",
    "RemoteError",
    "_strip_collection",
    "local_space",
    "mirror",
    "space_from_collection",
]


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
                mirror_state.record_initial_page(
                    conn, opts.remote_url, cid, done=done, as_of=page.as_of,
                    last_id=page.last_id, rows=len(page.ids), nbytes=page.nbytes,
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
    auto = opts.dtype == "auto"
    with connect(settings) as conn:
        try:
            if auto:  # (a new mirror's state row records what it resolves to)
                opts = replace(opts, dtype=auto_dtype(str(space_json["storage"])))
            space, state = _prepare_local(conn, opts, stac, space_json)
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteError(f"space of {cid!r}: not an embedding space ({exc!r})") from None
        if auto and state is not None:  # an existing mirror goes on as it was started
            opts = replace(opts, dtype=str(state["dtype"]))
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
        before = result.upserted
        _incremental(http, opts, conn, space, cursor, base, reporter, result, on_page)
        if result.upserted > before:  # the changes may have outgrown an ivfflat-bit index
            t = time.perf_counter()
            grew = result.upserted - before
            _ensure_index(conn, space, analyze=False, index=opts.index, incoming=grew)
            result.index_s += time.perf_counter() - t


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
        mirror_state.record_changes(
            conn, opts.remote_url, cid, cursor=new_cursor, rows=len(rows), nbytes=nbytes
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


def mirror(
    opts: MirrorOptions,
    settings: DatabaseSettings,
    on_page: Callable[[MirrorResult], None] | None = None,
    on_progress: ProgressHook | None = None,
) -> MirrorResult:
    """Bring the local copy of ``opts.collection_id`` up to date with the remote.

    ``on_progress`` is called after each committed page with a ``MirrorProgress`` (rows,
    total, bytes, rate, ETA); ``on_page`` with the running ``MirrorResult``.
    """
    if opts.dtype != "auto":
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
            else:  # a plain STAC API serves float32 .npy files
                plain = replace(opts, dtype="float32") if opts.dtype == "auto" else opts
                _fallback(http, plain, settings, stac, result, on_page, on_progress)
        except httpx.HTTPError as exc:
            raise RemoteError(f"transfer from {opts.remote_url} failed: {exc}") from exc
    result.seconds = time.perf_counter() - started
    return result
