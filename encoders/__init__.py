"""Encoder plugins, their registry and the HPC encode job (no database imports here).

The public names below load lazily, so that ``import encoders.manifest`` (the publish
job's contract) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embcat.encoders.base import Encoder, InputSpec, OutputSpec, Scaling
    from embcat.encoders.errors import EncodeError
    from embcat.encoders.job import EncodeResult, run_encode
    from embcat.encoders.registry import get_encoder, list_encoders

_LAZY = {
    "Encoder": "embcat.encoders.base",
    "InputSpec": "embcat.encoders.base",
    "OutputSpec": "embcat.encoders.base",
    "Scaling": "embcat.encoders.base",
    "EncodeError": "embcat.encoders.errors",
    "EncodeResult": "embcat.encoders.job",
    "run_encode": "embcat.encoders.job",
    "get_encoder": "embcat.encoders.registry",
    "list_encoders": "embcat.encoders.registry",
}

__all__ = [
    "EncodeError",
    "EncodeResult",
    "Encoder",
    "InputSpec",
    "OutputSpec",
    "Scaling",
    "get_encoder",
    "list_encoders",
    "run_encode",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
