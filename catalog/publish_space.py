"""Which collection a publish writes to, and whether the run's vectors may join it.

``check_target`` refuses, before any shard is read, an invalid collection id or a
collection of another embedding space (the remote upload runs it when the manifest
arrives); ``space_conflict`` says why a run's vectors are not of a collection's space.
"""

from __future__ import annotations

from typing import Any

import psycopg

from embcat.catalog.errors import Conflict, InvalidInput, translated
from embcat.catalog.item_shape import EMB_CHIP_LAYOUT
from embcat.catalog.store import collections as store_collections
from embcat.catalog.store import spaces as spaces_mod
from embcat.catalog.store.spaces import Space
from embcat.encoders.manifest import (
    Manifest,
    make_space_options,
    options_sha256,
    space_differences,
    space_options,
)


def existing_collection(
    conn: psycopg.Connection, collection_id: str
) -> tuple[dict[str, Any], Space | None] | None:
    """The collection's STAC and space, its row locked ``FOR NO KEY UPDATE`` (None: new)."""
    row = store_collections.get(conn, collection_id, lock="no key update")
    if row is None:
        return None
    space = spaces_mod.get_space(conn, row.space_id) if row.space_id is not None else None
    return row.stac, space


def check_space(
    collection_id: str, space: Space, manifest: Manifest, existing_stac: dict[str, Any] | None
) -> None:
    """Refuse (Conflict) a run whose vectors are not of the collection's space."""
    why = space_conflict(collection_id, space, manifest, existing_stac)
    if why is not None:
        raise Conflict(why)


def check_target(conn: psycopg.Connection, manifest: Manifest, collection_id: str) -> None:
    """Refuse, before any shard is read or sent, a target the publish would refuse: an
    invalid collection id (InvalidInput), a collection of another embedding space
    (Conflict). The remote upload runs this when the manifest arrives."""
    from embcat.catalog.stac import COLLECTION_ID

    if not COLLECTION_ID.match(collection_id):
        raise InvalidInput(
            f"invalid collection id {collection_id!r}: use 1..255 letters, digits, '.', '_'"
            " or '-', starting with a letter or digit"
        )
    with translated():
        row = store_collections.get(conn, collection_id)
        if row is None or row.space_id is None:
            return  # a new collection, or one without vectors yet: any space may start it
        check_space(collection_id, spaces_mod.get_space(conn, row.space_id), manifest, row.stac)


def _legacy_options(space: Space, stac: dict[str, Any] | None) -> dict[str, Any]:
    """What a space registered before migration 0009 recorded of its options: the MLM
    hyperparameters of its encoder and the collection's chip size (None: not recorded)."""
    hyper = space.mlm.get("mlm:hyperparameters")
    hyper = dict(hyper) if isinstance(hyper, dict) else {}
    layout = (stac or {}).get(EMB_CHIP_LAYOUT) or {}
    chip = layout.get("chip_size") if isinstance(layout, dict) else None
    if isinstance(chip, list) and chip:
        chip = chip[0]
    bands = hyper.get("bands")
    scaling = hyper.get("scaling")
    return make_space_options(
        name=space.encoder_name,
        version=space.encoder_version,
        dimensions=space.dimensions,
        metric=space.metric,
        normalized=space.normalized,
        bands=list(bands) if isinstance(bands, list) else [],
        chip_size=chip if isinstance(chip, int) else None,
        scaling=scaling if isinstance(scaling, dict) else None,
        options=hyper,
    ) | ({} if isinstance(bands, list) else {"bands": None})


def space_conflict(
    collection_id: str, space: Space, manifest: Manifest, existing_stac: dict[str, Any] | None
) -> str | None:
    """Why the run's vectors may not join the collection's space (None: they may).

    Same encoder, version, dimensions and metric, and the same canonical encoder options
    (their sha256). A space registered before the options were recorded (migration 0009)
    is compared on what it recorded (its MLM hyperparameters, the collection's chip size):
    any option recorded on both sides that differs refuses the run.
    """
    enc = manifest.encoder
    ours = (enc.name, enc.version, enc.dimensions, enc.metric)
    theirs = (space.encoder_name, space.encoder_version, space.dimensions, space.metric)
    advice = (
        " Vectors of different embedding spaces are never mixed: publish to another"
        " collection (--collection), or encode again with the collection's options."
    )
    if ours != theirs:
        return (
            f"collection {collection_id!r} holds {space.encoder_name} {space.encoder_version}"
            f" vectors ({space.dimensions}d, {space.metric}); the manifest was made by"
            f" {enc.name} {enc.version} ({enc.dimensions}d, {enc.metric})." + advice
        )
    run = space_options(manifest)
    if space.options_sha256 is not None:
        if space.options_sha256 == options_sha256(run):
            return None
        diffs = space_differences(space.options or {}, run)
        return (
            f"collection {collection_id!r} holds vectors of another embedding space: the"
            f" encoder options differ (collection vs run: {'; '.join(diffs) or 'unknown'};"
            f" options sha256 {space.options_sha256[:12]} vs {options_sha256(run)[:12]})." + advice
        )
    diffs = space_differences(_legacy_options(space, existing_stac), run, known_only=True)
    if diffs:
        return (
            f"collection {collection_id!r} holds vectors of another embedding space: the"
            f" encoder options differ from those its space recorded (collection vs run:"
            f" {'; '.join(diffs)})." + advice
        )
    return None
