"""Inputs: band mapping, STAC items, and every kind of bad input or output."""

from __future__ import annotations

import errno
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
from click.testing import CliRunner
from encoders_testkit import CHIP, MOSAIKS_SMALL

from embcat.cli import main
from embcat.encoders.errors import InputError, OutputError
from embcat.encoders.job import run_encode


def _encode(inputs, out: Path, options=None, **kwargs):
    kwargs.setdefault("workers", 0)
    kwargs.setdefault("progress", False)
    return run_encode(inputs, out, "mosaiks", {**MOSAIKS_SMALL, **(options or {})}, **kwargs)


def _embeddings(out: Path) -> dict[str, list[float]]:
    table = pq.read_table(out / "shard-00000-of-00001.parquet")
    return dict(
        zip(table.column("id").to_pylist(), table.column("embedding").to_pylist(), strict=True)
    )


# -- band mapping ---------------------------------------------------------------------


def test_bands_are_picked_by_name_in_the_encoder_order(scene_factory) -> None:
    from embcat.encoders.sources import resolve_inputs

    rgb = scene_factory("rgb.tif", bands=3, band_names=["B02", "B03", "B04"])
    (src,) = resolve_inputs([rgb], ["B04", "B03", "B02"])
    assert [b.index for b in src.bands] == [3, 2, 1]
    (src,) = resolve_inputs([rgb], ["b03"])  # names match case-insensitively
    assert [b.index for b in src.bands] == [2]


def test_band_map_by_index_equals_reading_by_name(scene_factory, tmp_path: Path) -> None:
    path = scene_factory(seed=4)
    _encode([path], tmp_path / "named", {"bands": "B04,B03,B02"})
    _encode(
        [path],
        tmp_path / "mapped",
        {"bands": "red,green,blue"},
        band_map={"red": 4, "green": "B03", "blue": 2},
    )
    named, mapped = _embeddings(tmp_path / "named"), _embeddings(tmp_path / "mapped")
    assert named.keys() == mapped.keys()
    for key in named:
        assert named[key] == mapped[key]


def test_unnamed_bands_are_taken_by_position_when_counts_match(scene_factory, tmp_path) -> None:
    path = scene_factory(bands=3, band_names=["", "", ""])
    result = _encode([path], tmp_path / "out", {"bands": "r,g,b"})
    assert result.rows == 4


# -- STAC inputs ----------------------------------------------------------------------


def _item(item_id: str, when: datetime, assets: dict[str, pystac.Asset]) -> pystac.Item:
    item = pystac.Item(item_id, {"type": "Point", "coordinates": [13.6, 47.8]}, None, when, {})
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def test_stac_item_collection_file_with_a_multiband_asset(scene_factory, tmp_path) -> None:
    path = scene_factory(seed=5)
    when = datetime(2022, 7, 1, 9, 0, tzinfo=UTC)
    bands = [{"name": f"B{i}"} for i in range(13)]  # STAC names win over the descriptions
    bands[3] = {"name": "red", "common_name": "red"}
    asset = pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"])
    asset.extra_fields["eo:bands"] = bands
    collection = pystac.ItemCollection([_item("S2X_20220701", when, {"visual": asset})])
    collection.save_object(dest_href=str(tmp_path / "items.json"))
    result = _encode(
        [tmp_path / "items.json"], tmp_path / "out", {"bands": "red"}, nodata_threshold=1.0
    )
    table = pq.read_table(tmp_path / "out" / "shard-00000-of-00001.parquet")
    assert result.rows == 4
    assert set(table.column("datetime").to_pylist()) == {when}  # the item's, not the tag's
    assert set(table.column("source_item").to_pylist()) == {"S2X_20220701"}
    assert set(table.column("source_asset").to_pylist()) == {"visual"}
    assert table.column("id").to_pylist()[0] == f"S2X_20220701_0_0_{CHIP}"


def test_stac_item_with_one_asset_per_band_and_mixed_resolution(scene_factory, tmp_path) -> None:
    when = datetime(2022, 7, 2, tzinfo=UTC)
    b04 = scene_factory("B04.tif", bands=1, band_names=["B04"], seed=6)
    b03 = scene_factory("B03.tif", bands=1, band_names=["B03"], seed=7)
    b11 = scene_factory("B11.tif", bands=1, band_names=["B11"], seed=8, width=32, height=32,
                        gsd=20.0)  # fmt: skip
    assets = {
        key: pystac.Asset(str(p), media_type=pystac.MediaType.GEOTIFF)
        for key, p in {"B04": b04, "B03": b03, "B11": b11}.items()
    }
    item = _item("tile", when, assets)
    result = _encode([item], tmp_path / "out", {"bands": "B04,B03,B11"})
    assert result.rows == 4
    table = pq.read_table(tmp_path / "out" / "shard-00000-of-00001.parquet")
    assert set(table.column("source_asset").to_pylist()) == {"B04+B03+B11"}
    assert set(table.column("source_href").to_pylist()) == {str(b04)}  # the finest grid


def test_stac_item_without_the_bands_is_a_clear_error(scene_factory, tmp_path) -> None:
    path = scene_factory(bands=3, band_names=["B02", "B03", "B04"])
    item = _item("tile", datetime(2022, 1, 1, tzinfo=UTC), {"img": pystac.Asset(str(path))})
    with pytest.raises(InputError, match=r"STAC item tile asset img .*missing bands B08"):
        _encode([item], tmp_path / "out", {"bands": "B04,B08"})


# -- bad input ------------------------------------------------------------------------


def test_unreadable_raster(tmp_path: Path) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 this is not really a tiff")
    with pytest.raises(InputError, match=f"{bad}: cannot read raster"):
        _encode([bad], tmp_path / "out")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.tif: no such file or directory"):
        _encode([tmp_path / "nope.tif"], tmp_path / "out")


def test_missing_bands(scene_factory, tmp_path: Path) -> None:
    path = scene_factory(bands=4, band_names=["B02", "B03", "B04", "B08"])
    with pytest.raises(InputError, match=rf"{path}: missing bands B11, B12 needed by the encoder"):
        _encode([path], tmp_path / "out", {"bands": "B04,B11,B12"})


def test_raster_without_georeferencing(scene_factory, tmp_path: Path) -> None:
    path = scene_factory(crs=None)
    with pytest.raises(InputError, match=f"{path}: raster has no georeferencing"):
        _encode([path], tmp_path / "out")


def test_encoder_band_count_mismatch_for_unnamed_bands(scene_factory, tmp_path: Path) -> None:
    path = scene_factory(bands=4, band_names=["", "", "", ""])
    with pytest.raises(InputError, match=rf"{path}: the raster has 4 unnamed bands, the encoder"):
        _encode([path], tmp_path / "out", {"bands": "r,g,b"})


def test_fixed_size_encoder_refuses_another_chip_size(scene_factory, tmp_path, plugin) -> None:
    path = scene_factory()
    with pytest.raises(InputError, match="takes 32x32 chips only, not 16"):
        run_encode([path], tmp_path / "out", "tiny-mean", {}, chip_size=16, progress=False)


def _readonly_dir(tmp_path: Path) -> Path:
    target = tmp_path / "readonly"
    target.mkdir()
    target.chmod(0o555)
    if not os.access(target, os.W_OK):
        return target
    # Root ignores permission bits: sysfs refuses new directories even to root.
    probe = Path("/sys/embcat-probe")
    try:
        probe.mkdir()
    except OSError:
        return Path("/sys/embcat-out")
    probe.rmdir()
    pytest.skip("no read-only directory available to this user")


def test_read_only_output_directory(scene_factory, tmp_path: Path) -> None:
    path = scene_factory()
    out = _readonly_dir(tmp_path)
    with pytest.raises(OutputError, match=f"cannot write {out}: (permission denied|operation)"):
        _encode([path], out)


def test_full_disk_leaves_no_shard(scene_factory, tmp_path: Path, monkeypatch) -> None:
    import pyarrow.parquet as pq_module

    def disk_full(self, table, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq_module.ParquetWriter, "write_table", disk_full)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=r"shard-00000-of-00001.parquet: no space left on device"):
        _encode([scene_factory()], out)
    assert list(out.iterdir()) == []  # no shard, no temporary file, no manifest


def test_cli_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(
        main, ["encode", str(bad), "-o", str(tmp_path / "out"), "--workers", "0"]
    )
    assert result.exit_code == 1
    assert f"error: {bad}: cannot read raster" in result.output
    assert "Traceback" not in result.output


def test_cli_encodes_and_prints_a_summary(scene_factory, tmp_path: Path) -> None:
    path = scene_factory(datetime=None, nodata_box=(0, 0, 32, 32))
    result = CliRunner().invoke(
        main,
        [
            "encode", str(path), "-o", str(tmp_path / "out"), "-O", "num_features=4",
            "-O", "chip_size=32", "--datetime", "2021-05-06T07:08:09Z", "--workers", "0",
            "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = result.output.strip().splitlines()[-1]
    assert summary.startswith("encoded 3 chips with mosaiks 1.0 (1 skipped for nodata)")
    assert "chips/s" in summary and str(tmp_path / "out" / "manifest.json") in summary
    table = pq.read_table(tmp_path / "out" / "shard-00000-of-00001.parquet")
    assert table.column("datetime").to_pylist()[0] == datetime(2021, 5, 6, 7, 8, 9, tzinfo=UTC)
    assert np.array(table.column("embedding").to_pylist()).shape == (3, 8)


# -- STAC API search ------------------------------------------------------------------


@pytest.fixture
def stac_api(scene_factory):
    """A minimal STAC API (landing page + item search) on 127.0.0.1, serving two items."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    paths = [scene_factory("s1.tif", seed=11), scene_factory("s2.tif", seed=12)]
    when = datetime(2024, 8, 1, tzinfo=UTC)
    items = [
        _item(f"item-{i}", when, {"data": pystac.Asset(str(p), media_type=pystac.MediaType.COG)})
        for i, p in enumerate(paths)
    ]
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's API
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            seen.append(self.path)
            if self.path.startswith("/search"):
                features = [item.to_dict() for item in reversed(items)]
                self._send({"type": "FeatureCollection", "features": features, "links": []})
                return
            self._send(
                {
                    "type": "Catalog", "id": "test-api", "stac_version": "1.0.0",
                    "description": "test", "conformsTo": [
                        "https://api.stacspec.org/v1.0.0/core",
                        "https://api.stacspec.org/v1.0.0/item-search",
                    ],
                    "links": [
                        {"rel": "self", "href": base + "/", "type": "application/json"},
                        {"rel": "root", "href": base + "/", "type": "application/json"},
                        {"rel": "search", "href": base + "/search",
                         "type": "application/geo+json", "method": "GET"},
                        {"rel": "search", "href": base + "/search",
                         "type": "application/geo+json", "method": "POST"},
                    ],
                }
            )  # fmt: skip

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", seen
    server.shutdown()
    server.server_close()


def test_cli_encodes_the_items_of_a_stac_api_search(stac_api, tmp_path: Path) -> None:
    url, seen = stac_api
    result = CliRunner().invoke(
        main,
        [
            "encode", "-o", str(tmp_path / "out"), "-O", "num_features=4", "-O", "chip_size=32",
            "--stac-api", url, "--collection", "s2", "--bbox", "13,47,14,48",
            "--workers", "0", "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert any(p.startswith("/search") for p in seen)
    table = pq.read_table(tmp_path / "out" / "shard-00000-of-00001.parquet")
    # Items are sorted by id, so every rank sees the same order whatever the API returns.
    assert table.column("source_item").to_pylist() == ["item-0"] * 4 + ["item-1"] * 4
    assert set(table.column("datetime").to_pylist()) == {datetime(2024, 8, 1, tzinfo=UTC)}


def test_a_relative_directory_gives_absolute_source_hrefs(
    scene_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embcat.encoders.sources import resolve_inputs

    scene = scene_factory("a.tif")
    monkeypatch.chdir(scene.parent.parent)
    (source,) = resolve_inputs([scene.parent.name], ["B04", "B03", "B02"])
    assert source.href == str(scene.resolve())
