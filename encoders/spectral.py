"""``spectral-stats``: a per-band statistics baseline.

For each band (in the declared order) the chip gives its mean, standard deviation and
the requested quantiles (default 10 %, 50 %, 90 %), computed on scaled values, so a chip
becomes a ``C * (2 + Q)`` vector laid out band-major: ``[B1 mean, B1 std, B1 q10, ...,
B2 mean, ...]``. It ignores spatial structure entirely, which is what makes it a useful
baseline for the learned and random-feature encoders.
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


class SpectralStatsEncoder(Encoder):
    name = "spectral-stats"
    version = "1.0"
    summary = "per-band mean, std and quantiles (baseline), C*(2+Q) dims"
    architecture = "per-band summary statistics"
    adapts_to_source_bands = True

    def __init__(
        self,
        bands: str | list[str] | None = None,
        quantiles: str | list[float] | None = None,
        chip_size: int = 256,
        gsd: float | None = 10.0,
        scaling: dict[str, Any] | None = None,
        dtype: str = "float32",
    ) -> None:
        band_names = parse_bands(bands, SENTINEL2_L1C_BANDS)
        if quantiles is None:
            qs = [0.1, 0.5, 0.9]
        else:
            parts = quantiles.split(",") if isinstance(quantiles, str) else quantiles
            try:
                qs = [float(q) for q in parts if str(q).strip()]
            except (TypeError, ValueError):
                raise EncoderOptionError(
                    f"spectral-stats: quantiles must be numbers in [0, 1], e.g."
                    f" -O quantiles=0.1,0.5,0.9; got {quantiles!r}"
                ) from None
        if any(not 0.0 <= q <= 1.0 for q in qs):
            raise EncoderOptionError(f"spectral-stats: quantiles must lie in [0, 1]: {qs}")
        input_spec = InputSpec.any_size(band_names, chip_size, gsd, scaling)
        super().__init__(
            input_spec=input_spec,
            output_spec=OutputSpec(
                dimensions=len(band_names) * (2 + len(qs)),
                dtype=dtype,  # type: ignore[arg-type]
                metric="l2",
                normalized=False,
            ),
            options={
                "bands": list(band_names),
                "quantiles": qs,
                "chip_size": int(chip_size),
                "gsd": float(gsd) if gsd is not None else None,
                "scaling": input_spec.scaling.to_dict(),
                "dtype": dtype,
            },
        )
        self._quantiles = torch.tensor(qs, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (B, C, HW)
        stats = [flat.mean(dim=2, keepdim=True), flat.std(dim=2, unbiased=False, keepdim=True)]
        if len(self._quantiles):
            q = self._quantiles.to(x.device)
            # torch.quantile limits its input size: one chip at a time stays far below it.
            per_chip = [torch.quantile(chip, q, dim=1).T for chip in flat]  # each (C, Q)
            stats.append(torch.stack(per_chip))
        return torch.cat(stats, dim=2).flatten(1)  # band-major (B, C * (2 + Q))
