"""The exchange format: one place for what an export file holds and a mirror reads back
(issue 16 item 7, issue 18).

An export (catalog/export.py) writes, and a mirror (catalog/mirror*.py) reads:

- the item columns of the ``full`` profile, in this order: ``ITEM_HEAD`` (stac-geoparquet:
  type, stac_version, stac_extensions, id, geometry, bbox, collection, links), ``assets``
  (a struct per asset key, only when the items have assets), ``DATETIME_COLUMNS``, one
  column per property (``properties`` of the ``embcat`` metadata: name, column, kind),
  then ``embedding``; the ``minimal`` profile holds ``MINIMAL_COLUMNS``;
- property / asset field kinds (``KINDS``): ``string``, ``int64``, ``float64``, ``bool``,
  ``list_string``, ``nested`` (objects and arrays as Arrow structs / lists, their type in
  the file's schema) and ``json`` (JSON text: values no Arrow type holds exactly, such as
  objects whose keys vary between items or empty objects);
- the key-value metadata keys ``geo``, ``stac-geoparquet``, ``embeddings`` and ``embcat``
  (``META_KEY``: format version, space, dtype, query, ``as_of``, the column map);
- the vectors: ``catalog.quantize`` (dtypes, ``fixed_size_binary`` / list layouts).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from embcat.catalog.errors import InvalidInput

FORMAT_VERSION = "1"
META_KEY = b"embcat"
EMBEDDINGS_KEY = b"embeddings"
GEO_KEY = b"geo"
STAC_GEOPARQUET_KEY = b"stac-geoparquet"
EMBEDDING_COLUMN = "embedding"
ID_COLUMN, GEOMETRY_COLUMN, BBOX_COLUMN = "id", "geometry", "bbox"
LINKS_COLUMN, ASSETS_COLUMN = "links", "assets"
DATETIME_COLUMNS = ("datetime", "start_datetime", "end_datetime")
ITEM_HEAD = (
    "type",
    "stac_version",
    "stac_extensions",
    ID_COLUMN,
    GEOMETRY_COLUMN,
    BBOX_COLUMN,
    "collection",
    LINKS_COLUMN,
)
MINIMAL_COLUMNS = (ID_COLUMN, GEOMETRY_COLUMN, "datetime", EMBEDDING_COLUMN)
RESERVED = {*ITEM_HEAD, ASSETS_COLUMN, EMBEDDING_COLUMN, *DATETIME_COLUMNS}
LINK_TYPE = pa.struct(
    [("rel", pa.string()), ("href", pa.string()), ("type", pa.string()), ("title", pa.string())]
)
BBOX_TYPE = pa.struct(
    [("xmin", pa.float64()), ("ymin", pa.float64()), ("xmax", pa.float64()), ("ymax", pa.float64())]
)
KIND_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "list_string": pa.list_(pa.string()),
    "json": pa.string(),
}
NESTED = "nested"  # the Arrow type is the column's own (ShapeDetails.types in the plan)
KINDS = (*KIND_TYPES, NESTED)


def type_to_text(t: pa.DataType) -> str:
    """An Arrow type as text (kept in ``export_shapes.details``)."""
    buf = pa.schema([pa.field("v", t)]).serialize()
    return base64.b64encode(buf.to_pybytes()).decode()


def type_from_text(text: str) -> pa.DataType:
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))
    return schema.field("v").type


def json_texts(col: pa.Array) -> pa.Array:
    """JSON text of each value of a ``list_string`` or ``nested`` column (null stays null)."""
    return pa.array(
        [None if v is None else orjson.dumps(v).decode() for v in col.to_pylist()], pa.string()
    )


def python_value(value: Any, kind: str) -> Any:
    """A property / asset field value as read from the file (``to_pylist``) -> its JSON
    value: JSON text of the ``json`` kind parsed, everything else as it is."""
    if value is not None and kind == "json":
        return orjson.loads(value)
    return value


def read_metadata(source: Any) -> dict[str, Any]:
    """The ``embcat`` metadata of an export file (path, file object or buffer)."""
    meta = pq.read_schema(source).metadata or {}
    if META_KEY not in meta:
        raise InvalidInput("not an embcat export: the parquet file has no 'embcat' metadata")
    return dict(json.loads(meta[META_KEY]))
