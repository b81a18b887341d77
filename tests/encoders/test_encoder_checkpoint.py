"""``checkpoint``: locally held weights (TorchScript or state dict) plus a model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from embcat.encoders.errors import EncoderOptionError
from embcat.encoders.registry import get_encoder

MODEL_MODULE = """
import torch


class TinyNet(torch.nn.Module):
    def __init__(self, bands=3, dims=6):
        super().__init__()
        self.conv = torch.nn.Conv2d(bands, 8, 3)
        self.head = torch.nn.Linear(8, dims)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
"""

CARD = {
    "name": "tiny-net",
    "architecture": "TinyNet",
    "bands": ["B04", "B03", "B02"],
    "chip_size": 16,
    "gsd": 10,
    "normalization": {"type": "z-score", "mean": [1000, 900, 800], "stddev": [300, 250, 200]},
    "output_dim": 6,
    "metric": "cosine",
    "normalized": True,
}


@pytest.fixture
def tiny_net(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "site_models.py").write_text(MODEL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from site_models import TinyNet  # type: ignore[import-not-found]

    torch.manual_seed(0)
    return TinyNet().eval()


def _reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CARD["normalization"]["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(CARD["normalization"]["stddev"], dtype=torch.float32).view(1, -1, 1, 1)
    with torch.inference_mode():
        out = model((x - mean) / std)
    return torch.nn.functional.normalize(out, dim=1)


def _chips() -> torch.Tensor:
    return torch.rand((4, 3, 16, 16), generator=torch.Generator().manual_seed(1)) * 2000


def test_torchscript_model_with_yaml_card(tiny_net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(tiny_net), str(path))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CARD))
    enc = get_encoder("checkpoint", path=str(path))
    x = _chips()
    assert torch.allclose(enc(x), _reference(tiny_net, x), atol=1e-6)
    assert (enc.name, enc.output_spec.dimensions, enc.input_spec.bands) == (
        "tiny-net", 6, ("B04", "B03", "B02"),
    )  # fmt: skip
    assert len(enc.version) == 12  # from the weights' sha256
    mlm = enc.mlm_properties()
    assert mlm["mlm:architecture"] == "TinyNet" and mlm["mlm:pretrained"] is False
    assert mlm["mlm:input"][0]["value_scaling"][0] == {
        "type": "z-score", "mean": 1000.0, "stddev": 300.0,
    }  # fmt: skip


def test_state_dict_with_json_card_naming_the_class(tiny_net, tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(tiny_net.state_dict(), path)
    card = {**CARD, "model": "site_models:TinyNet", "model_kwargs": {"bands": 3, "dims": 6}}
    (tmp_path / "card.json").write_text(json.dumps(card))
    enc = get_encoder("checkpoint", path=str(path), card=str(tmp_path / "card.json"))
    x = _chips()
    assert torch.allclose(enc(x), _reference(tiny_net, x), atol=1e-6)


def test_card_output_dim_must_match_the_model(tiny_net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(tiny_net), str(path))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**CARD, "output_dim": 7}))
    with pytest.raises(EncoderOptionError, match=r"gives shape \(1, 6\), the card declares.* 7"):
        get_encoder("checkpoint", path=str(path))


def test_card_band_count_must_fit_the_model(tiny_net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(tiny_net), str(path))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**CARD, "bands": ["B04", "B03"]}))
    with pytest.raises(EncoderOptionError, match=r"tiny.yaml: value scaling mean has 3 values"):
        get_encoder("checkpoint", path=str(path))
    two_bands = {**CARD, "bands": ["B04", "B03"], "normalization": {"type": "scale", "value": 2}}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(two_bands))
    with pytest.raises(EncoderOptionError, match=r"fails on a \(1, 2, 16, 16\) batch"):
        get_encoder("checkpoint", path=str(path))


def test_missing_card_is_a_clear_error(tiny_net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(tiny_net), str(path))
    with pytest.raises(EncoderOptionError, match=r"no model card for .*tiny.pt.*tiny.yaml"):
        get_encoder("checkpoint", path=str(path))


def test_state_dict_without_model_class_is_a_clear_error(tiny_net, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(tiny_net.state_dict(), path)
    (tmp_path / "weights.yaml").write_text(yaml.safe_dump(CARD))
    with pytest.raises(EncoderOptionError, match="name the model class"):
        get_encoder("checkpoint", path=str(path))


def test_checkpoint_is_pretrained_only_when_its_card_names_the_source(
    tiny_net, tmp_path: Path
) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(tiny_net), str(path))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**CARD, "pretrained_source": "EuroSAT"}))
    mlm = get_encoder("checkpoint", path=str(path)).mlm_properties()
    assert (mlm["mlm:pretrained"], mlm["mlm:pretrained_source"]) == (True, "EuroSAT")


def test_checkpoint_model_asset_is_the_weights_file(tiny_net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(tiny_net), str(path))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CARD))
    asset = get_encoder("checkpoint", path=str(path)).model_asset()
    assert asset["href"] == path.resolve().as_uri() and "mlm:model" in asset["roles"]
    assert asset["mlm:artifact_type"] == "torch.jit.script"


def test_torch_export_program_with_yaml_card(tiny_net, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt2"
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        tiny_net, (torch.zeros(2, 3, 16, 16),), dynamic_shapes={"x": {0: batch}}
    )
    torch.export.save(program, str(path))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CARD))
    enc = get_encoder("checkpoint", path=str(path))
    x = _chips()
    assert torch.allclose(enc(x), _reference(tiny_net, x), atol=1e-5)
    assert enc.total_parameters() == sum(p.numel() for p in tiny_net.parameters())


def test_torch_export_program_with_a_fixed_batch_encodes_any_batch(
    tiny_net, tmp_path: Path
) -> None:
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(tiny_net, (torch.zeros(1, 3, 16, 16),)), str(path))
    (tmp_path / "fixed.yaml").write_text(yaml.safe_dump(CARD))
    enc = get_encoder("checkpoint", path=str(path))
    x = _chips()
    assert torch.allclose(enc(x), _reference(tiny_net, x), atol=1e-5)


def test_encode_job_runs_a_torch_export_program(tiny_net, tmp_path: Path) -> None:
    from rasterdata import make_scene

    from embcat.encoders.job import run_encode

    path = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(tiny_net, (torch.zeros(1, 3, 16, 16),)), str(path))
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(CARD))
    scene = make_scene(tmp_path / "s.tif", bands=3, width=48, height=32,
                       band_names=["B04", "B03", "B02"])  # fmt: skip
    result = run_encode(
        [scene], tmp_path / "run", "checkpoint", {"path": str(path)},
        batch_size=4, workers=0, progress=False, device="cpu",
    )  # fmt: skip
    assert result.rows == 6 and result.manifest is not None
    assert result.manifest.encoder.name == "tiny-net"
