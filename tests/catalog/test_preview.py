"""False colour (PCA -> RGB), its cache, footprints and the PNG rendering, on a real database."""

from __future__ import annotations

import warnings

import numpy as np
import psycopg
import pytest
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from vectorgen import load_collection

from embcat.catalog.errors import InvalidInput, NotFound
from embcat.catalog.filters import Filter
from embcat.catalog.preview import (
    FalseColourCache,
    false_colour,
    features,
    png_size,
    preview_area,
    principal_components,
    render_png,
    robust_rgb,
)
from embcat.catalog.search_request import search_from_params
from embcat.catalog.search_values import BBOX_MESSAGE


def four_clusters(per: int = 15, dims: int = 16, seed: int = 0) -> np.ndarray:
    """Four tight clusters far apart (they span three principal axes): items of one cluster
    must share a colour."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4, dims)) * 5
    return np.concatenate([c + rng.standard_normal((per, dims)) * 0.05 for c in centres]).astype(
        np.float32
    )


def square_chips(conn: psycopg.Connection, collection_id: str, half: float) -> None:
    """Turn the loader's point items into square footprints of side 2*half degrees."""
    conn.execute(
        "update items set geometry = ST_Expand(geometry, %s),"
        " bbox = array[ST_X(geometry) - %s, ST_Y(geometry) - %s,"
        "              ST_X(geometry) + %s, ST_Y(geometry) + %s]"
        " where collection_id = %s",
        (half, half, half, half, half, collection_id),
    )


def test_principal_components_find_the_axis_of_largest_spread() -> None:
    rng = np.random.default_rng(3)
    direction = np.zeros(8)
    direction[5] = 1.0
    data = rng.standard_normal((500, 8)) * 0.1 + np.outer(rng.standard_normal(500) * 10, direction)
    axes, ratios = principal_components(data)
    assert axes.shape == (3, 8)
    assert axes[0] @ direction > 0.99  # sign fixed: the largest loading is positive
    assert ratios[0] > 0.95 and ratios[0] >= ratios[1] >= ratios[2]


def test_randomised_components_match_an_exact_svd() -> None:
    rng = np.random.default_rng(4)
    basis, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    scales = np.r_[10.0, 5.0, 2.5, np.full(61, 0.2)]
    data = (rng.standard_normal((2000, 64)) * scales) @ basis.T
    axes, ratios = principal_components(data)
    centred = data - data.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    assert np.abs(np.sum(axes * vt[:3], axis=1)).min() > 0.999
    assert ratios == pytest.approx(s[:3] ** 2 / np.sum(s**2), abs=1e-3)


def test_robust_rgb_clips_outliers_and_gives_mid_grey_without_spread() -> None:
    column = np.concatenate([np.linspace(0, 1, 100), [1000.0]])
    projections = np.column_stack([column, np.zeros(101)])
    rgb = robust_rgb(projections)
    assert rgb[-1, 0] == 255 and rgb[0, 0] == 0
    assert (rgb[:, 1] == 128).all() and (rgb[:, 2] == 128).all()


def test_false_colour_gives_one_colour_per_cluster(conn: psycopg.Connection) -> None:
    load_collection(conn, "pca", four_clusters(), build_index=False)
    colours = false_colour(conn, "pca")
    assert len(colours) == 60
    rgb = colours.rgb.astype(int)
    means = [rgb[k * 15 : (k + 1) * 15].mean(axis=0) for k in range(4)]
    for k in range(4):
        assert np.abs(rgb[k * 15 : (k + 1) * 15] - means[k]).max() < 40
    gaps = [np.abs(means[a] - means[b]).max() for a in range(4) for b in range(a + 1, 4)]
    assert min(gaps) > 100
    assert colours.hex("item-00") == "#{:02x}{:02x}{:02x}".format(*colours.rgb[0])
    assert sum(colours.explained_variance_ratio) > 0.99


def test_false_colour_of_a_collection_without_vectors_is_not_found(
    conn: psycopg.Connection,
) -> None:
    conn.execute("insert into collections (id, stac) values ('empty', '{}')")
    with pytest.raises(NotFound, match="no embeddings"):
        false_colour(conn, "empty")


def test_cache_recomputes_only_after_the_collection_changes(conn: psycopg.Connection) -> None:
    load_collection(conn, "cached", four_clusters(per=5), build_index=False)
    cache = FalseColourCache(maxsize=2)
    first = cache.get(conn, "cached")
    assert cache.get(conn, "cached") is first and cache.computed == 1
    conn.execute("update items set properties = '{\"x\": 1}' where id = 'item-00'")
    second = cache.get(conn, "cached")
    assert second is not first and second.version > first.version and cache.computed == 2


DRAW_AREA = "an area to draw needs -180 <= west < east <= 180 and south < north"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,2,3", BBOX_MESSAGE.format("1,2,3")),
        ("a,b,c,d", BBOX_MESSAGE.format("a,b,c,d")),
        ("0,0,200,1", f"bbox [0.0, 0.0, 200.0, 1.0]: {DRAW_AREA}"),
        ("5,0,1,1", f"bbox [5.0, 0.0, 1.0, 1.0]: {DRAW_AREA}"),
        ("0,0,1,nan", "bbox [0.0, 0.0, 1.0, nan]: numbers must be finite"),
        (
            "0,95,1,96",
            "bbox [0.0, 95.0, 1.0, 96.0]: latitudes must be within [-90, 90] with min <= max",
        ),
    ],
)
def test_preview_area_refuses_malformed_boxes_with_the_search_messages(
    text: str, message: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        preview_area(text)
    assert str(caught.value) == message


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "0,0,1,nan", "0,95,1,96"])
def test_preview_area_and_search_refuse_a_bad_bbox_with_one_message(text: str) -> None:
    with pytest.raises(InvalidInput) as searched:
        Filter.from_search(search_from_params({"bbox": text}))
    with pytest.raises(InvalidInput) as previewed:
        preview_area(text)
    assert str(previewed.value) == str(searched.value)


def test_preview_area_takes_a_box_of_six_numbers_without_its_heights() -> None:
    assert preview_area("1,2,-5,3,4,7") == (1.0, 2.0, 3.0, 4.0)


def test_png_size_refuses_sides_above_the_limit() -> None:
    with pytest.raises(InvalidInput, match="width must be in 1..2048"):
        png_size((0, 0, 1, 1), 4096, None)


def test_features_carry_each_items_colour_and_honour_the_bbox(conn: psycopg.Connection) -> None:
    points = np.column_stack([np.arange(60) % 10, np.arange(60) // 10]).astype(float)
    load_collection(conn, "feat", four_clusters(), points, build_index=False)
    colours = false_colour(conn, "feat")
    fc = features(conn, colours, bbox=(-0.5, -0.5, 2.5, 0.5))
    assert [f["id"] for f in fc["features"]] == ["item-00", "item-01", "item-02"]
    assert all(f["properties"]["color"] == colours.hex(f["id"]) for f in fc["features"])
    assert fc["legend"]["channels"][0]["channel"] == "red"


def test_render_png_paints_each_chip_in_its_colour(conn: psycopg.Connection) -> None:
    points = np.column_stack([np.arange(60) % 10, np.arange(60) // 10]).astype(float)
    load_collection(conn, "png", four_clusters(), points, build_index=False)
    square_chips(conn, "png", 0.3)
    colours = false_colour(conn, "png")
    data = render_png(conn, colours, (-0.5, -0.5, 9.5, 5.5), width=100, height=60)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain PNG, no world file
        with MemoryFile(data) as memfile, memfile.open() as src:
            assert (src.width, src.height, src.count) == (100, 60, 4)
            image = src.read()
    # item-00 is centred on (0, 0): pixel (row 55, col 5); the gap between chips is clear.
    assert tuple(image[:3, 55, 5]) == tuple(colours.rgb[0]) and image[3, 55, 5] == 255
    assert image[3, 50, 10] == 0
