"""The Arrow schema and the key-value metadata of an export file (``geo``,
``embeddings``, ``stac-geoparquet``, ``embcat``): the layout of catalog.exchange_format
filled in for one plan."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from embcat.catalog.exchange_format import (
    BBOX_TYPE,
    EMBEDDINGS_KEY,
    FORMAT_VERSION,
    KIND_TYPES,
    LINK_TYPE,
    META_KEY,
    NESTED,
)
from embcat.catalog.item_shape import (
    EMB_MODEL,
    EMB_QUANTIZATION,
    EMB_SOURCE_DATA,
    extension_schemas,
)
from embcat.catalog.quantize import (
    NUMPY_DTYPES,
    arrow_type,
)

if TYPE_CHECKING:
    from embcat.catalog.export_plan import ExportPlan


def asset_type(fields: dict[str, str]) -> pa.DataType:
    return pa.struct([(k, KIND_TYPES[v]) for k, v in sorted(fields.items())])


def _embedding_field(plan: ExportPlan) -> pa.Field:
    emb_meta = {}
    if plan.quantization is not None:
        emb_meta[EMB_QUANTIZATION.encode()] = json.dumps(plan.quantization.as_stac()).encode()
    return pa.field(
        "embedding",
        arrow_type(plan.request.dtype, plan.space.dimensions, plan.request.vector_layout),
        nullable=False,
        metadata=emb_meta or None,
    )


def schema_of(plan: ExportPlan) -> pa.Schema:
    ts = pa.timestamp("us", tz="UTC")
    if plan.request.columns == "minimal":
        return pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("geometry", pa.binary(), nullable=False),
                pa.field("datetime", ts),
                _embedding_field(plan),
            ],
            metadata=_metadata(plan),
        )
    fields = [
        pa.field("type", pa.string(), nullable=False),
        pa.field("stac_version", pa.string(), nullable=False),
        pa.field("stac_extensions", pa.list_(pa.string())),
        pa.field("id", pa.string(), nullable=False),
        pa.field("geometry", pa.binary(), nullable=False),
        pa.field("bbox", BBOX_TYPE, nullable=False),
        pa.field("collection", pa.string(), nullable=False),
        pa.field("links", pa.list_(LINK_TYPE)),
    ]
    if plan.assets:  # parquet cannot hold an empty struct: no assets, no column
        fields.append(
            pa.field(
                "assets", pa.struct([(k, asset_type(v)) for k, v in sorted(plan.assets.items())])
            )
        )
    fields += [
        pa.field("datetime", ts),
        pa.field("start_datetime", ts),
        pa.field("end_datetime", ts),
    ]
    fields += [
        pa.field(column, plan.details.types[name] if kind == NESTED else KIND_TYPES[kind])
        for name, column, kind in plan.properties
    ]
    fields.append(_embedding_field(plan))
    return pa.schema(fields, metadata=_metadata(plan))


def extensions(plan: ExportPlan) -> list[str]:
    keys = [p[0] for p in plan.properties] + [f for fields in plan.assets.values() for f in fields]
    return extension_schemas(dict.fromkeys(keys))


def _embeddings_meta(plan: ExportPlan, collection: dict[str, Any]) -> dict[str, Any]:
    """The ``embeddings`` key: what a reader needs to use the vectors without embcat."""
    req, space, quant = plan.request, plan.space, plan.quantization
    links = plan.collection.get("links") or []
    model = next((lk.get("href") for lk in links if lk.get("rel") == EMB_MODEL), None)
    source = [lk.get("href") for lk in links if lk.get("rel") == EMB_SOURCE_DATA]
    if quant is None:
        dequantize = None
    elif req.dtype == "int8":
        dequantize = "x = q * scale[d] + offset[d] (per dimension d); error <= scale[d] / 2"
    else:
        dequantize = "bit d of the packed bytes, most significant bit first: 1 -> +1.0, 0 -> -1.0"
    dims, np_dtype = space.dimensions, NUMPY_DTYPES[req.dtype]
    per_row = -(-dims // 8) if req.dtype == "binary" else dims
    if req.dtype == "binary" or req.vector_layout == "bytes":
        layout = {
            "layout": "fixed_size_binary",
            "byte_width": per_row * np.dtype(np_dtype).itemsize,
            "value_dtype": np_dtype,  # numpy type string: little-endian where it matters
            "values_per_row": per_row,
            "decode": f"numpy.frombuffer(b''.join(column), '{np_dtype}').reshape(-1, {per_row})"
            f" (pyarrow: numpy.frombuffer(array.buffers()[1], '{np_dtype}'))",
        }
    else:
        layout = {
            "layout": "fixed_size_list",
            "value_dtype": np_dtype,
            "values_per_row": per_row,
            "decode": f"numpy.asarray(array.flatten()).reshape(-1, {per_row})",
        }
    return {
        "column": "embedding",
        "encoding": layout,
        "model": {
            "name": space.encoder_name,
            "version": space.encoder_version,
            "href": model,
            "mlm:name": (space.mlm or {}).get("mlm:name"),
        },
        "dimensions": space.dimensions,
        "dtype": req.dtype,
        "stored_dtype": "float16" if space.storage == "halfvec" else "float32",
        "metric": space.metric,
        "normalized": space.normalized,
        "quantization": None if quant is None else {**quant.as_stac(), "dequantize": dequantize},
        "source": {"collection": req.collection_id, EMB_SOURCE_DATA: source},
        "order": req.resolved_order(),
        "profile": req.columns,
        "license": collection.get("license"),
    }


def _metadata(plan: ExportPlan) -> dict[bytes, bytes]:
    req, space = plan.request, plan.space
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": [],
                "covering": {
                    "bbox": {
                        "xmin": ["bbox", "xmin"],
                        "ymin": ["bbox", "ymin"],
                        "xmax": ["bbox", "xmax"],
                        "ymax": ["bbox", "ymax"],
                    }
                },
            }
        },
    }
    if req.columns == "minimal":  # no bbox column to point at
        del geo["columns"]["geometry"]["covering"]  # type: ignore[index]
    collection = {k: v for k, v in plan.collection.items() if k != "links"} | {
        "id": req.collection_id
    }
    embcat = {
        "format_version": FORMAT_VERSION,
        "collection": req.collection_id,
        "space": space.identity(),
        "dtype": req.dtype,
        "vector_layout": req.vector_layout,
        EMB_QUANTIZATION: plan.quantization.as_stac() if plan.quantization else None,
        "query": req.describe(),
        "as_of": plan.as_of,
        "rows": plan.rows,
        "more": plan.more,
        "properties": [{"name": n, "column": c, "kind": k} for n, c, k in plan.properties],
        "assets": plan.assets,
        "base_url": req.base_url,
    }
    return {
        b"geo": json.dumps(geo).encode(),
        EMBEDDINGS_KEY: json.dumps(_embeddings_meta(plan, collection)).encode(),
        b"stac-geoparquet": json.dumps(
            {"version": "1.0.0", "collections": {req.collection_id: collection}}
        ).encode(),
        META_KEY: json.dumps(embcat, sort_keys=True).encode(),
    }


# --------------------------------------------------------------------------- streaming
