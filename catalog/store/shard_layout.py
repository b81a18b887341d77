"""Shard layout: registering shard servers and placing a space on them (the operator
commands ``embcat shard add|place|list``; docs/scaling.md §6). What runs per request on a
sharded space (similarity, write-through publish and mirror) is ``catalog.shards``."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from embcat.catalog.errors import Conflict, InvalidInput, NotFound
from embcat.catalog.store.partitions import has_partition, merge_lock, partition_name
from embcat.catalog.store.shards import is_sharded, server_name
from embcat.catalog.store.spaces import Space, get_space, index_name

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")

# The settings a similarity query sets for itself that must reach every shard.
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
    # 3. every shard at once (dblink's asynchronous queries): attach (its primary key),
    # geometry GiST, the similarity index, ANALYZE
    build = [
        f"ALTER TABLE public.embeddings ATTACH PARTITION public.{part} FOR VALUES IN ({sid})",
        f"CREATE INDEX IF NOT EXISTS {part}_geometry_idx ON public.{part} USING gist (geometry)",
        *([indexdef] if indexdef is not None else []),
        f"ANALYZE public.{part}",
    ]
    _on_every_shard(conn, names, build)
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


def _on_every_shard(conn: psycopg.Connection, names: Sequence[str], statements: list[str]) -> None:
    """Run ``statements`` (one transaction) on every shard in ``names`` at the same time
    and wait for all; the first shard error is raised after every shard has answered."""
    block = (
        "DO $embcat$ BEGIN PERFORM set_config('maintenance_work_mem', '512MB', true); "
        + " ".join(f"EXECUTE {sql.Literal(st).as_string(conn)};" for st in statements)
        + " END $embcat$"
    )
    links = [f"embcat_place_{shard}" for shard in names]
    try:
        for link, shard in zip(links, names, strict=True):
            conn.execute("select dblink_connect(%s, %s)", (link, server_name(shard)))
            conn.execute("select dblink_send_query(%s, %s)", (link, block))
        failed: list[str] = []
        for link, shard in zip(links, names, strict=True):
            conn.execute("select * from dblink_get_result(%s, false) as t(status text)", (link,))
            message = conn.execute("select dblink_error_message(%s)", (link,)).fetchone()
            if message and message[0] not in (None, "OK", ""):
                failed.append(f"{shard}: {message[0]}")
            conn.execute("select * from dblink_get_result(%s, false) as t(status text)", (link,))
        if failed:
            raise InvalidInput("building the shards' indexes failed: " + "; ".join(failed))
    finally:
        for link in links:
            conn.execute(
                "select dblink_disconnect(%s) where %s = any(coalesce(dblink_get_connections(),"
                " '{}'))",
                (link, link),
            )


def _index_definition(conn: psycopg.Connection, space: Space) -> str | None:
    """``CREATE INDEX`` of the space's current similarity index, as it stands."""
    row = conn.execute(
        "select pg_get_indexdef(to_regclass(%s))",
        (f"public.{index_name(space.id, space.index_kind)}",),
    ).fetchone()
    return str(row[0]) if row and row[0] else None


__all__ = ["SHARD_FUNCTION", "add_shard", "embedding_columns", "list_shards", "place"]
