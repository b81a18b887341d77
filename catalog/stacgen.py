"""STAC metadata of published embeddings: the collection, the item template, the model item.

The collection is built with pystac (Collection, item assets, the MLM extension); items are
built in SQL from a constant template (``ItemTemplate``) plus per-row values, because the
publish job writes millions of them (see catalog/publish.py). ``item_dict`` turns a stored
row back into a full STAC Item dict; tests read those through pystac's classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pystac
from pystac.extensions.file import FileExtension
from pystac.extensions.mlm import MLMExtension
from pystac.extensions.projection import ProjectionExtension

from catalog.spaces import Space
from catalog.vectors import EMBEDDINGS_ASSET, NPY_MEDIA_TYPE, npy_bytes
from embcat import __version__
from encoders.manifest import Manifest

EMB_SCHEMA = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
MLM_SCHEMA = MLMExtension.get_schema_uri()
FILE_SCHEMA = FileExtension.get_schema_uri()
PROJECTION_SCHEMA = ProjectionExtension.get_schema_uri()

ITEM_EXTENSIONS = [EMB_SCHEMA, PROCESSING_SCHEMA, FILE_SCHEMA, PROJECTION_SCHEMA]
COLLECTION_EXTENSIONS = [EMB_SCHEMA, MLM_SCHEMA, PROCESSING_SCHEMA, FILE_SCHEMA]
ASSET_ROLES = ["data", "embeddings"]
SOURCE_MEDIA_TYPE = "image/tiff; application=geotiff"
_PREFIXES = {
    "emb:": EMB_SCHEMA,
    "processing:": PROCESSING_SCHEMA,
    "proj:": PROJECTION_SCHEMA,
    "file:": FILE_SCHEMA,
    "mlm:": MLM_SCHEMA,
}
_ID_OK = re.compile(r"[^A-Za-z0-9._-]+")


def default_collection_id(manifest: Manifest) -> str:
    """``collection`` from the manifest if it names one, else ``<encoder>-<version>``."""
    named = (manifest.model_extra or {}).get("collection")
    if isinstance(named, str) and named:
        return named
    slug = _ID_OK.sub("-", f"{manifest.encoder.name}-{manifest.encoder.version}").strip("-.")
    return slug[:255] or "embeddings"


def npy_size(dimensions: int) -> int:
    """``file:size`` of every vector of a space: the .npy header plus float32 values."""
    return len(npy_bytes([0.0] * dimensions))


def npy_header(dimensions: int) -> bytes:
    """The constant ``.npy`` header that precedes the values of a ``dimensions`` vector."""
    return npy_bytes([0.0] * dimensions)[: npy_size(dimensions) - 4 * dimensions]


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def processing_fields(manifest: Manifest) -> dict[str, Any]:
    software = {"embcat": __version__, **manifest.software}
    enc = manifest.encoder
    return {
        "processing:software": software,
        "processing:datetime": _iso(manifest.created),
        "processing:version": f"{enc.name} {enc.version}",
        "processing:lineage": (
            f"{enc.name} {enc.version} applied to {manifest.run.chip_size} px chips"
            f" (stride {manifest.run.stride}, grid {manifest.run.grid_id}) of the source"
            f" imagery; {enc.dimensions}-d vectors published by embcat"
        ),
    }


def runtime_parameters(manifest: Manifest) -> dict[str, Any]:
    run = manifest.run.model_dump(mode="json", exclude_none=True)
    run.pop("inputs", None)  # can be long; the collection links to the source data
    return run


def quantization(manifest: Manifest, space: Space) -> dict[str, Any] | None:
    if space.storage == "halfvec" and manifest.encoder.dtype == "float32":
        return {
            "method": "cast",
            "original_dtype": "float32",
            "quantized_dtype": "float16",
            "scale": 1.0,
            "offset": 0.0,
        }
    return None


@dataclass(frozen=True)
class ItemTemplate:
    """What every item of one publish shares; catalog/publish.py adds the per-row parts."""

    properties: dict[str, Any]
    asset: dict[str, Any]
    href_prefix: str  # root-relative href up to the quoted item id
    href_suffix: str


def item_template(manifest: Manifest, collection_id: str, space: Space) -> ItemTemplate:
    props: dict[str, Any] = {
        **processing_fields(manifest),
        "emb:runtime_parameters": runtime_parameters(manifest),
    }
    quant = quantization(manifest, space)
    if quant is not None:
        props["emb:quantization"] = quant
    asset = {
        "type": NPY_MEDIA_TYPE,
        "roles": ASSET_ROLES,
        "title": f"{space.encoder_name} {space.encoder_version} embedding",
        "file:size": npy_size(space.dimensions),
    }
    return ItemTemplate(
        properties=props,
        asset=asset,
        href_prefix=f"/collections/{quote(collection_id, safe='')}/items/",
        href_suffix="/embedding",
    )


def model_href(collection_id: str) -> str:
    return f"/collections/{quote(collection_id, safe='')}/model"


def build_collection(
    manifest: Manifest,
    collection_id: str,
    space: Space,
    *,
    bbox: list[float],
    interval: tuple[datetime, datetime],
    existing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The STAC Collection of a publish (merging the extent into ``existing`` if given)."""
    enc, run = manifest.encoder, manifest.run
    if existing is not None:
        bbox, interval = _union_extent(existing, bbox, interval)
    extent = pystac.Extent(
        pystac.SpatialExtent([bbox]), pystac.TemporalExtent([[interval[0], interval[1]]])
    )
    title = (existing or {}).get("title") or f"{enc.name} {enc.version} embeddings"
    description = (existing or {}).get("description") or (
        f"{enc.dimensions}-d {enc.name} {enc.version} embeddings of {run.chip_size} px chips"
        f" (stride {run.stride}), one item per chip; vectors are the `embeddings` asset"
        " of each item and searchable by similarity."
    )
    coll = pystac.Collection(
        id=collection_id,
        description=description,
        extent=extent,
        title=title,
        license=(existing or {}).get("license") or "other",
        keywords=["embeddings", enc.name, "earth observation"],
    )
    coll.item_assets[EMBEDDINGS_ASSET] = pystac.ItemAssetDefinition.create(
        title=f"{enc.name} {enc.version} embedding",
        description="The chip's vector: a .npy file of float32 values as stored",
        media_type=NPY_MEDIA_TYPE,
        roles=ASSET_ROLES,
        extra_fields={"file:size": npy_size(space.dimensions)},
    )
    coll.stac_extensions = list(COLLECTION_EXTENSIONS)
    fields = coll.extra_fields
    fields["emb:type"] = "chip"
    fields["emb:dimensions"] = space.dimensions
    fields["data_type"] = "float32"
    if enc.gsd is not None:
        fields["gsd"] = enc.gsd
    fields["emb:chip_layout"] = {
        "layout_type": "regular_grid",
        "chip_size": run.chip_size,
        "stride": run.stride,
        "grid_id": run.grid_id,
    }
    fields["embcat:space"] = {
        "id": space.id,
        "encoder": space.encoder_name,
        "version": space.encoder_version,
        "dimensions": space.dimensions,
        "storage": space.storage,
        "metric": space.metric,
        "normalized": space.normalized,
    }
    fields.update(processing_fields(manifest))
    fields.update({k: v for k, v in enc.mlm.items() if k.startswith("mlm:")})
    if "mlm:name" not in fields:
        fields["mlm:name"] = enc.name
    coll.add_link(
        pystac.Link(
            rel="emb:model",
            target=model_href(collection_id),
            media_type=pystac.MediaType.JSON,
            title=f"{enc.name} {enc.version} (STAC MLM item)",
        )
    )
    sources = list(dict.fromkeys(run.inputs))
    for old in (existing or {}).get("links", []):
        if old.get("rel") == "emb:source-data" and old.get("href") not in sources:
            sources.append(old["href"])
    for href in sources[:1000]:
        coll.add_link(pystac.Link(rel="emb:source-data", target=href, media_type=SOURCE_MEDIA_TYPE))
    out = coll.to_dict(include_self_link=False, transform_hrefs=False)
    out["links"] = [
        link for link in out["links"] if link["rel"] not in ("self", "root", "parent", "items")
    ]
    return out


def _union_extent(
    existing: dict[str, Any], bbox: list[float], interval: tuple[datetime, datetime]
) -> tuple[list[float], tuple[datetime, datetime]]:
    try:
        old_bbox = existing["extent"]["spatial"]["bbox"][0]
        old_int = existing["extent"]["temporal"]["interval"][0]
    except (KeyError, IndexError, TypeError):
        return bbox, interval
    merged = [
        min(bbox[0], old_bbox[0]),
        min(bbox[1], old_bbox[1]),
        max(bbox[2], old_bbox[2]),
        max(bbox[3], old_bbox[3]),
    ]
    start, end = interval
    if old_int[0]:
        start = min(start, _parse(old_int[0]))
    if old_int[1]:
        end = max(end, _parse(old_int[1]))
    return merged, (start, end)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def item_stac_extensions(properties: dict[str, Any], assets: dict[str, Any]) -> list[str]:
    """The extension schemas an item uses, from the prefixes of its fields."""
    used: set[str] = set()
    keys = list(properties)
    for asset in assets.values():
        keys.extend(asset)
    for key in keys:
        for prefix, uri in _PREFIXES.items():
            if key.startswith(prefix):
                used.add(uri)
    return [uri for uri in [*ITEM_EXTENSIONS, MLM_SCHEMA] if uri in used]


def item_dict(
    collection_id: str,
    item_id: str,
    geometry: dict[str, Any],
    bbox: list[float],
    properties: dict[str, Any],
    assets: dict[str, Any],
    links: list[dict[str, Any]],
) -> dict[str, Any]:
    """A stored item row as a STAC Item dict (links as stored: no self/root/parent)."""
    return {
        "type": "Feature",
        "stac_version": pystac.get_stac_version(),
        "stac_extensions": item_stac_extensions(properties, assets),
        "id": item_id,
        "collection": collection_id,
        "geometry": geometry,
        "bbox": bbox,
        "properties": properties,
        "assets": assets,
        "links": links,
    }


def model_item(space: Space, collection_id: str | None = None) -> dict[str, Any]:
    """The encoder of a space as a STAC MLM item (what the ``emb:model`` link serves)."""
    item = pystac.Item(
        id=f"{space.encoder_name}-{space.encoder_version}",
        geometry=None,
        bbox=None,
        datetime=datetime(1970, 1, 1, tzinfo=UTC),
        properties={k: v for k, v in space.mlm.items() if k.startswith("mlm:")},
    )
    MLMExtension.add_to(item)
    if "mlm:name" not in item.properties:
        item.properties["mlm:name"] = space.encoder_name
    item.properties["embcat:space"] = {
        "id": space.id,
        "dimensions": space.dimensions,
        "storage": space.storage,
        "metric": space.metric,
        "normalized": space.normalized,
    }
    out = item.to_dict(include_self_link=False, transform_hrefs=False)
    if collection_id is not None:
        out["links"] = [
            {
                "rel": "collection",
                "href": f"/collections/{quote(collection_id, safe='')}",
                "type": "application/json",
            }
        ]
    return out
