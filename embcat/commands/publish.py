"""``embcat publish``, ``embcat publishes``, ``embcat index`` and ``embcat demo``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from embcat.commands import cli_settings

MODE_HELP = (
    "insert: refuse ids that exist; upsert: replace changed items; ignore: keep existing ones."
)


def check_remote_url(url: str, option: str) -> str:
    """``url`` if it is an absolute http(s) URL, else one clear :class:`InvalidInput`."""
    from urllib.parse import urlsplit

    from embcat.catalog.errors import InvalidInput

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidInput(f"{option} {url!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"{option} {url!r} is not an http(s) URL; give the catalogue's address with its"
            f" scheme, e.g. https://{url if '://' not in url else 'catalogue.example.org'}"
        )
    return url


@click.command()
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--collection", "collection_id", help="Collection id (default: from the manifest).")
@click.option(
    "--mode",
    type=click.Choice(["insert", "upsert", "ignore"]),
    default="ignore",
    show_default=True,
    help=MODE_HELP,
)
@click.option(
    "--defer-index",
    is_flag=True,
    help="Do not build the HNSW index in this publish (very large loads); "
    "run `embcat index build COLLECTION` afterwards.",
)
@click.option(
    "--storage",
    type=click.Choice(["halfvec", "vector"]),
    default="halfvec",
    show_default=True,
    help="How a new embedding space stores vectors (float16 or float32).",
)
@click.option("--to", "remote", metavar="URL", help="Publish to a remote catalogue over HTTPS.")
@click.option(
    "--key",
    envvar="EMBCAT_API_KEY",
    help="API key with the write scope (for --to; or EMBCAT_API_KEY).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def publish(
    source: Path,
    collection_id: str | None,
    mode: str,
    defer_index: bool,
    storage: str,
    remote: str | None,
    key: str | None,
    as_json: bool,
    no_progress: bool,
) -> None:
    """Publish an encode run (SOURCE: its folder or manifest.json) as STAC items.

    One transaction: a failed or interrupted publish leaves the catalogue as it was, and
    re-running a publish in ignore or upsert mode changes nothing.
    """
    from embcat.catalog.collections import validate_collection_id

    progress = not no_progress and not as_json
    if collection_id is not None:
        validate_collection_id(collection_id)
    if remote:
        import httpx

        from embcat.catalog.errors import InvalidInput
        from embcat.catalog.remote_publish import remote_publish

        if not key:
            raise InvalidInput(
                "--to needs an API key with the write scope (--key or EMBCAT_API_KEY)"
            )
        remote = check_remote_url(remote, "--to")
        from tqdm import tqdm

        bars: list[tqdm] = []

        def uploaded(held: int, total: int) -> None:
            if not progress:
                return
            if not bars:
                bars.append(tqdm(total=total, initial=held, unit="B", unit_scale=True,
                                 desc="upload"))  # fmt: skip
            bars[0].update(held - bars[0].n)

        try:
            result = remote_publish(
                source,
                remote,
                key=key,
                collection_id=collection_id,
                mode=mode,
                defer_index=defer_index,
                on_progress=uploaded,
            )
        except httpx.HTTPError as exc:
            raise InvalidInput(
                f"cannot reach {remote}: {exc or type(exc).__name__}; check the URL and that"
                " the catalogue server is running (rerun to resume the upload)"
            ) from exc
        finally:
            for bar in bars:
                bar.close()
        if as_json:
            click.echo(json.dumps(result, indent=2, default=str))
        else:
            click.echo(str(result.get("summary", result)))
        return
    from embcat.catalog.publish import publish as run_publish

    settings = cli_settings()
    res = run_publish(
        source,
        collection_id=collection_id,
        mode=mode,  # type: ignore[arg-type]
        settings=settings.database,
        progress=progress,
        defer_index=defer_index,
        storage=storage,  # type: ignore[arg-type]
        index=settings.index,
    )
    if as_json:
        click.echo(json.dumps({**res.as_dict(), "summary": res.summary()}, indent=2, default=str))
    else:
        click.echo(res.summary())


@click.command()
@click.option("--collection", "collection_id", help="Only this collection's publishes.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def publishes(collection_id: str | None, limit: int, as_json: bool) -> None:
    """List publish records, newest first."""
    from embcat.catalog.db import connect
    from embcat.catalog.publish import list_publishes

    with connect(cli_settings().database) as conn:
        records = list_publishes(conn, collection_id, limit)
    if as_json:
        click.echo(json.dumps(records, indent=2, default=str))
        return
    if not records:
        click.echo("no publishes yet")
        return
    click.echo(
        f"{'id':>5}  {'finished (UTC)':19}  {'collection':24}  {'mode':6}  {'origin':6}"
        f"  {'rows':>10}  {'inserted':>10}  {'updated':>9}  {'skipped':>10}  manifest"
    )
    for r in records:
        click.echo(
            f"{r['id']:>5}  {r['finished_at']:%Y-%m-%d %H:%M:%S}  {r['collection_id'][:24]:24}"
            f"  {r['mode']:6}  {r['origin'][:6]:6}  {r['rows']:>10,}  {r['inserted']:>10,}"
            f"  {r['updated']:>9,}  {r['skipped']:>10,}  {r['manifest_sha256'][:12]}"
        )


@click.group()
def index() -> None:
    """The similarity index of a collection's embedding space (kind per space)."""


@index.command("build")
@click.argument("collection_id")
@click.option(
    "--kind", type=click.Choice(["hnsw-halfvec", "ivfflat-bit", "hnsw-bit", "auto"]),
    default=None,
    help="Index kind (default: the space's recorded kind). Another kind than the recorded"
    " one switches the space: the new index is built, then swapped in (readers keep the"
    " old one until then). auto: the kind that suits the space's data, judged on a sample"
    " of it (what `embcat stats` recommends).",
)  # fmt: skip
@click.option(
    "--rebuild", is_flag=True,
    help="Build anew even if the index exists (re-centres a binary index on today's data).",
)  # fmt: skip
def index_build(collection_id: str, kind: str | None, rebuild: bool) -> None:
    """Build COLLECTION's space index if absent (after `publish --defer-index`)."""
    import time

    from embcat.catalog.publish import build_index

    started = time.perf_counter()
    settings = cli_settings()
    built = build_index(
        collection_id,
        settings.database,
        kind=kind,  # type: ignore[arg-type]
        rebuild=rebuild,
        index=settings.index,
    )
    if built:
        click.echo(
            f"built the {built} index of {collection_id} in {time.perf_counter() - started:.1f} s"
        )
    else:
        click.echo(f"the index of {collection_id} already exists (or cannot be built)")


@index.command("status")
@click.argument("collection_id")
def index_status(collection_id: str) -> None:
    """Whether COLLECTION's space has a valid index of its kind."""
    from embcat.catalog.db import connect
    from embcat.catalog.errors import NotFound
    from embcat.catalog.store.space_index import has_index
    from embcat.catalog.store.spaces import collection_space

    with connect(cli_settings().database) as conn:
        space = collection_space(conn, collection_id)
        if space is None:
            raise NotFound(f"collection {collection_id!r} has no embeddings")
        click.echo(
            json.dumps(
                {"collection": collection_id, "space": space.id, "kind": space.index_kind,
                 "index": space.index_name, "valid": has_index(conn, space),
                 "indexable": space.indexable}
            )
        )  # fmt: skip


@click.command()
@click.option(
    "--dir", "directory", type=click.Path(path_type=Path), default=Path("demo-data"),
    show_default=True, help="Where the sample scene, shards and manifest go (reused).",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--no-serve", is_flag=True, help="Prepare and publish, then exit.")
def demo(directory: Path, host: str, port: int, no_serve: bool) -> None:
    """Make sample imagery, encode it with mosaiks, publish it and start the API."""
    from embcat.catalog.demo import prepare_demo

    settings = cli_settings()
    info = prepare_demo(
        directory,
        base_url=f"http://{host}:{port}",
        settings=settings.database,
        index=settings.index,
        echo=click.echo,
    )
    click.echo(info.instructions())
    if no_serve:
        return
    import uvicorn

    from embcat.api.settings import ObservabilitySettings
    from embcat.catalog.settings import read_env

    os.environ.setdefault("EMBCAT_BASE_URL", f"http://{host}:{port}")
    uvicorn.run(
        "embcat.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        log_level="info",
        access_log=not read_env(ObservabilitySettings).access_log,  # the app logs each request once
    )
