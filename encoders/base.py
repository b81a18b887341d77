"""The encoder interface: what an encoder plugin declares and how it maps chips to vectors.

An encoder is a Python class (or a factory returning an instance) registered under the
entry-point group ``embcat.encoders`` (see :mod:`encoders.registry`). It declares

* its identity: ``name`` and ``version`` (together with the output spec they define the
  embedding space: vectors of different spaces are never compared);
* an :class:`InputSpec`: band names and their order, expected GSD, chip size, input
  dtype, value scaling (normalisation) applied before the model;
* an :class:`OutputSpec`: dimensions, dtype, distance metric, whether vectors are
  L2-normalised;

and maps a float batch ``(B, C, H, W)`` of *raw* source values to ``(B, D)``:
:meth:`Encoder.encode` applies the declared scaling, runs :meth:`Encoder.forward`, checks
the shape, L2-normalises when declared and casts to the output dtype. It describes itself
as STAC MLM metadata (:meth:`Encoder.mlm_properties`) through pystac's MLM extension.

A minimal third-party plugin::

    class MyEncoder(Encoder):
        name = "my-encoder"
        version = "1.0"
        def __init__(self, **options):
            super().__init__(input_spec=InputSpec(bands=("B04", "B03", "B02"), chip_size=224),
                             output_spec=OutputSpec(dimensions=768),
                             module=build_my_model(), options=options)
        def forward(self, x): return self.module(x)

and in its ``pyproject.toml``::

    [project.entry-points."embcat.encoders"]
    my-encoder = "my_package.encoder:MyEncoder"
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import torch

from embcat.encoders.errors import EncodeError, EncoderOptionError
from embcat.encoders.manifest import EncoderIdentity, make_space_options, options_sha256

ScalingType = Literal["none", "scale", "offset", "z-score", "min-max"]
Metric = Literal["cosine", "l2", "inner_product"]
OutputDtype = Literal["float32", "float16"]

# The 13 bands of a Sentinel-2 L1C scene in their usual file order.
SENTINEL2_L1C_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07",
    "B08", "B8A", "B09", "B10", "B11", "B12",
)  # fmt: skip


@dataclass(frozen=True)
class Scaling:
    """Value scaling applied to raw source values before the model (per band, in order).

    ``scale``: ``x / value``; ``offset``: ``x - value``; ``z-score``:
    ``(x - mean) / stddev``; ``min-max``: ``(x - minimum) / (maximum - minimum)``. Scalars
    apply to every band, sequences give one value per band. Types and parameter names
    are those of the MLM extension's Value Scaling Object.
    """

    type: ScalingType = "none"
    value: float | None = None
    mean: tuple[float, ...] | float | None = None
    stddev: tuple[float, ...] | float | None = None
    minimum: tuple[float, ...] | float | None = None
    maximum: tuple[float, ...] | float | None = None

    def __post_init__(self) -> None:
        required = {
            "none": (),
            "scale": ("value",),
            "offset": ("value",),
            "z-score": ("mean", "stddev"),
            "min-max": ("minimum", "maximum"),
        }
        if self.type not in required:
            raise EncoderOptionError(
                f"unknown value scaling {self.type!r} (choose from {', '.join(required)})"
            )
        missing = [name for name in required[self.type] if getattr(self, name) is None]
        if missing:
            raise EncoderOptionError(f"value scaling {self.type!r} needs {', '.join(missing)}")
        if self.type == "scale" and self.value == 0:
            raise EncoderOptionError("value scaling 'scale' needs a non-zero value")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Scaling:
        if data is None or data == {}:
            return cls()
        if not isinstance(data, dict):
            raise EncoderOptionError(
                f"value scaling must be a JSON object such as"
                f' {{"type": "scale", "value": 10000}}, got {data!r}'
            )
        known = {"type", "value", "mean", "stddev", "minimum", "maximum"}
        unknown = set(data) - known
        if unknown:
            raise EncoderOptionError(f"unknown value scaling keys: {', '.join(sorted(unknown))}")
        args: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**args)

    def per_band(self, name: str, bands: int) -> list[float] | None:
        raw = getattr(self, name)
        if raw is None:
            return None
        if isinstance(raw, int | float):
            return [float(raw)] * bands
        values = [float(v) for v in raw]
        if len(values) != bands:
            raise EncoderOptionError(
                f"value scaling {name} has {len(values)} values for {bands} bands"
            )
        return values

    def affine(self, bands: int) -> tuple[list[float], list[float]]:
        """``(shift, factor)`` per band such that scaled = (x - shift) * factor."""
        if self.type == "none":
            return [0.0] * bands, [1.0] * bands
        if self.type == "scale":
            return [0.0] * bands, [1.0 / float(self.value or 1.0)] * bands
        if self.type == "offset":
            return [float(self.value or 0.0)] * bands, [1.0] * bands
        if self.type == "z-score":
            mean = self.per_band("mean", bands) or []
            std = self.per_band("stddev", bands) or []
            if any(s <= 0 for s in std):
                raise EncoderOptionError("value scaling z-score needs positive stddev values")
            return mean, [1.0 / s for s in std]
        lo = self.per_band("minimum", bands) or []
        hi = self.per_band("maximum", bands) or []
        if any(h <= lo_ for lo_, h in zip(lo, hi, strict=True)):
            raise EncoderOptionError("value scaling min-max needs maximum > minimum")
        return lo, [1.0 / (h - lo_) for lo_, h in zip(lo, hi, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in asdict(self).items()
            if v is not None
        }


@dataclass(frozen=True)
class InputSpec:
    """What the encoder reads: bands (names, in model order), chip size, GSD, scaling."""

    bands: tuple[str, ...]
    chip_size: int
    gsd: float | None = None
    dtype: Literal["float32"] = "float32"
    scaling: Scaling = field(default_factory=Scaling)
    variable_chip_size: bool = False  # True: any H = W works (pooling to a fixed D)

    def __post_init__(self) -> None:
        if not self.bands:
            raise EncoderOptionError("an encoder needs at least one input band")
        if len(set(self.bands)) != len(self.bands):
            raise EncoderOptionError(f"duplicate band names in {list(self.bands)}")
        if self.chip_size <= 0:
            raise EncoderOptionError(f"chip size must be positive, got {self.chip_size}")

    @classmethod
    def any_size(
        cls,
        bands: Sequence[str],
        chip_size: int,
        gsd: float | None,
        scaling: dict[str, Any] | None,
    ) -> InputSpec:
        """The input of an encoder that pools any chip size to its dimensions, from its
        options: Sentinel-2 L1C digital numbers scaled by 1/10000 unless ``scaling`` says."""
        return cls(
            bands=tuple(bands),
            chip_size=int(chip_size),
            gsd=float(gsd) if gsd is not None else None,
            scaling=(
                Scaling.from_dict(scaling)
                if scaling is not None
                else Scaling(type="scale", value=10000.0)
            ),
            variable_chip_size=True,
        )


@dataclass(frozen=True)
class OutputSpec:
    """What the encoder produces: ``(B, dimensions)`` vectors of ``dtype``."""

    dimensions: int
    dtype: OutputDtype = "float32"
    metric: Metric = "cosine"
    normalized: bool = False

    def __post_init__(self) -> None:
        if self.dimensions <= 0:
            raise EncoderOptionError(f"output dimensions must be positive: {self.dimensions}")
        if self.dtype not in ("float32", "float16"):
            raise EncoderOptionError(f"output dtype must be float32 or float16: {self.dtype}")
        if self.metric not in ("cosine", "l2", "inner_product"):
            raise EncoderOptionError(f"unknown metric {self.metric!r}")


class Encoder(ABC):
    """Base class of every encoder. Subclasses set the class attributes and ``forward``."""

    # Plain attributes (not ClassVar): an encoder that loads a model card (``checkpoint``)
    # sets them per instance, since the card names the embedding space.
    name: str = ""
    version: str = "0"
    summary: str = ""
    architecture: str = ""
    framework: ClassVar[str] = "PyTorch"
    pretrained: bool = False
    pretrained_source: str | None = None
    # True: the model takes any bands (mosaiks, spectral-stats); with no ``bands`` option
    # the encode job then uses the source's bands when it lacks the default ones.
    adapts_to_source_bands: ClassVar[bool] = False

    def __init__(
        self,
        *,
        input_spec: InputSpec,
        output_spec: OutputSpec,
        module: torch.nn.Module | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.input_spec = input_spec
        self.output_spec = output_spec
        self.module = _eval_mode(module) if module is not None else None
        self.options: dict[str, Any] = dict(options or {})
        self._device = torch.device("cpu")
        shift, factor = input_spec.scaling.affine(len(input_spec.bands))
        self._shift = torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1)
        self._factor = torch.tensor(factor, dtype=torch.float32).view(1, -1, 1, 1)

    # -- the model ----------------------------------------------------------------------

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map a scaled float32 batch ``(B, C, H, W)`` on :attr:`device` to ``(B, D)``."""

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> Encoder:
        self._device = torch.device(device)
        if self.module is not None:
            self.module.to(self._device)
        self._shift = self._shift.to(self._device)
        self._factor = self._factor.to(self._device)
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the declared value scaling to raw values (float32)."""
        x = x.to(self._device, torch.float32)
        if self.input_spec.scaling.type == "none":
            return x
        return (x - self._shift) * self._factor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Raw ``(B, C, H, W)`` values to ``(B, D)`` vectors of the declared output dtype."""
        spec = self.input_spec
        if x.ndim != 4:
            raise EncodeError(f"encoder {self.name!r} expects (B, C, H, W), got {tuple(x.shape)}")
        if x.shape[1] != len(spec.bands):
            raise EncodeError(
                f"encoder {self.name!r} expects {len(spec.bands)} bands "
                f"({', '.join(spec.bands)}), got {x.shape[1]}"
            )
        if not spec.variable_chip_size and tuple(x.shape[2:]) != (spec.chip_size,) * 2:
            raise EncodeError(
                f"encoder {self.name!r} expects {spec.chip_size}x{spec.chip_size} chips, "
                f"got {x.shape[2]}x{x.shape[3]}"
            )
        out = self.forward(self.preprocess(x))
        dims = self.output_spec.dimensions
        if out.ndim != 2 or out.shape != (x.shape[0], dims):
            raise EncodeError(
                f"encoder {self.name!r} produced shape {tuple(out.shape)}, "
                f"declared ({x.shape[0]}, {dims})"
            )
        out = out.float()
        if self.output_spec.normalized:
            out = torch.nn.functional.normalize(out, p=2.0, dim=1)
        return out.to(torch.float16 if self.output_spec.dtype == "float16" else torch.float32)

    __call__ = encode

    # -- self-description ---------------------------------------------------------------

    def total_parameters(self) -> int:
        if self.module is None:
            return 0
        return sum(p.numel() for p in self.module.parameters()) + sum(
            b.numel() for b in self.module.buffers()
        )

    def hyperparameters(self) -> dict[str, Any]:
        """Options that define the model (recorded as ``mlm:hyperparameters``)."""
        return {k: v for k, v in self.options.items() if _jsonable(v)}

    def model_asset(self) -> dict[str, Any]:
        """The STAC MLM ``mlm:model`` asset: where the model is defined on the encoding site
        (a built-in encoder: its Python module, a ``file://`` URI)."""
        import inspect
        from pathlib import Path

        source = inspect.getsourcefile(type(self)) or ""
        return {
            "href": Path(source).resolve().as_uri() if source else "",
            "type": "text/x-python",
            "title": f"{self.name} {self.version}: model defined in code",
            "roles": ["mlm:model", "code"],
            "mlm:artifact_type": "python-class",
        }

    def mlm_properties(self, chip_size: int | None = None) -> dict[str, Any]:
        """The encoder as STAC MLM fields (``mlm:*``), built with pystac's MLM extension.

        ``chip_size``: the size the run encoded (variable-size encoders take any); the
        hyperparameters report it instead of the encoder's default."""
        import pystac
        from pystac.extensions.mlm import (
            Hyperparameters,
            InputStructure,
            MLMExtension,
            ModelBand,
            ModelInput,
            ModelOutput,
            ResultStructure,
            TaskType,
            ValueScaling,
            ValueScalingType,
        )
        from pystac.extensions.raster import DataType

        spec, out = self.input_spec, self.output_spec
        hyper = self.hyperparameters()
        if chip_size is not None and "chip_size" in hyper:
            hyper["chip_size"] = int(chip_size)
        bands = len(spec.bands)
        size = -1 if spec.variable_chip_size else spec.chip_size
        scaling: list[ValueScaling] | None = None
        if spec.scaling.type != "none":
            kind = ValueScalingType(spec.scaling.type)
            per: dict[str, Any] = {
                name: spec.scaling.per_band(name, bands)
                for name in ("value", "mean", "stddev", "minimum", "maximum")
            }
            scaling = [
                ValueScaling.create(
                    kind,
                    **{name: values[i] for name, values in per.items() if values is not None},
                )
                for i in range(bands)
            ]
        model_input = ModelInput.create(
            name="chip",
            bands=[ModelBand.create(b) for b in spec.bands],
            input=InputStructure.create(
                shape=[-1, bands, size, size],
                dim_order=["batch", "bands", "height", "width"],
                data_type=DataType(spec.dtype),
            ),
            value_scaling=None,
            description=(
                (
                    f"square chips of any size (default {spec.chip_size} px)"
                    if spec.variable_chip_size
                    else f"{size}x{size} pixel chips"
                )
                + (f" at {spec.gsd} m GSD" if spec.gsd else "")
                + f" of bands {', '.join(spec.bands)}"
            ),
        )
        # MLM >= 1.3 defines value_scaling as a list (one object per band); the pystac
        # class types it as one object, so the per-band objects are set as their dicts.
        model_input.properties["value_scaling"] = (
            [vs.to_dict() for vs in scaling] if scaling is not None else None
        )
        model_output = ModelOutput.create(
            name="embedding",
            tasks=[TaskType.SIMILARITY_SEARCH],
            result=ResultStructure.create(
                shape=[-1, out.dimensions],
                dim_order=["batch", "embedding"],
                data_type=DataType(out.dtype),
            ),
            description=(
                f"{out.dimensions}-d embedding, metric {out.metric}"
                + (", L2-normalised" if out.normalized else "")
            ),
        )
        item = pystac.Item(
            id=self.name,
            geometry=None,
            bbox=None,
            datetime=datetime(1970, 1, 1, tzinfo=UTC),
            properties={},
        )
        ext = MLMExtension.ext(item, add_if_missing=True)
        ext.apply(
            name=self.name,
            architecture=self.architecture or type(self).__name__,
            tasks=[TaskType.SIMILARITY_SEARCH],
            input=[model_input],
            output=[model_output],
            framework=self.framework,
            framework_version=torch.__version__.split("+")[0],
            total_parameters=self.total_parameters(),
            pretrained=self.pretrained,
            pretrained_source=self.pretrained_source,
            hyperparameters=Hyperparameters.create(**hyper) if hyper else None,
        )
        fields = {k: v for k, v in item.properties.items() if k.startswith("mlm:")}
        if not self.pretrained:  # MLM: trained from scratch is an explicit null source
            fields["mlm:pretrained_source"] = None
        return fields

    def space_options(self, chip_size: int | None = None) -> dict[str, Any]:
        """Every option that changes the vectors, canonical (the embedding space's identity).

        ``chip_size``: the run's (variable-size encoders take others than the declared one).
        An encoder whose hyperparameters hold values that never change a vector (a file
        name) overrides this to leave them out.
        """
        spec, out = self.input_spec, self.output_spec
        return make_space_options(
            name=self.name,
            version=self.version,
            dimensions=out.dimensions,
            metric=out.metric,
            normalized=out.normalized,
            bands=list(spec.bands),
            chip_size=chip_size or spec.chip_size,
            scaling=spec.scaling.to_dict(),
            options=self.hyperparameters(),
        )

    def identity(self, chip_size: int | None = None) -> EncoderIdentity:
        """The manifest's record of this encoder (defines the embedding space); ``chip_size``
        is the run's (see ``mlm_properties``)."""
        space = self.space_options(chip_size)
        mlm = self.mlm_properties(chip_size)
        mlm["embcat:model_asset"] = self.model_asset()
        return EncoderIdentity.model_validate(
            {
                "space_options": space,
                "space_sha256": options_sha256(space),
                "name": self.name,
                "version": self.version,
                "dimensions": self.output_spec.dimensions,
                "dtype": self.output_spec.dtype,
                "metric": self.output_spec.metric,
                "normalized": self.output_spec.normalized,
                "bands": list(self.input_spec.bands),
                "chip_size": chip_size or self.input_spec.chip_size,
                "gsd": self.input_spec.gsd,
                "mlm": mlm,
                "options": self.hyperparameters(),  # extra field: what re-creates the encoder
            }
        )

    def describe(self) -> dict[str, Any]:
        """Everything ``embcat encoders show`` prints."""
        return {
            "name": self.name,
            "version": self.version,
            "summary": self.summary,
            "input": {
                "bands": list(self.input_spec.bands),
                "chip_size": self.input_spec.chip_size,
                "variable_chip_size": self.input_spec.variable_chip_size,
                "gsd": self.input_spec.gsd,
                "dtype": self.input_spec.dtype,
                "scaling": self.input_spec.scaling.to_dict(),
            },
            "output": asdict(self.output_spec),
            "options": self.hyperparameters(),
            "mlm": self.mlm_properties(),
        }


def _eval_mode(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in eval mode. The module of a ``torch.export`` program refuses ``eval()``
    (it keeps the mode it was exported in, normally eval) and is used as it is."""
    try:
        return module.eval()
    except NotImplementedError:
        return module


def _jsonable(value: Any) -> bool:
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Sequence):
        return all(_jsonable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


def parse_bands(value: str | Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    """Band names given as a list or a comma-separated string; ``None`` gives ``default``."""
    if value is None:
        return tuple(default)
    if isinstance(value, str):
        value = [b for b in (part.strip() for part in value.split(",")) if b]
    return tuple(str(b) for b in value)
