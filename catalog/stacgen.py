"""STAC metadata of published embeddings: the collection and the model item.

The collection is built with pystac (Collection, item assets, the MLM extension); the
items' shape, the extension URIs and the ``emb:`` field names are catalog.item_shape's.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import pystac
from pystac.extensions.mlm import MLMExtension

from embcat.catalog.item_shape import (
    ASSET_ROLES,
    COLLECTION_EXTENSIONS,
    EMB_CHIP_LAYOUT,
    EMB_DIMENSIONS,
    EMB_MODEL,
    EMB_SOURCE_DATA,
    EMB_STAC_VERSION,
    EMB_TYPE,
    FILE_SCHEMA,
    MLM_SCHEMA,
    SOURCE_MEDIA_TYPE,
    processing_fields,
    source_uri,
)
from embcat.catalog.store.spaces import Space
from embcat.catalog.vectors import EMBEDDINGS_ASSET, NPY_MEDIA_TYPE, npy_size
from embcat.encoders.manifest import Manifest

_ID_OK = re.compile(r"[^A-Za-z0-9._-]+")
SPACE = "embcat:space"  # the embedding space of a collection and of its model item


def space_fields(space: Space, *, named: bool = True) -> dict[str, Any]:
    """The ``embcat:space`` member: the space's identity (``named``: with its encoder's
    name and version, as the collection carries it; the model item names them itself)."""
    names = {"encoder": space.encoder_name, "version": space.encoder_version} if named else {}
    return {
        "id": space.id,
        **names,
        "dimensions": space.dimensions,
        "storage": space.storage,
        "metric": space.metric,
        "normalized": space.normalized,
        "options_sha256": space.options_sha256,
        "options": space.options,
    }


def default_collection_id(manifest: Manifest) -> str:
    """``collection`` from the manifest if it names one, else ``<encoder>-<version>``."""
    named = (manifest.model_extra or {}).get("collection")
    if isinstance(named, str) and named:
        return named
    slug = _ID_OK.sub("-", f"{manifest.encoder.name}-{manifest.encoder.version}").strip("-.")
    return slug[:255] or "embeddings"


def source_title(uri: str) -> str:
    """A link title for a source: the file name of its URI."""
    path = urlsplit(uri).path.rstrip("/")
    return path.rsplit("/", 1)[-1] or uri


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
    fields[EMB_TYPE] = "chip"
    fields[EMB_DIMENSIONS] = space.dimensions
    fields["data_type"] = "float32"
    if enc.gsd is not None:
        fields["gsd"] = enc.gsd
    fields[EMB_CHIP_LAYOUT] = {
        "layout_type": "regular_grid",
        "chip_size": [run.chip_size, run.chip_size],
        "stride": [run.stride, run.stride],
        "grid_id": run.grid_id,
    }
    summaries: dict[str, Any] = {
        EMB_TYPE: ["chip"],
        EMB_DIMENSIONS: [space.dimensions],
        "data_type": ["float32"],
    }
    if enc.gsd is not None:
        summaries["gsd"] = [enc.gsd]
    if enc.bands:
        summaries["bands"] = [{"name": b} for b in enc.bands]
    coll.summaries = pystac.Summaries(summaries)
    fields[SPACE] = space_fields(space)
    # processing:* of a Collection belong to a provider (processing extension v1.2.0)
    coll.providers = [
        pystac.Provider(
            name="embcat",
            roles=[pystac.ProviderRole.PROCESSOR],
            extra_fields=processing_fields(manifest),
        )
    ]
    # the encoder's MLM description is the emb:model item; its name is kept for mirrors
    fields["embcat:encoder"] = enc.mlm.get("mlm:name") or enc.name
    coll.add_link(
        pystac.Link(
            rel=EMB_MODEL,
            target=model_href(collection_id),
            media_type=pystac.MediaType.JSON,
            title=f"{enc.name} {enc.version} (STAC MLM item)",
        )
    )
    for href in _source_hrefs(manifest, existing)[:1000]:
        coll.add_link(
            pystac.Link(
                rel=EMB_SOURCE_DATA,
                target=href,
                media_type=SOURCE_MEDIA_TYPE,
                title=f"Source imagery: {source_title(href)}",
            )
        )
    out = coll.to_dict(include_self_link=False, transform_hrefs=False)
    out["stac_version"] = EMB_STAC_VERSION
    out["links"] = [
        link for link in out["links"] if link["rel"] not in ("self", "root", "parent", "items")
    ]
    return out


def _source_hrefs(manifest: Manifest, existing: dict[str, Any] | None) -> list[str]:
    """The source rasters of a run (and of earlier publishes) as absolute URIs."""
    raw: list[str] = list(manifest.run.inputs)
    for src in (manifest.run.model_extra or {}).get("sources") or []:
        if isinstance(src, dict) and isinstance(src.get("href"), str):
            raw.append(src["href"])
    hrefs = [u for u in (source_uri(h) for h in raw) if u is not None]
    for old in (existing or {}).get("links", []):
        if old.get("rel") == EMB_SOURCE_DATA and isinstance(old.get("href"), str):
            uri = source_uri(old["href"])
            if uri is not None:
                hrefs.append(uri)
    return list(dict.fromkeys(hrefs))


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


def model_item(
    space: Space, collection_id: str | None = None, collection: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The encoder of a space as a STAC MLM item (what the ``emb:model`` link serves).

    ``datetime`` is when the encoder's vectors were made (the collection's
    ``processing:datetime``, else the start of its temporal extent); the ``mlm:model``
    asset is where the encode recorded the model (``file://`` on the encoding site)."""
    when = _model_datetime(collection)
    item = pystac.Item(
        id=f"{space.encoder_name}-{space.encoder_version}",
        geometry=None,
        bbox=None,
        datetime=when,
        properties={k: v for k, v in space.mlm.items() if k.startswith("mlm:")},
    )
    MLMExtension.add_to(item)
    props = item.properties
    props.setdefault("mlm:name", space.encoder_name)
    props.setdefault("mlm:architecture", space.encoder_name)
    props.setdefault("mlm:tasks", ["similarity-search"])
    props.setdefault("mlm:input", [])
    props.setdefault(
        "mlm:output",
        [
            {
                "name": "embedding",
                "tasks": ["similarity-search"],
                "result": {
                    "shape": [-1, space.dimensions],
                    "dim_order": ["batch", "embedding"],
                    "data_type": "float32",
                },
            }
        ],
    )
    names = [
        band["name"] if isinstance(band, dict) else str(band)
        for model_input in props["mlm:input"]
        for band in (model_input.get("bands") or [])
    ]
    if names:  # MLM: the input bands are described by STAC 1.1 `bands`
        props["bands"] = [{"name": name} for name in dict.fromkeys(names)]
    if not props.get("mlm:pretrained"):
        props["mlm:pretrained"] = False
        props["mlm:pretrained_source"] = None
    props[SPACE] = space_fields(space, named=False)
    out = item.to_dict(include_self_link=False, transform_hrefs=False)
    out["stac_extensions"] = [MLM_SCHEMA]
    asset = space.mlm.get("embcat:model_asset")
    if not (isinstance(asset, dict) and asset.get("href")):
        # spaces published before the encode recorded its model: the encoder is named only
        asset = {
            "href": f"urn:embcat:encoder:{quote(space.encoder_name, safe='')}:"
            f"{quote(space.encoder_version, safe='')}",
            "title": f"{space.encoder_name} {space.encoder_version}: model defined in code"
            " (its location was not recorded by the encode)",
            "roles": ["mlm:model"],
            "mlm:artifact_type": "python-class",
        }
    out["assets"] = {"model": dict(asset)}
    if "bands" in props:  # STAC 1.1 allows item `bands` only next to an asset's bands
        out["assets"]["model"]["bands"] = props["bands"]
    if any(k.startswith("file:") for k in asset):
        out["stac_extensions"].append(FILE_SCHEMA)
    links = []
    if collection_id is not None:
        out["collection"] = collection_id
        links.append(
            {
                "rel": "collection",
                "href": f"/collections/{quote(collection_id, safe='')}",
                "type": "application/json",
                "title": "The embeddings made with this model",
            }
        )
    out["links"] = links
    return out


def _model_datetime(collection: dict[str, Any] | None) -> datetime:
    for provider in (collection or {}).get("providers") or []:
        when = provider.get("processing:datetime") if isinstance(provider, dict) else None
        if isinstance(when, str):
            try:
                return _parse(when)
            except ValueError:
                pass
    if isinstance((collection or {}).get("processing:datetime"), str):  # stored before 0013
        try:
            return _parse(collection["processing:datetime"])  # type: ignore[index]
        except ValueError:
            pass
    try:
        start = (collection or {})["extent"]["temporal"]["interval"][0][0]
        if isinstance(start, str):
            return _parse(start)
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    return datetime.now(UTC).replace(microsecond=0)
