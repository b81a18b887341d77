"""The encode job: source imagery -> chips -> embeddings -> GeoParquet shards + manifest.

One function, :func:`run_encode`, used by ``embcat encode`` and by anyone calling it from
Python. It runs unchanged on a laptop and under ``torchrun --nproc_per_node=N`` (one or
many nodes, e.g. under SLURM):

1. every rank resolves the inputs and plans the same chip list (:mod:`encoders.grid`)
   and takes its contiguous share (:func:`encoders.grid.split_for_rank`);
2. each rank reads its chips with rasterio windowed reads in a torch ``DataLoader``
   (worker processes overlap reading with encoding), skips chips whose nodata share is
   above the threshold, encodes batches under ``torch.inference_mode`` and writes its own
   shard ``shard-RRRRR-of-WWWWW.parquet``: to a hidden temporary name first, then fsync
   and an atomic rename, so a shard file exists only when complete;
3. after all ranks are done (a collective on the process group: gloo on CPU, nccl on
   CUDA; initialised only when ``WORLD_SIZE > 1``), rank 0 verifies every shard and
   writes ``manifest.json``.

Rerunning after an interruption reuses complete shards: a shard's parquet key-value
metadata (key ``embcat:shard``) records its rank, world size, row count, encoder and a
digest of the plan (encoder, options, grid and that rank's chip ids), which a rank
checks together with the file's real row count before it skips its work.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import platform
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from embcat.encoders.base import Encoder
from embcat.encoders.errors import EncodeError, InputError, OutputError
from embcat.encoders.grid import Chip, footprints, grid_id, plan_chips, split_for_rank
from embcat.encoders.manifest import (
    MANIFEST_NAME,
    QUICKLOOK_DIR,
    QUICKLOOKS_KEY,
    THUMBNAIL_COLUMN,
    Manifest,
    QuicklookRecord,
    RunParameters,
    ShardRecord,
    geo_metadata,
    sha256_file,
    shard_name,
    shard_schema,
)
from embcat.encoders.registry import get_encoder
from embcat.encoders.sources import ChipReader, Source, first_raster_bands, resolve_inputs
from embcat.encoders.thumbnails import render as render_thumbnails
from embcat.encoders.thumbnails import scene_quicklook

log = logging.getLogger("embcat.encode")

SHARD_META_KEY = "embcat:shard"
ROW_GROUP_ROWS = 4096
DEFAULT_DIST_TIMEOUT_S = 48 * 3600  # ranks wait for the slowest one before the manifest


@dataclass
class EncodeResult:
    """What :func:`run_encode` returns (on every rank; ``manifest`` only on rank 0)."""

    out_dir: Path
    rank: int
    world_size: int
    device: str
    shard: Path
    rows: int  # this rank's shard
    skipped_nodata: int  # this rank
    resumed: bool  # this rank's shard was complete already and reused
    elapsed_s: float
    manifest: Manifest | None = None
    totals: dict[str, Any] = field(default_factory=dict)  # all ranks (rank 0)
    summary: str = ""


# -- distributed context ----------------------------------------------------------------


@dataclass
class _Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    initialised_here: bool = False

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _slurm_to_torch_env() -> None:
    """Under a plain ``srun`` (no torchrun), map SLURM's task ids to torch's env vars."""
    env = os.environ
    if "WORLD_SIZE" in env or "MASTER_ADDR" not in env:
        return
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        env["WORLD_SIZE"] = env["SLURM_NTASKS"]
        env["RANK"] = env["SLURM_PROCID"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_PORT", "29500")


def _leading_int(value: str | None) -> int | None:
    digits = ""
    for ch in (value or "").strip():
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def threads_per_rank(env: Mapping[str, str], available: int, node_cpus: int) -> int | None:
    """torch's intra-op threads for this rank, or None to keep torch's default.

    ``available``: the cores this process may run on (``os.sched_getaffinity``);
    ``node_cpus``: the node's cores. ``OMP_NUM_THREADS`` set by the user wins (None).
    ``SLURM_CPUS_PER_TASK`` caps the count. A rank bound to a subset of the node's cores
    (srun's CPU binding) uses that subset; ranks that see the whole node share it by the
    ranks per node (``LOCAL_WORLD_SIZE``, ``SLURM_NTASKS_PER_NODE``,
    ``SLURM_TASKS_PER_NODE`` or, on one node, ``SLURM_NTASKS``). Without torchrun, torch
    would start one thread per core in every rank: N ranks on N cores oversubscribe them
    N-fold.
    """
    if env.get("OMP_NUM_THREADS"):
        return None
    cpus_per_task = _leading_int(env.get("SLURM_CPUS_PER_TASK"))
    if cpus_per_task:
        return max(1, min(cpus_per_task, available))
    local = (
        _leading_int(env.get("LOCAL_WORLD_SIZE"))
        or _leading_int(env.get("SLURM_NTASKS_PER_NODE"))
        or _leading_int(env.get("SLURM_TASKS_PER_NODE"))
        or (_leading_int(env.get("SLURM_NTASKS")) if env.get("SLURM_NNODES") == "1" else None)
        or 1
    )
    if available < node_cpus:  # bound to its own cores already
        return available if local > 1 else None
    if local <= 1:
        return None
    return max(1, available // local)


def _cap_threads() -> None:
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        available = os.cpu_count() or 1
    threads = threads_per_rank(os.environ, available, os.cpu_count() or available)
    if threads is not None and threads != torch.get_num_threads():
        log.info("using %d torch threads in this rank", threads)
        torch.set_num_threads(threads)


def _setup_dist(device: str, timeout_s: float) -> _Dist:
    _slurm_to_torch_env()
    _cap_threads()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        if not torch.cuda.is_available():
            raise EncodeError("device cuda requested, but torch sees no CUDA device")
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    ctx = _Dist(rank, world, local_rank, dev)
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if dev.type == "cuda" else "gloo",
                timeout=timedelta(seconds=timeout_s),
            )
            ctx.initialised_here = True
        ctx.rank, ctx.world = dist.get_rank(), dist.get_world_size()
    return ctx


# -- shards ---------------------------------------------------------------------------


def plan_digest(
    encoder: Encoder, chips: Sequence[Chip], sources: Sequence[Source], params: Mapping[str, Any]
) -> str:
    """sha256 of what a shard must contain: encoder, options, grid, the rank's chips."""
    h = hashlib.sha256()
    ident = {
        "name": encoder.name,
        "version": encoder.version,
        "dimensions": encoder.output_spec.dimensions,
        "dtype": encoder.output_spec.dtype,
        "options": encoder.hyperparameters(),
        "bands": list(encoder.input_spec.bands),
        "params": dict(params),
    }
    h.update(json.dumps(ident, sort_keys=True, default=str).encode())
    for chip in chips:
        src = sources[chip.source]
        h.update(f"\n{chip.id}|{src.href}|{src.datetime.isoformat()}".encode())
    return h.hexdigest()


def read_shard_meta(path: Path) -> dict[str, Any] | None:
    """The ``embcat:shard`` metadata of a readable shard, with ``file_rows``; else None."""
    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowInvalid):
        return None
    kv = meta.metadata or {}
    raw = kv.get(SHARD_META_KEY.encode())
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(info, dict):
        return None
    info["file_rows"] = meta.num_rows
    return info


def verify_shard(path: Path, rank: int, world: int, digest: str) -> dict[str, Any] | None:
    """Shard metadata if ``path`` is a complete shard of this plan and rank, else None."""
    if not path.is_file():
        return None
    info = read_shard_meta(path)
    if info is None:
        log.warning("%s is not a readable embcat shard; encoding it again", path)
        return None
    expected = {"rank": rank, "world_size": world, "plan_sha256": digest}
    if any(info.get(k) != v for k, v in expected.items()) or info.get("rows") != info.get(
        "file_rows"
    ):
        log.warning("%s belongs to another run or is incomplete; encoding it again", path)
        return None
    return info


class _ShardWriter:
    """Buffers rows and writes row groups to a temporary file; ``commit`` makes it final."""

    def __init__(self, final: Path, schema: pa.Schema) -> None:
        self.final = final
        self.tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        self.schema = schema
        self.rows = 0
        self._buffer: dict[str, list[Any]] = {name: [] for name in schema.names}
        self._embeddings: list[np.ndarray] = []
        self._bbox = [np.inf, np.inf, -np.inf, -np.inf]
        self._writer: pq.ParquetWriter | None = None
        try:
            self._writer = pq.ParquetWriter(str(self.tmp), schema, compression="zstd")
        except OSError as exc:
            raise _output_error(final, exc) from exc

    def add(self, columns: Mapping[str, Sequence[Any]], embeddings: np.ndarray, bbox: np.ndarray):
        for name, values in columns.items():
            self._buffer[name].extend(values)
        self._embeddings.append(embeddings)
        if len(bbox):
            self._bbox = [
                min(self._bbox[0], float(bbox[:, 0].min())),
                min(self._bbox[1], float(bbox[:, 1].min())),
                max(self._bbox[2], float(bbox[:, 2].max())),
                max(self._bbox[3], float(bbox[:, 3].max())),
            ]
        if len(self._buffer["id"]) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        n = len(self._buffer["id"])
        if n == 0:
            return
        emb_field = self.schema.field("embedding")
        flat = np.concatenate(self._embeddings).reshape(-1)
        embedding = pa.FixedSizeListArray.from_arrays(
            pa.array(flat, type=emb_field.type.value_type), emb_field.type.list_size
        )
        arrays = [
            embedding if name == "embedding" else pa.array(self._buffer[name], type=f.type)
            for name, f in zip(self.schema.names, self.schema, strict=True)
        ]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        assert self._writer is not None
        try:
            self._writer.write_table(table)
        except OSError as exc:
            self.abort()
            raise _output_error(self.final, exc) from exc
        self.rows += n
        self._buffer = {name: [] for name in self.schema.names}
        self._embeddings = []

    def commit(self, shard_meta: dict[str, Any]) -> None:
        """Finish the file, fsync it and rename it to its final name (atomic)."""
        self._flush()
        bbox = self._bbox if self.rows else None
        assert self._writer is not None
        try:
            self._writer.add_key_value_metadata(
                {
                    "geo": json.dumps(geo_metadata(bbox)),
                    SHARD_META_KEY: json.dumps({**shard_meta, "rows": self.rows}),
                }
            )
            self._writer.close()
            self._writer = None
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp, self.final)
            _fsync_dir(self.final.parent)
        except OSError as exc:
            self.abort()
            raise _output_error(self.final, exc) from exc

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - already failing; the tmp file goes anyway
                pass
            self._writer = None
        self.tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _output_error(path: Path, exc: OSError) -> OutputError:
    code = getattr(exc, "errno", None)
    cause = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied (read-only output directory?)",
        errno.EPERM: "operation not permitted",
    }.get(code or -1, exc.strerror or str(exc))
    return OutputError(f"cannot write {path}: {cause}")


def _prepare_output(out_dir: Path, rank: int) -> None:
    """Create the output directory (rank 0) and prove it is writable (every rank)."""
    try:
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
        elif not out_dir.is_dir():
            raise OutputError(f"output directory {out_dir} does not exist (rank 0 creates it)")
        probe = out_dir / f".write-probe-{rank}-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"embcat")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OutputError:
        raise
    except OSError as exc:
        raise _output_error(out_dir, exc) from exc


# -- reading ---------------------------------------------------------------------------


class _ChipDataset(torch.utils.data.Dataset[tuple[int, np.ndarray | None, float]]):
    def __init__(self, reader: ChipReader, chips: Sequence[Chip], threshold: float) -> None:
        self.reader = reader
        self.chips = list(chips)
        self.threshold = threshold

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, float]:
        chip = self.chips[i]
        data, fraction = self.reader.read(chip.source, chip.col, chip.row, chip.size)
        if fraction > self.threshold or fraction >= 1.0:
            return i, None, fraction
        return i, data, fraction


def _collate(batch: list[tuple[int, np.ndarray | None, float]]) -> dict[str, Any]:
    kept = [(i, a, f) for i, a, f in batch if a is not None]
    return {
        "count": len(batch),
        "index": [i for i, _, _ in kept],
        "fraction": [f for _, _, f in kept],
        "x": torch.from_numpy(np.stack([a for _, a, _ in kept])) if kept else None,
    }


def _software() -> dict[str, str]:
    import pyproj
    import pystac
    import rasterio
    import shapely

    try:
        from embcat import __version__ as embcat_version
    except ImportError:  # pragma: no cover - encoders used without the CLI package
        embcat_version = "unknown"
    return {
        "embcat": embcat_version,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
        "pystac": pystac.__version__,
        "pyproj": pyproj.__version__,
        "shapely": shapely.__version__,
    }


# -- the job -----------------------------------------------------------------------------


def _encode_shard(
    *,
    encoder: Encoder,
    sources: Sequence[Source],
    chips: Sequence[Chip],
    writer: _ShardWriter,
    batch_size: int,
    workers: int,
    threshold: float,
    device: torch.device,
    progress: bool,
    desc: str,
    thumbnails: bool = True,
) -> dict[str, int]:
    from tqdm import tqdm

    reader = ChipReader(sources)
    loader = torch.utils.data.DataLoader(
        _ChipDataset(reader, chips, threshold),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
    )
    skipped = source_bytes = 0
    bar = tqdm(
        total=len(chips),
        unit="chip",
        desc=desc,
        disable=not progress,
        smoothing=0.1,
        mininterval=0.5,  # fewer redraws in batch-job logs
    )
    try:
        with torch.inference_mode():
            for batch in loader:
                skipped += batch["count"] - len(batch["index"])
                if batch["x"] is not None:
                    vectors = encoder.encode(batch["x"].to(device, non_blocking=True))
                    batch_chips = [chips[i] for i in batch["index"]]
                    thumbs = (
                        render_thumbnails(batch["x"].numpy(), encoder.input_spec.bands)
                        if thumbnails
                        else None
                    )
                    _add_rows(writer, sources, batch_chips, batch["fraction"], vectors, thumbs)
                    for chip in batch_chips:
                        itemsize = sum(sources[chip.source].itemsize)
                        source_bytes += itemsize * chip.size * chip.size
                bar.update(batch["count"])
                if skipped:
                    bar.set_postfix(skipped=skipped, refresh=False)
    finally:
        bar.close()
        reader.close()
    return {"skipped_nodata": skipped, "source_bytes": source_bytes}


def _add_rows(
    writer: _ShardWriter,
    sources: Sequence[Source],
    chips: Sequence[Chip],
    fractions: Sequence[float],
    vectors: torch.Tensor,
    thumbnails: Sequence[bytes] | None = None,
) -> None:
    emb = vectors.detach().cpu().numpy()
    # Footprints per source (vectorised), in batch order.
    wkb: list[bytes] = [b""] * len(chips)
    bboxes = np.zeros((len(chips), 4))
    by_source: dict[int, list[int]] = {}
    for pos, chip in enumerate(chips):
        by_source.setdefault(chip.source, []).append(pos)
    for src_index, positions in by_source.items():
        polys, boxes = footprints(sources[src_index], [chips[p] for p in positions])
        for k, p in enumerate(positions):
            wkb[p] = polys[k]
            bboxes[p] = boxes[k]
    srcs = [sources[c.source] for c in chips]
    writer.add(
        {
            "id": [c.id for c in chips],
            "geometry": wkb,
            "datetime": [s.datetime for s in srcs],
            "source_item": [s.item_id for s in srcs],
            "source_asset": [s.asset for s in srcs],
            "source_href": [s.href for s in srcs],
            "source_crs": [s.crs for s in srcs],
            "window_col": [c.col for c in chips],
            "window_row": [c.row for c in chips],
            "window_width": [c.size for c in chips],
            "window_height": [c.size for c in chips],
            "nodata_fraction": list(fractions),
            **({THUMBNAIL_COLUMN: list(thumbnails)} if thumbnails is not None else {}),
        },
        emb,
        bboxes,
    )


def _input_label(entry: Any) -> str:
    import pystac

    if isinstance(entry, pystac.ItemCollection):
        return f"ItemCollection({len(entry)} items)"
    if isinstance(entry, pystac.Item):
        return f"Item({entry.id})"
    return str(entry)


def run_encode(
    inputs: Iterable[Any],
    out_dir: str | Path,
    encoder: str | Encoder = "mosaiks",
    encoder_options: Mapping[str, Any] | None = None,
    *,
    chip_size: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
    workers: int = 2,
    nodata_threshold: float = 0.5,
    datetime: datetime | None = None,
    band_map: Mapping[str, str | int] | None = None,
    asset: str | None = None,
    resume: bool = True,
    progress: bool = True,
    dist_timeout_s: float = DEFAULT_DIST_TIMEOUT_S,
    quicklooks: bool = True,
    thumbnails: bool = True,
) -> EncodeResult:
    """Encode ``inputs`` into GeoParquet shards and a manifest under ``out_dir``.

    ``inputs``: GeoTIFF/COG paths, directories, STAC Item/ItemCollection JSON files, or
    ``pystac.Item`` / ``pystac.ItemCollection`` objects. ``encoder``: a registered name
    (instantiated with ``encoder_options``) or an :class:`Encoder`. ``chip_size``
    defaults to the encoder's, ``stride`` to ``chip_size``. ``nodata_threshold``: chips
    with a larger share of nodata pixels are skipped and counted. ``datetime``: used for
    sources with neither STAC datetime nor TIFFTAG_DATETIME. ``band_map``: encoder band
    -> source band name or 1-based index. ``workers``: DataLoader reader processes (0:
    read in the main process). ``quicklooks``: rank 0 renders a quicklook PNG of each
    source scene into ``quicklooks/`` (recorded in the manifest). Under torchrun every rank
    calls this with the same arguments. ``thumbnails``: a PNG per chip in the shards'
    ``thumbnail`` column (off: smaller shards, faster publishes). Raises
    :class:`encoders.errors.EncodeError` subclasses on bad input or output; rank 0's
    result carries the manifest.
    """
    started = time.perf_counter()
    started_at = datetime_now()
    out = Path(out_dir)
    inputs = list(inputs)
    if batch_size <= 0:
        raise EncodeError(f"batch size must be positive: {batch_size}")
    if not 0.0 <= nodata_threshold <= 1.0:
        raise EncodeError(f"nodata threshold must lie in [0, 1]: {nodata_threshold}")
    ctx = _setup_dist(device, dist_timeout_s)
    try:
        return _run(
            ctx,
            inputs,
            out,
            encoder,
            dict(encoder_options or {}),
            chip_size=chip_size,
            stride=stride,
            batch_size=batch_size,
            workers=workers,
            nodata_threshold=nodata_threshold,
            default_datetime=datetime,
            band_map=dict(band_map) if band_map else None,
            asset=asset,
            resume=resume,
            progress=progress,
            quicklooks=quicklooks,
            thumbnails=thumbnails,
            started=started,
            started_at=started_at,
        )
    finally:
        ctx.close()


def _adapt_to_source_bands(
    enc: Encoder, name: str, options: dict[str, Any], inputs: Sequence[Any]
) -> Encoder:
    """A band-agnostic encoder (``adapts_to_source_bands``) given no ``bands`` option
    keeps its default bands when the first raster has them all, else takes that raster's
    bands, in file order (e.g. a 6-band raster with mosaiks: 6 bands, not 13)."""
    if not getattr(type(enc), "adapts_to_source_bands", False):
        return enc
    names = first_raster_bands(inputs)
    if not names:
        return enc
    have = {n.lower() for n in names}
    if all(b.lower() in have for b in enc.input_spec.bands):
        return enc
    log.warning(
        "%s: the source has bands %s, not the default %s; encoding its bands"
        " (choose others with -O bands=...)",
        name,
        ",".join(names),
        ",".join(enc.input_spec.bands),
    )
    return get_encoder(name, **{**options, "bands": names})


def datetime_now() -> datetime:
    return datetime.now(UTC)


def _check_all(ctx: _Dist, error: BaseException | None, phase: str) -> None:
    """Collective: every rank learns whether any rank failed in ``phase``."""
    messages = ctx.gather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if failed:
        detail = "; ".join(f"rank {r}: {m}" for r, m in failed)
        raise EncodeError(f"{phase} failed on {len(failed)} rank(s), no manifest written: {detail}")


def _run(
    ctx: _Dist,
    inputs: list[Any],
    out: Path,
    encoder_arg: str | Encoder,
    options: dict[str, Any],
    *,
    chip_size: int | None,
    stride: int | None,
    batch_size: int,
    workers: int,
    nodata_threshold: float,
    default_datetime: datetime | None,
    band_map: dict[str, str | int] | None,
    asset: str | None,
    resume: bool,
    progress: bool,
    quicklooks: bool,
    thumbnails: bool,
    started: float,
    started_at: datetime,
) -> EncodeResult:
    rank, world = ctx.rank, ctx.world
    error: BaseException | None = None
    # Phase 1: encoder, sources, plan, output directory.
    try:
        enc = get_encoder(encoder_arg, **options) if isinstance(encoder_arg, str) else encoder_arg
        if isinstance(encoder_arg, str) and "bands" not in options and not band_map:
            enc = _adapt_to_source_bands(enc, encoder_arg, options, inputs)
        spec = enc.input_spec
        size = chip_size or spec.chip_size
        if size != spec.chip_size and not spec.variable_chip_size:
            raise InputError(
                f"encoder {enc.name!r} takes {spec.chip_size}x{spec.chip_size} chips only, "
                f"not {size}"
            )
        step = stride or size
        if size <= 0 or step <= 0:
            raise EncodeError(f"chip size and stride must be positive: {size}, {step}")
        sources = resolve_inputs(inputs, spec.bands, band_map, asset, default_datetime)
        for src in sources:
            # The encoder's GSD is in metres; the source's pixel size in its CRS units.
            metres = src.gsd_metres() if spec.gsd else None
            if spec.gsd and metres is not None and abs(metres - spec.gsd) > 0.5 * spec.gsd:
                log.warning(
                    "%s: pixel size %.3g m differs from the encoder's GSD %.3g m",
                    src.href,
                    metres,
                    spec.gsd,
                )
        chips = plan_chips(sources, size, step)
        if not chips:
            raise InputError(
                f"no {size}x{size} chip fits in any source "
                f"({', '.join(f'{s.href}: {s.width}x{s.height}' for s in sources)})"
            )
        params = {
            "chip_size": size,
            "stride": step,
            "nodata_threshold": nodata_threshold,
            "band_map": band_map,
            "asset": asset,
        }
        digests = [
            plan_digest(enc, split_for_rank(chips, r, world), sources, params) for r in range(world)
        ]
        mine = split_for_rank(chips, rank, world)
        enc.to(ctx.device)
        if rank == 0:
            _prepare_output(out, 0)
            (out / MANIFEST_NAME).unlink(missing_ok=True)  # the manifest marks a complete run
    except Exception as exc:  # noqa: BLE001 - reported through the collective below
        error = exc
    _check_all(ctx, error, "planning")

    # Phase 2: this rank's shard.
    shard_path = out / shard_name(rank, world)
    resumed = False
    stats: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        if rank != 0:
            _prepare_output(out, rank)
        for stale in out.glob(f".{shard_path.name}.tmp-*"):
            stale.unlink(missing_ok=True)
        info = verify_shard(shard_path, rank, world, digests[rank]) if resume else None
        if info is not None:
            resumed = True
            stats = {k: info[k] for k in ("rows", "skipped_nodata", "source_bytes")}
            log.info("rank %d: %s is complete, reusing it", rank, shard_path.name)
        else:
            shard_path.unlink(missing_ok=True)
            schema = shard_schema(enc.output_spec.dimensions, enc.output_spec.dtype)
            # Optional column past the contract's: each chip's quicklook (encoders.thumbnails).
            if thumbnails:
                schema = schema.append(pa.field(THUMBNAIL_COLUMN, pa.binary(), nullable=True))
            writer = _ShardWriter(shard_path, schema)
            try:
                counts = _encode_shard(
                    encoder=enc,
                    sources=sources,
                    chips=mine,
                    writer=writer,
                    batch_size=batch_size,
                    workers=workers,
                    threshold=nodata_threshold,
                    device=ctx.device,
                    progress=progress and rank == 0,
                    desc=f"encode {enc.name}" + (f" rank 0/{world}" if world > 1 else ""),
                    thumbnails=thumbnails,
                )
                meta = {
                    "rank": rank,
                    "world_size": world,
                    "plan_sha256": digests[rank],
                    "chips_planned": len(mine),
                    "encoder": {
                        "name": enc.name,
                        "version": enc.version,
                        "dimensions": enc.output_spec.dimensions,
                        "dtype": enc.output_spec.dtype,
                    },
                    "created": datetime_now().isoformat(),
                    **counts,
                }
                writer.commit(meta)
            except BaseException:
                writer.abort()
                raise
            stats = {"rows": writer.rows, **counts}
    except Exception as exc:  # noqa: BLE001 - reported through the collective below
        error = exc
    elapsed_rank = time.perf_counter() - t0
    stats.update(rank=rank, resumed=resumed, elapsed_s=elapsed_rank)
    all_stats = ctx.gather(stats)
    _check_all(ctx, error, "encoding")

    result = EncodeResult(
        out_dir=out,
        rank=rank,
        world_size=world,
        device=str(ctx.device),
        shard=shard_path,
        rows=int(stats["rows"]),
        skipped_nodata=int(stats["skipped_nodata"]),
        resumed=resumed,
        elapsed_s=time.perf_counter() - started,
    )
    # Phase 3: rank 0 verifies every shard and writes the manifest.
    error = None
    if rank == 0:
        try:
            scenes = _write_quicklooks(out, sources, enc.input_spec.bands) if quicklooks else []
            result.manifest = _write_manifest(
                out=out,
                encoder=enc,
                sources=sources,
                quicklooks=scenes,
                inputs=inputs,
                digests=digests,
                params=dict(
                    chip_size=size,
                    stride=step,
                    grid_id=grid_id(size, step, sources),
                    world_size=world,
                    batch_size=batch_size,
                    device=ctx.device.type,
                    nodata_threshold=nodata_threshold,
                    band_map=band_map,
                    asset=asset,
                    workers=workers,
                    default_datetime=default_datetime.isoformat() if default_datetime else None,
                    chips_planned=len(chips),
                    started=started_at.isoformat(),
                    elapsed_s=round(time.perf_counter() - started, 3),
                ),
            )
            result.totals = _totals(all_stats, time.perf_counter() - started)
            result.summary = _summary(result, enc)
        except Exception as exc:  # noqa: BLE001 - reported through the collective below
            error = exc
    _check_all(ctx, error, "writing the manifest")
    result.elapsed_s = time.perf_counter() - started
    return result


def _quicklook_key(item_id: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", item_id).strip("-.")[:180] or "scene"
    key, n = base, 1
    while key in taken:
        n += 1
        key = f"{base}-{n}"
    taken.add(key)
    return key


def _write_quicklooks(
    out: Path, sources: Sequence[Source], bands: Sequence[str]
) -> list[QuicklookRecord]:
    """A quicklook PNG of each source scene under ``out/quicklooks/`` (atomic writes). A
    scene that cannot be rendered is skipped with a warning: quicklooks are for looking,
    the vectors do not depend on them."""
    folder = out / QUICKLOOK_DIR
    records: list[QuicklookRecord] = []
    taken: set[str] = set()
    for src in sources:
        key = _quicklook_key(src.item_id, taken)
        try:
            look = scene_quicklook(src, bands)
        except Exception as exc:  # noqa: BLE001 - a quicklook never fails the run
            log.warning("%s: no quicklook (%s)", src.href, exc)
            continue
        try:
            folder.mkdir(exist_ok=True)
            path = folder / f"{key}.png"
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(look.png)
            os.replace(tmp, path)
        except OSError as exc:
            raise _output_error(folder, exc) from exc
        records.append(
            QuicklookRecord(
                key=key,
                source_item=src.item_id,
                path=f"{QUICKLOOK_DIR}/{key}.png",
                bbox=list(look.bbox),
                crs=look.crs,
                width=look.width,
                height=look.height,
                bytes=len(look.png),
                sha256=hashlib.sha256(look.png).hexdigest(),
                acquired=src.datetime,
            )
        )
    return records


def _write_manifest(
    *,
    out: Path,
    encoder: Encoder,
    sources: Sequence[Source],
    quicklooks: Sequence[QuicklookRecord] = (),
    inputs: Sequence[Any],
    digests: Sequence[str],
    params: dict[str, Any],
) -> Manifest:
    world = len(digests)
    records: list[ShardRecord] = []
    rows = skipped = source_bytes = 0
    for r in range(world):
        path = out / shard_name(r, world)
        info = verify_shard(path, r, world, digests[r])
        if info is None:
            raise OutputError(f"shard {path} is missing or incomplete; rerun the encode job")
        records.append(
            ShardRecord(
                path=path.name,
                rank=r,
                rows=int(info["rows"]),
                bytes=path.stat().st_size,
                sha256=sha256_file(path),
            )
        )
        rows += int(info["rows"])
        skipped += int(info["skipped_nodata"])
        source_bytes += int(info["source_bytes"])
    identity = encoder.identity(params["chip_size"])  # the run's (variable-size encoders)
    others = sorted(
        p.name for p in out.glob("shard-*.parquet") if p.name not in {r.path for r in records}
    )
    if others:
        log.warning("%s holds shards of another run, not in the manifest: %s", out, others)
    manifest = Manifest(
        created=datetime_now(),
        encoder=identity,
        run=RunParameters.model_validate(
            {
                "bands": list(encoder.input_spec.bands),
                "inputs": [_input_label(i) for i in inputs],
                "encoder_options": encoder.hyperparameters(),
                "sources": [s.describe() for s in sources],
                **params,
            }
        ),
        software=_software(),
        shards=records,
        rows=rows,
        skipped_nodata=skipped,
        source_bytes=source_bytes,
        # optional key: absent when there are none (older manifests keep their checksum)
        **({QUICKLOOKS_KEY: [q.model_dump(mode="json") for q in quicklooks]} if quicklooks else {}),
    )
    try:
        manifest.dump(out)
    except OSError as exc:
        raise _output_error(out / MANIFEST_NAME, exc) from exc
    return manifest


def _totals(all_stats: Sequence[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    fresh = [s for s in all_stats if not s["resumed"]]
    encoded = sum(int(s["rows"]) + int(s["skipped_nodata"]) for s in fresh)
    return {
        "rows": sum(int(s["rows"]) for s in all_stats),
        "skipped_nodata": sum(int(s["skipped_nodata"]) for s in all_stats),
        "shards_reused": len(all_stats) - len(fresh),
        "chips_processed": encoded,
        "elapsed_s": elapsed,
        "chips_per_s": encoded / elapsed if elapsed > 0 else 0.0,
    }


def _summary(result: EncodeResult, encoder: Encoder) -> str:
    t = result.totals
    reused = f", {t['shards_reused']} shard(s) reused" if t["shards_reused"] else ""
    return (
        f"encoded {t['rows']} chips with {encoder.name} {encoder.version} "
        f"({t['skipped_nodata']} skipped for nodata{reused}) on {result.world_size} "
        f"rank(s), {result.device}: {t['chips_processed']} chips in {t['elapsed_s']:.1f} s, "
        f"{t['chips_per_s']:.1f} chips/s -> {result.out_dir / MANIFEST_NAME}"
    )
