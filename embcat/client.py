"""A Python client of an embcat server, for data scientists (``docs/client.md``).

pystac-client speaks the STAC API but cannot send embcat's ``similarity`` clause; this
client adds what embcat serves on top of STAC::

    from embcat.client import Client

    client = Client("http://127.0.0.1:8080")
    hits = client.similar("demo-mosaiks", "demo-mosaiks-chip-3-4", limit=10)  # ItemCollection
    hits = client.few_shot("demo-mosaiks", positive=["a", "b"], negative=["c"])
    result = client.score("demo-mosaiks", positive=["a", "b"], negative=["c"])
    result.frame()        # GeoDataFrame (geopandas) of (id, score, geometry)
    ids, vectors = client.export("demo-mosaiks", bbox=[...]).arrays()  # numpy

Every method raises ``ClientError`` (with the server's status and message) on a 4xx/5xx
answer. Nothing here needs FastAPI or the database; geopandas is imported only by the
methods that return GeoDataFrames.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pystac

from embcat.errors import EmbcatError

Ref = str | dict[str, str]


class ClientError(EmbcatError):
    """An error answer of the server (``status``: HTTP status, message from its body)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _geodataframe(features: list[dict[str, Any]], columns: Sequence[str]) -> Any:
    try:
        import geopandas
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("GeoDataFrames need geopandas: pip install geopandas") from None
    if not features:
        return geopandas.GeoDataFrame(
            {c: [] for c in columns}, geometry=geopandas.GeoSeries([]), crs="EPSG:4326"
        )
    frame = geopandas.GeoDataFrame.from_features(features, crs="EPSG:4326")
    frame.insert(0, "id", [f.get("id") for f in features])
    return frame


@dataclass(frozen=True)
class ScoreResult:
    """The answer of ``Client.score``: the scored chips and the model record."""

    collection: str
    features: list[dict[str, Any]]
    model: dict[str, Any]

    def __len__(self) -> int:
        return len(self.features)

    @property
    def ids(self) -> list[str]:
        return [f["id"] for f in self.features]

    @property
    def scores(self) -> np.ndarray:
        return np.array([f["properties"]["score"] for f in self.features], dtype=np.float64)

    def as_dict(self) -> dict[str, float]:
        """{item id: score}."""
        return dict(zip(self.ids, self.scores.tolist(), strict=True))

    def frame(self) -> Any:
        """A GeoDataFrame (EPSG:4326) with columns id, collection, score, geometry."""
        return _geodataframe(self.features, ["id", "collection", "score"])

    def geojson(self) -> dict[str, Any]:
        """The FeatureCollection as the server sent it (model under ``embcat:score``)."""
        return {"type": "FeatureCollection", "embcat:score": self.model, "features": self.features}


@dataclass(frozen=True)
class Export:
    """A bulk export (stac-geoparquet with the vectors), read into memory."""

    data: bytes

    def table(self) -> Any:
        import pyarrow.parquet as pq

        return pq.read_table(io.BytesIO(self.data))

    def arrays(self) -> tuple[list[str], np.ndarray]:
        """(item ids, vectors as a float32 array of shape (n, dimensions)), decoded from
        either vector layout and dequantised (int8, binary) as the file's metadata says."""
        import json

        from embcat.catalog.quantize import Quantization, from_arrow

        table = self.table()
        meta = json.loads((table.schema.metadata or {})[b"embcat"])
        q = meta.get("emb:quantization")
        quant = Quantization.from_stac(q) if q else None
        dims = int(meta["space"]["dimensions"])
        ids = table.column("id").to_pylist()
        return ids, from_arrow(table.column("embedding"), meta["dtype"], dims, quant)

    def frame(self) -> Any:
        """A GeoDataFrame of the export (geopandas reads the GeoParquet)."""
        try:
            import geopandas
        except ImportError:  # pragma: no cover
            raise ImportError("GeoDataFrames need geopandas: pip install geopandas") from None
        return geopandas.read_parquet(io.BytesIO(self.data))


class Client:
    """An embcat server at ``url`` (``key``: an API key, sent as ``Authorization: Bearer``)."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                message = response.json().get("description") or response.text
            except ValueError:
                message = response.text
            raise ClientError(response.status_code, message)
        return response

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return self._check(self._http.post(path, json=body))

    @staticmethod
    def _ref(collection: str, ref: Ref) -> dict[str, str]:
        if isinstance(ref, str):
            return {"collection": collection, "id": ref}
        return {"collection": ref.get("collection", collection), "id": ref["id"]}

    @staticmethod
    def _filters(
        bbox: Sequence[float] | None,
        intersects: dict[str, Any] | None,
        datetime: str | None,
        filter: dict[str, Any] | str | None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if bbox is not None:
            out["bbox"] = list(bbox)
        if intersects is not None:
            out["intersects"] = intersects
        if datetime is not None:
            out["datetime"] = datetime
        if filter is not None:
            out["filter"] = filter
            out["filter-lang"] = "cql2-json" if isinstance(filter, dict) else "cql2-text"
        return out

    def _ranked(
        self,
        collection: str,
        clause: dict[str, Any],
        limit: int,
        bbox: Sequence[float] | None,
        intersects: dict[str, Any] | None,
        datetime: str | None,
        filter: dict[str, Any] | str | None,
        exact: bool,
        ef_search: int | None,
    ) -> pystac.ItemCollection:
        if exact:
            clause["exact"] = True
        if ef_search is not None:
            clause["ef_search"] = ef_search
        body = {
            "collections": [collection],
            "limit": limit,
            "similarity": clause,
            **self._filters(bbox, intersects, datetime, filter),
        }
        return pystac.ItemCollection.from_dict(self._post("/search", body).json())

    # ------------------------------------------------------------------ similarity

    def similar(
        self,
        collection: str,
        item: str | None = None,
        *,
        vector: Sequence[float] | np.ndarray | None = None,
        limit: int = 10,
        bbox: Sequence[float] | None = None,
        intersects: dict[str, Any] | None = None,
        datetime: str | None = None,
        filter: dict[str, Any] | str | None = None,
        exact: bool = False,
        ef_search: int | None = None,
    ) -> pystac.ItemCollection:
        """Items of ``collection`` most similar to an item (by id) or a raw ``vector``.

        Each item carries ``similarity:distance`` and ``similarity:score`` properties.
        """
        if (item is None) == (vector is None):
            raise ValueError("give an item id or a vector (one of them)")
        clause: dict[str, Any]
        if item is not None:
            clause = {"item": {"collection": collection, "id": item}}
        else:
            clause = {
                "vector": [float(v) for v in np.asarray(vector).ravel()],
                "collection": collection,
            }
        return self._ranked(
            collection, clause, limit, bbox, intersects, datetime, filter, exact, ef_search
        )

    def few_shot(
        self,
        collection: str,
        positive: Sequence[Ref],
        negative: Sequence[Ref] = (),
        *,
        method: str = "prototype",
        limit: int = 10,
        bbox: Sequence[float] | None = None,
        intersects: dict[str, Any] | None = None,
        datetime: str | None = None,
        filter: dict[str, Any] | str | None = None,
        exact: bool = False,
        ef_search: int | None = None,
    ) -> pystac.ItemCollection:
        """The top ``limit`` items for few-shot examples (the similarity clause)."""
        clause = {
            "positive": [self._ref(collection, r) for r in positive],
            "negative": [self._ref(collection, r) for r in negative],
            "method": method,
        }
        return self._ranked(
            collection, clause, limit, bbox, intersects, datetime, filter, exact, ef_search
        )

    # ------------------------------------------------------------------ scoring

    def _score_body(
        self,
        collection: str,
        positive: Sequence[Ref],
        negative: Sequence[Ref],
        method: str,
        threshold: float | None,
        top: int | None,
        filters: dict[str, Any],
        fmt: str,
        **extra: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "positive": [self._ref(collection, r) for r in positive],
            "negative": [self._ref(collection, r) for r in negative],
            "method": method,
            "format": fmt,
            **filters,
            **{k: v for k, v in extra.items() if v is not None},
        }
        if threshold is not None:
            body["threshold"] = threshold
        if top is not None:
            body["top"] = top
        return body

    def score(
        self,
        collection: str,
        positive: Sequence[Ref],
        negative: Sequence[Ref] = (),
        *,
        method: str = "linear",
        threshold: float | None = None,
        top: int | None = None,
        bbox: Sequence[float] | None = None,
        intersects: dict[str, Any] | None = None,
        datetime: str | None = None,
        filter: dict[str, Any] | str | None = None,
    ) -> ScoreResult:
        """Score every chip of the area; the chips at or above ``threshold`` (default 0.5),
        or the ``top`` N. See ``docs/search.md`` for what the score means."""
        filters = self._filters(bbox, intersects, datetime, filter)
        body = self._score_body(
            collection, positive, negative, method, threshold, top, filters, "geojson"
        )
        doc = self._post(f"/collections/{collection}/score", body).json()
        return ScoreResult(collection, doc["features"], doc["embcat:score"])

    def score_to_file(
        self,
        collection: str,
        path: str,
        positive: Sequence[Ref],
        negative: Sequence[Ref] = (),
        *,
        format: str = "parquet",
        method: str = "linear",
        threshold: float | None = None,
        top: int | None = None,
        bbox: Sequence[float] | None = None,
        intersects: dict[str, Any] | None = None,
        datetime: str | None = None,
        filter: dict[str, Any] | str | None = None,
        width: int | None = None,
        height: int | None = None,
    ) -> int:
        """Stream a score result (geojson, parquet or png) to ``path``; bytes written."""
        filters = self._filters(bbox, intersects, datetime, filter)
        body = self._score_body(
            collection, positive, negative, method, threshold, top, filters, format,
            width=width, height=height,
        )  # fmt: skip
        written = 0
        with self._http.stream("POST", f"/collections/{collection}/score", json=body) as r:
            if r.status_code >= 400:
                r.read()
                self._check(r)
            with open(path, "wb") as fh:
                for chunk in r.iter_bytes():
                    fh.write(chunk)
                    written += len(chunk)
        return written

    # ------------------------------------------------------------------ vectors

    def embedding(self, collection: str, item: str) -> np.ndarray:
        """One item's vector (float32)."""
        r = self._check(self._http.get(f"/collections/{collection}/items/{item}/embedding"))
        return np.load(io.BytesIO(r.content))

    def export(
        self,
        collection: str,
        *,
        bbox: Sequence[float] | None = None,
        intersects: dict[str, Any] | None = None,
        datetime: str | None = None,
        filter: dict[str, Any] | str | None = None,
        dtype: str = "float32",
    ) -> Export:
        """A bulk export of the area (stac-geoparquet with the vectors)."""
        body = {"dtype": dtype, **self._filters(bbox, intersects, datetime, filter)}
        return Export(self._post(f"/collections/{collection}/export", body).content)


__all__ = ["Client", "ClientError", "Export", "ScoreResult"]
