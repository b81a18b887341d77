"""D1 (issue 14): every encoder option that changes the vectors is in the space identity.

``Encoder.space_options`` is the canonical set, its sha256 the space's; the encode job
records both in the manifest with the run's chip size.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from encoders_testkit import MOSAIKS_SMALL

from embcat.encoders.job import run_encode
from embcat.encoders.manifest import Manifest, options_sha256
from embcat.encoders.registry import get_encoder


def _sha(name: str = "mosaiks", chip_size: int | None = None, **options: Any) -> str:
    enc = get_encoder(name, **{**MOSAIKS_SMALL, **options} if name == "mosaiks" else options)
    return options_sha256(enc.space_options(chip_size))


def test_the_same_options_give_the_same_hash() -> None:
    assert _sha() == _sha()


@pytest.mark.parametrize(
    "changes",
    [
        {"seed": 1},
        {"bands": "B04,B03,B02"},
        {"patch_size": 5},
        {"bias": 0.2},
        {"num_features": 16},
        {"scaling": {"type": "scale", "value": 1.0}},
    ],
    ids=["seed", "bands", "patch_size", "bias", "num_features", "scaling"],
)
def test_each_option_that_changes_the_vectors_changes_the_hash(changes: dict[str, Any]) -> None:
    assert _sha(**changes) != _sha()


def test_the_run_chip_size_changes_the_hash() -> None:
    assert _sha(chip_size=16) != _sha(chip_size=32)


@pytest.mark.parametrize("changes", [{"dtype": "float16"}, {"gsd": 30.0}], ids=["dtype", "gsd"])
def test_options_that_change_no_vector_keep_the_hash(changes: dict[str, Any]) -> None:
    assert _sha(**changes) == _sha()


MODEL = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(3, 4)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3)))
"""

CARD = {
    "bands": ["B04", "B03", "B02"],
    "chip_size": 8,
    "output_dim": 4,
    "normalization": {"type": "scale", "value": 10000},
}


@pytest.fixture
def checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "cp_models.py").write_text(MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    from cp_models import Net  # type: ignore[import-not-found]

    torch.manual_seed(0)
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(Net().eval()), str(path))
    (tmp_path / "net.yaml").write_text(yaml.safe_dump({**CARD, "name": "net", "version": "1"}))
    return path


def _checkpoint_sha(path: Path) -> str:
    return options_sha256(get_encoder("checkpoint", path=str(path)).space_options())


def test_a_checkpoint_under_another_file_name_is_the_same_space(
    checkpoint: Path, tmp_path: Path
) -> None:
    other = tmp_path / "site" / "renamed.pt"
    other.parent.mkdir()
    shutil.copy(checkpoint, other)
    shutil.copy(checkpoint.with_suffix(".yaml"), other.with_suffix(".yaml"))
    assert _checkpoint_sha(other) == _checkpoint_sha(checkpoint)


def test_other_checkpoint_weights_are_another_space(checkpoint: Path, tmp_path: Path) -> None:
    from cp_models import Net  # type: ignore[import-not-found]

    torch.manual_seed(1)
    other = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(Net().eval()), str(other))
    shutil.copy(checkpoint.with_suffix(".yaml"), other.with_suffix(".yaml"))
    assert _checkpoint_sha(other) != _checkpoint_sha(checkpoint)


def test_another_card_scaling_is_another_space(checkpoint: Path) -> None:
    before = _checkpoint_sha(checkpoint)
    card = {**CARD, "name": "net", "version": "1", "normalization": {"type": "none"}}
    checkpoint.with_suffix(".yaml").write_text(yaml.safe_dump(card))
    assert _checkpoint_sha(checkpoint) != before


def test_the_manifest_records_the_options_and_their_hash(scene_dir: Path, tmp_path: Path) -> None:
    res = run_encode(
        [scene_dir], tmp_path / "run", "mosaiks", dict(MOSAIKS_SMALL), chip_size=16,
        workers=0, progress=False,
    )  # fmt: skip
    manifest = Manifest.load(tmp_path / "run")
    enc = manifest.encoder
    assert res.manifest is not None and enc.space_options is not None
    assert enc.space_sha256 == options_sha256(enc.space_options)
    assert enc.space_options["chip_size"] == 16 == enc.chip_size
    assert enc.space_options["options"]["seed"] == MOSAIKS_SMALL.get("seed", 0)
