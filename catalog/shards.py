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

Operator commands: ``embcat shard add NAME URL`` (``add_shard``), ``embcat shard place
COLLECTION NAME...`` (``place``), ``embcat shard list``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from embcat.catalog.errors import Conflict, InvalidInput, NotFound
from embcat.catalog.spaces import (
    Space,
    get_space,
    has_partition,
    index_name,
    merge_lock,
    partition_name,
)

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

# The settings a similarity query sets for itself that must reach every shard.
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
SHARD_FUNCTION = r"""
CREATE SCHEMA IF NOT EXISTS embcat_shard;
CREATE OR REPLACE FUNCTION embcat_shard.ranked(names text[], vals text[], query text)
RETURNS TABLE (collection_id text, item_id text, d double precision)
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM '[1]'::vector;  -- pgvector loaded, so that its settings are its own
    FOR i IN 1 .. coalesce(array_length(names, 1), 0) LOOP
        PERFORM set_config(names[i], vals[i], true);
    END LOOP;
    RETURN QUERY EXECUTE query;
END $fn$;
"""


@dataclass(frozen=True)
class Placement:
    space_id: int
    modulus: int
    remainder: int
    shard: str


def server_name(shard: str) -> str:
    return f"embcat_shard_{shard}"


def _check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"shard name {name!r}: use 1-40 lower-case letters, digits or _ (a letter first)"
        )
    return name


def _conninfo(url: str) -> dict[str, str]:
    try:
        info = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        raise InvalidInput(f"not a PostgreSQL URL: {exc}") from exc
    missing = [k for k in ("host", "dbname", "user") if k not in info]
    if missing:
        raise InvalidInput(f"the shard URL names no {', '.join(missing)}")
    return info


def _server_options(info: dict[str, str]) -> sql.Composable:
    opts: dict[str, str] = {k: info[k] for k in ("host", "port", "dbname") if k in info}
    opts.update({"extensions": "vector,postgis", "fetch_size": "1000", "batch_size": "1000"})
    return sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in opts.items()
    )


def _mapping_options(info: dict[str, str]) -> sql.Composable:
    opts = {k: info[k] for k in ("user", "password") if k in info}
    return sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in opts.items()
    )


def embedding_columns(conn: psycopg.Connection) -> list[tuple[str, str, bool]]:
    """The columns of ``embeddings`` as the coordinator defines them now (name, type,
    not null): the shards' tables are derived from them, never from a fixed list."""
    rows = conn.execute(
        "select a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull"
        " from pg_attribute a where a.attrelid = 'public.embeddings'::regclass"
        " and a.attnum > 0 and not a.attisdropped order by a.attnum"
    ).fetchall()
    return [(str(n), str(t), bool(nn)) for n, t, nn in rows]


def _columns_sql(columns: Sequence[tuple[str, str, bool]]) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(sql.Identifier(n), sql.SQL(t), sql.SQL(" NOT NULL" if nn else ""))
        for n, t, nn in columns
    )


def add_shard(conn: psycopg.Connection, name: str, url: str, *, home_url: str) -> None:
    """Register a shard server (in the caller's transaction on the coordinator) and prepare
    it (directly, autocommit): its ``embeddings`` parent (the coordinator's columns), the
    ranking function, and a foreign table ``items`` back to the coordinator (``home_url``:
    the catalogue database as the shard reaches it)."""
    _check_name(name)
    info, home = _conninfo(url), _conninfo(home_url)
    if conn.execute("select 1 from shards where name = %s", (name,)).fetchone():
        raise Conflict(f"shard {name!r} is already registered")
    columns = embedding_columns(conn)
    server = sql.Identifier(server_name(name))
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as remote:
            remote.execute(SHARD_FUNCTION)
            remote.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS public.embeddings ({cols},"
                    " PRIMARY KEY (collection_id, item_id, space_id)) PARTITION BY LIST (space_id)"
                ).format(cols=_columns_sql(columns))
            )
            remote.execute("DROP SERVER IF EXISTS embcat_home CASCADE")
            remote.execute(
                sql.SQL(
                    "CREATE SERVER embcat_home FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})"
                ).format(_server_options(home))
            )
            remote.execute(
                sql.SQL("CREATE USER MAPPING FOR PUBLIC SERVER embcat_home OPTIONS ({})").format(
                    _mapping_options(home)
                )
            )
            remote.execute(
                "IMPORT FOREIGN SCHEMA public LIMIT TO (items) FROM SERVER embcat_home INTO public"
            )
    except psycopg.OperationalError as exc:
        raise InvalidInput(f"cannot prepare shard {name!r}: {exc}") from exc
    conn.execute(
        sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})").format(
            server, _server_options(info)
        )
    )
    conn.execute(
        sql.SQL("CREATE USER MAPPING FOR PUBLIC SERVER {} OPTIONS ({})").format(
            server, _mapping_options(info)
        )
    )
    conn.execute("insert into shards (name) values (%s)", (name,))
    log.info("shard %s added", name)


def list_shards(conn: psycopg.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "select s.name, coalesce(array_agg(p.space_id order by p.space_id)"
        " filter (where p.space_id is not null), '{}') from shards s"
        " left join shard_placements p on p.shard = s.name group by s.name order by s.name"
    ).fetchall()
    return [{"name": n, "spaces": list(sp)} for n, sp in rows]


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


def _remote(conn: psycopg.Connection, shard: str, statement: str) -> None:
    """Run one statement on a shard in a session of its own (dblink, autocommit)."""
    conn.execute("select dblink_exec(%s, %s)", (server_name(shard), statement))


def place(
    conn: psycopg.Connection, space_id: int, shards: Sequence[str], *, progress: Any = None
) -> dict[str, Any]:
    """Move a space's rows onto ``shards`` (hash remainder r of ``item_id`` to the r-th),
    with its similarity index built on each. Commits: the move is one transaction on the
    coordinator (the rows are written through postgres_fdw and committed with it), the
    shards' key and index builds follow it. Writers of the space wait for the move;
    readers go on until the final swap of the partition (a short ACCESS EXCLUSIVE lock)."""
    started = time.perf_counter()
    names = [_check_name(s) for s in shards]
    if not names or len(set(names)) != len(names):
        raise InvalidInput("name one or more distinct shards")
    known = {r[0] for r in conn.execute("select name from shards").fetchall()}
    unknown = [s for s in names if s not in known]
    if unknown:
        raise NotFound(f"shard(s) not registered: {', '.join(unknown)} (embcat shard add)")
    space = get_space(conn, space_id)
    if is_sharded(conn, space.id):
        raise Conflict(f"space {space.id} is already placed on shards")
    part = partition_name(space.id)
    if not has_partition(conn, space.id):
        raise InvalidInput(f"space {space.id} has no partition yet: publish it first")
    indexdef = _index_definition(conn, space)
    if indexdef is None and space.indexable:
        raise InvalidInput(
            f"space {space.id} has no similarity index yet: build it first (embcat index build)"
        )
    sid, m = int(space.id), len(names)
    columns = embedding_columns(conn)
    # 1. the shards' tables, empty and unattached (a rerun after a failure starts over)
    for shard in names:
        # a leftover of a failed place goes; a table the shard holds for a space never does
        # (another catalogue with the same space id on the same shard database)
        _remote(
            conn,
            shard,
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid ="
            f" to_regclass('public.{part}')) THEN RAISE EXCEPTION"
            f" 'this shard database already holds a placed {part}'; END IF; END $$",
        )
        _remote(conn, shard, f"DROP TABLE IF EXISTS public.{part}")
        _remote(
            conn,
            shard,
            f"CREATE TABLE public.{part} (LIKE public.embeddings INCLUDING DEFAULTS);"
            f" ALTER TABLE public.{part} ADD CONSTRAINT {part}_space CHECK (space_id = {sid})",
        )
    conn.commit()
    # 2. the move, in one transaction: rows through the foreign partitions, then the swap
    moved = 0
    try:
        merge_lock(conn)
        merge_lock(conn, sid, exclusive=True)
        conn.execute(f"lock table public.{part} in share mode")  # writers of the space wait
        new = f"{part}_sharded"
        conn.execute(
            sql.SQL(
                "create table public.{} (like public.embeddings including defaults"
                " including constraints) partition by hash (item_id)"
            ).format(sql.Identifier(new))
        )
        for r, shard in enumerate(names):
            conn.execute(
                sql.SQL(
                    "create foreign table public.{} partition of public.{}"
                    " for values with (modulus {m}, remainder {r}) server {server}"
                    " options (schema_name 'public', table_name {table})"
                ).format(
                    sql.Identifier(f"{part}_s{r}"),
                    sql.Identifier(new),
                    m=sql.Literal(m),
                    r=sql.Literal(r),
                    server=sql.Identifier(server_name(shard)),
                    table=sql.Literal(part),
                )
            )
        cols = sql.SQL(", ").join(sql.Identifier(n) for n, _, _ in columns)
        moved = conn.execute(
            sql.SQL("insert into public.{} ({c}) select {c} from public.{}").format(
                sql.Identifier(new), sql.Identifier(part), c=cols
            )
        ).rowcount
        conn.execute(f"alter table public.embeddings detach partition public.{part}")
        conn.execute(f"drop table public.{part}")
        conn.execute(f"alter table public.{new} rename to {part}")
        conn.execute(
            f"alter table public.embeddings attach partition public.{part} for values in ({sid})"
        )
        conn.execute(
            "insert into shard_placements (space_id, modulus, remainder, shard)"
            " select %s, %s, r - 1, s from unnest(%s::text[]) with ordinality as u(s, r)",
            (sid, m, names),
        )
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    moved_s = time.perf_counter() - started
    # 3. each shard: attach (its primary key), geometry GiST, the similarity index, ANALYZE
    for shard in names:
        _remote(conn, shard, f"ALTER TABLE public.embeddings ATTACH PARTITION public.{part}"
                f" FOR VALUES IN ({sid})")  # fmt: skip
        _remote(conn, shard, f"CREATE INDEX IF NOT EXISTS {part}_geometry_idx"
                f" ON public.{part} USING gist (geometry)")  # fmt: skip
        if indexdef is not None:
            _remote(conn, shard, "SET maintenance_work_mem = '512MB'; " + indexdef)
        _remote(conn, shard, f"ANALYZE public.{part}")
    conn.execute(f"analyze public.{part}")
    conn.commit()
    result = {
        "space_id": sid,
        "shards": names,
        "rows": moved,
        "move_s": round(moved_s, 3),
        "total_s": round(time.perf_counter() - started, 3),
    }
    log.info("space %s placed on %s: %s", sid, ", ".join(names), result)
    return result


def _index_definition(conn: psycopg.Connection, space: Space) -> str | None:
    """``CREATE INDEX`` of the space's current similarity index, as it stands."""
    row = conn.execute(
        "select pg_get_indexdef(to_regclass(%s))",
        (f"public.{index_name(space.id, space.index_kind)}",),
    ).fetchone()
    return str(row[0]) if row and row[0] else None


def ensure_index(conn: psycopg.Connection, space: Space, *, kind: str, rebuild: bool) -> bool:
    """``spaces.ensure_index`` of a sharded space: its index was built on every shard when
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


def _escaped(conn: psycopg.Connection, part: sql.Composable) -> sql.Composable:
    if isinstance(part, sql.Literal):
        return sql.SQL(part.as_string(conn).replace("%", "%%"))
    if isinstance(part, sql.Composed):
        return sql.Composed([_escaped(conn, p) for p in part])
    return part


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
    text = psycopg.ClientCursor(conn).mogrify(_escaped(conn, ranked).as_string(conn), params)
    keep = list(session_settings(conn).items())
    return sql.SQL(
        "select collection_id, item_id, d from embcat.shard_ranked({s}, {names}, {vals}, {q})"
        " order by d, collection_id, item_id limit {n}"
    ).format(
        s=sql.Literal(space.id),
        names=sql.Literal([k for k, _ in keep]),
        vals=sql.Literal([v for _, v in keep]),
        # pre-escaped: the caller executes it with parameters, some without _escaped
        q=sql.SQL(sql.Literal(text).as_string(conn).replace("%", "%%")),
        n=sql.Literal(n),
    )


__all__ = [
    "FORWARDED_SETTINGS",
    "Placement",
    "add_shard",
    "embedding_columns",
    "ensure_index",
    "is_sharded",
    "list_shards",
    "merge_embeddings",
    "place",
    "placements",
    "ranked_across",
    "session_settings",
]
