"""Exchange routes on a live server: vector assets, export (GET/POST), change feed, space."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator

import httpx
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pgvector.psycopg import register_vector
from vectorgen import load_collection

from embcat.catalog.search import BBOX_MESSAGE
from embcat.catalog.vectors import multihash_sha256

CID = "xchg-api"
DIMS = 10


@pytest.fixture(scope="module")
def vectors(database_url: str) -> Iterator[np.ndarray]:
    vecs = np.random.default_rng(8).standard_normal((30, DIMS)).astype(np.float32)
    with psycopg.connect(database_url) as c:
        register_vector(c)
        load_collection(c, CID, vecs, encoder_name="exchange-api", build_index=False)
    yield vecs
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = %s", (CID,))


def _item(base: str, iid: str) -> dict:
    return httpx.get(f"{base}/collections/{CID}/items/{iid}").json()


def test_embedding_bytes_match_the_asset_checksum(live_server: str, vectors: np.ndarray) -> None:
    asset = _item(live_server, "item-04")["assets"]["embeddings"]
    r = httpx.get(asset["href"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    assert (len(r.content), multihash_sha256(r.content)) == (
        asset["file:size"],
        asset["file:checksum"],
    )
    assert r.headers["etag"] == f'"{asset["file:checksum"]}"'
    assert np.array_equal(np.load(io.BytesIO(r.content)), vectors[4].astype(np.float16))


def test_embedding_etag_revalidates(live_server: str, vectors: np.ndarray) -> None:
    url = f"{live_server}/collections/{CID}/items/item-01/embedding"
    etag = httpx.get(url).headers["etag"]
    assert httpx.get(url, headers={"If-None-Match": etag}).status_code == 304


def test_embedding_raw_float16(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(
        f"{live_server}/collections/{CID}/items/item-02/embedding",
        params={"format": "raw", "dtype": "float16"},
    )
    assert (r.headers["embcat-dtype"], r.headers["embcat-shape"]) == ("<f2", str(DIMS))
    assert np.array_equal(np.frombuffer(r.content, "<f2"), vectors[2].astype(np.float16))


def test_embedding_of_unknown_item_is_404(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(f"{live_server}/collections/{CID}/items/nope/embedding")
    assert r.status_code == 404 and "nope" in r.json()["description"]


def test_export_get_with_bbox_and_dtype(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(
        f"{live_server}/collections/{CID}/export",
        params={"dtype": "int8", "bbox": "0,0,5,5"},
    )
    table = pq.read_table(io.BytesIO(r.content))
    xs = [b["xmin"] for b in table["bbox"].to_pylist()]
    assert r.status_code == 200 and int(r.headers["embcat-rows"]) == table.num_rows > 0
    assert max(xs) <= 5 and table.schema.field("embedding").type == pa.binary(DIMS)


def test_export_vector_layout_list(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(
        f"{live_server}/collections/{CID}/export",
        params={"dtype": "int8", "vector_layout": "list", "columns": "minimal"},
    )
    emb_type = pq.read_table(io.BytesIO(r.content)).schema.field("embedding").type
    assert r.headers["embcat-vector-layout"] == "list"
    assert (emb_type.value_type, emb_type.list_size) == (pa.int8(), DIMS)


def test_export_bad_vector_layout_is_400(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(f"{live_server}/collections/{CID}/export", params={"vector_layout": "x"})
    assert r.status_code == 400 and "vector_layout" in r.json()["description"]


def test_export_post_with_ids(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.post(
        f"{live_server}/collections/{CID}/export",
        json={"ids": ["item-07", "item-03"], "dtype": "float16", "order": "id"},
    )
    assert pq.read_table(io.BytesIO(r.content))["id"].to_pylist() == ["item-03", "item-07"]


def test_export_bad_dtype_is_400(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(f"{live_server}/collections/{CID}/export", params={"dtype": "float64"})
    assert r.status_code == 400 and "dtype" in r.json()["description"]


def test_export_bad_filter_is_400(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(f"{live_server}/collections/{CID}/export", params={"filter": "x ==="})
    assert r.status_code == 400


def test_export_minimal_profile_over_http(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(
        f"{live_server}/collections/{CID}/export", params={"columns": "minimal", "dtype": "int8"}
    )
    table = pq.read_table(io.BytesIO(r.content))
    assert r.headers["embcat-columns"] == "minimal" and r.headers["embcat-order"] == "hilbert"
    assert table.column_names == ["id", "geometry", "datetime", "embedding"]


def test_export_part_carries_its_sha256(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(f"{live_server}/collections/{CID}/export", params={"limit": 7})
    digest = hashlib.sha256(r.content).digest()
    assert r.headers["embcat-sha256"] == digest.hex()
    assert r.headers["repr-digest"] == f"sha-256=:{base64.b64encode(digest).decode()}:"
    assert int(r.headers["content-length"]) == len(r.content)


def test_export_checksum_on_request(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(f"{live_server}/collections/{CID}/export", params={"checksum": "sha256"})
    assert r.headers["embcat-sha256"] == hashlib.sha256(r.content).hexdigest()


def test_export_streams_without_a_checksum_by_default(
    live_server: str, vectors: np.ndarray
) -> None:
    r = httpx.get(f"{live_server}/collections/{CID}/export")
    assert r.status_code == 200 and "embcat-sha256" not in r.headers


def test_export_neuco_csv(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.get(f"{live_server}/collections/{CID}/export", params={"format": "neuco-csv"})
    lines = r.text.splitlines()
    first = [float(v) for v in lines[1].split(",")[1:]]
    assert r.headers["content-type"].startswith("text/csv") and len(lines) == 31
    assert lines[0] == "id," + ",".join(map(str, range(DIMS)))
    assert np.array_equal(np.float32(first), vectors[0].astype(np.float16).astype(np.float32))


@pytest.mark.parametrize(
    "params",
    [
        {"columns": "nope"},
        {"format": "xlsx"},
        {"checksum": "md5"},
        {"order": "hilbert", "limit": 3},
    ],
)
def test_export_bad_profile_format_checksum_order_are_400(
    live_server: str, vectors: np.ndarray, params: dict
) -> None:
    r = httpx.get(f"{live_server}/collections/{CID}/export", params=params)
    assert r.status_code == 400 and r.json()["description"]


def test_changes_pages(live_server: str, vectors: np.ndarray) -> None:
    url = f"{live_server}/collections/{CID}/changes"
    first = httpx.get(url, params={"since": 0, "limit": 20}).json()
    second = httpx.get(first["links"][1]["href"]).json()
    ids = [c["id"] for c in first["changes"] + second["changes"]]
    assert first["more"] and not second["more"]
    assert ids == [f"item-{k:02d}" for k in range(30)]


def test_space_endpoint(live_server: str, vectors: np.ndarray) -> None:
    space = httpx.get(f"{live_server}/collections/{CID}/space").json()
    assert (space["encoder_name"], space["dimensions"], space["storage"]) == (
        "exchange-api",
        DIMS,
        "halfvec",
    )


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_client_export_arrays_decode_the_vector_column(
    live_server: str, vectors: np.ndarray, dtype: str
) -> None:
    from embcat.client import Client

    ids, values = Client(live_server).export(CID, dtype=dtype).arrays()
    stored = vectors.astype(np.float16).astype(np.float32)[[int(i[-2:]) for i in ids]]
    assert values.shape == (30, DIMS)
    assert np.allclose(values, stored, atol=0 if dtype == "float16" else 0.05)


@pytest.mark.parametrize("bbox", ["1,2,x", "1,2,3"])
def test_export_get_refuses_a_bad_bbox_with_the_shared_message(
    live_server: str, vectors: np.ndarray, bbox: str
) -> None:
    r = httpx.get(f"{live_server}/collections/{CID}/export", params={"bbox": bbox})
    assert r.status_code == 400, r.text
    assert r.json()["description"] == BBOX_MESSAGE.format(bbox)


def test_export_post_refuses_a_bad_bbox_with_the_shared_message(
    live_server: str, vectors: np.ndarray
) -> None:
    r = httpx.post(f"{live_server}/collections/{CID}/export", json={"bbox": [1, 2, 3]})
    assert r.status_code == 400, r.text
    assert r.json()["description"] == BBOX_MESSAGE.format([1, 2, 3])


def test_export_post_refuses_a_number_as_bbox(live_server: str, vectors: np.ndarray) -> None:
    r = httpx.post(f"{live_server}/collections/{CID}/export", json={"bbox": 5})
    assert r.status_code == 400, r.text
    assert "bbox must be 4 or 6 numbers" in r.json()["description"]


def test_export_get_takes_cql2_json_as_text(live_server: str, vectors: np.ndarray) -> None:
    flt = '{"op": "=", "args": [{"property": "id"}, "nope"]}'
    r = httpx.get(f"{live_server}/collections/{CID}/export", params={"filter": flt})
    assert r.status_code == 200, r.text
    assert pq.read_table(io.BytesIO(r.content)).num_rows == 0


@pytest.mark.parametrize("bbox", ["1,2,x", "1,2,3"])
def test_search_items_and_export_refuse_a_bad_bbox_with_one_message(
    live_server: str, vectors: np.ndarray, bbox: str
) -> None:
    urls = ["/search", f"/collections/{CID}/items", f"/collections/{CID}/export"]
    answers = [httpx.get(live_server + url, params={"bbox": bbox}) for url in urls]
    assert [r.status_code for r in answers] == [400, 400, 400], [r.text for r in answers]
    assert {r.json()["description"] for r in answers} == {BBOX_MESSAGE.format(bbox)}


def test_export_refuses_a_query_that_is_not_an_object_as_search_does(
    live_server: str, vectors: np.ndarray
) -> None:
    search = httpx.get(f"{live_server}/search", params={"query": "[1]"})
    export = httpx.post(f"{live_server}/collections/{CID}/export", json={"query": [1]})
    assert search.status_code == export.status_code == 400, export.text
    assert export.json()["description"] == search.json()["description"]


@pytest.mark.parametrize("bbox", [[1, 2, 3], 5, "0,0,1,1"])
def test_post_search_and_post_export_refuse_a_bad_bbox_with_one_message(
    live_server: str, vectors: np.ndarray, bbox: object
) -> None:
    search = httpx.post(f"{live_server}/search", json={"bbox": bbox})
    export = httpx.post(f"{live_server}/collections/{CID}/export", json={"bbox": bbox})
    assert search.status_code == 400, search.text
    assert search.json()["description"] == BBOX_MESSAGE.format(bbox)
    if not isinstance(bbox, str):  # export's body takes the text form too, as before
        assert export.json()["description"] == search.json()["description"]
