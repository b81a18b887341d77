"""A collection made as a new user makes one: a real mosaiks encode of a seeded GeoTIFF
(``--chip-size 32``, the encoder's default is 256) published by the real publish job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rasterdata import make_scene

from embcat.catalog.publish import publish
from embcat.catalog.settings import DatabaseSettings
from embcat.encoders.job import run_encode

CHIP = 32


@dataclass(frozen=True)
class Published:
    collection_id: str
    scene: Path
    items: int


def encode_and_publish(folder: Path, settings: DatabaseSettings, cid: str) -> Published:
    scene = make_scene(folder / "scenes" / "scene a.tif", width=96, height=64, seed=3)
    out = folder / "run"
    run_encode(
        [scene],
        out,
        "mosaiks",
        {"num_features": 8, "chip_size": 256},
        chip_size=CHIP,
        workers=0,
        progress=False,
    )
    res = publish(out, collection_id=cid, settings=settings, progress=False)
    return Published(cid, scene, res.rows)
