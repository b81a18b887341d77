"""The encoder registry: one entry-point group, ``embcat.encoders``, for every encoder.

Built-ins (``mosaiks``, ``spectral-stats``, ``checkpoint``) are registered in embcat's own
``pyproject.toml`` exactly as a third-party plugin registers its encoders::

    [project.entry-points."embcat.encoders"]
    my-encoder = "my_package.encoder:MyEncoder"

The entry point names the encoder; its object is an :class:`encoders.base.Encoder`
subclass or any callable ``(**options) -> Encoder``. A name registered by two entry
points (that point at different objects) is refused with :class:`DuplicateEncoder`.

API in the style of torchgeo's models API::

    from encoders import get_encoder, list_encoders
    list_encoders()                      # ['checkpoint', 'mosaiks', 'spectral-stats']
    enc = get_encoder("mosaiks", num_features=128, chip_size=64)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, distributions
from typing import Any

from encoders.base import Encoder
from encoders.errors import DuplicateEncoder, EncodeError, EncoderNotFound, EncoderOptionError

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


def get_encoder(name: str, **options: Any) -> Encoder:
    """Instantiate the encoder registered as ``name`` with ``options``."""
    factory = get_encoder_entry(name).load()
    try:
        encoder = factory(**options)
    except EncodeError:
        raise
    except TypeError as exc:
        raise EncoderOptionError(f"encoder {name!r}: bad options {options}: {exc}") from exc
    if not isinstance(encoder, Encoder):
        raise EncodeError(
            f"encoder {name!r} returned {type(encoder).__name__}, not an encoders.base.Encoder"
        )
    return encoder
