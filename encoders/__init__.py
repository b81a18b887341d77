"""Encoder plugins, their registry and the HPC encode job (no database imports here).

The public names below load lazily, so that ``import encoders.manifest`` (the publish
job's contract) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from encoders.base import Encoder, InputSpec, OutputSpec, Scaling
    from encoders.errors import EncodeError
    from encoders.job import EncodeResult, run_encode
    from encoders.registry import get_encoder, list_encoders

_LAZY = {
    "Encoder": "encoders.base",
    "InputSpec": "encoders.base",
    "OutputSpec": "encoders.base",
    "Scaling": "encoders.base",
    "EncodeError": "encoders.errors",
    "EncodeResult": "encoders.job",
    "run_encode": "encoders.job",
    "get_encoder": "encoders.registry",
    "list_encoders": "encoders.registry",
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
