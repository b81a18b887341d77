"""A space's similarity index: its build (of the space's kind, on its partition), the swap
to a new kind without downtime for readers, and the build's memory and list sizes."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, Literal, cast

import numpy as np
import psycopg
from psycopg.types.json import Jsonb

from embcat.catalog.errors import InvalidInput
from embcat.catalog.settings import defaults
from embcat.catalog.store.partitions import (
    DEFAULT_PARTITION,
    ensure_partition,
    estimated_rows,
    partition_name,
)
from embcat.catalog.store.spaces import (
    INDEX_KINDS,
    IndexKind,
    IndexSettings,
    Space,
    get_space,
    index_name,
    kind_indexable,
)

log = logging.getLogger(__name__)


def has_index(conn: psycopg.Connection, space: Space) -> bool:
    """Whether the index of the space's kind exists and is valid (binary kinds: and the
    centre it was built with is recorded)."""
    if space.binary and space.center is None:
        return False
    row = conn.execute(
        "select i.indisvalid from pg_class c join pg_index i on i.indexrelid = c.oid"
        " where c.relname = %s",
        (space.index_name,),
    ).fetchone()
    return bool(row and row[0])


def hnsw_memory_bytes(rows: int, space: Space, m: int = 16) -> int:
    """Rough size of the HNSW graph being built (GUIDE §3: N * (8 + 2d) * 1.3 for halfvec)."""
    bytes_per_value = 2 if space.storage == "halfvec" else 4
    return int(rows * (8 + bytes_per_value * space.dimensions + 8 * m) * 1.3)


def index_memory_bytes(rows: int, space: Space, kind: str, m: int = 16) -> int:
    """Build memory of an index of ``kind`` over ``rows`` vectors of ``space``."""
    if kind == "hnsw-halfvec":
        return hnsw_memory_bytes(rows, space, m)
    if kind == "hnsw-bit":  # the graph holds d/8 bytes of code a node
        return int(rows * (8 + space.dimensions // 8 + 8 * m) * 1.3)
    return ivfflat_memory_bytes(rows, ivfflat_lists(rows), space.dimensions)


# IVFFlat's k-means (pgvector 0.8 ElkanKmeans) keeps a float bound per sample and list, and
# samples 50 rows a list: 4 * 50 * lists^2 bytes, 2.0 GB at 3,162 lists (10M rows; the
# first 10M publish failed there with a fixed 256 MB). LISTS_CAP keeps that under the
# 4 GiB build memory cap (3.4 GB at 4,096 lists); beyond 16.8M rows a list grows instead.
LISTS_CAP = 4096
KMEANS_SAMPLES_PER_LIST = 50


def ivfflat_memory_bytes(rows: int, lists: int, dimensions: int) -> int:
    """Build memory pgvector checks before its k-means over ``lists`` lists: the bounds
    (a float per sample and list, and per pair of lists), the samples and the centres."""
    samples = max(KMEANS_SAMPLES_PER_LIST * lists, 10_000)
    used = min(samples, max(rows, 1))
    item = 16 + dimensions // 4  # a bit code with its headers, generously (~160 B
    # a 768-d code in pgvector's own figure at 10M)
    bounds = 4 * used * lists + 4 * lists * lists
    return int((bounds + (samples + 2 * lists) * item) * 1.1)


def ivfflat_lists(rows: int) -> int:
    """IVFFlat lists for ``rows`` vectors: sqrt(N) (measured: 316 at 100k, 1000 at 1M), at
    most LISTS_CAP (the k-means memory grows with the square of the lists)."""
    return max(1, min(round(rows**0.5), LISTS_CAP))


# The binary code's centre is the mean of a page sample of about this many rows when a
# space holds more than twice as many (a full scan of 10M 768-d rows took 3.5 minutes of
# the 10M publish): per dimension the sample mean is within ~0.5 % of a standard deviation
# of the full mean, far below what moves a sign bit; the re-rank is exact either way.
CENTER_SAMPLE_ROWS = 200_000


def space_center(
    conn: psycopg.Connection, space: Space, rows: int | None = None
) -> tuple[float, ...]:
    """The mean of the space's vectors as the binary code sees them (``Space.coded_sql``:
    unit length in cosine spaces), zeros when empty. ``rows`` (the space's row count)
    above 2 * CENTER_SAMPLE_ROWS: the mean of a repeatable page sample of that size."""
    sample = ""
    if rows is not None and rows > 2 * CENTER_SAMPLE_ROWS:
        sample = f" tablesample system ({100.0 * CENTER_SAMPLE_ROWS / rows:.6f}) repeatable (0)"
    row = conn.execute(
        f"select avg({space.coded_sql('embeddings')})::real[] from embeddings{sample}"
        f" where space_id = {int(space.id)}"
    ).fetchone()
    if sample and (row is None or row[0] is None):  # no page drawn: the whole space
        return space_center(conn, space)
    if row is None or row[0] is None:
        return tuple(0.0 for _ in range(space.dimensions))
    return tuple(float(v) for v in row[0])


# A publish rebuilds an ivfflat-bit index when its space has grown past this many times the
# rows the index was built with: IVFFlat keeps the lists (sqrt of the rows at the build)
# and the centre of its build, so a space first published with 2,000 rows (45 lists) and
# grown to 10M would scan ~220k codes a probe. Rebuilding at each 4x growth costs at most
# a third more than building once at the final size.
REBUILD_GROWTH = 4


def build_due(conn: psycopg.Connection, space: Space, incoming: int) -> str | None:
    """Why a publish of ``incoming`` rows into ``space`` builds its index, or None:
    "missing" when it has none; "auto" when its kind is still to be judged by the data
    (registered "auto", below ADVICE_MIN_ROWS at its last build) and the space reaches
    that many rows; "growth" when an ivfflat-bit index falls REBUILD_GROWTH times behind
    the rows (a rebuild). Sharded spaces keep their index (placing one builds it on each
    shard; rebuilding them is not supported)."""
    space = get_space(conn, space.id)  # its build record as committed now
    if not has_index(conn, space):
        return "missing"
    params = space.index_params or {}
    built_rows = int(params.get("rows") or 0)
    if built_rows <= 0:  # an index without a build record (made by an earlier version)
        return None
    from embcat.catalog.store import shards  # (it imports this module)

    if shards.is_sharded(conn, space.id):
        return None
    rows = max(int(estimated_rows(conn, space.id)), built_rows) + incoming
    if space.index_kind == "ivfflat-bit" and rows > REBUILD_GROWTH * built_rows:
        if ivfflat_lists(rows) > int(params.get("lists") or 0):
            return "growth"
    auto = params.get("auto")
    if isinstance(auto, dict) and not auto.get("decided"):
        from embcat.catalog.index_advice import ADVICE_MIN_ROWS

        if rows >= ADVICE_MIN_ROWS:
            return "auto"
    return None


def ensure_index(
    conn: psycopg.Connection,
    space: Space,
    *,
    kind: IndexKind | Literal["auto"] | None = None,
    rebuild: bool = False,
    drop_old: bool = True,
    m: int | None = None,
    ef_construction: int | None = None,
    maintenance_work_mem_mb: int | None = None,
    index: IndexSettings | None = None,
    rows: int | None = None,
) -> bool:
    """Build the space's similarity index if absent or invalid. Returns True if built.

    ``kind`` (default: the space's recorded kind) other than the recorded one switches the
    space: the new index is built beside the old, then the kind (and the binary kinds'
    centre) is recorded and the old index dropped. ``rebuild`` builds anew even when the
    index exists (a binary index re-centred on today's data). Runs in the caller's
    transaction (so a failed publish rolls the index back too; readers keep the old index
    until it commits). ``drop_old`` False leaves the replaced index in place (readers are
    then never blocked, not even by the drop's lock): ``finish_swap`` drops it after the
    commit. The HNSW graph's ``m`` and ``ef_construction`` come from ``index`` (the
    caller's IndexSettings; default: the code's) unless given; the build memory is sized
    from the row count unless given, capped at 4 GiB. ``rows``: the space's row count when
    the caller knows it (else counted). Without ``kind``, a space registered as "auto"
    whose kind is not yet judged gets it judged on a sample of its rows first
    (``catalog.index_advice.judge_auto``): binary codes where they rank its data,
    ``hnsw-halfvec`` where they do not; ``kind="auto"`` judges any space so, now.
    """
    requested = kind
    space = get_space(conn, space.id)  # as recorded now (a caller's copy may predate a build)
    judge = requested == "auto"  # (embcat index build --kind auto: judge it now, any space)
    auto = (space.index_params or {}).get("auto") if requested in (None, "auto") else None
    pending = judge or (isinstance(auto, dict) and not auto.get("decided"))
    kind = space.index_kind if requested in (None, "auto") else requested
    if kind not in INDEX_KINDS:
        raise InvalidInput(f"unknown index kind {kind!r}; use one of {list(INDEX_KINDS)}")
    if m is None or ef_construction is None:
        graph = index if index is not None else defaults(IndexSettings)
        m = graph.m if m is None else m
        ef_construction = graph.ef_construction if ef_construction is None else ef_construction
    if not kind_indexable(kind, space.storage, space.dimensions):
        log.warning(
            "space %s: %d dimensions exceed the %s limit of a %s index; queries scan exactly",
            space.id,
            space.dimensions,
            space.storage,
            kind,
        )
        return False
    from embcat.catalog.store import shards  # (it imports this module)

    if shards.is_sharded(conn, space.id):
        return shards.ensure_index(conn, space, kind=kind, rebuild=rebuild)
    current = kind == space.index_kind and not rebuild and has_index(conn, space)
    if current and not pending:
        return False
    ensure_partition(conn, space.id)
    table = partition_name(space.id)
    if rows is None:  # (a publish into a new partition knows it: at 10M this scan of the
        # just-loaded rows took minutes of the index phase)
        row = conn.execute(
            "select count(*) from embeddings where space_id = %s", (space.id,)
        ).fetchone()
        rows = int(row[0]) if row else 0
    if pending:  # an "auto" space's kind, judged on its data once it has enough of it
        from embcat.catalog.index_advice import judge_auto  # (it imports this package)

        kind, auto = judge_auto(conn, space, rows)
        if current and kind == space.index_kind:  # the index it has suits: record why
            conn.execute(
                "update embedding_spaces set index_params = index_params || %s where id = %s",
                (Jsonb({"auto": auto}), space.id),
            )
            return False
    if maintenance_work_mem_mb is None:
        need = index_memory_bytes(rows, space, kind, m)
        maintenance_work_mem_mb = min(max(64, need // (1 << 20) + 16), 4096)
    conn.execute(f"set local maintenance_work_mem = '{int(maintenance_work_mem_mb)}MB'")
    conn.execute("set local max_parallel_maintenance_workers = 2")
    started = time.perf_counter()
    target = index_name(space.id, kind)
    existing = _index_names(conn, space.id)
    # the new index under a name of its own when one of that name must stay until the swap
    building = f"{target}_new" if target in existing else target
    existing = [name for name in existing if name != building]
    conn.execute(f"drop index if exists {building}")
    center: tuple[float, ...] | None = None
    params: dict[str, Any]
    built_space = Space(
        space.id, space.encoder_name, space.encoder_version, space.dimensions, space.storage,
        space.metric, space.normalized, space.mlm, cast(IndexKind, kind),  # (checked above)
    )  # fmt: skip
    if kind == "hnsw-halfvec":
        params = {"m": int(m), "ef_construction": int(ef_construction)}
        definition = (
            f"using hnsw ({built_space.vector_sql(table)} {space.opclass})"
            f" with (m = {int(m)}, ef_construction = {int(ef_construction)})"
        )
    else:
        center = space_center(conn, space, rows)
        # the literal's values as real[] (float32) holds them
        center = tuple(float(v) for v in np.asarray(center, np.float32))
        built_space = replace(built_space, center=center)
        code = built_space.code_sql(table)
        if kind == "ivfflat-bit":
            lists = ivfflat_lists(rows)
            params = {"lists": lists}
            definition = f"using ivfflat ({code} bit_hamming_ops) with (lists = {lists})"
        else:
            params = {"m": int(m), "ef_construction": int(ef_construction)}
            definition = (
                f"using hnsw ({code} bit_hamming_ops)"
                f" with (m = {int(m)}, ef_construction = {int(ef_construction)})"
            )
    conn.execute(f"create index {building} on public.{table} {definition}")
    params["rows"] = rows
    params["build_s"] = round(time.perf_counter() - started, 3)
    if auto is not None:  # (an explicit kind ends the automatic choice)
        params["auto"] = auto
    conn.execute(
        "update embedding_spaces set index_kind = %s, index_center = %s, index_params = %s"
        " where id = %s",
        (kind, list(center) if center is not None else None, Jsonb(params), space.id),
    )
    if drop_old:
        # the swap: every other similarity index of the space goes, the new one takes its name
        for name in existing:
            conn.execute(f"drop index if exists {name}")
        if building != target:
            conn.execute(f"alter index {building} rename to {target}")
    log.info("built %s (%s) in %.1f s", target, kind, time.perf_counter() - started)
    return True


def finish_swap(conn: psycopg.Connection, space_id: int) -> list[str]:
    """After ``ensure_index(..., drop_old=False)`` has committed: drop the space's replaced
    indexes with ``DROP INDEX CONCURRENTLY`` (no lock that blocks readers or writers) and
    give the new one its name. ``conn`` must be in autocommit mode. Returns the dropped."""
    if not conn.autocommit:
        raise ValueError("finish_swap needs an autocommit connection (DROP INDEX CONCURRENTLY)")
    space = get_space(conn, space_id)
    target = space.index_name
    existing = _index_names(conn, space_id)
    dropped = []
    keep = {target, f"{target}_new"}
    if f"{target}_new" in existing:
        keep = {f"{target}_new"}
    for name in existing:
        if name not in keep:
            conn.execute(f"drop index concurrently if exists {name}")
            dropped.append(name)
    if f"{target}_new" in existing:
        conn.execute(f"alter index {target}_new rename to {target}")
    return dropped


def _index_names(conn: psycopg.Connection, space_id: int) -> list[str]:
    """The similarity indexes of a space (on its partition, or partial ones on the default
    partition; any kind, valid or not)."""
    names = [index_name(space_id, k) for k in INDEX_KINDS]
    rows = conn.execute(
        "select c.relname from pg_class c join pg_index i on i.indexrelid = c.oid"
        " where i.indrelid in (to_regclass(%s), to_regclass(%s)) and c.relname = any(%s)",
        (
            f"public.{partition_name(space_id)}",
            f"public.{DEFAULT_PARTITION}",
            names + [f"{n}_new" for n in names],
        ),
    ).fetchall()
    return [r[0] for r in rows]
