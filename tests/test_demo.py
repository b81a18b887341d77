"""``embcat demo`` end to end: sample scene -> real mosaiks encode -> publish (issue 4, part 6)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from embcat.catalog.demo import DEMO_COLLECTION, DemoInfo, land_cover, prepare_demo
from embcat.catalog.settings import DatabaseSettings
from embcat.cli import main


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory, db_settings: DatabaseSettings
) -> Iterator[tuple[Path, DemoInfo]]:
    folder = tmp_path_factory.mktemp("demo")
    # a 512 px scene (64 chips) and 32 mosaiks features keep the real encode short
    info = prepare_demo(
        folder, settings=db_settings, echo=lambda _: None, scene_size=512, num_features=32
    )
    yield folder, info
    with psycopg.connect(db_settings.database_url) as conn:
        conn.execute("delete from collections where id = %s", (DEMO_COLLECTION,))


def test_demo_publishes_one_item_per_chip(demo: tuple[Path, DemoInfo]) -> None:
    _, info = demo
    assert info.items == 64
    assert "64 inserted" in info.publish_summary
    assert f"/collections/{DEMO_COLLECTION}/items/{info.example_item}/similar" in (
        info.instructions()
    )


def test_demo_similarity_finds_chips_of_the_same_land_cover(
    demo: tuple[Path, DemoInfo], db_settings: DatabaseSettings
) -> None:
    """The nearest chips of a forest / crops chip are mostly of the same class."""
    cover = land_cover(512)
    with psycopg.connect(db_settings.database_url) as conn:
        windows = dict(
            conn.execute(
                "select id, properties->'embcat:window' from items where collection_id = %s",
                (DEMO_COLLECTION,),
            ).fetchall()
        )

        def major(iid: str) -> int:
            col, row, w, h = windows[iid]
            return int(
                np.bincount(cover[row : row + h, col : col + w].ravel(), minlength=5).argmax()
            )

        agree = []
        for iid in sorted(windows):
            rows = conn.execute(
                "select e2.item_id from embeddings e1 join embeddings e2"
                " on e2.collection_id = e1.collection_id and e2.item_id <> e1.item_id"
                " where e1.collection_id = %s and e1.item_id = %s"
                " order by e1.embedding <=> e2.embedding limit 3",
                (DEMO_COLLECTION, iid),
            ).fetchall()
            agree.extend(major(r[0]) == major(iid) for r in rows)
    assert np.mean(agree) > 0.7


def test_second_demo_run_reuses_data_and_publishes_nothing(
    demo: tuple[Path, DemoInfo], db_settings: DatabaseSettings
) -> None:
    folder, _ = demo
    out = CliRunner().invoke(main, ["demo", "--dir", str(folder), "--no-serve", "--port", "9999"])
    assert out.exit_code == 0, out.output
    assert "0 inserted, 0 updated, 64 skipped" in out.output
    assert "curl 'http://127.0.0.1:9999/collections/demo-mosaiks/items/" in out.output
