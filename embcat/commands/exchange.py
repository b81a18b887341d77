"""``embcat export``, ``embcat mirror`` and ``embcat stats``: moving embeddings between sites."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from embcat.commands import cli_settings

DTYPE_CHOICE = click.Choice(["float32", "float16", "int8", "binary"])


def _bbox(value: str | None) -> list[float] | None:
    """``--bbox``: parsed as the API parses a bbox (``catalog.search_request``)."""
    from embcat.catalog.errors import InvalidInput
    from embcat.catalog.search_request import parse_bbox

    try:
        return parse_bbox(value)
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint="'--bbox'") from None


def _filter(value: str | None) -> str | dict[str, Any] | None:
    """``--filter``: the language decided as the API decides it; CQL2 JSON becomes an
    object (what a POST body and the mirror's saved filters hold)."""
    from embcat.catalog.errors import InvalidInput
    from embcat.catalog.search_request import parse_filter, parse_json

    flt, lang = parse_filter(value, None)
    if lang == "cql2-json" and isinstance(flt, str):
        try:
            flt = parse_json("filter", flt)
        except InvalidInput as exc:
            raise click.BadParameter(str(exc), param_hint="'--filter'") from None
    return flt


@click.command("export")
@click.argument("collection_id")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dtype", type=DTYPE_CHOICE, default="float32", show_default=True)
@click.option("--bbox", help="xmin,ymin,xmax,ymax (WGS84).")
@click.option("--datetime", "datetime_", help="RFC 3339 instant or interval (a/b, ../b).")
@click.option("--filter", "filter_", help="CQL2 text, or CQL2 JSON.")
@click.option("--ids", help="Comma-separated item ids.")
@click.option("--batch-size", default=2048, show_default=True, help="Rows read per batch.")
@click.option(
    "--columns",
    type=click.Choice(["full", "minimal"]),
    default="full",
    show_default=True,
    help="full: stac-geoparquet items + vector; minimal: id, geometry, datetime, vector.",
)
@click.option(
    "--order",
    type=click.Choice(["hilbert", "id"]),
    default="hilbert",
    show_default=True,
    help="Row order: spatial (Hilbert, PostGIS's geometry order) or by item id.",
)
@click.option(
    "--vector-layout",
    type=click.Choice(["bytes", "list"]),
    default="bytes",
    show_default=True,
    help="bytes: fixed_size_binary vectors (fast, compact; the file's 'embeddings' metadata"
    " says how to decode); list: fixed_size_list of values (native arrays for DuckDB).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["parquet", "neuco-csv"]),
    default="parquet",
    show_default=True,
    help="neuco-csv: id,0,1,...,D-1 (float32), the CSV NeuCo-Bench reads.",
)
@click.option(
    "--row-group-mb", default=128, show_default=True, type=click.IntRange(1), help="Row group size."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export_command(
    collection_id: str,
    out: Path,
    dtype: str,
    bbox: str | None,
    datetime_: str | None,
    filter_: str | None,
    ids: str | None,
    batch_size: int,
    columns: str,
    order: str,
    vector_layout: str,
    fmt: str,
    row_group_mb: int,
    quiet: bool,
) -> None:
    """Write a search of COLLECTION_ID as stac-geoparquet with the vectors to OUT, and its
    SHA-256 to OUT.sha256."""
    from tqdm import tqdm

    from embcat.catalog.db import connect
    from embcat.catalog.export import ExportRequest, export_csv_to_file, export_to_file
    from embcat.catalog.search import SearchQuery
    from embcat.catalog.search_request import parse_datetime, parse_filter, parse_list

    folder = out.expanduser().parent
    if not folder.is_dir():
        raise click.BadParameter(
            f"the folder {folder} does not exist; create it first or write elsewhere",
            param_hint="OUT",
        )
    if not os.access(folder, os.W_OK):
        raise click.BadParameter(f"the folder {folder} is not writable", param_hint="OUT")
    flt, lang = parse_filter(_filter(filter_), None)
    query = SearchQuery(
        bbox=_bbox(bbox),
        datetime=parse_datetime(datetime_),
        filter=flt,
        filter_lang=lang,
        ids=parse_list(ids),
    )
    req = ExportRequest(
        collection_id,
        dtype=dtype,
        query=query,
        batch_size=batch_size,
        columns=columns,
        order=order,
        row_group_bytes=row_group_mb * 2**20,
        vector_layout=vector_layout,
    )
    if fmt == "neuco-csv":
        with connect(cli_settings().database) as conn:
            summary = export_csv_to_file(conn, req, out)
        click.echo(
            f"exported {summary.rows} vectors (NeuCo-Bench CSV) to {out}:"
            f" {summary.bytes / 1e6:.1f} MB in {summary.seconds:.1f} s; sha256 {summary.sha256}"
        )
        return
    rows = [0]
    bars: list[tqdm] = []  # made at the first rows, so that a refused export prints no bar

    def progress(n: int, nbytes: int) -> None:
        if not bars:
            bars.append(tqdm(unit="B", unit_scale=True, disable=quiet, desc="export"))
        rows[0] += n
        bars[0].update(nbytes)
        bars[0].set_postfix(rows=rows[0], refresh=False)

    try:
        with connect(cli_settings().database) as conn:
            summary = export_to_file(conn, req, out, progress)
    finally:
        for bar in bars:
            bar.close()
    click.echo(
        f"exported {summary.rows} items ({dtype}) to {out}: {summary.bytes / 1e6:.1f} MB in"
        f" {summary.seconds:.1f} s ({summary.rate:.0f} items/s,"
        f" {summary.bytes / 1e6 / max(summary.seconds, 1e-9):.0f} MB/s); as_of {summary.as_of};"
        f" sha256 {summary.sha256} (in {out.name}.sha256)"
    )


@click.command("mirror")
@click.argument("remote_url")
@click.option("--collection", "collection_id", required=True, help="Remote collection id.")
@click.option("--bbox", help="Only items intersecting xmin,ymin,xmax,ymax.")
@click.option("--datetime", "datetime_", help="Only items in this RFC 3339 interval.")
@click.option("--filter", "filter_", help="Only items matching this CQL2 filter.")
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "float16", "int8"]),
    default="auto",
    show_default=True,
    help="Transfer dtype (float32 and, for halfvec spaces, float16 are lossless; auto: the"
    " smallest lossless one, or the dtype an existing mirror was started with).",
)
@click.option("--page-rows", default=10000, show_default=True, help="Rows per transaction.")
@click.option(
    "--api-key",
    envvar="EMBCAT_REMOTE_API_KEY",
    help="API key for the remote (or EMBCAT_REMOTE_API_KEY).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def mirror_command(
    remote_url: str,
    collection_id: str,
    bbox: str | None,
    datetime_: str | None,
    filter_: str | None,
    dtype: str,
    page_rows: int,
    api_key: str | None,
    quiet: bool,
) -> None:
    """Pull a remote collection into the local catalogue (incremental after the first run)."""
    from embcat.catalog.mirror import MirrorOptions, mirror
    from embcat.commands.publish import check_remote_url

    check_remote_url(remote_url, "REMOTE_URL")
    settings = cli_settings()
    bounds = settings.mirror
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    opts = MirrorOptions(
        remote_url=remote_url,
        collection_id=collection_id,
        bbox=_bbox(bbox),
        datetime=datetime_,
        filter=_filter(filter_),
        dtype=dtype,
        page_rows=page_rows,
        headers=headers,
        timeout_s=bounds.timeout_s,
        max_page_bytes=bounds.max_page_bytes,
        max_json_bytes=bounds.max_json_bytes,
        request_deadline_s=bounds.request_deadline_s,
        max_pages=bounds.max_pages,
        retry_attempts=bounds.retry_attempts,
        retry_timeout_s=bounds.retry_timeout_s,
        index=settings.index,
    )
    from tqdm import tqdm

    from embcat.catalog.mirror import MirrorProgress

    show = not quiet and not os.environ.get("EMBCAT_NO_PROGRESS")
    bars: dict[str, tqdm] = {}  # one per phase, made at its first page

    def progress(p: MirrorProgress) -> None:
        bar = bars.get(p.phase)
        if bar is None:
            bar = bars[p.phase] = tqdm(
                total=p.total, initial=p.rows - p.run_rows, unit="row", unit_scale=True,
                desc=f"mirror ({p.phase})", dynamic_ncols=True,
            )  # fmt: skip
        bar.update(p.rows - bar.n)
        bar.set_postfix(MB=round(p.bytes / 1e6, 1), refresh=False)

    try:
        result = mirror(opts, settings.database, on_progress=progress if show else None)
    finally:
        for bar in bars.values():
            bar.close()
    click.echo(result.summary())


@click.command("stats")
@click.argument("collection_id")
@click.option("--sample", default=5000, show_default=True, help="Vectors in the corpus sample.")
@click.option("--queries", default=100, show_default=True, help="Queries for recall@10.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats_command(collection_id: str, sample: int, queries: int, as_json: bool) -> None:
    """Bytes per embedding per dtype, compression vs source imagery, recall@10 loss."""
    from embcat.catalog.db import connect
    from embcat.catalog.stats import collection_stats

    with connect(cli_settings().database) as conn:
        stats = collection_stats(conn, collection_id, sample=sample, queries=queries)
    if as_json:
        click.echo(json.dumps(stats.as_dict(), indent=2))
        return
    src = f"{stats.source_bytes:,} source bytes" if stats.source_bytes else "source bytes unknown"
    click.echo(
        f"{stats.collection_id}: {stats.items} embeddings, {stats.dimensions} dims,"
        f" {stats.metric}; {src}; recall on {stats.queries} queries over {stats.sample} vectors"
    )
    click.echo(f"{'dtype':<8} {'bytes/emb':>10} {'vs source':>10} {'recall@10':>10} {'loss':>7}")
    for d in stats.dtypes:
        ratio = f"{d.compression_vs_source:,.0f}x" if d.compression_vs_source else "n/a"
        click.echo(
            f"{d.dtype:<8} {d.bytes_per_embedding:>10} {ratio:>10} {d.recall_at_10:>10.3f}"
            f" {1 - d.recall_at_10:>7.3f}"
        )
    if stats.index is not None:
        advice = stats.index
        click.echo(
            f"index: {advice.current} now; recommended {advice.recommended}: {advice.reason}"
            + (
                ""
                if advice.recommended == advice.current
                else f" (embcat index build {stats.collection_id} --kind {advice.recommended})"
            )
        )
