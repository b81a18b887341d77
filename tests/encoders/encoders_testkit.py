"""Shared bits of the encoder tests: sizes, and a real third-party plugin distribution."""

from __future__ import annotations

import textwrap
from pathlib import Path

CHIP = 32
MOSAIKS_SMALL = {"num_features": 8, "chip_size": CHIP}

PLUGIN_SOURCE = '''
"""A third-party encoder plugin, installed as its own distribution in the tests."""
import os

import torch

from embcat.encoders.base import Encoder, InputSpec, OutputSpec, parse_bands
from embcat.encoders.mosaiks import MosaiksEncoder


class TinyMeanEncoder(Encoder):
    name = "tiny-mean"
    version = "0.1"
    summary = "per-band means (test plugin)"

    def __init__(self, bands=None, chip_size=32):
        band_names = parse_bands(bands, ("B02", "B03", "B04"))
        super().__init__(
            input_spec=InputSpec(bands=band_names, chip_size=int(chip_size)),
            output_spec=OutputSpec(dimensions=len(band_names), metric="l2"),
            options={"bands": list(band_names), "chip_size": int(chip_size)},
        )

    def forward(self, x):
        return x.mean(dim=(2, 3))


class FlakyMosaiks(MosaiksEncoder):
    """MOSAIKS that fails on rank 1 while ``fail_marker`` exists (simulates a crash)."""

    name = "flaky-mosaiks"

    def __init__(self, fail_marker="", **options):
        super().__init__(**options)
        self.options["fail_marker"] = fail_marker

    def forward(self, x):
        marker = self.options["fail_marker"]
        if marker and os.path.exists(marker) and os.environ.get("RANK") == "1":
            raise RuntimeError("simulated crash on rank 1")
        return super().forward(x)
'''


def write_dist(
    root: Path, dist: str, module: str, source: str, entry_points: dict[str, str]
) -> Path:
    """A real (minimal) installed distribution: a module plus its .dist-info on ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[embcat.encoders]\n{lines}")
    return root
