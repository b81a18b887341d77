"""Export (issue 18): vectors-only profile, Hilbert order, row groups by size, embedding
metadata, SHA-256 beside the file, the kept item shape, NeuCo-Bench CSV."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from vectorgen import load_collection

from embcat.catalog.db import connect
from embcat.catalog.errors import InvalidInput
from embcat.catalog.export import (
    ExportRequest,
    export_csv_to_file,
    export_to_file,
    plan_export,
    stream_export,
)
from embcat.catalog.settings import DatabaseSettings
from embcat.cli import main

DIMS = 10
N = 30


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((N, DIMS)).astype(np.float32)


@pytest.fixture(scope="module")
def cid(db_settings: DatabaseSettings, vectors: np.ndarray) -> Iterator[str]:
    with connect(db_settings) as c:
        load_collection(c, "prof", vectors, encoder_name="profile-test", build_index=False)
        c.commit()
    yield "prof"
    with connect(db_settings) as c:
        c.execute("delete from collections where id = 'prof'")
        c.commit()


def _export(db_settings: DatabaseSettings, req: ExportRequest) -> bytes:
    with connect(db_settings) as c:
        plan = plan_export(c, req)
        return b"".join(stream_export(c, plan))


def test_minimal_profile_has_only_id_geometry_datetime_embedding(
    db_settings: DatabaseSettings, cid: str, vectors: np.ndarray
) -> None:
    data = _export(db_settings, ExportRequest(cid, dtype="float16", columns="minimal"))
    table = pq.read_table(io.BytesIO(data)).sort_by("id")
    back = np.frombuffer(b"".join(table["embedding"].to_pylist()), "<f2").reshape(N, DIMS)
    assert table.column_names == ["id", "geometry", "datetime", "embedding"]
    assert np.array_equal(back, vectors.astype(np.float16))


@pytest.mark.parametrize("layout", ["bytes", "list"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_embeddings_metadata_says_how_to_decode_the_vector_column(
    db_settings: DatabaseSettings, cid: str, vectors: np.ndarray, dtype: str, layout: str
) -> None:
    req = ExportRequest(cid, dtype=dtype, columns="minimal", vector_layout=layout)
    table = pq.read_table(io.BytesIO(_export(db_settings, req))).sort_by("id")
    emb = json.loads(table.schema.metadata[b"embeddings"])
    enc = emb["encoding"]
    values = table["embedding"].to_pylist()  # what any reader gets: bytes, or lists
    if enc["layout"] == "fixed_size_binary":
        assert {len(v) for v in values} == {enc["byte_width"]}
        back = np.frombuffer(b"".join(values), enc["value_dtype"])
    else:
        back = np.asarray(values, dtype=enc["value_dtype"])
    assert enc["layout"] == {"bytes": "fixed_size_binary", "list": "fixed_size_list"}[layout]
    assert back.reshape(N, enc["values_per_row"]).shape == (N, DIMS)
    stored = vectors.astype(np.float16).astype(np.float32)
    if dtype == "int8":
        q = emb["quantization"]
        x = back.reshape(N, DIMS) * np.asarray(q["scale"]) + q["offset"]
        assert np.all(np.abs(x - stored) <= np.asarray(q["scale"]) / 2 + 1e-5)
    else:
        assert np.array_equal(back.reshape(N, DIMS), stored.astype(dtype))


def test_binary_vectors_are_packed_bytes_in_either_layout(
    db_settings: DatabaseSettings, cid: str, vectors: np.ndarray
) -> None:
    req = ExportRequest(cid, dtype="binary", columns="minimal", vector_layout="list")
    table = pq.read_table(io.BytesIO(_export(db_settings, req))).sort_by("id")
    enc = json.loads(table.schema.metadata[b"embeddings"])["encoding"]
    bits = np.unpackbits(np.frombuffer(b"".join(table["embedding"].to_pylist()), "u1"))
    assert (enc["layout"], enc["byte_width"]) == ("fixed_size_binary", 2)
    assert np.array_equal(bits.reshape(N, 16)[:, :DIMS], vectors.astype(np.float16) > 0)


def test_unknown_vector_layout_is_invalid(db_settings: DatabaseSettings, cid: str) -> None:
    with pytest.raises(InvalidInput, match="vector_layout"):
        _export(db_settings, ExportRequest(cid, vector_layout="tensor"))


def test_minimal_profile_keeps_the_collection_in_the_file_metadata(
    db_settings: DatabaseSettings, cid: str
) -> None:
    data = _export(db_settings, ExportRequest(cid, columns="minimal"))
    meta = pq.read_schema(io.BytesIO(data)).metadata
    collections = json.loads(meta[b"stac-geoparquet"])["collections"]
    geo = json.loads(meta[b"geo"])
    assert collections[cid]["id"] == cid
    assert "covering" not in geo["columns"]["geometry"]  # no bbox column in this profile


def test_embeddings_metadata_says_model_dims_dtype_and_how_to_dequantise(
    db_settings: DatabaseSettings, cid: str, vectors: np.ndarray
) -> None:
    data = _export(db_settings, ExportRequest(cid, dtype="int8", columns="minimal"))
    table = pq.read_table(io.BytesIO(data)).sort_by("id")
    emb = json.loads(table.schema.metadata[b"embeddings"])
    q = emb["quantization"]
    codes = np.frombuffer(b"".join(table["embedding"].to_pylist()), emb["encoding"]["value_dtype"])
    back = codes.reshape(N, DIMS) * np.asarray(q["scale"]) + q["offset"]
    stored = vectors.astype(np.float16).astype(np.float32)
    assert (emb["model"]["name"], emb["dimensions"], emb["dtype"]) == ("profile-test", DIMS, "int8")
    assert "scale" in q["dequantize"] and emb["stored_dtype"] == "float16"
    assert np.all(np.abs(back - stored) <= np.asarray(q["scale"]) / 2 + 1e-5)


def test_rows_follow_postgis_hilbert_order(db_settings: DatabaseSettings, cid: str) -> None:
    table = pq.read_table(io.BytesIO(_export(db_settings, ExportRequest(cid, columns="minimal"))))
    with connect(db_settings) as c:
        expected = [
            r[0]
            for r in c.execute(
                "select id from items where collection_id = %s order by geometry, id", (cid,)
            )
        ]
    assert table["id"].to_pylist() == expected and expected != sorted(expected)


def test_order_id_sorts_by_id(db_settings: DatabaseSettings, cid: str) -> None:
    table = pq.read_table(io.BytesIO(_export(db_settings, ExportRequest(cid, order="id"))))
    assert table["id"].to_pylist() == sorted(table["id"].to_pylist())


def test_hilbert_order_cannot_be_paged(db_settings: DatabaseSettings, cid: str) -> None:
    with connect(db_settings) as c, pytest.raises(InvalidInput, match="order=id"):
        plan_export(c, ExportRequest(cid, order="hilbert", limit=10))


def test_unknown_profile_is_invalid(db_settings: DatabaseSettings, cid: str) -> None:
    with connect(db_settings) as c, pytest.raises(InvalidInput, match="columns"):
        plan_export(c, ExportRequest(cid, columns="vectors"))


def test_row_groups_are_cut_by_size(db_settings: DatabaseSettings, cid: str) -> None:
    req = ExportRequest(cid, columns="minimal", batch_size=4, row_group_bytes=200)
    small = pq.ParquetFile(io.BytesIO(_export(db_settings, req)))
    default = pq.ParquetFile(io.BytesIO(_export(db_settings, ExportRequest(cid, batch_size=4))))
    assert small.metadata.num_row_groups == N // 4 + 1  # each 4-row batch is over 200 B
    assert default.metadata.num_row_groups == 1


def test_a_file_has_the_bytes_of_the_stream(
    db_settings: DatabaseSettings, cid: str, tmp_path: Path
) -> None:
    """The file path hands the encoded bytes on as they are written; same bytes, any number
    of row groups."""
    req = ExportRequest(cid, batch_size=4, row_group_bytes=200, as_of=None)
    with connect(db_settings) as c:
        plan = plan_export(c, req)
        streamed = b"".join(stream_export(c, plan))
        req.as_of = plan.as_of
        summary = export_to_file(c, req, tmp_path / "x.parquet")
    assert (tmp_path / "x.parquet").read_bytes() == streamed and summary.bytes == len(streamed)


def test_neuco_csv_of_many_row_groups_has_every_row(
    db_settings: DatabaseSettings, cid: str, tmp_path: Path
) -> None:
    with connect(db_settings) as c:
        export_csv_to_file(c, ExportRequest(cid, batch_size=3, row_group_bytes=100), tmp_path / "x")
    assert pacsv.read_csv(tmp_path / "x")["id"].to_pylist() == [f"item-{k:02d}" for k in range(N)]


def test_sha256_is_written_beside_the_file(
    db_settings: DatabaseSettings, cid: str, tmp_path: Path
) -> None:
    path = tmp_path / "x.parquet"
    with connect(db_settings) as c:
        summary = export_to_file(c, ExportRequest(cid, columns="minimal"), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    side = (tmp_path / "x.parquet.sha256").read_text()
    assert side == f"{digest}  x.parquet\n" and summary.sha256 == digest


def test_the_same_request_gives_the_same_bytes(db_settings: DatabaseSettings, cid: str) -> None:
    with connect(db_settings) as c:
        as_of = plan_export(c, ExportRequest(cid)).as_of
    a = _export(db_settings, ExportRequest(cid, as_of=as_of))
    b = _export(db_settings, ExportRequest(cid, as_of=as_of))
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()


def test_a_property_added_after_an_export_is_in_the_next_one(
    db_settings: DatabaseSettings, vectors: np.ndarray
) -> None:
    with connect(db_settings) as c:
        load_collection(c, "shape", vectors[:5], encoder_name="shape-test", build_index=False)
        c.commit()
    try:
        before = pq.read_schema(io.BytesIO(_export(db_settings, ExportRequest("shape"))))
        with connect(db_settings) as c:
            c.execute(
                "update items set properties = properties || '{\"late\": 7}'"
                " where collection_id = 'shape'"
                " and id = (select min(id) from items where collection_id = 'shape')"
            )
            c.commit()
        after = pq.read_table(io.BytesIO(_export(db_settings, ExportRequest("shape"))))
        late = dict(zip(after["id"].to_pylist(), after["late"].to_pylist(), strict=True))
        assert "late" not in before.names and sorted(late.values(), key=str)[0] == 7
    finally:
        with connect(db_settings) as c:
            c.execute("delete from collections where id = 'shape'")
            c.commit()


def test_a_stream_closed_early_leaves_the_connection_usable(
    db_settings: DatabaseSettings, cid: str
) -> None:
    with connect(db_settings) as c:
        plan = plan_export(c, ExportRequest(cid, batch_size=2, row_group_bytes=1))
        chunks = stream_export(c, plan)
        next(chunks)
        chunks.close()
        assert (
            c.execute("select count(*) from items where collection_id = %s", (cid,)).fetchone()[0]
            == N
        )


def test_neuco_bench_csv_has_id_and_one_column_per_dimension(
    db_settings: DatabaseSettings, cid: str, vectors: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "x.csv"
    with connect(db_settings) as c:
        export_csv_to_file(c, ExportRequest(cid), path)
    table = pacsv.read_csv(path)
    values = np.stack([table[str(k)].to_numpy() for k in range(DIMS)], axis=1)
    assert table.column_names == ["id", *map(str, range(DIMS))]
    assert table["id"].to_pylist() == [f"item-{k:02d}" for k in range(N)]
    assert np.array_equal(values.astype(np.float32), vectors.astype(np.float16).astype(np.float32))


def test_cli_writes_minimal_file_and_its_sha256(
    database_url: str, cid: str, tmp_path: Path
) -> None:
    out = tmp_path / "v.parquet"
    result = CliRunner().invoke(
        main,
        ["export", cid, str(out), "--columns", "minimal", "--dtype", "binary", "--quiet"],
        env={"EMBCAT_DATABASE_URL": database_url},
    )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert result.exit_code == 0, result.output
    assert f"sha256 {digest}" in result.output
    assert pq.read_schema(out).names == ["id", "geometry", "datetime", "embedding"]


def test_cli_writes_neuco_csv(database_url: str, cid: str, tmp_path: Path) -> None:
    out = tmp_path / "v.csv"
    result = CliRunner().invoke(
        main,
        ["export", cid, str(out), "--format", "neuco-csv"],
        env={"EMBCAT_DATABASE_URL": database_url},
    )
    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines()[0] == "id," + ",".join(map(str, range(DIMS)))
    assert (tmp_path / "v.csv.sha256").exists()


def test_cli_refuses_a_csv_of_quantised_values(database_url: str, cid: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["export", cid, str(tmp_path / "v.csv"), "--format", "neuco-csv", "--dtype", "int8"],
        env={"EMBCAT_DATABASE_URL": database_url},
    )
    assert result.exit_code != 0 and "float32" in result.output
    assert "Traceback" not in result.output
