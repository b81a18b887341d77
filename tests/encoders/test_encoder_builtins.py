"""Built-in encoders: MOSAIKS features, the spectral-stats baseline, the Encoder contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embcat.encoders.base import Encoder, InputSpec, OutputSpec, Scaling
from embcat.encoders.errors import EncodeError, EncoderOptionError
from embcat.encoders.mosaiks import mosaiks_filters
from embcat.encoders.registry import get_encoder


def _chips(seed: int = 0, n: int = 3, bands: int = 13, size: int = 16) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((n, bands, size, size), generator=gen) * 4000 + 100


def test_mosaiks_is_reproducible_for_a_seed() -> None:
    x = _chips()
    a = get_encoder("mosaiks", num_features=16, seed=3, chip_size=16)(x)
    b = get_encoder("mosaiks", num_features=16, seed=3, chip_size=16)(x)
    c = get_encoder("mosaiks", num_features=16, seed=4, chip_size=16)(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_mosaiks_filters_are_zero_mean_unit_norm() -> None:
    w = mosaiks_filters(10, 4, 3, seed=0).double().flatten(1)
    assert torch.allclose(w.mean(dim=1), torch.zeros(10, dtype=torch.float64), atol=1e-7)
    assert torch.allclose(w.norm(dim=1), torch.ones(10, dtype=torch.float64), atol=1e-6)


def test_mosaiks_gives_2k_features_relu_of_both_signs_average_pooled() -> None:
    k, p, bias = 3, 3, 0.02
    enc = get_encoder("mosaiks", num_features=k, patch_size=p, bias=bias, bands="a,b", seed=1)
    x = _chips(n=2, bands=2, size=6)
    out = enc(x).numpy().astype(np.float64)
    assert out.shape == (2, 2 * k)
    # Independent computation: valid cross-correlation with each filter, in numpy.
    w = mosaiks_filters(k, 2, p, seed=1).numpy().astype(np.float64)
    xs = x.numpy().astype(np.float64) / 10000.0  # the default scaling
    windows = np.lib.stride_tricks.sliding_window_view(xs, (p, p), axis=(2, 3))
    conv = np.einsum("bchwij,kcij->bkhw", windows, w)
    expected = np.concatenate(
        [
            np.maximum(conv - bias, 0).mean(axis=(2, 3)),
            np.maximum(-conv - bias, 0).mean(axis=(2, 3)),
        ],
        axis=1,
    )
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-7)


def test_mosaiks_features_do_not_depend_on_the_batch() -> None:
    enc = get_encoder("mosaiks", num_features=8, chip_size=16)
    x = _chips(n=5)
    whole = enc(x)
    assert torch.equal(torch.cat([enc(x[:2]), enc(x[2:3]), enc(x[3:])]), whole)


def test_mosaiks_splits_filters_to_bound_memory(monkeypatch) -> None:
    enc = get_encoder("mosaiks", num_features=8, chip_size=16)
    x = _chips(n=2)
    whole = enc(x)
    monkeypatch.setattr("embcat.encoders.mosaiks._RESPONSE_BUDGET", 1)  # one filter at a time
    assert torch.allclose(enc(x), whole, rtol=1e-6, atol=1e-7)


def test_spectral_stats_are_band_major_mean_std_quantiles() -> None:
    enc = get_encoder("spectral-stats", bands="B02,B03", quantiles=[0.25, 0.75])
    x = _chips(n=2, bands=2, size=8)
    out = enc(x).numpy()
    assert out.shape == (2, 2 * 4)
    scaled = x.numpy().reshape(2, 2, -1).astype(np.float64) / 10000.0
    for b in range(2):
        for c in range(2):
            v = scaled[b, c]
            expected = [v.mean(), v.std(), np.quantile(v, 0.25), np.quantile(v, 0.75)]
            np.testing.assert_allclose(out[b, c * 4 : (c + 1) * 4], expected, rtol=1e-5)


def test_spectral_stats_rejects_quantiles_outside_unit_interval() -> None:
    with pytest.raises(EncoderOptionError, match="quantiles must lie in"):
        get_encoder("spectral-stats", quantiles="0.5,1.5")


class _Fixed(Encoder):
    name = "fixed"

    def __init__(self, normalized: bool, dims: int = 4) -> None:
        super().__init__(
            input_spec=InputSpec(
                bands=("a", "b"),
                chip_size=4,
                scaling=Scaling(type="z-score", mean=(10.0, 20.0), stddev=(2.0, 4.0)),
            ),
            output_spec=OutputSpec(dimensions=4, normalized=normalized, dtype="float16"),
        )
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(2, 3))
        return torch.cat([m, m * 2], dim=1)[:, : self.dims]


def test_encode_applies_scaling_normalisation_and_dtype() -> None:
    x = torch.stack([torch.full((4, 4), 14.0), torch.full((4, 4), 12.0)])[None]
    out = _Fixed(normalized=False)(x)
    assert out.dtype == torch.float16
    assert out.tolist() == [[2.0, -2.0, 4.0, -4.0]]  # (14-10)/2, (12-20)/4
    unit = _Fixed(normalized=True)(x)
    assert torch.allclose(unit.float().norm(dim=1), torch.ones(1), atol=1e-3)


def test_encode_checks_bands_chip_size_and_output_shape() -> None:
    with pytest.raises(EncodeError, match="expects 2 bands"):
        _Fixed(False)(torch.zeros(1, 3, 4, 4))
    with pytest.raises(EncodeError, match="expects 4x4 chips, got 8x8"):
        _Fixed(False)(torch.zeros(1, 2, 8, 8))
    with pytest.raises(EncodeError, match=r"produced shape \(1, 3\), declared \(1, 4\)"):
        _Fixed(False, dims=3)(torch.zeros(1, 2, 4, 4))


def test_mlm_value_scaling_lists_one_object_per_band() -> None:
    mlm = _Fixed(False).mlm_properties()
    assert mlm["mlm:input"][0]["value_scaling"] == [
        {"type": "z-score", "mean": 10.0, "stddev": 2.0},
        {"type": "z-score", "mean": 20.0, "stddev": 4.0},
    ]
    assert mlm["mlm:input"][0]["input"]["shape"] == [-1, 2, 4, 4]
    assert mlm["mlm:output"][0]["result"]["data_type"] == "float16"
