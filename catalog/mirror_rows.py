"""The mirror's row path: export pages and STAC item dicts as ``Row`` objects (items in
their storage form, hrefs made local) plus their vectors, and the checksum check of a
list of rows. The initial phase of a bulk mirror encodes lossless pages column-wise
instead (catalog.mirror_columns); this path serves change-feed pages, lossy dtypes and
the item fallback of plain STAC APIs, and is the reference the column path is tested
against."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from embcat.catalog.exchange_format import DATETIME_COLUMNS, EMBEDDING_COLUMN, python_value
from embcat.catalog.imagery import THUMBNAIL_ASSET
from embcat.catalog.item_shape import EMB_QUANTIZATION, GENERATED_RELS, rfc3339, rfc3339_texts
from embcat.catalog.mirror_columns import verify_columns
from embcat.catalog.mirror_write import Row as _Row
from embcat.catalog.quantize import LOSSLESS_FOR, Quantization, from_arrow
from embcat.catalog.vectors import EMBEDDINGS_ASSET, embedding_href, file_fields, stored_values

iso = rfc3339  # an item's RFC 3339 datetime text, as publish writes it (catalog.item_shape)


def _local_href(href: Any, remote_base: str) -> Any:
    if (
        isinstance(href, str)
        and href.startswith(remote_base)
        and href[len(remote_base) : len(remote_base) + 1] == "/"
    ):
        return href[len(remote_base) :]
    return href


_URL_SAFE = re.compile(r"^[A-Za-z0-9_.~-]+$")


def _href_maker(collection_id: str) -> Callable[[str], str]:
    """``embedding_href`` for one collection: ids that need no percent-encoding (nearly all)
    are put between a constant prefix and suffix instead of quoted one by one."""
    prefix, suffix = embedding_href(collection_id, "x").rsplit("/x/", 1)

    def href(item_id: str) -> str:
        if _URL_SAFE.match(item_id):
            return f"{prefix}/{item_id}/{suffix}"
        return embedding_href(collection_id, item_id)

    return href


def _iso_column(table: pa.Table, name: str) -> list[str | None]:
    """The ``rfc3339`` texts of a timestamp column, formatted column-wise (None where null)."""
    if name not in table.column_names or table.num_rows == 0:
        return [None] * table.num_rows
    return rfc3339_texts(table.column(name).combine_chunks()).to_pylist()


def rows_from_table(
    table: pa.Table, meta: dict[str, Any], local_cid: str, remote_base: str
) -> tuple[list[_Row], np.ndarray]:
    """Items (STAC storage form, hrefs made local) and the float32 vectors of an export."""
    dims = int(meta["space"]["dimensions"])
    q = meta.get(EMB_QUANTIZATION)
    quant = Quantization.from_stac(q) if q else None
    vectors = from_arrow(table.column(EMBEDDING_COLUMN), meta["dtype"], dims, quant)
    columns = [c for c in table.column_names if c != EMBEDDING_COLUMN]
    records = table.select(columns).to_pylist()
    props_map = meta.get("properties", [])
    texts = {name: _iso_column(table, name) for name in DATETIME_COLUMNS}
    href_of = _href_maker(local_cid)
    rows: list[_Row] = []
    for k, rec in enumerate(records):
        props: dict[str, Any] = {}
        for name in DATETIME_COLUMNS:
            if rec.get(name) is not None:
                props[name] = texts[name][k]
        for p in props_map:
            value = rec.get(p["column"])
            if value is None:
                continue
            props[p["name"]] = python_value(value, p["kind"])
        assets: dict[str, Any] = {}
        for key, fields in (meta.get("assets") or {}).items():
            asset = (rec.get("assets") or {}).get(key)
            if asset is None:
                continue
            out = {}
            for f, kind in fields.items():
                v = asset.get(f)
                if v is None:
                    continue
                out[f] = python_value(v, kind)
            if "href" in out and key != THUMBNAIL_ASSET:
                # a mirror holds no thumbnail PNGs: that asset keeps the origin's URL
                out["href"] = _local_href(out["href"], remote_base)
            if key == EMBEDDINGS_ASSET:
                out["href"] = href_of(rec["id"])
            assets[key] = out
        links = [
            {kk: _local_href(vv, remote_base) if kk == "href" else vv for kk, vv in link.items()
             if vv is not None}
            for link in rec.get("links") or []
        ]  # fmt: skip
        b = rec["bbox"]
        if "datetime" not in props:
            props.setdefault("datetime", None)
        rows.append(
            _Row(
                id=rec["id"],
                geometry=rec["geometry"],
                bbox=[b["xmin"], b["ymin"], b["xmax"], b["ymax"]],
                datetime=rec.get("datetime"),
                start_datetime=rec.get("start_datetime"),
                end_datetime=rec.get("end_datetime"),
                properties=props,
                assets=assets,
                links=links,
                vector=vectors[k],
            )
        )
    return rows, vectors


def verify(rows: list[_Row], dtype: str, storage: str) -> int:
    """Check every vector against its ``file:checksum`` (``mirror_columns.verify_columns``);
    lossy dtypes get new file fields instead. Returns how many checksums were verified;
    Conflict on the first mismatch."""
    if not rows:
        return 0
    if storage not in LOSSLESS_FOR.get(dtype, set()):
        for r in rows:
            asset = r.assets.get(EMBEDDINGS_ASSET)
            if asset is not None:
                asset.update(file_fields(r.vector, storage))
        return 0
    assets = [r.assets.get(EMBEDDINGS_ASSET) for r in rows]
    sums = [a.get("file:checksum") if a else None for a in assets]
    sizes = [a.get("file:size") if a else None for a in assets]
    values = stored_values(np.stack([r.vector for r in rows]), storage).reshape(len(rows), -1)
    for r, asset, checksum in zip(rows, assets, sums, strict=True):
        if asset is not None and not checksum:  # nothing to verify: describe what is stored
            asset.update(file_fields(r.vector, storage))
    return verify_columns([r.id for r in rows], sums, values, sizes)


def _item_to_row(item: dict[str, Any], vector: np.ndarray, cid: str, base: str) -> _Row:
    import shapely

    geom = shapely.geometry.shape(item["geometry"])
    props = dict(item.get("properties") or {})

    def ts(name: str) -> datetime | None:
        v = props.get(name)
        return datetime.fromisoformat(v.replace("Z", "+00:00")) if isinstance(v, str) else None

    assets = {}
    for key, asset in (item.get("assets") or {}).items():
        if key != THUMBNAIL_ASSET:  # a mirror holds no thumbnail PNGs: origin's URL
            asset = {**asset, "href": _local_href(asset.get("href"), base)}
        if key == EMBEDDINGS_ASSET:
            asset["href"] = embedding_href(cid, item["id"])
        assets[key] = asset
    links = [
        {**link, "href": _local_href(link.get("href"), base)}
        for link in item.get("links") or []
        if link.get("rel") not in GENERATED_RELS
    ]
    bbox = item.get("bbox") or list(geom.bounds)
    return _Row(
        id=item["id"],
        geometry=shapely.to_wkb(geom),
        bbox=[float(v) for v in bbox],
        datetime=ts("datetime"),
        start_datetime=ts("start_datetime"),
        end_datetime=ts("end_datetime"),
        properties=props,
        assets=assets,
        links=links,
        vector=vector,
    )
