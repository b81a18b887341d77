"""Shards: a space's partition on other PostgreSQL servers (docs/scaling.md §6).

Layout (migration 0024). A sharded space's partition ``embeddings_space_<id>`` is itself
partitioned by ``HASH (item_id)``; each hash remainder is a postgres_fdw foreign table
``embeddings_space_<id>_s<r>`` whose rows live on a shard server, in that shard's
``public.embeddings_space_<id>`` (a partition of the shard's own ``embeddings``, with its
primary key, geometry GiST and the space's similarity index, built from the coordinator's
definition so that the expression, centre included, is the same). Items stay on the
coordinator; every shard reads them back through a foreign table ``items`` (postgres_fdw
to the coordinator) when a similarity filter names item columns.

Everything that reads ``embeddings`` (STAC items, vector assets, export, the change feed,
mirror pages) reads the shards through the foreign partitions unchanged. Similarity does
not: postgres_fdw forwards no per-request settings (``hnsw.ef_search``, ``ivfflat.probes``,
iterative scans), so the ranking query of ``catalog.similarity`` is sent as it is to every
shard of the space through ``embcat.shard_ranked`` (dblink, all shards at once), each
shard first setting the coordinator's current values of ``FORWARDED_SETTINGS`` for its
own transaction (``embcat_shard.ranked``, installed by ``add_shard``), and the
coordinator merges the shards' top-k in SQL (``ranked_across``). The merged list is the
true top-k of the union whenever each shard's list is its own top-k.

Operator commands: ``embcat shard add NAME URL``, ``embcat shard place COLLECTION
NAME...``, ``embcat shard list`` (``catalog.shard_layout``); this module holds what runs per
request on a sharded space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from embcat.catalog.errors import InvalidInput
from embcat.catalog.store.partitions import partition_name
from embcat.catalog.store.spaces import Space

FORWARDED_SETTINGS: tuple[str, ...] = (
    "hnsw.ef_search",
    "hnsw.iterative_scan",
    "hnsw.max_scan_tuples",
    "ivfflat.probes",
    "ivfflat.iterative_scan",
    "ivfflat.max_probes",
    "work_mem",
    "jit",
    "max_parallel_workers_per_gather",
)


# On each shard: run one ranking query under the given settings (its transaction only).
@dataclass(frozen=True)
class Placement:
    space_id: int
    modulus: int
    remainder: int
    shard: str


def server_name(shard: str) -> str:
    return f"embcat_shard_{shard}"


def placements(conn: psycopg.Connection, space_id: int) -> list[Placement]:
    rows = conn.execute(
        "select space_id, modulus, remainder, shard from shard_placements"
        " where space_id = %s order by remainder",
        (int(space_id),),
    ).fetchall()
    return [Placement(*r) for r in rows]


def is_sharded(conn: psycopg.Connection, space_id: int) -> bool:
    row = conn.execute(
        "select exists (select 1 from shard_placements where space_id = %s)", (int(space_id),)
    ).fetchone()
    return bool(row and row[0])


def ensure_index(conn: psycopg.Connection, space: Space, *, kind: str, rebuild: bool) -> bool:
    """``space_index.ensure_index`` of a sharded space: its index was built on every shard when
    it was placed; switching the kind or re-centring it is not built yet."""
    if kind == space.index_kind and not rebuild:
        return False
    raise InvalidInput(
        f"space {space.id} is placed on shards: switching or rebuilding its index is not"
        " supported yet (docs/scaling.md §6)"
    )


def merge_embeddings(
    conn: psycopg.Connection,
    space: Space,
    mode: str,
    cid: str,
    *,
    source: str = "publish_staging",
    wkb: str = "wkb",
    vector: str = "embedding",
) -> None:
    """Staged rows (publish's ``publish_staging``, or the mirror's stage: ``source`` with
    columns id, ``wkb``, ``vector``) into a sharded space, written through the foreign
    partitions (postgres_fdw has no ON CONFLICT with a target: 'ignore' skips the ids the
    space holds, 'upsert' updates them first)."""
    col = sql.Identifier(space.column)
    table = sql.Identifier(partition_name(space.id))
    src, wkb_col, vec = sql.Identifier(source), sql.Identifier(wkb), sql.Identifier(vector)
    params = {"cid": cid, "space": space.id}
    if mode == "upsert":
        conn.execute(
            sql.SQL(
                "update public.{t} e set {col} = s.{vec}, geometry = ST_GeomFromWKB(s.{wkb}, 4326)"
                " from {src} s where e.collection_id = %(cid)s and e.item_id = s.id"
                " and (e.{col} is distinct from s.{vec}"
                " or not ST_Equals(e.geometry, ST_GeomFromWKB(s.{wkb}, 4326)))"
            ).format(t=table, col=col, vec=vec, wkb=wkb_col, src=src),
            params,
        )
    absent = (
        sql.SQL("")
        if mode == "insert"
        else sql.SQL(
            " where not exists (select 1 from public.{t} x where x.collection_id = %(cid)s"
            " and x.item_id = s.id)"
        ).format(t=table)
    )
    conn.execute(
        sql.SQL(
            "insert into public.{t} (collection_id, item_id, space_id, geometry, {col})"
            " select %(cid)s::text, s.id, %(space)s::int, ST_GeomFromWKB(s.{wkb}, 4326),"
            " s.{vec} from {src} s{absent}"
        ).format(t=table, col=col, absent=absent, vec=vec, wkb=wkb_col, src=src),
        params,
    )


def escaped(conn: psycopg.Connection, query: sql.Composable) -> sql.Composed:
    """``part`` with every ``%`` inside its literals doubled, for execution with
    parameters: psycopg reads ``%`` in the query text as the start of a placeholder, so a
    ``%`` in an id, a LIKE pattern or a filter string made the query fail. Literals are
    rendered (quoted) by psycopg first; only then are their ``%`` escaped."""

    def walk(part: sql.Composable) -> sql.Composable:
        if isinstance(part, sql.Literal):
            return sql.SQL(part.as_string(conn).replace("%", "%%"))
        if isinstance(part, sql.Composed):
            return sql.Composed([walk(p) for p in part])
        return part

    done = walk(query)
    return done if isinstance(done, sql.Composed) else sql.Composed([done])


def session_settings(conn: psycopg.Connection) -> dict[str, str]:
    """This session's current values of ``FORWARDED_SETTINGS`` (those it knows)."""
    row = conn.execute(
        "select array_agg(current_setting(n, true)) from unnest(%s::text[]) n",
        (list(FORWARDED_SETTINGS),),
    ).fetchone()
    values = list(row[0]) if row and row[0] else []
    return {n: v for n, v in zip(FORWARDED_SETTINGS, values, strict=True) if v is not None}


def ranked_across(
    conn: psycopg.Connection, space: Space, ranked: sql.Composable, params: dict[str, Any], n: int
) -> sql.Composed:
    """``ranked`` (a ``catalog.similarity`` ranking query: collection_id, item_id, d) run
    on every shard of ``space`` under this session's current ``FORWARDED_SETTINGS``, and
    the shards' lists merged: the query to execute instead of ``ranked``."""
    # every % inside the query's literals doubled first (mogrify reads % as a placeholder)
    text = psycopg.ClientCursor(conn).mogrify(escaped(conn, ranked).as_string(conn), params)
    keep = list(session_settings(conn).items())
    return sql.SQL(
        "select collection_id, item_id, d from embcat.shard_ranked({s}, {names}, {vals}, {q})"
        " order by d, collection_id, item_id limit {n}"
    ).format(
        s=sql.Literal(space.id),
        names=sql.Literal([k for k, _ in keep]),
        vals=sql.Literal([v for _, v in keep]),
        # pre-escaped: the caller executes it with parameters, some without ``escaped``
        q=sql.SQL(sql.Literal(text).as_string(conn).replace("%", "%%")),
        n=sql.Literal(n),
    )


__all__ = [
    "FORWARDED_SETTINGS",
    "Placement",
    "ensure_index",
    "is_sharded",
    "merge_embeddings",
    "placements",
    "ranked_across",
    "server_name",
    "session_settings",
]
