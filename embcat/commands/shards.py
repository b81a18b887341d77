"""``embcat shard``: shard servers and the spaces placed on them (docs/scaling.md §6)."""

from __future__ import annotations

import json

import click

from embcat.commands import cli_settings


@click.group()
def shard() -> None:
    """Shards: a space's partition on other PostgreSQL servers."""


@shard.command("add")
@click.argument("name")
@click.argument("url")
@click.option(
    "--home-url",
    default=None,
    help="The catalogue database as the shard reaches it (default: EMBCAT_DATABASE_URL).",
)
def add(name: str, url: str, home_url: str | None) -> None:
    """Register shard NAME at URL (postgresql://user:password@host:port/db) and prepare it."""
    from embcat.catalog.db import connect
    from embcat.catalog.settings import to_libpq_url
    from embcat.catalog.store import shard_layout

    settings = cli_settings().database
    with connect(settings) as conn:
        shard_layout.add_shard(
            conn, name, url, home_url=home_url or to_libpq_url(settings.database_url)
        )
        conn.commit()
    click.echo(f"shard {name} added")


@shard.command("place")
@click.argument("collection")
@click.argument("names", nargs=-1, required=True)
def place(collection: str, names: tuple[str, ...]) -> None:
    """Move COLLECTION's embedding space onto the shards NAMES (hash of the item id)."""
    from embcat.catalog.db import connect
    from embcat.catalog.errors import InvalidInput
    from embcat.catalog.store import shard_layout
    from embcat.catalog.store.spaces import collection_space

    with connect(cli_settings().database) as conn:
        space = collection_space(conn, collection)
        if space is None:
            raise InvalidInput(f"collection {collection!r} has no embeddings to place")
        result = shard_layout.place(conn, space.id, list(names))
    click.echo(
        f"space {result['space_id']}: {result['rows']} rows on {', '.join(result['shards'])}"
        f" in {result['total_s']:.1f} s (move {result['move_s']:.1f} s)"
    )


@shard.command("list")
def list_command() -> None:
    """The shards and the spaces each holds, as JSON."""
    from embcat.catalog.db import connect
    from embcat.catalog.store import shard_layout

    with connect(cli_settings().database) as conn:
        click.echo(json.dumps(shard_layout.list_shards(conn), indent=2))
