"""The local side of a mirror: the collection and its embedding space prepared here, item
rows written and deleted, the space's index built once."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import orjson
import psycopg

from embcat.catalog.errors import Conflict, InvalidInput, NotFound
from embcat.catalog.imagery import QUICKLOOK_ASSET_PREFIX
from embcat.catalog.item_shape import EMB_DIMENSIONS, GENERATED_RELS
from embcat.catalog.mirror_options import MirrorOptions
from embcat.catalog.mirror_rows import (
    _local_href,
)
from embcat.catalog.mirror_write import Row as _Row
from embcat.catalog.mirror_write import write_page
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store import items as store_items
from embcat.catalog.store import mirror_state, partitions, space_index, staged_merge
from embcat.catalog.store.spaces import IndexSettings, Space, get_or_create_space, get_space

log = logging.getLogger(__name__)


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
    dims = stac.get(EMB_DIMENSIONS)
    if not isinstance(dims, int):
        raise InvalidInput(
            f"collection {stac.get('id')!r} has no {EMB_DIMENSIONS}; cannot mirror its vectors"
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
    state = mirror_state.get(conn, remote, cid)
    found, local_space_id = store_collections.find_space_id(conn, cid)
    if found and state is None:
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
    if not found:
        store_collections.insert(conn, cid, local_stac, space.id)
    else:
        if local_space_id is not None and local_space_id != space.id:
            raise Conflict(f"local collection {cid!r} holds another embedding space")
        store_collections.set_stac_and_space(conn, cid, local_stac, space.id)
    if state is None:
        mirror_state.insert(conn, remote, cid, opts.dtype, opts.filters())
        return space, None
    return space, state


def _dumps(obj: Any) -> bytes:
    """JSON for the jsonb columns (orjson: several times json.dumps's speed)."""
    return orjson.dumps(obj)


def _write_rows(conn: psycopg.Connection, cid: str, space: Space, rows: list[_Row]) -> None:
    """Upsert items + embeddings (binary COPY into staging, then merge), in the caller's tx."""
    write_page(conn, cid, space, rows)


def _delete(conn: psycopg.Connection, cid: str, ids: list[str]) -> int:
    return store_items.delete_ids(conn, cid, ids)


def _ensure_index(
    conn: psycopg.Connection,
    space: Space,
    analyze: bool,
    index: IndexSettings | None = None,
    incoming: int = 0,
) -> None:
    """Build the space's index if it is absent or invalid (also on a rerun after a mirror
    killed between its last page and the build), under the publish merge lock, once for
    the whole initial phase; rebuild it when the rows (the planner's count, plus
    ``incoming`` rows written since the last ANALYZE) have outgrown it."""
    # the merge locks as catalog.publish.build_index takes them (global exclusively only to
    # attach the space's partition, then the space's exclusively)
    partitions.merge_lock(conn, exclusive=not partitions.has_partition(conn, space.id))
    partitions.merge_lock(conn, space.id, exclusive=True)
    # an ivfflat-bit index the mirrored rows have outgrown is rebuilt, as a publish does
    # (the replaced index stays until the commit)
    space = get_space(conn, space.id)  # (its build record as it is now)
    grown = space_index.build_due(conn, space, incoming) == "growth"
    built = space_index.ensure_index(conn, space, index=index, rebuild=grown, drop_old=False)
    if built or analyze:
        staged_merge.analyze(conn, space.id)
    conn.commit()
    if built:
        conn.autocommit = True
        try:
            space_index.finish_swap(conn, space.id)
        finally:
            conn.autocommit = False


def local_space(conn: psycopg.Connection, collection_id: str) -> Space:
    _, space_id = store_collections.find_space_id(conn, collection_id)
    if space_id is None:
        raise NotFound(f"collection {collection_id!r} does not exist locally")
    return get_space(conn, space_id)
