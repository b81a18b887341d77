"""``embcat serve`` (the STAC API under uvicorn) and ``embcat keys`` (API keys)."""

from __future__ import annotations

import json

import click

from embcat.commands import cli_settings


@click.command()
@click.option("--host", default=None, help="Bind address (default: EMBCAT_HOST or 127.0.0.1).")
@click.option(
    "--port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Port, 0-65535 (default: EMBCAT_PORT or 8080).",
)
@click.option("--reload", is_flag=True, help="Restart on code changes (development).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option("--log-level", default="info", show_default=True)
def serve(host: str | None, port: int | None, reload: bool, workers: int, log_level: str) -> None:
    """Serve the STAC API (uvicorn, factory api.app:create_app)."""
    import uvicorn

    from embcat.api.settings import AppSettings

    # The whole tree is read (and checked: a bad variable is one line naming it) before the
    # server starts; each worker's create_app builds its own from the same environment.
    tree = AppSettings.from_env()
    settings, observability = tree.api, tree.observability
    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level.lower() not in levels:
        raise click.BadParameter(
            f"{log_level!r} is not one of {', '.join(levels)}", param_hint="--log-level"
        )
    uvicorn.run(
        "embcat.api.app:create_app",
        factory=True,
        host=host or settings.host,
        port=settings.port if port is None else port,
        reload=reload,
        workers=None if reload else workers,
        log_level=log_level.lower(),
        proxy_headers=True,
        # The app writes one JSON access line per request (embcat.access, with the
        # request id and latency); uvicorn's own access log would repeat each request.
        access_log=not observability.access_log,
    )


@click.group()
def keys() -> None:
    """API keys for the write endpoints (and for reads when they are protected)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(["read", "write", "admin"]),
    help="Scope to grant (repeatable).",
)
@click.option("--collection", default=None, help="Limit the key to one collection.")
def keys_create(name: str, scopes: tuple[str, ...], collection: str | None) -> None:
    """Create a key and print its secret (shown this one time only)."""
    from embcat.catalog.db import connect
    from embcat.catalog.keys import create_key

    with connect(cli_settings().database) as conn:
        key_id, secret = create_key(conn, name, list(scopes), collection)
        conn.commit()
    click.echo(f"key id: {key_id}", err=True)
    click.echo("secret (shown once, store it now):", err=True)
    click.echo(secret)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def keys_list(as_json: bool) -> None:
    """List keys (never their secrets)."""
    from embcat.catalog.db import connect
    from embcat.catalog.keys import list_keys

    with connect(cli_settings().database) as conn:
        found = list_keys(conn)
    if as_json:
        click.echo(json.dumps([k.as_dict() for k in found], indent=2))
        return
    if not found:
        click.echo("no API keys")
        return
    for k in found:
        state = f"revoked {k.revoked_at:%Y-%m-%d}" if k.revoked_at else "active"
        where = f" collection={k.collection_id}" if k.collection_id else ""
        click.echo(f"{k.id}  {k.name}  scopes={','.join(k.scopes)}{where}  {state}")


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key; requests with it get 401 from then on."""
    from embcat.catalog.db import connect
    from embcat.catalog.keys import revoke_key

    with connect(cli_settings().database) as conn:
        revoke_key(conn, key_id)
        conn.commit()
    click.echo(f"revoked {key_id}")
