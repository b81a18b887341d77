"""MOSAIKS random convolutional features (Rolf et al., Nature Communications 12, 4392, 2021).

Featurisation: K patches of ``patch_size x patch_size x C`` act as convolution filters;
each response map gives two features, ``mean(ReLU(conv - bias))`` and
``mean(ReLU(-conv - bias))`` (average pooling over the chip), so a chip becomes a
``2K`` vector, exactly as in the paper.

**Variant used here: seeded generator patches.** The paper samples the K patches from
training imagery and ZCA-whitens them. Here the patches are drawn from a seeded standard
normal generator (``torch.Generator``, float64, then cast), made zero-mean and unit-norm
each, so the featurisation needs no data and no downloaded weights, and the same
``seed`` gives bit-identical filters in every run, process and rank. Zero-mean filters
respond to spatial texture and spectral shape rather than to overall brightness.

Inputs are scaled before the convolution (default: Sentinel-2 L1C digital numbers to
reflectance, ``x / 10000``); ``bias`` is in those scaled units.
"""

from __future__ import annotations

from typing import Any

import torch

from embcat.encoders.base import (
    SENTINEL2_L1C_BANDS,
    Encoder,
    InputSpec,
    OutputSpec,
    parse_bands,
)
from embcat.encoders.errors import EncoderOptionError

# Largest conv response tensor (bytes) computed at once; batches are split to fit.
_RESPONSE_BUDGET = 256 * 1024 * 1024


def mosaiks_filters(num_features: int, bands: int, patch_size: int, seed: int) -> torch.Tensor:
    """The K seeded filters ``(K, C, p, p)``: standard normal, zero-mean, unit L2 norm."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w = torch.randn(
        (num_features, bands * patch_size * patch_size), generator=gen, dtype=torch.float64
    )
    w = w - w.mean(dim=1, keepdim=True)
    w = w / w.norm(dim=1, keepdim=True)
    return w.view(num_features, bands, patch_size, patch_size).to(torch.float32)


class MosaiksModule(torch.nn.Module):
    def __init__(self, filters: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.register_buffer("filters", filters)
        self.bias = float(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        filters: torch.Tensor = self.filters  # type: ignore[assignment]
        k, _, p, _ = filters.shape
        # One chip at a time, filters in chunks that fit the budget: a chip's features
        # then never depend on which other chips share its batch (bit-identical results
        # for any batch size, rank count or resume point).
        per_filter = max(1, x.shape[2] - p + 1) * max(1, x.shape[3] - p + 1) * 4
        step = max(1, min(k, _RESPONSE_BUDGET // per_filter))
        rows = []
        for chip in x.split(1):
            pos, neg = [], []
            for start in range(0, k, step):
                conv = torch.nn.functional.conv2d(chip, filters[start : start + step])
                # For bias b >= 0, softshrink(c, b) = ReLU(c - b) - ReLU(-c - b) and its
                # absolute value is their sum (at most one is non-zero), so one pass over
                # the response map gives both pooled features (3x faster than two ReLUs).
                shrunk = torch.nn.functional.softshrink(conv, self.bias)
                signed = shrunk.mean(dim=(2, 3))
                total = shrunk.abs_().mean(dim=(2, 3))
                pos.append((total + signed) / 2)
                neg.append((total - signed) / 2)
            rows.append(torch.cat(pos + neg, dim=1))
        return torch.cat(rows, dim=0)


class MosaiksEncoder(Encoder):
    """MOSAIKS random convolutional features, 2K dimensions, no weights needed."""

    name = "mosaiks"
    version = "1.0"
    summary = "MOSAIKS random convolutional features (seeded generator patches), 2K dims"
    architecture = "MOSAIKS random convolutional features"
    adapts_to_source_bands = True

    def __init__(
        self,
        num_features: int = 256,
        patch_size: int = 3,
        seed: int = 0,
        bias: float = 0.01,
        bands: str | list[str] | None = None,
        chip_size: int = 256,
        gsd: float | None = 10.0,
        scaling: dict[str, Any] | None = None,
        dtype: str = "float32",
    ) -> None:
        num_features, patch_size, seed = int(num_features), int(patch_size), int(seed)
        if num_features <= 0:
            raise EncoderOptionError(f"mosaiks: num_features must be positive: {num_features}")
        if float(bias) < 0:
            raise EncoderOptionError(f"mosaiks: bias must be >= 0: {bias}")
        if patch_size <= 0 or patch_size > int(chip_size):
            raise EncoderOptionError(
                f"mosaiks: patch_size must be in 1..chip_size ({chip_size}): {patch_size}"
            )
        band_names = parse_bands(bands, SENTINEL2_L1C_BANDS)
        input_spec = InputSpec.any_size(band_names, chip_size, gsd, scaling)
        output_spec = OutputSpec(
            dimensions=2 * num_features,
            dtype=dtype,  # type: ignore[arg-type]
            metric="cosine",
            normalized=False,
        )
        filters = mosaiks_filters(num_features, len(band_names), patch_size, seed)
        super().__init__(
            input_spec=input_spec,
            output_spec=output_spec,
            module=MosaiksModule(filters, float(bias)),
            options={
                "num_features": num_features,
                "patch_size": patch_size,
                "seed": seed,
                "bias": float(bias),
                "bands": list(band_names),
                "chip_size": int(chip_size),
                "gsd": input_spec.gsd,
                "scaling": input_spec.scaling.to_dict(),
                "dtype": dtype,
                "patch_source": "seeded-generator",
            },
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        return self.module(x)
