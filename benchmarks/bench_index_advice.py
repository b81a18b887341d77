"""Calibration of the index advice (catalog/index_advice.py) against the real recall.

For each data set (N x 768, float16-rounded as stored): the real recall@10 of the binary
kinds' search over all N rows (the 300 nearest by Hamming distance of the centred sign
bits, re-ranked exactly; the candidates of ``SimilaritySettings``), against the advice's
measure on a seeded sample of ADVICE_SAMPLE rows (ADVICE_CANDIDATES candidates), and the
measure the advice used before (the candidates scaled to the sample's share of N). The
advice is right for a data set when its measure and the real recall fall on the same side
of BINARY_RECALL_FLOOR.

    nice .venv/bin/python benchmarks/bench_index_advice.py [--n 200000] [--queries 40]

Writes ``benchmarks/results/index_advice_<n>.json`` after every data set; numpy only (no
database). Data sets: tests/vectorgen.py's manifold (encoder-like: intrinsic dimension,
noise, ReLU) and isotropic Gaussian mixtures (the ANN worst case; bench_scale's
``--data mixture`` is the 50-cluster, spread 0.35 one).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from vectorgen import clustered_vectors, manifold_vectors  # noqa: E402

from embcat.catalog import index_advice as ia  # noqa: E402
from embcat.catalog.store.spaces import Space  # noqa: E402

DIMS = 768
REAL_CANDIDATES = 300  # SimilaritySettings.rerank_candidates


def data_sets(n: int) -> dict[str, Callable[[], np.ndarray]]:
    return {
        "manifold, intrinsic 32": lambda: manifold_vectors(n, DIMS, seed=1),
        "manifold, intrinsic 16": lambda: manifold_vectors(n, DIMS, intrinsic=16, seed=2),
        "manifold, intrinsic 64": lambda: manifold_vectors(n, DIMS, intrinsic=64, seed=3),
        "manifold, noise 0.3": lambda: manifold_vectors(n, DIMS, noise=0.3, seed=4),
        "manifold, ReLU": lambda: np.maximum(manifold_vectors(n, DIMS, seed=5), 0),
        "mixture, 50 clusters, spread 0.2": lambda: clustered_vectors(n, DIMS, spread=0.2, seed=6),
        "mixture, 50 clusters, spread 0.35": lambda: clustered_vectors(n, DIMS, seed=0),
        "mixture, 50 clusters, spread 0.5": lambda: clustered_vectors(n, DIMS, spread=0.5, seed=7),
        "mixture, 500 clusters, spread 0.35": lambda: clustered_vectors(
            n, DIMS, clusters=500, seed=8
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=40)
    a = p.parse_args()
    out = ROOT / "benchmarks" / "results" / f"index_advice_{a.n}.json"
    space = Space(1, "bench", "1", DIMS)
    result: dict[str, Any] = {
        "n": a.n, "dims": DIMS, "queries": a.queries, "sample": ia.ADVICE_SAMPLE,
        "candidates": ia.ADVICE_CANDIDATES, "real_candidates": REAL_CANDIDATES,
        "floor": ia.BINARY_RECALL_FLOOR, "data": {},
    }  # fmt: skip
    for name, make in data_sets(a.n).items():
        t = time.perf_counter()
        x = make().astype(np.float16).astype(np.float32)
        rng = np.random.default_rng(1)
        q = rng.choice(a.n, a.queries, replace=False)
        truth = ia.exact_topk(x, x[q], "cosine", ia.ADVICE_K)
        real = ia.recall_at_k(
            truth, ia.binary_rerank_topk(x, x[q], space, REAL_CANDIDATES, ia.ADVICE_K)
        )
        sample = x[rng.choice(a.n, ia.ADVICE_SAMPLE, replace=False)]
        measure = ia.binary_recall(sample, space)
        # the earlier rule: the real candidates scaled to the sample's share of the rows
        share = max(ia.ADVICE_K, int(np.ceil(REAL_CANDIDATES * ia.ADVICE_SAMPLE / a.n)))
        qs = np.random.default_rng(0).choice(len(sample), ia.ADVICE_QUERIES, replace=False)
        scaled = ia.recall_at_k(
            ia.exact_topk(sample, sample[qs], "cosine", ia.ADVICE_K),
            ia.binary_rerank_topk(sample, sample[qs], space, share, ia.ADVICE_K),
        )
        floor = ia.BINARY_RECALL_FLOOR
        result["data"][name] = {
            "real_recall_at_10": round(real, 4),
            "measure": round(measure, 4),
            "scaled_measure": round(scaled, 4),
            "scaled_candidates": share,
            "advice_right": (measure >= floor) == (real >= floor),
            "scaled_right": (scaled >= floor) == (real >= floor),
            "seconds": round(time.perf_counter() - t, 1),
        }
        out.write_text(json.dumps(result, indent=2))
        print(name, json.dumps(result["data"][name]), flush=True)


if __name__ == "__main__":
    main()
