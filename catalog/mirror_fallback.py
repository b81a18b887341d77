"""The mirror's fallback against a plain STAC API: item pages through ``/search`` and its
``next`` links, each item's ``embeddings`` asset (``.npy``) fetched when its checksum
changed, and local items the remote no longer lists deleted after a full pass."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from embcat.catalog.db import connect
from embcat.catalog.errors import Conflict, InvalidInput
from embcat.catalog.http import HttpClient, RemoteError
from embcat.catalog.mirror_local import (
    _ensure_index,
    _prepare_local,
    _write_rows,
    space_from_collection,
)
from embcat.catalog.mirror_options import MirrorOptions, MirrorResult, ProgressHook, _Reporter
from embcat.catalog.mirror_pages import _number_matched, _page_budget
from embcat.catalog.mirror_rows import (
    _item_to_row,
)
from embcat.catalog.settings import DatabaseSettings
from embcat.catalog.store import embedding_reads, mirror_state
from embcat.catalog.store import items as store_items
from embcat.catalog.store.spaces import Space
from embcat.catalog.vectors import (
    EMBEDDINGS_ASSET,
    multihash_sha256,
)

log = logging.getLogger(__name__)


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
            local = store_items.asset_checksums(conn, cid, ids, EMBEDDINGS_ASSET)
            rows = []
            for item in features:
                asset = (item.get("assets") or {}).get(EMBEDDINGS_ASSET)
                if asset is None:
                    continue
                checksum = asset.get("file:checksum")
                vector = None
                if checksum and local.get(item["id"]) == checksum:
                    vector = embedding_reads.stored_vector(conn, space, cid, item["id"])
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
        result.deleted += store_items.delete_unlisted(conn, cid, "mirror_seen")
        mirror_state.set_incremental(conn, opts.remote_url, cid)
        conn.commit()
        result.load_s = time.perf_counter() - started
        t = time.perf_counter()
        _ensure_index(conn, space, analyze=True, index=opts.index)
        result.index_s = time.perf_counter() - t
