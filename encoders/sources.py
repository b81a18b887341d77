"""Source imagery: resolve inputs to rasters, map bands to the encoder's, read chips.

Inputs (:func:`resolve_inputs`):

* a GeoTIFF / COG path (``.tif``, ``.tiff``; any GDAL-readable path or URL also works);
* a directory: every ``*.tif`` / ``*.tiff`` below it, sorted by path;
* a STAC ItemCollection, FeatureCollection or Item JSON file (``.json`` / ``.geojson``),
  or ``pystac.Item`` / ``pystac.ItemCollection`` objects (e.g. a pystac-client search).

Band mapping (:func:`map_bands`), for each encoder band in the encoder's order:

1. ``band_map`` (encoder band -> source band name, or 1-based band index) if given;
2. else by name, case-insensitively, against the raster's band descriptions or the STAC
   asset's ``eo:bands`` / ``bands`` names and common names;
3. else, for a raster whose bands carry no names, by position when the band counts match.

A STAC item may hold all bands in one asset (``asset=KEY`` picks it, otherwise the first
raster asset that has every band), or one band per asset (Sentinel-2 style: asset keys
or their band names match the encoder's bands). Per-band assets may differ in resolution
but must share a CRS; the finest one defines the chip grid and the others are read
resampled (nearest) onto it.

Datetime per source: the STAC item's ``datetime`` (or ``start_datetime``), else the TIFF
tag ``TIFFTAG_DATETIME``, else ``default_datetime``; otherwise :class:`InputError`.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from embcat.encoders.errors import InputError

RASTER_SUFFIXES = (".tif", ".tiff")
STAC_SUFFIXES = (".json", ".geojson")


@dataclass(frozen=True)
class BandRef:
    """One encoder band: which raster (href) and which 1-based band index in it."""

    href: str
    index: int


@dataclass
class Source:
    """One unit of source imagery: a raster file or a STAC item, on one pixel grid."""

    item_id: str
    asset: str
    href: str  # the reference raster (defines the grid)
    bands: tuple[BandRef, ...]  # in encoder band order
    crs: str
    crs_wkt: str
    transform: tuple[float, float, float, float, float, float]  # GDAL-style a,b,c,d,e,f
    width: int
    height: int
    datetime: datetime
    nodata: tuple[float | None, ...]  # per encoder band
    itemsize: tuple[int, ...]  # bytes per pixel of each encoder band in the source
    aligned: dict[str, bool] = field(default_factory=dict)  # href -> same grid as href

    @property
    def gsd(self) -> float:
        a, b, _, d, e, _ = self.transform
        return float((abs(a * e - b * d)) ** 0.5)

    def gsd_metres(self) -> float | None:
        """The pixel size in metres: CRS units converted (degrees at the raster's centre
        latitude, the geometric mean of both axes); None when the CRS has no such unit."""
        import math

        from pyproj import CRS

        crs = CRS.from_wkt(self.crs_wkt)
        if crs.is_geographic:
            a, b, c, d, e, f = self.transform
            lat = f + e * self.height / 2 + d * self.width / 2
            dx = math.hypot(a, d) * 111_320.0 * math.cos(math.radians(lat))
            dy = math.hypot(b, e) * 110_574.0
            return float(math.sqrt(abs(dx * dy))) if dx and dy else None
        axes = crs.axis_info
        factor = axes[0].unit_conversion_factor if axes else None  # metres per CRS unit
        return self.gsd * float(factor) if factor else None

    def describe(self) -> dict[str, Any]:
        return {
            "item": self.item_id,
            "asset": self.asset,
            "href": self.href,
            "hrefs": sorted({b.href for b in self.bands}),
            "crs": self.crs,
            "width": self.width,
            "height": self.height,
            "datetime": self.datetime.isoformat(),
        }


def open_raster(href: str) -> Any:
    """Open a raster for reading; unreadable or non-georeferenced rasters raise InputError."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(href)
    except RasterioIOError as exc:
        raise InputError(f"{href}: cannot read raster: {exc}") from exc
    except OSError as exc:
        raise InputError(f"{href}: cannot read raster: {exc.strerror or exc}") from exc
    if ds.crs is None or ds.transform.is_identity:
        ds.close()
        raise InputError(
            f"{href}: raster has no georeferencing (no CRS or geotransform); "
            f"chips need a CRS to place their footprints"
        )
    return ds


def crs_string(crs: Any) -> str:
    epsg = crs.to_epsg()
    if epsg is not None:
        return f"EPSG:{epsg}"
    authority = crs.to_authority()
    if authority is not None:
        return f"{authority[0]}:{authority[1]}"
    return str(crs.to_wkt())


def parse_tiff_datetime(value: str) -> datetime | None:
    """TIFFTAG_DATETIME ("YYYY:MM:DD HH:MM:SS", UTC assumed) or ISO 8601; None if neither."""
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(value.strip(), fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _as_utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def map_bands(
    label: str,
    wanted: Sequence[str],
    names: Sequence[Iterable[str]],
    band_map: Mapping[str, str | int] | None = None,
) -> list[int]:
    """1-based source band index for each wanted band (see the module docstring).

    ``names[i]`` holds the names (description, STAC name, common name) of source band
    ``i + 1``; empty when unnamed.
    """
    count = len(names)
    lookup: dict[str, int] = {}
    for i, aliases in enumerate(names):
        for alias in aliases:
            lookup.setdefault(alias.lower(), i + 1)
    described = ", ".join(
        f"{i + 1}:{'/'.join(a) or '?'}" for i, a in enumerate(names)
    )  # for messages
    result: list[int] = []
    missing: list[str] = []
    if band_map:
        for band in wanted:
            target = band_map.get(band)
            if target is None:
                missing.append(band)
                continue
            if isinstance(target, int) or str(target).isdigit():
                index = int(target)
                if not 1 <= index <= count:
                    raise InputError(
                        f"{label}: band map sends {band} to band {index}, "
                        f"but the raster has {count} bands"
                    )
                result.append(index)
            elif str(target).lower() in lookup:
                result.append(lookup[str(target).lower()])
            else:
                missing.append(f"{band} (mapped to {target!r})")
        if missing:
            raise InputError(
                f"{label}: missing bands {', '.join(missing)} for the encoder "
                f"(source bands: {described})"
            )
        return result
    if lookup:
        for band in wanted:
            if band.lower() in lookup:
                result.append(lookup[band.lower()])
            else:
                missing.append(band)
        if missing:
            raise InputError(
                f"{label}: missing bands {', '.join(missing)} needed by the encoder "
                f"(source bands: {described}); choose the bands to encode with"
                f" -O bands=NAME,... or map them with --band-map ENCODER_BAND=SOURCE_BAND"
            )
        return result
    if count == len(wanted):
        return list(range(1, count + 1))
    raise InputError(
        f"{label}: the raster has {count} unnamed bands, the encoder needs {len(wanted)} "
        f"({', '.join(wanted)}); choose the bands with -O bands=NAME,... or map them with"
        f" --band-map ENCODER_BAND=SOURCE_INDEX"
    )


def _stac_band_names(asset: Any) -> list[set[str]]:
    bands = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
    result: list[set[str]] = []
    for band in bands:
        if not isinstance(band, dict):
            continue
        aliases = {
            str(band[k])
            for k in ("name", "common_name", "eo:common_name", "description")
            if band.get(k)
        }
        result.append(aliases)
    return result


def _raster_band_names(ds: Any) -> list[set[str]]:
    return [{d} if d else set() for d in ds.descriptions]


@dataclass
class _Raster:
    href: str
    crs: Any
    transform: Any
    width: int
    height: int
    nodata: tuple[float | None, ...]
    dtypes: tuple[str, ...]
    names: list[set[str]]
    tags: dict[str, str]


def _probe(href: str) -> _Raster:
    ds = open_raster(href)
    try:
        return _Raster(
            href=href,
            crs=ds.crs,
            transform=ds.transform,
            width=ds.width,
            height=ds.height,
            nodata=tuple(ds.nodatavals),
            dtypes=tuple(ds.dtypes),
            names=_raster_band_names(ds),
            tags=dict(ds.tags()),
        )
    finally:
        ds.close()


def _build(
    item_id: str,
    asset: str,
    rasters: list[tuple[_Raster, int]],
    when: datetime,
) -> Source:
    """A source from (raster, band index) per encoder band; the finest raster is the grid."""
    ref = min((r for r, _ in rasters), key=lambda r: abs(r.transform.a * r.transform.e))
    for raster, _ in rasters:
        if raster.crs != ref.crs:
            raise InputError(
                f"{item_id}: band rasters have different CRS ({crs_string(ref.crs)} in "
                f"{ref.href}, {crs_string(raster.crs)} in {raster.href})"
            )
    aligned = {
        r.href: (r.transform == ref.transform and (r.width, r.height) == (ref.width, ref.height))
        for r, _ in rasters
    }
    t = ref.transform
    return Source(
        item_id=item_id,
        asset=asset,
        href=ref.href,
        bands=tuple(BandRef(r.href, i) for r, i in rasters),
        crs=crs_string(ref.crs),
        crs_wkt=ref.crs.to_wkt(),
        transform=(t.a, t.b, t.c, t.d, t.e, t.f),
        width=ref.width,
        height=ref.height,
        datetime=when,
        nodata=tuple(r.nodata[i - 1] for r, i in rasters),
        itemsize=tuple(int(np.dtype(r.dtypes[i - 1]).itemsize) for r, i in rasters),
        aligned=aligned,
    )


def source_from_file(
    path: str,
    bands: Sequence[str],
    band_map: Mapping[str, str | int] | None = None,
    default_datetime: datetime | None = None,
) -> Source:
    raster = _probe(path)
    indexes = map_bands(path, bands, raster.names, band_map)
    when = None
    tag = raster.tags.get("TIFFTAG_DATETIME")
    if tag:
        when = parse_tiff_datetime(tag)
        if when is None:
            raise InputError(f"{path}: TIFFTAG_DATETIME {tag!r} is not a date and time")
    when = when or (_as_utc(default_datetime) if default_datetime else None)
    if when is None:
        raise InputError(
            f"{path}: no acquisition datetime (no STAC item, no TIFFTAG_DATETIME tag); "
            f"pass --datetime"
        )
    name = Path(path).name
    return _build(Path(path).stem, name, [(raster, i) for i in indexes], when)


def _asset_href(asset: Any, base: Path | None) -> str:
    href = str(asset.get_absolute_href() or asset.href)
    if "://" in href or os.path.isabs(href) or base is None:
        return href
    return str((base / href).resolve())


def _is_raster_asset(key: str, asset: Any) -> bool:
    media = (asset.media_type or "").lower()
    roles = asset.roles or []
    if "tiff" in media or "jp2" in media or "geotiff" in media:
        return True
    if "data" in roles and not media:
        return asset.href.lower().endswith((".tif", ".tiff", ".jp2", ".vrt"))
    return asset.href.lower().endswith((".tif", ".tiff")) and "thumbnail" not in roles


def source_from_item(
    item: Any,
    bands: Sequence[str],
    band_map: Mapping[str, str | int] | None = None,
    asset_key: str | None = None,
    default_datetime: datetime | None = None,
    base: Path | None = None,
) -> Source:
    """A source from a STAC item (see the module docstring for how assets are picked)."""
    label = f"STAC item {item.id}"
    when = item.datetime or item.common_metadata.start_datetime
    when = _as_utc(when) if when else (_as_utc(default_datetime) if default_datetime else None)
    if when is None:
        raise InputError(f"{label}: no datetime or start_datetime; pass --datetime")
    assets = item.assets
    if asset_key is not None:
        if asset_key not in assets:
            raise InputError(f"{label}: no asset {asset_key!r} (assets: {', '.join(assets)})")
        candidates = [asset_key]
    else:
        candidates = [k for k, a in assets.items() if _is_raster_asset(k, a)]
        # One asset per band (Sentinel-2 style): by key or by the asset's single band name.
        per_band: dict[str, str] = {}
        for band in bands:
            target = str(band_map.get(band, band)) if band_map else band
            for key in candidates:
                aliases = {n.lower() for s in _stac_band_names(assets[key]) for n in s}
                if key.lower() == target.lower() or (
                    len(_stac_band_names(assets[key])) == 1 and target.lower() in aliases
                ):
                    per_band[band] = key
                    break
        if len(per_band) == len(bands) and len(set(per_band.values())) == len(bands):
            rasters: list[tuple[_Raster, int]] = []
            probed: dict[str, _Raster] = {}
            for band in bands:
                href = _asset_href(assets[per_band[band]], base)
                probed.setdefault(href, _probe(href))
                rasters.append((probed[href], 1))
            return _build(item.id, "+".join(per_band[b] for b in bands), rasters, when)
    if not candidates:
        raise InputError(f"{label}: no raster assets (assets: {', '.join(assets)})")
    errors: list[str] = []
    for key in candidates:
        href = _asset_href(assets[key], base)
        raster = _probe(href)
        names = _stac_band_names(assets[key])
        if len(names) != len(raster.names) or not any(names):
            names = raster.names
        try:
            indexes = map_bands(f"{label} asset {key} ({href})", bands, names, band_map)
        except InputError as exc:
            errors.append(str(exc))
            continue
        return _build(item.id, key, [(raster, i) for i in indexes], when)
    raise InputError("; ".join(errors))


def _load_stac(path: Path) -> list[Any]:
    import pystac

    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read STAC JSON: {exc}") from exc
    try:
        if data.get("type") == "FeatureCollection":
            return list(pystac.ItemCollection.from_dict(data, preserve_dict=False))
        if data.get("type") == "Feature":
            return [pystac.Item.from_dict(data, preserve_dict=False)]
    except Exception as exc:
        raise InputError(f"{path}: not a valid STAC Item or ItemCollection: {exc}") from exc
    raise InputError(f"{path}: expected a STAC Item or ItemCollection (FeatureCollection)")


def first_raster_bands(inputs: Sequence[Any]) -> list[str] | None:
    """Band names of the first raster file among ``inputs`` (``band1``.. when unnamed).

    None when the first input is not a raster file or directory of them (STAC items
    name their bands per asset; they keep the encoder's default bands).
    """
    for entry in inputs:
        text = str(entry) if isinstance(entry, str | os.PathLike) else None
        if text is None:
            return None
        path = Path(text)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
            )
            if not files:
                return None
            path = files[0]
        elif path.suffix.lower() not in RASTER_SUFFIXES or not path.is_file():
            return None
        raster = _probe(str(path))
        named = [sorted(n)[0] if n else "" for n in raster.names]
        if all(named) and len(set(named)) == len(named):
            return named
        return [f"band{i + 1}" for i in range(len(raster.names))]
    return None


def resolve_inputs(
    inputs: Iterable[Any],
    bands: Sequence[str],
    band_map: Mapping[str, str | int] | None = None,
    asset_key: str | None = None,
    default_datetime: datetime | None = None,
) -> list[Source]:
    """Sources for the given inputs, in input order (directories sorted by path)."""
    import pystac

    sources: list[Source] = []
    for entry in inputs:
        if isinstance(entry, pystac.ItemCollection):
            for item in entry:
                sources.append(source_from_item(item, bands, band_map, asset_key, default_datetime))
            continue
        if isinstance(entry, pystac.Item):
            sources.append(source_from_item(entry, bands, band_map, asset_key, default_datetime))
            continue
        text = str(entry)
        path = Path(text)
        if "://" not in text and not path.exists():
            raise InputError(f"{text}: no such file or directory")
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
            )
            if not files:
                raise InputError(f"{text}: directory holds no GeoTIFF (*.tif, *.tiff)")
            for file in files:  # absolute: the source links name the file on this site
                sources.append(
                    source_from_file(str(file.resolve()), bands, band_map, default_datetime)
                )
        elif path.suffix.lower() in STAC_SUFFIXES:
            for item in _load_stac(path):
                sources.append(
                    source_from_item(
                        item, bands, band_map, asset_key, default_datetime, path.parent.resolve()
                    )
                )
        else:
            href = str(path.resolve()) if "://" not in text else text
            sources.append(source_from_file(href, bands, band_map, default_datetime))
    seen: dict[str, str] = {}
    for source in sources:
        if source.item_id in seen and seen[source.item_id] != source.href:
            raise InputError(
                f"two sources share the id {source.item_id!r} ({seen[source.item_id]} and "
                f"{source.href}); chip ids would collide"
            )
        seen[source.item_id] = source.href
    return sources


class ChipReader:
    """Reads chips of sources with rasterio windowed reads; keeps datasets open per process."""

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = list(sources)
        self._open: dict[str, Any] = {}
        self._pid = os.getpid()

    def _dataset(self, href: str) -> Any:
        if os.getpid() != self._pid:  # forked into a DataLoader worker: reopen there
            self._open = {}
            self._pid = os.getpid()
        ds = self._open.get(href)
        if ds is None:
            ds = self._open[href] = open_raster(href)
        return ds

    def close(self) -> None:
        for ds in self._open.values():
            ds.close()
        self._open = {}

    def read(self, source_index: int, col: int, row: int, size: int) -> tuple[np.ndarray, float]:
        """``(C, size, size)`` float32 chip with nodata filled, and its nodata fraction."""
        from rasterio.enums import MaskFlags, Resampling
        from rasterio.windows import Window, from_bounds

        src = self.sources[source_index]
        window = Window(col, row, size, size)
        out = np.empty((len(src.bands), size, size), dtype=np.float32)
        invalid = np.zeros((size, size), dtype=bool)
        groups: dict[str, list[int]] = {}
        for pos, band in enumerate(src.bands):
            groups.setdefault(band.href, []).append(pos)
        for href, positions in groups.items():
            indexes = [src.bands[p].index for p in positions]
            try:
                ds = self._dataset(href)
                if src.aligned.get(href, True):
                    data = ds.read(indexes, window=window)
                    masks = (
                        ds.read_masks(indexes[0], window=window)
                        if MaskFlags.per_dataset in ds.mask_flag_enums[indexes[0] - 1]
                        else None
                    )
                else:
                    a, b, c, d, e, f = src.transform
                    x0, y0 = c + a * col, f + e * row
                    x1, y1 = x0 + a * size, y0 + e * size
                    other = from_bounds(
                        min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), ds.transform
                    )
                    data = ds.read(
                        indexes,
                        window=other,
                        out_shape=(len(indexes), size, size),
                        resampling=Resampling.nearest,
                    )
                    masks = None
            except InputError:
                raise
            except Exception as exc:
                raise InputError(
                    f"{href}: cannot read window col={col} row={row} size={size}: {exc}"
                ) from exc
            if masks is not None:
                invalid |= masks == 0
            for k, pos in enumerate(positions):
                band = data[k]
                nodata = src.nodata[pos]
                if nodata is not None:
                    invalid |= np.isnan(band) if np.isnan(nodata) else band == np.asarray(nodata)
                if band.dtype.kind == "f":
                    invalid |= ~np.isfinite(band)
                out[pos] = band
        fraction = float(invalid.mean())
        if 0.0 < fraction < 1.0:
            valid = ~invalid
            for pos in range(out.shape[0]):  # fill with the band's mean over valid pixels
                out[pos][invalid] = out[pos][valid].mean()
        elif fraction == 1.0:
            out[:] = 0.0
        return out, fraction
