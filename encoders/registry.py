"""The encoder registry: one entry-point group, ``embcat.encoders``, for every encoder.

Built-ins (``mosaiks``, ``spectral-stats``, ``checkpoint``) are registered in embcat's own
``pyproject.toml`` exactly as a third-party plugin registers its encoders::

    [project.entry-points."embcat.encoders"]
    my-encoder = "my_package.encoder:MyEncoder"

The entry point names the encoder; its object is an :class:`encoders.base.Encoder`
subclass or any callable ``(**options) -> Encoder``. A name registered by two entry
points (that point at different objects) is refused with :class:`DuplicateEncoder`.

API in the style of torchgeo's models API::

    from embcat.encoders import get_encoder, list_encoders
    list_encoders()                      # ['checkpoint', 'mosaiks', 'spectral-stats']
    enc = get_encoder("mosaiks", num_features=128, chip_size=64)
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, distributions
from typing import Any

from embcat.encoders.base import Encoder
from embcat.encoders.errors import (
    DuplicateEncoder,
    EncodeError,
    EncoderNotFound,
    EncoderOptionError,
)

ENTRY_POINT_GROUP = "embcat.encoders"


@dataclass(frozen=True)
class EncoderEntry:
    """One registered encoder: its name, the entry point and the distribution providing it."""

    name: str
    value: str  # "module:attr"
    distribution: str  # e.g. "embcat 0.1.0"
    entry_point: EntryPoint

    def load(self) -> Callable[..., Encoder]:
        try:
            obj = self.entry_point.load()
        except Exception as exc:
            raise EncodeError(
                f"encoder {self.name!r} ({self.value}, from {self.distribution}) "
                f"cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        if not callable(obj):
            raise EncodeError(f"encoder {self.name!r} ({self.value}) is not callable")
        return obj


def _distribution_label(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


def _group_entry_points() -> list[EntryPoint]:
    """Entry points of the group, one copy of metadata per distribution.

    Like ``importlib.metadata.entry_points`` (the first copy of a distribution on
    ``sys.path`` wins), except that a copy declaring no encoders (e.g. a stale
    ``*.egg-info`` left in a checkout that is on ``sys.path``) does not hide a later,
    installed copy that does.
    """
    seen: set[str] = set()
    result: list[EntryPoint] = []
    for dist in distributions():
        key = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if key in seen:
            continue
        eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        if eps:
            seen.add(key)
            result.extend(eps)
    return result


def discover() -> dict[str, EncoderEntry]:
    """All encoders registered under :data:`ENTRY_POINT_GROUP`, by name.

    Raises :class:`DuplicateEncoder` when one name is registered twice for different
    objects (the same entry point seen twice, e.g. through an editable install and a
    checkout on ``sys.path``, is one registration).
    """
    found: dict[str, EncoderEntry] = {}
    for ep in _group_entry_points():
        entry = EncoderEntry(ep.name, ep.value, _distribution_label(ep), ep)
        previous = found.get(ep.name)
        if previous is None:
            found[ep.name] = entry
        elif previous.value != entry.value:
            raise DuplicateEncoder(
                f"encoder name {ep.name!r} is registered twice in entry-point group "
                f"{ENTRY_POINT_GROUP!r}: {previous.value} (from {previous.distribution}) and "
                f"{entry.value} (from {entry.distribution}); uninstall or rename one"
            )
    return dict(sorted(found.items()))


def list_encoders() -> list[str]:
    """Names of all registered encoders, sorted."""
    return list(discover())


def get_encoder_entry(name: str) -> EncoderEntry:
    entries = discover()
    if name not in entries:
        raise EncoderNotFound(
            f"no encoder named {name!r} (registered: {', '.join(entries) or 'none'}); "
            f"plugins register under the entry-point group {ENTRY_POINT_GROUP!r}"
        )
    return entries[name]


_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
               list: "a list", dict: "a JSON object"}  # fmt: skip


def _convert(value: Any, kind: Any) -> Any:
    """``value`` as ``kind`` (a plain type or ``list[T]``); raises ValueError if it is not."""
    origin = typing.get_origin(kind) or kind
    if origin is Any or kind is inspect.Parameter.empty:
        return value
    if origin is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError
    if origin is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise ValueError
    if origin is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise ValueError
    if origin is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError
        (inner,) = typing.get_args(kind)[:1] or (Any,)
        return [_convert(v, inner) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError
        return value
    return value


def _describe(kinds: list[Any]) -> str:
    words = []
    for kind in kinds:
        origin = typing.get_origin(kind) or kind
        if origin in (list, tuple):
            args = typing.get_args(kind)
            inner = _TYPE_WORDS.get(args[0], "values").removeprefix("an ").removeprefix("a ")
            words.append(f"a list of {inner}s" if args else "a list")
        else:
            words.append(_TYPE_WORDS.get(origin, getattr(origin, "__name__", str(origin))))
    return " or ".join(dict.fromkeys(words))


def coerce_options(name: str, factory: Callable[..., Any], options: dict[str, Any]) -> dict:
    """Options converted to the types the factory's signature declares.

    ``-O num_features=512`` arrives as an int, ``-O seed=abc`` as the string ``'abc'``: a
    value that does not convert to the declared type is refused with one message naming
    the option, the expected type and the value. Options without annotations pass as is.
    """
    target = factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]
    try:
        hints = typing.get_type_hints(target)
        params = inspect.signature(target).parameters
    except (TypeError, ValueError, NameError):
        return dict(options)
    out: dict[str, Any] = {}
    for key, value in options.items():
        kind = hints.get(key) if key in params else None
        if kind is None or value is None:
            out[key] = value
            continue
        kinds = (
            [k for k in typing.get_args(kind) if k is not type(None)]
            if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
            else [kind]
        )
        for candidate in kinds:
            try:
                out[key] = _convert(value, candidate)
                break
            except (ValueError, TypeError):
                continue
        else:
            raise EncoderOptionError(
                f"{name}: option {key} must be {_describe(kinds)}, got {value!r}"
                f" (e.g. -O {key}=...)"
            )
    return out


def get_encoder(name: str, **options: Any) -> Encoder:
    """Instantiate the encoder registered as ``name`` with ``options`` (converted to the
    types its signature declares, see :func:`coerce_options`)."""
    factory = get_encoder_entry(name).load()
    try:
        encoder = factory(**coerce_options(name, factory, options))
    except EncodeError:
        raise
    except TypeError as exc:
        raise EncoderOptionError(f"encoder {name!r}: bad options {options}: {exc}") from exc
    except ValueError as exc:
        raise EncoderOptionError(f"encoder {name!r}: bad option value: {exc}") from exc
    if not isinstance(encoder, Encoder):
        raise EncodeError(
            f"encoder {name!r} returned {type(encoder).__name__}, not an encoders.base.Encoder"
        )
    return encoder
