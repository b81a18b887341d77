"""The item of an embedding chip: the extensions it declares, its fields and its documents.

Like pystac's extension modules, this module opens with the schema URIs and the field
names, and it is their one owner: the collection (catalog.stacgen), the publish job, the
readers (catalog.stac) and the export take them from here.

An item of a publish is a constant part shared by every item of that publish
(``ItemTemplate``: processing fields, runtime parameters, quantisation, the vector
asset's type and size) plus the row's own fields::

    properties  {<template>, "datetime": "<RFC 3339>Z", "proj:code", "proj:shape": [h, w],
                 "embcat:source_item", "embcat:source_asset",
                 "embcat:window": [col, row, w, h], "embcat:nodata_fraction"}
    assets      {"embeddings": {<template>, "href", "file:checksum"}, ["thumbnail": {..}]}
    links       [{"rel": "derived_from", "href": <source URI>, "type", "title": <source item>}]

``item_documents`` builds them for one row (readable; tests hold the fast path to it) and
``ItemColumns`` builds the same JSON text for a record batch at once with Arrow's string
kernels (the publish job writes millions of them). ``rfc3339`` and ``rfc3339_texts`` are
the catalogue's one timestamp text, for a value and for a column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from embcat import __version__
from embcat.catalog import imagery
from embcat.catalog.store.spaces import Space
from embcat.catalog.vectors import EMBEDDINGS_ASSET, NPY_MEDIA_TYPE, npy_size
from embcat.encoders.manifest import Manifest

STAC_VERSION = "1.1.0"
# Documents that declare the embeddings extension v0.0.1 are STAC 1.0.0: that extension's
# schema validates them against the STAC 1.0.0 core schema (stac_version const "1.0.0").
EMB_SCHEMA = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
EMB_STAC_VERSION = "1.0.0"
# The extensions whose fields are recognised by prefix (items carry no stored
# stac_extensions list, so it is derived from the fields they hold).
EXTENSION_SCHEMAS = {
    "file": "https://stac-extensions.github.io/file/v2.1.0/schema.json",
    "proj": "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "processing": "https://stac-extensions.github.io/processing/v1.2.0/schema.json",
    "emb": EMB_SCHEMA,
    "mlm": "https://stac-extensions.github.io/mlm/v1.5.0/schema.json",
    "eo": "https://stac-extensions.github.io/eo/v2.0.0/schema.json",
    "view": "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "sat": "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
}
FILE_SCHEMA = EXTENSION_SCHEMAS["file"]
PROJECTION_SCHEMA = EXTENSION_SCHEMAS["proj"]
PROCESSING_SCHEMA = EXTENSION_SCHEMAS["processing"]
MLM_SCHEMA = EXTENSION_SCHEMAS["mlm"]
COLLECTION_EXTENSIONS = [EMB_SCHEMA, PROCESSING_SCHEMA, FILE_SCHEMA]

# The embeddings extension's fields (collection) and link relations
EMB_TYPE = "emb:type"
EMB_DIMENSIONS = "emb:dimensions"
EMB_CHIP_LAYOUT = "emb:chip_layout"
EMB_MODEL = "emb:model"
EMB_SOURCE_DATA = "emb:source-data"
# ... and of an item
EMB_RUNTIME_PARAMETERS = "emb:runtime_parameters"
EMB_QUANTIZATION = "emb:quantization"
# embcat's own item fields: where the chip was read
SOURCE_ITEM = "embcat:source_item"
SOURCE_ASSET = "embcat:source_asset"
WINDOW = "embcat:window"
NODATA_FRACTION = "embcat:nodata_fraction"
DERIVED_FROM = "derived_from"
# The links the server adds to every item and collection it serves (never stored)
GENERATED_RELS = {"self", "root", "parent", "collection", "items"}
ASSET_ROLES = ["data", "embeddings"]
SOURCE_MEDIA_TYPE = "image/tiff; application=geotiff"
EMBEDDING_SUFFIX = "/embedding"

_BIN = pa.binary()
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_URL_SAFE = r"^[A-Za-z0-9._~-]+$"  # what quote(safe="") leaves as it is
URI_SCHEME = r"^[A-Za-z][A-Za-z0-9+.-]*:"  # an href with a scheme: a URI (source_uri)
DRIVE_PATH = r"^[A-Za-z]:[\\/]"  # ... unless it is a Windows drive path


# -- timestamps --------------------------------------------------------------------------------


def rfc3339(dt: datetime) -> str:
    """``2024-06-01T10:30:00Z`` (``.ffffff`` only when there are microseconds)."""
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def rfc3339_texts(col: pa.Array) -> pa.Array:
    """``rfc3339`` of each value of a timestamp column (naive values are UTC; null stays
    null), formatted once per distinct value (the chips of a scene share theirs)."""
    enc = pc.dictionary_encode(pc.cast(col, pa.timestamp("us", tz="UTC"), safe=False))
    text = pc.strftime(enc.dictionary, format="%Y-%m-%dT%H:%M:%S")
    text = pc.replace_substring_regex(text, r"\.000000$", "")
    return pc.take(pc.binary_join_element_wise(text, "Z", ""), enc.indices)


# -- extensions and whole items ----------------------------------------------------------------


def stac_version_for(extensions: Iterable[str]) -> str:
    return EMB_STAC_VERSION if EMB_SCHEMA in extensions else STAC_VERSION


def extension_schemas(*objects: Mapping[str, Any]) -> list[str]:
    """The schemas of the extensions whose prefixed fields ``objects`` hold (sorted)."""
    found: set[str] = set()
    for obj in objects:
        for key in obj:
            prefix, sep, _ = key.partition(":")
            if sep and prefix in EXTENSION_SCHEMAS:
                found.add(EXTENSION_SCHEMAS[prefix])
    return sorted(found)


def item_dict(
    collection_id: str,
    item_id: str,
    geometry: dict[str, Any],
    bbox: list[float],
    properties: dict[str, Any],
    assets: dict[str, Any],
    links: list[dict[str, Any]],
) -> dict[str, Any]:
    """A stored item row as a STAC Item dict (links as stored: no self/root/parent;
    catalog.stac.item_to_stac adds those when serving)."""
    extensions = extension_schemas(properties, *assets.values())
    return {
        "type": "Feature",
        "stac_version": stac_version_for(extensions),
        "stac_extensions": extensions,
        "id": item_id,
        "collection": collection_id,
        "geometry": geometry,
        "bbox": bbox,
        "properties": properties,
        "assets": assets,
        "links": links,
    }


def source_uri(href: str) -> str | None:
    """A source's href as the absolute URI a link may carry: URIs with a scheme unchanged,
    absolute paths of the encoding site as ``file://`` URIs; None for what is no URI (a
    relative path, the label of an in-memory STAC object)."""
    if not href:
        return None
    if re.match(URI_SCHEME, href) and not re.match(DRIVE_PATH, href):
        return href
    if href.startswith("/") and not href.startswith("//"):
        return "file://" + quote(str(PurePosixPath(href)), safe="/:@!$&'()*+,;=-._~")
    return None


# -- the template of one publish ---------------------------------------------------------------


def processing_fields(manifest: Manifest) -> dict[str, Any]:
    software = {"embcat": __version__, **manifest.software}
    enc = manifest.encoder
    return {
        "processing:software": software,
        "processing:datetime": rfc3339(manifest.created),
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
            "scale": [1.0],
            "offset": [0.0],
        }
    return None


@dataclass(frozen=True)
class ItemTemplate:
    """What every item of one publish shares; the row's fields are added to it."""

    properties: dict[str, Any]
    asset: dict[str, Any]
    href_prefix: str  # root-relative href up to the quoted item id
    href_suffix: str


def item_template(manifest: Manifest, collection_id: str, space: Space) -> ItemTemplate:
    props: dict[str, Any] = {
        **processing_fields(manifest),
        EMB_RUNTIME_PARAMETERS: runtime_parameters(manifest),
    }
    quant = quantization(manifest, space)
    if quant is not None:
        props[EMB_QUANTIZATION] = quant
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
        href_suffix=EMBEDDING_SUFFIX,
    )


# -- the row's documents: one row --------------------------------------------------------------


def nodata_text(value: float) -> str:
    """``round(x::numeric, 6)`` of a float4 as PostgreSQL writes it (``0.250000``):
    PostgreSQL's shortest float4 text, rounded half away from zero."""
    shortest = np.format_float_positional(np.float32(value), unique=True)
    return str(Decimal(shortest).quantize(Decimal("0.000001"), ROUND_HALF_UP))


def item_documents(
    template: ItemTemplate, row: Mapping[str, Any], checksum: str, *, thumbnail: bool = False
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The properties, assets and links of one shard row (its columns by name; ``datetime``
    aware) whose vector has the multihash ``checksum``."""
    c, r = row["window_col"], row["window_row"]
    w, h = row["window_width"], row["window_height"]
    props = {
        **template.properties,
        "datetime": rfc3339(row["datetime"]),
        "proj:code": row["source_crs"],
        "proj:shape": [h, w],
        SOURCE_ITEM: row["source_item"],
        SOURCE_ASSET: row["source_asset"],
        WINDOW: [c, r, w, h],
        NODATA_FRACTION: float(nodata_text(row["nodata_fraction"])),
    }
    href_id = quote(row["id"], safe="")
    assets: dict[str, Any] = {
        EMBEDDINGS_ASSET: {
            **template.asset,
            "href": template.href_prefix + href_id + template.href_suffix,
            "file:checksum": checksum,
        }
    }
    if thumbnail:
        assets[imagery.THUMBNAIL_ASSET] = {
            "href": f"{template.href_prefix}{href_id}/thumbnail.png",
            **imagery.THUMBNAIL_FIELDS,
        }
    href = row["source_href"]
    links = [
        {
            "rel": DERIVED_FROM,
            "href": source_uri(href) or href,
            "type": SOURCE_MEDIA_TYPE,
            "title": row["source_item"],
        }
    ]
    return props, assets, links


# -- the row's documents: a record batch at once -----------------------------------------------


def _const(value: bytes) -> pa.Scalar:
    return pa.scalar(value, _BIN)


def _json_strings(col: pa.Array) -> pa.Array:
    """Each value as a JSON string (escaped once per distinct value, with orjson)."""
    enc = pc.dictionary_encode(col)
    words = pa.array([orjson.dumps(v) for v in enc.dictionary.to_pylist()], _BIN)
    return pc.take(words, enc.indices)


def _json_ints(col: pa.Array) -> pa.Array:
    return pc.cast(col, pa.string()).cast(_BIN)


def _nodata_numbers(col: pa.Array) -> pa.Array:
    """``nodata_text`` of each value, once per distinct value (a shard has few)."""
    enc = pc.dictionary_encode(col)
    words = [nodata_text(v).encode() for v in enc.dictionary.to_pylist()]
    return pc.take(pa.array(words, _BIN), enc.indices)


def _source_uris(col: pa.Array) -> pa.Array:
    """``source_uri`` of each href (itself where none), once per distinct href (a batch
    holds the chips of few scenes)."""
    coded = pc.dictionary_encode(col)
    uris = [source_uri(h) or h for h in coded.dictionary.to_pylist()]
    return pc.take(pa.array(uris, pa.string()), coded.indices)


def _fixed(data: bytes, width: int, n: int) -> pa.Array:
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(data)])
    return arr.cast(_BIN)


class ItemColumns:
    """``item_documents`` of a whole record batch, as JSON texts (binary arrays), built
    column-wise with Arrow's string kernels from the template's constant parts plus the
    row's columns: no Python loop over rows. Building them in SQL (jsonb_build_object per
    row) made the items merge the slowest step of a publish."""

    def __init__(self, template: ItemTemplate) -> None:
        inner = orjson.dumps(template.properties)[1:-1]
        self._props_open = _const(b"{" + inner + b"," if inner else b"{")
        asset = orjson.dumps(template.asset)[1:-1]
        self._asset_open = _const(
            b'{"' + EMBEDDINGS_ASSET.encode() + b'":{' + asset + (b"," if asset else b"")
        )
        self._href_prefix = _const(b'"href":' + orjson.dumps(template.href_prefix)[:-1])
        self._href_suffix = _const(orjson.dumps(template.href_suffix)[1:])
        self._link_open = _const(b'[{"rel":' + orjson.dumps(DERIVED_FROM) + b',"href":')
        self._src_type = _const(b',"type":' + orjson.dumps(SOURCE_MEDIA_TYPE) + b',"title":')
        self._thumbs = imagery.ThumbnailEncoder(template.href_prefix)

    def documents(
        self, batch: pa.RecordBatch, us: np.ndarray, digests: np.ndarray
    ) -> list[pa.Array]:
        """The properties, assets and links of each row; ``us``: its datetime in
        microseconds since 1970, ``digests``: the ``(n, 32)`` sha256 of its vector
        (vectors.npy_digests)."""
        n = batch.num_rows
        col = batch.column
        join = pc.binary_join_element_wise
        item = _json_strings(col("source_item"))
        c, r = _json_ints(col("window_col")), _json_ints(col("window_row"))
        w, h = _json_ints(col("window_width")), _json_ints(col("window_height"))
        times = rfc3339_texts(pa.array(us, pa.timestamp("us"))).cast(_BIN)
        props = join(
            self._props_open, _const(b'"datetime":"'), times,
            _const(b'","proj:code":'), _json_strings(col("source_crs")),
            _const(b',"proj:shape":['), h, _const(b","), w,
            _const(b'],"' + SOURCE_ITEM.encode() + b'":'), item,
            _const(b',"' + SOURCE_ASSET.encode() + b'":'), _json_strings(col("source_asset")),
            _const(b',"' + WINDOW.encode() + b'":['), c, _const(b","), r, _const(b","), w,
            _const(b","), h,
            _const(b'],"' + NODATA_FRACTION.encode() + b'":'),
            _nodata_numbers(col("nodata_fraction")), _const(b"}"), b"",
        )  # fmt: skip
        ids = col("id")
        safe = pc.match_substring_regex(ids, _URL_SAFE)
        if pc.all(safe).as_py():
            href_ids = ids.cast(_BIN)
        else:  # ids outside the URL-safe set are percent-encoded in the href (rare)
            href_ids = pa.array(
                [
                    v if ok else quote(v, safe="")
                    for v, ok in zip(ids.to_pylist(), safe.to_pylist(), strict=True)
                ],
                pa.string(),
            ).cast(_BIN)
        hexed = np.empty((n, 64), dtype=np.uint8)
        hexed[:, 0::2] = _HEX[digests >> 4]
        hexed[:, 1::2] = _HEX[digests & 15]
        assets = join(
            self._asset_open, self._href_prefix, href_ids, self._href_suffix,
            _const(b',"file:checksum":"1220'), _fixed(hexed.tobytes(), 64, n), _const(b'"}'),
            self._thumbs.asset_json(batch, href_ids), _const(b"}"), b"",
        )  # fmt: skip
        links = join(
            self._link_open, _json_strings(_source_uris(col("source_href"))),
            self._src_type, item, _const(b"}]"), b"",
        )  # fmt: skip
        return [props, assets, links]
