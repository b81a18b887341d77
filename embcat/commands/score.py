"""``embcat score``: score every chip of an area from a few examples (catalog.score)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from embcat.commands import cli_settings
from embcat.commands.exchange import _bbox, _filter

SUFFIXES = {".geojson": "geojson", ".json": "geojson", ".parquet": "parquet", ".png": "png"}


def sidecar_path(out: Path) -> Path:
    """Where the model and labels of a result are saved: ``OUT.model.json``."""
    return out.with_name(out.name + ".model.json")


@click.command("score")
@click.argument("collection_id")
@click.option("-p", "--positive", multiple=True, required=True, help="Positive example item id.")
@click.option("-n", "--negative", multiple=True, help="Negative example item id.")
@click.option(
    "--method", type=click.Choice(["linear", "prototype"]), default="linear", show_default=True
)
@click.option("--threshold", type=float, help="Keep chips scoring at least this (default 0.5).")
@click.option("--top", type=click.IntRange(min=1), help="Keep the N best chips instead.")
@click.option("--bbox", help="xmin,ymin,xmax,ymax (WGS84).")
@click.option("--datetime", "datetime_", help="RFC 3339 instant or interval (a/b, ../b).")
@click.option("--filter", "filter_", help="CQL2 text, or CQL2 JSON.")
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output file: .geojson, .parquet or .png (heat map).",
)
@click.option("--width", type=click.IntRange(1, 2048), help="PNG width in pixels.")
@click.option("--height", type=click.IntRange(1, 2048), help="PNG height in pixels.")
def score_command(
    collection_id: str,
    positive: tuple[str, ...],
    negative: tuple[str, ...],
    method: str,
    threshold: float | None,
    top: int | None,
    bbox: str | None,
    datetime_: str | None,
    filter_: str | None,
    out: Path,
    width: int | None,
    height: int | None,
) -> None:
    """Score every chip of COLLECTION_ID from example items; write OUT and OUT.model.json."""
    from embcat.catalog.db import connect
    from embcat.catalog.errors import InvalidInput
    from embcat.catalog.score import fit, parse_request, stream

    fmt = SUFFIXES.get(out.suffix.lower())
    if fmt is None:
        raise InvalidInput(
            f"cannot tell the format from {out.name!r}: name the output .geojson, .parquet or .png"
        )
    body = {
        "positive": list(positive),
        "negative": list(negative),
        "method": method,
        "threshold": threshold,
        "top": top,
        "bbox": _bbox(bbox),
        "datetime": datetime_,
        "filter": _filter(filter_),
        "format": fmt,
        "width": width,
        "height": height,
    }
    req = parse_request({k: v for k, v in body.items() if v is not None})
    started = time.perf_counter()
    count = [0]

    def on_batch(n: int) -> None:
        count[0] += n

    with connect(cli_settings().database) as conn:
        model = fit(conn, collection_id, req, cli_settings().similarity)
        conn.rollback()
        partial = out.with_name(out.name + ".partial")
        try:
            with partial.open("wb") as fh:
                for chunk in stream(conn, model, req, on_batch=on_batch):
                    fh.write(chunk)
        except OSError as exc:
            raise InvalidInput(f"cannot write {out}: {exc.strerror}") from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(out)
    record = {**model.as_json(), "rows": count[0], "output": out.name}
    sidecar_path(out).write_text(json.dumps(record, indent=1) + "\n")
    elapsed = time.perf_counter() - started
    cut = f"top {top}" if top is not None else f"score >= {model.threshold}"
    click.echo(
        f"scored {collection_id}: {count[0]} chips with {cut} -> {out}"
        f" (model: {sidecar_path(out).name}) in {elapsed:.1f} s"
    )
