"""``embcat collections create|list|delete``."""

from __future__ import annotations

import json

import click

from embcat.commands import cli_settings


@click.group()
def collections() -> None:
    """Collections: reserve an empty one (for a scoped write key), list, delete."""


@collections.command("create")
@click.argument("collection_id")
@click.option("--title", help="Title (kept by the first publish).")
@click.option("--description", help="Description (kept by the first publish).")
def collections_create(collection_id: str, title: str | None, description: str | None) -> None:
    """Reserve COLLECTION_ID, empty; its first publish sets its embedding space.

    Then `embcat keys create NAME --scope write --collection COLLECTION_ID` makes a key
    that may publish into this collection only.
    """
    from embcat.catalog.collections import reserve_collection, validate_collection_id
    from embcat.catalog.db import connect

    validate_collection_id(collection_id)
    with connect(cli_settings().database) as conn:
        reserve_collection(conn, collection_id, title=title, description=description)
        conn.commit()
    click.echo(f"created collection {collection_id} (empty; its first publish sets its space)")


@collections.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def collections_list(as_json: bool) -> None:
    """List collections with their item counts and embedding spaces."""
    from embcat.catalog.collections import list_collections
    from embcat.catalog.db import connect

    with connect(cli_settings().database) as conn:
        found = list_collections(conn)
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in found], indent=2))
        return
    if not found:
        click.echo("no collections")
        return
    for c in found:
        space = c.space or "reserved, no space yet"
        click.echo(f"{c.id}  {c.items} items  {space}")


@collections.command("delete")
@click.argument("collection_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def collections_delete(collection_id: str, yes: bool) -> None:
    """Delete COLLECTION_ID with its items, vectors, publish records, keys limited to it
    and the state of a mirror into it."""
    from embcat.catalog.collections import delete_collection
    from embcat.catalog.db import connect

    if not yes and not click.confirm(
        f"Delete collection {collection_id!r} and all its items?", err=True
    ):
        raise click.ClickException("not deleted (confirm, or pass --yes)")
    with connect(cli_settings().database) as conn:
        counts = delete_collection(conn, collection_id)
        conn.commit()
    click.echo(
        f"deleted collection {collection_id}: {counts['items']} items, {counts['keys']} keys,"
        f" {counts['mirrors']} mirror state(s)"
    )
