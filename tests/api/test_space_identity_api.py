"""D1 (issue 14) end to end on planted land cover: real MOSAIKS runs, the CLI, the upload,
the API and the SQL surface.

Scene A encoded with seed 0 makes the collection; scene B encoded with seed 1 is refused
by it (locally and through the upload, before any shard byte), naming the seed; scene B
encoded with seed 0 joins it. Afterwards a crop or soil chip's nearest neighbours, through
the API and through ``embcat.similar``, are of its class, and the collection still says
seed 0.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from rasterdata import CROP, SOIL, make_scene, scene_classes  # noqa: E402

from embcat.catalog.errors import Conflict  # noqa: E402
from embcat.catalog.keys import create_key  # noqa: E402
from embcat.catalog.remote_publish import remote_publish, upload_id_for  # noqa: E402
from embcat.cli import main  # noqa: E402
from embcat.encoders.job import run_encode  # noqa: E402
from embcat.encoders.manifest import Manifest  # noqa: E402

SIZE, CHIP, FEATURES = 128, 16, 64
SCENES = {"a": 3, "b": 4}  # scene name -> its land-cover seed


def _encode(scene: Path, out: Path, seed: int) -> Path:
    run_encode(
        [scene], out, "mosaiks", {"seed": seed, "num_features": FEATURES}, chip_size=CHIP,
        workers=0, progress=False,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("d1")
    scenes = {
        name: make_scene(
            root / f"{name}.tif",
            width=SIZE,
            height=SIZE,
            seed=seed,
            origin=(400000.0 + 5000 * seed, 5300000.0),
        )  # fmt: skip
        for name, seed in SCENES.items()
    }
    return {
        "a0": _encode(scenes["a"], root / "a0", 0),
        "b1": _encode(scenes["b"], root / "b1", 1),
        "b0": _encode(scenes["b"], root / "b0", 0),
    }


@pytest.fixture(scope="module")
def collection(runs: dict[str, Path], database_url: str) -> Iterator[str]:
    cid = "d1-" + uuid.uuid4().hex[:8]
    out = CliRunner().invoke(
        main, ["publish", str(runs["a0"]), "--collection", cid, "--no-progress"]
    )
    assert out.exit_code == 0, out.output
    yield cid
    with psycopg.connect(database_url) as c:
        c.execute("delete from collections where id = %s", (cid,))


def _classes(run: Path, land_seed: int) -> dict[str, int]:
    """Chip id -> its land-cover class (when one class covers 80 % of it, else -1)."""
    table = pq.read_table(run / "shard-00000-of-00001.parquet")
    cover = scene_classes(SIZE, SIZE, land_seed)
    out = {}
    for cid, c, r in zip(
        table["id"].to_pylist(),
        table["window_col"].to_pylist(),
        table["window_row"].to_pylist(),
        strict=True,
    ):
        counts = np.bincount(cover[r : r + CHIP, c : c + CHIP].ravel(), minlength=5)
        out[cid] = int(counts.argmax()) if counts.max() >= 0.8 * CHIP * CHIP else -1
    return out


def test_local_publish_of_another_seed_is_refused(runs: dict[str, Path], collection: str) -> None:
    out = CliRunner().invoke(
        main,
        [
            "publish",
            str(runs["b1"]),
            "--collection",
            collection,
            "--mode",
            "upsert",
            "--no-progress",
        ],
    )
    assert out.exit_code != 0
    assert "options.seed: 0 vs 1" in out.output and "Traceback" not in out.output


def test_upload_of_another_seed_is_refused_before_any_shard(
    runs: dict[str, Path], collection: str, live_server: str, database_url: str
) -> None:
    with psycopg.connect(database_url) as c:
        _, key = create_key(c, "d1-" + uuid.uuid4().hex[:6], ["write"], None)
        c.commit()
    with pytest.raises(Conflict, match=r"options\.seed: 0 vs 1"):
        remote_publish(runs["b1"], live_server, key=key, collection_id=collection)
    up = upload_id_for(Manifest.load(runs["b1"]).checksum())
    state = httpx.get(f"{live_server}/publish/uploads/{up}", headers={"X-API-Key": key}).json()
    assert sum(s["received"] for s in state["shards"].values()) == 0


def test_the_collection_still_says_seed_0(
    runs: dict[str, Path], collection: str, live_server: str
) -> None:
    stac = httpx.get(f"{live_server}/collections/{collection}", timeout=10).json()
    space = httpx.get(f"{live_server}/collections/{collection}/space", timeout=10).json()
    sha = Manifest.load(runs["a0"]).encoder.space_sha256
    assert stac["embcat:space"]["options_sha256"] == space["options_sha256"] == sha
    assert stac["embcat:space"]["options"]["options"]["seed"] == 0
    # MLM fields live on the model item (issue 19), not on the collection
    model = httpx.get(f"{live_server}/collections/{collection}/model", timeout=10).json()
    assert model["properties"]["mlm:hyperparameters"]["seed"] == 0


def _neighbour_purity(found: dict[str, list[str]], classes: dict[str, int]) -> float:
    return float(
        np.mean([np.mean([classes[n] == classes[q] for n in ns]) for q, ns in found.items()])
    )


def test_neighbours_stay_in_class_through_api_and_sql(
    runs: dict[str, Path], collection: str, live_server: str, database_url: str
) -> None:
    out = CliRunner().invoke(
        main, ["publish", str(runs["b0"]), "--collection", collection, "--no-progress"]
    )
    assert out.exit_code == 0, out.output  # the same options: the same space
    classes = {**_classes(runs["a0"], SCENES["a"]), **_classes(runs["b0"], SCENES["b"])}
    queries = [c for c, k in classes.items() if k in (CROP, SOIL)][::3]
    assert len(queries) >= 10
    by_api: dict[str, list[str]] = {}
    by_sql: dict[str, list[str]] = {}
    with psycopg.connect(database_url) as conn:
        for q in queries:
            body: dict[str, Any] = {
                "collections": [collection],
                "limit": 10,
                "similarity": {"item": {"collection": collection, "id": q}},
            }
            r = httpx.post(live_server + "/search", json=body, timeout=30)
            assert r.status_code == 200, r.text
            by_api[q] = [f["id"] for f in r.json()["features"] if classes[f["id"]] >= 0]
            rows = conn.execute(
                "select item_id from embcat.similar(%s, %s, 10)", (collection, q)
            ).fetchall()
            by_sql[q] = [r[0] for r in rows if classes[r[0]] >= 0]
    assert _neighbour_purity(by_api, classes) >= 0.8
    assert _neighbour_purity(by_sql, classes) >= 0.8
