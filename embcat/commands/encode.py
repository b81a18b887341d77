"""``embcat encoders list|show`` and ``embcat encode``: the producer side on HPC.

torch, rasterio and pystac-client are imported inside the commands, so that
``embcat --help`` stays fast.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are JSON when they parse as JSON, strings otherwise."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--option")
        options[key.strip().replace("-", "_")] = _parse_value(value)
    return options


def _parse_band_map(pairs: tuple[str, ...]) -> dict[str, str | int] | None:
    mapping: dict[str, str | int] = {}
    for group in pairs:
        for pair in group.split(","):
            if not pair.strip():
                continue
            band, sep, target = pair.partition("=")
            if not sep or not band.strip() or not target.strip():
                raise click.BadParameter(
                    f"expected ENCODER_BAND=SOURCE_BAND, got {pair!r}", param_hint="--band-map"
                )
            t = target.strip()
            mapping[band.strip()] = int(t) if t.isdigit() else t
    return mapping or None


def _parse_datetime(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise click.BadParameter(
            f"not an ISO 8601 date/time: {value!r}", param_hint="--datetime"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


option_flag = click.option(
    "-O",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Encoder option (repeatable); VALUE is parsed as JSON when it can be, "
    "e.g. -O num_features=512 -O bands=B02,B03,B04 -O path=model.pt.",
)


@click.group("encoders")
def encoders() -> None:
    """List and inspect the registered encoder plugins (entry points "embcat.encoders")."""


@encoders.command("list")
def list_command() -> None:
    """Table of registered encoders (defaults shown where options are not required)."""
    from embcat.encoders.base import Encoder
    from embcat.encoders.errors import EncodeError
    from embcat.encoders.registry import discover

    try:
        entries = discover()
    except EncodeError as exc:
        raise click.ClickException(str(exc)) from exc
    rows = [("NAME", "VERSION", "DIMS", "BANDS", "CHIP", "PROVIDER", "SUMMARY")]
    for name, entry in entries.items():
        version = dims = bands = chip = "-"
        summary = ""
        try:
            factory = entry.load()
            if isinstance(factory, type) and issubclass(factory, Encoder):
                version, summary = factory.version, factory.summary
            try:
                enc = factory()
                version, summary = enc.version, enc.summary or summary
                dims = str(enc.output_spec.dimensions)
                bands = str(len(enc.input_spec.bands))
                chip = str(enc.input_spec.chip_size)
            except EncodeError:
                pass  # needs options (e.g. checkpoint's path)
        except EncodeError as exc:
            summary = f"(cannot load: {exc})"
        rows.append((name, version, dims, bands, chip, entry.distribution, summary))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]).rstrip())


@encoders.command("show")
@click.argument("name")
@option_flag
def show_command(name: str, options: tuple[str, ...]) -> None:
    """Describe encoder NAME as JSON: input/output specs, options and its MLM metadata."""
    from embcat.encoders.errors import EncodeError
    from embcat.encoders.registry import get_encoder, get_encoder_entry

    try:
        entry = get_encoder_entry(name)
        enc = get_encoder(name, **_parse_options(options))
        described = enc.describe()
    except EncodeError as exc:
        raise click.ClickException(str(exc)) from exc
    described["entry_point"] = {"name": name, "value": entry.value, "provider": entry.distribution}
    click.echo(json.dumps(described, indent=2))


@click.command("encode")
@click.argument("inputs", nargs=-1)
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory for the shards and manifest.json.",
)
@click.option("-e", "--encoder", default="mosaiks", show_default=True, help="Encoder name.")
@option_flag
@click.option("--chip-size", type=int, help="Chip size in pixels [default: the encoder's].")
@click.option("--stride", type=int, help="Grid stride in pixels [default: chip size].")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N (auto: cuda "
    "when available; under torchrun each rank takes cuda:LOCAL_RANK)."
)  # fmt: skip
@click.option(
    "--workers", type=int, default=2, show_default=True, help="Reader processes per rank."
)
@click.option(
    "--nodata-threshold",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Skip chips with a larger share of nodata pixels.",
)
@click.option(
    "--datetime",
    "datetime_",
    help="Acquisition time (ISO 8601) for sources with no STAC datetime or TIFFTAG_DATETIME.",
)
@click.option(
    "--band-map",
    multiple=True,
    metavar="BAND=SRC,...",
    help="Map encoder bands to source bands (name or 1-based index), e.g. B04=3,B03=2.",
)
@click.option("--asset", help="STAC asset key holding all bands (default: detected).")
@click.option("--stac-api", help="STAC API URL to search for input items (pystac-client).")
@click.option("--collection", "collections", multiple=True, help="Search: collection id.")
@click.option("--bbox", help="Search: minx,miny,maxx,maxy in EPSG:4326.")
@click.option("--search-datetime", help="Search: datetime or interval (STAC API syntax).")
@click.option("--max-items", type=int, default=100, show_default=True, help="Search: limit.")
@click.option("--no-resume", is_flag=True, help="Encode every shard again.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--no-thumbnails", is_flag=True, help="No PNG quicklook per chip in the shards (smaller runs)."
)
@click.option("--no-quicklooks", is_flag=True, help="No quicklook PNG per source scene.")
def encode_command(
    inputs: tuple[str, ...],
    out_dir: Path,
    encoder: str,
    options: tuple[str, ...],
    chip_size: int | None,
    stride: int | None,
    batch_size: int,
    device: str,
    workers: int,
    nodata_threshold: float,
    datetime_: str | None,
    band_map: tuple[str, ...],
    asset: str | None,
    stac_api: str | None,
    collections: tuple[str, ...],
    bbox: str | None,
    search_datetime: str | None,
    max_items: int,
    no_resume: bool,
    no_progress: bool,
    no_thumbnails: bool,
    no_quicklooks: bool,
) -> None:
    """Encode INPUTS (GeoTIFF/COG files, directories, STAC ItemCollection files) into
    GeoParquet embedding shards and a manifest.

    Runs unchanged under "torchrun --nproc_per_node=N": each rank writes its own shard,
    rank 0 writes manifest.json once all are complete. Rerun to resume. See docs/hpc.md.
    """
    from embcat.encoders.errors import EncodeError
    from embcat.encoders.job import run_encode

    sources: list[Any] = list(inputs)
    if stac_api:
        sources.append(_search(stac_api, collections, bbox, search_datetime, max_items))
    if not sources:
        raise click.UsageError("give INPUTS or --stac-api")
    try:
        result = run_encode(
            sources,
            out_dir,
            encoder,
            _parse_options(options),
            chip_size=chip_size,
            stride=stride,
            batch_size=batch_size,
            device=device,
            workers=workers,
            nodata_threshold=nodata_threshold,
            datetime=_parse_datetime(datetime_),
            band_map=_parse_band_map(band_map),
            asset=asset,
            resume=not no_resume,
            progress=not no_progress,
            thumbnails=not no_thumbnails,
            quicklooks=not no_quicklooks,
        )
    except EncodeError as exc:
        raise click.ClickException(str(exc)) from exc
    if result.rank == 0:
        click.echo(result.summary)


def _search(
    url: str,
    collections: tuple[str, ...],
    bbox: str | None,
    when: str | None,
    max_items: int,
) -> Any:
    """Items of a STAC API search, sorted by id (every rank must see the same list)."""
    import pystac
    from pystac_client import Client

    from embcat.encoders.errors import EncodeError

    try:
        box = [float(v) for v in bbox.split(",")] if bbox else None
    except ValueError as exc:
        raise click.BadParameter(f"not minx,miny,maxx,maxy: {bbox}", param_hint="--bbox") from exc
    try:
        search = Client.open(url).search(
            collections=list(collections) or None,
            bbox=box,
            datetime=when,
            max_items=max_items,
        )
        items = sorted(search.items(), key=lambda item: item.id)
    except EncodeError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:  # pystac-client and network errors
        raise click.ClickException(f"STAC API search at {url} failed: {exc}") from exc
    if not items:
        raise click.ClickException(f"STAC API search at {url} returned no items")
    return pystac.ItemCollection(items)
