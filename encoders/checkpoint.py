"""``checkpoint``: an encoder from weights an HPC site holds locally, plus a model card.

Options: ``path`` (the model file) and ``card`` (YAML or JSON; default: the model path
with ``.yaml``, ``.yml`` or ``.json`` in place of its suffix). Three model formats:

* TorchScript archive (``torch.jit.save``) — loaded with ``torch.jit.load``;
* ``torch.export`` program (``.pt2``, ``torch.export.save``);
* a state dict (``torch.save(model.state_dict())``): the card then names the model
  class as ``model: "package.module:ClassName"`` (importable on the node, e.g. through
  ``PYTHONPATH``) and optional ``model_kwargs``; loaded with ``weights_only=True``.

The card (only ``bands``, ``chip_size`` and ``output_dim`` are required)::

    name: ssl4eo-resnet18          # names the embedding space (default: file stem)
    version: "1"                   # default: first 12 hex digits of the file's sha256
    architecture: ResNet-18
    bands: [B02, B03, B04, B08]
    chip_size: 224
    gsd: 10
    normalization: {type: z-score, mean: [...], stddev: [...]}   # MLM value scaling
    output_dim: 512
    metric: cosine                 # cosine | l2 | inner_product
    normalized: true               # L2-normalise the vectors
    format: torchscript            # torchscript | export | state_dict (default: detect)
    pretrained_source: SSL4EO-S12  # pretrained weights: their pretraining data (MLM);
                                   # without it (or `pretrained: true`) mlm:pretrained is false

The model must map ``(B, C, chip, chip)`` float32 (scaled as the card says) to ``(B, D)``;
this is checked once on load with a zero batch. A ``torch.export`` program runs in the
mode it was exported in (export it in eval mode); one exported with a static batch size
(``torch.export.export(model, (torch.zeros(1, C, chip, chip),))``) is run on slices of
that size, one with a dynamic batch dimension (``dynamic_shapes``) on whole batches.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from embcat.encoders.base import Encoder, InputSpec, OutputSpec, Scaling, parse_bands
from embcat.encoders.errors import EncoderOptionError
from embcat.encoders.manifest import sha256_file

_CARD_SUFFIXES = (".yaml", ".yml", ".json")
_CARD_KEYS = {
    "name", "version", "architecture", "summary", "bands", "chip_size", "gsd",
    "normalization", "scaling", "output_dim", "dimensions", "dtype", "metric", "normalized",
    "format", "model", "model_kwargs", "pretrained", "pretrained_source", "variable_chip_size",
}  # fmt: skip


def load_card(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise EncoderOptionError(f"checkpoint: cannot read model card {path}: {exc}") from exc
    try:
        card = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise EncoderOptionError(f"checkpoint: model card {path} is not valid: {exc}") from exc
    if not isinstance(card, dict):
        raise EncoderOptionError(f"checkpoint: model card {path} must be a mapping")
    unknown = set(card) - _CARD_KEYS
    if unknown:
        raise EncoderOptionError(
            f"checkpoint: model card {path} has unknown keys: {', '.join(sorted(unknown))}"
        )
    missing = [k for k in ("bands", "chip_size") if k not in card]
    if "output_dim" not in card and "dimensions" not in card:
        missing.append("output_dim")
    if missing:
        raise EncoderOptionError(f"checkpoint: model card {path} lacks {', '.join(missing)}")
    return card


def _find_card(path: Path) -> Path:
    for suffix in _CARD_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise EncoderOptionError(
        f"checkpoint: no model card for {path} (looked for "
        f"{', '.join(path.with_suffix(s).name for s in _CARD_SUFFIXES)}; or pass card=PATH)"
    )


def _fixed_batch(program: Any) -> int | None:
    """The batch size a ``torch.export`` program was exported with when it is static."""
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in program.graph_signature.user_inputs:
            continue
        val = node.meta.get("val")
        shape = getattr(val, "shape", None)
        if shape is not None and len(shape) == 4 and isinstance(shape[0], int):
            return int(shape[0])
        return None
    return None


def _load_module(path: Path, card: dict[str, Any], card_path: Path) -> torch.nn.Module:
    fmt = card.get("format") or ("export" if path.suffix == ".pt2" else None)
    if fmt == "export":
        try:
            program = torch.export.load(str(path))
            exported = program.module()
        except Exception as exc:
            raise EncoderOptionError(
                f"checkpoint: cannot load {path} as torch.export: {exc}"
            ) from exc
        # A program exported with a static batch size (e.g. one example chip) runs on
        # slices of that size; CheckpointEncoder.forward splits and pads the batches.
        exported.embcat_fixed_batch = _fixed_batch(program)  # type: ignore[assignment]
        return exported
    if fmt in (None, "torchscript"):
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated upstream, but it is what sites hold.
                warnings.simplefilter("ignore", DeprecationWarning)
                module: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")
            return module
        except Exception as exc:
            if fmt == "torchscript" or "model" not in card:
                raise EncoderOptionError(
                    f"checkpoint: cannot load {path} as TorchScript ({exc}); for a state "
                    f"dict, name the model class in {card_path} as model: 'module:Class'"
                ) from exc
    if fmt not in (None, "state_dict"):
        raise EncoderOptionError(f"checkpoint: unknown format {fmt!r} in {card_path}")
    spec = card.get("model")
    if not isinstance(spec, str) or ":" not in spec:
        raise EncoderOptionError(
            f"checkpoint: a state dict needs model: 'package.module:ClassName' in {card_path}"
        )
    module_name, _, class_name = spec.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise EncoderOptionError(f"checkpoint: cannot import model class {spec!r}: {exc}") from exc
    try:
        model = cls(**(card.get("model_kwargs") or {}))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        model.load_state_dict(state)
    except Exception as exc:
        raise EncoderOptionError(
            f"checkpoint: cannot load state dict {path} into {spec}: {exc}"
        ) from exc
    if not isinstance(model, torch.nn.Module):
        raise EncoderOptionError(f"checkpoint: {spec} is not a torch.nn.Module")
    return model


class CheckpointEncoder(Encoder):
    """A TorchScript / torch.export / state-dict model described by a model card."""

    name = "checkpoint"
    version = "0"
    summary = "user-supplied TorchScript, torch.export or state-dict model + model card"
    architecture = "user-supplied"

    def __init__(self, path: str | None = None, card: str | None = None) -> None:
        if not path:
            raise EncoderOptionError("checkpoint: option 'path' (the model file) is required")
        model_path = Path(path).expanduser()
        if not model_path.is_file():
            raise EncoderOptionError(f"checkpoint: model file {model_path} does not exist")
        card_path = Path(card).expanduser() if card else _find_card(model_path)
        data = load_card(card_path)
        digest = sha256_file(model_path)
        try:
            scaling = Scaling.from_dict(data.get("normalization", data.get("scaling")))
            input_spec = InputSpec(
                bands=parse_bands(data["bands"], ()),
                chip_size=int(data["chip_size"]),
                gsd=float(data["gsd"]) if data.get("gsd") is not None else None,
                scaling=scaling,
                variable_chip_size=bool(data.get("variable_chip_size", False)),
            )
            scaling.affine(len(input_spec.bands))  # per-band values must match the bands
            output_spec = OutputSpec(
                dimensions=int(data.get("output_dim", data.get("dimensions", 0))),
                dtype=data.get("dtype", "float32"),
                metric=data.get("metric", "cosine"),
                normalized=bool(data.get("normalized", False)),
            )
        except EncoderOptionError as exc:
            raise EncoderOptionError(f"checkpoint: model card {card_path}: {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise EncoderOptionError(f"checkpoint: model card {card_path}: {exc}") from exc
        module = _load_module(model_path, data, card_path)
        self.name = str(data.get("name") or model_path.stem)
        self.version = str(data.get("version") or digest[:12])
        self.architecture = str(data.get("architecture") or type(module).__name__)
        self.summary = str(data.get("summary") or f"checkpoint {model_path.name}")
        # pretrained only when the card says so (`pretrained: true` or the pretraining source)
        source = data.get("pretrained_source")
        self.pretrained = bool(data.get("pretrained", source is not None))
        self.pretrained_source = str(source) if self.pretrained and source else None
        self._format = str(data.get("format") or "")
        super().__init__(
            input_spec=input_spec,
            output_spec=output_spec,
            module=module,
            options={"path": str(model_path), "card": str(card_path), "sha256": digest},
        )
        self._check_output(model_path)

    def model_asset(self) -> dict[str, Any]:
        path = Path(self.options["path"]).resolve()
        kind = {"export": "torch.export", "state_dict": "torch.save"}.get(
            self._format or ("export" if path.suffix == ".pt2" else "torchscript"),
            "torch.jit.script",
        )
        return {
            "href": path.as_uri(),
            "type": "application/octet-stream; framework=pytorch",
            "title": f"{self.name} {self.version} weights (on the encoding site)",
            "roles": ["mlm:model", "mlm:weights"],
            "mlm:artifact_type": kind,
            "file:checksum": "1220" + self.options["sha256"],
        }

    def hyperparameters(self) -> dict[str, Any]:
        # Paths are site-specific; the weights' digest identifies the model.
        return {"sha256": self.options["sha256"], "file": Path(self.options["path"]).name}

    def space_options(self, chip_size: int | None = None) -> dict[str, Any]:
        # The file's name may differ from site to site; its sha256 and the card's bands,
        # chip size, scaling and output spec (all in the canonical form) name the space.
        out = super().space_options(chip_size)
        out["options"].pop("file", None)
        return out

    def _check_output(self, model_path: Path) -> None:
        size = self.input_spec.chip_size
        probe = torch.zeros((1, len(self.input_spec.bands), size, size))
        try:
            with torch.inference_mode():
                out = self.forward(self.preprocess(probe))
        except Exception as exc:
            raise EncoderOptionError(
                f"checkpoint: model {model_path} fails on a (1, {len(self.input_spec.bands)}, "
                f"{size}, {size}) batch as the card declares: {exc}"
            ) from exc
        if tuple(out.shape) != (1, self.output_spec.dimensions):
            raise EncoderOptionError(
                f"checkpoint: model {model_path} gives shape {tuple(out.shape)}, the card "
                f"declares output_dim {self.output_spec.dimensions}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        fixed = getattr(self.module, "embcat_fixed_batch", None)
        if fixed and x.shape[0] != fixed:
            parts = []
            for part in x.split(fixed):
                n = part.shape[0]
                if n < fixed:  # pad the last slice to the program's batch size
                    pad = part.new_zeros((fixed - n, *part.shape[1:]))
                    part = torch.cat([part, pad])
                parts.append(self._run(part)[:n])
            return torch.cat(parts)
        return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        out = self.module(x)
        if isinstance(out, tuple | list):  # e.g. (embedding, aux)
            out = out[0]
        return out
