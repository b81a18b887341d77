"""Feature routers (issue 16, item 4): every route declares its scope check when the app is
built; a route without one is refused; two apps share no routes or upload state."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import APIRouter
from helpers_server import start_server  # tests/ is on sys.path under pytest
from shardgen import write_run

from embcat.api.app import FEATURES, create_app
from embcat.api.auth import scope_of
from embcat.api.features import (
    FeatureContext,
    _effective_routes,
    public,
    route_checks,
    unprotected_routes,
)
from embcat.api.settings import ApiSettings, AppSettings, UploadSettings
from embcat.api.upload_spool import upload_lock
from embcat.catalog.errors import Conflict
from embcat.catalog.keys import create_key

PUBLIC = {
    "GET /health",
    "GET /api.html",
    "GET /explorer",
    "GET /explorer/static/{name}",
    "GET /explorer/vendor/leaflet/{path:path}",
}


def _routes(app: Any) -> dict[str, Any]:
    return {
        f"{method} {route.path}": route
        for route in _effective_routes(app.router.routes)
        for method in route.methods
    }


def test_every_route_has_a_scope_check_or_is_declared_public(database_url: str) -> None:
    app = create_app(ApiSettings(database_url=database_url))
    assert unprotected_routes(app) == []
    routes = _routes(app)
    declared_public = {name for name, r in routes.items() if public in route_checks(r)}
    assert declared_public == PUBLIC
    scoped = {name for name, r in routes.items() if any(scope_of(c) for c in route_checks(r))}
    assert {"POST /search", "PUT /publish/uploads/{upload_id}/manifest", "GET /metrics"} <= scoped


def test_a_route_added_without_a_scope_dependency_is_refused(database_url: str) -> None:
    def careless(ctx: FeatureContext) -> APIRouter:
        router = APIRouter()

        @router.get("/careless")
        async def careless_route() -> dict[str, str]:
            return {"leak": "everything"}

        return router

    with pytest.raises(RuntimeError, match="GET /careless"):
        create_app(ApiSettings(database_url=database_url), features=[*FEATURES, careless])


def test_writes_get_the_write_scope(database_url: str) -> None:
    app = create_app(ApiSettings(database_url=database_url))
    for name, route in _routes(app).items():
        method = name.split(" ", 1)[0]
        scopes = {s[0] for s in map(scope_of, route_checks(route)) if s is not None}
        if method in ("PUT", "PATCH", "DELETE") or (
            method == "POST" and not name.endswith(("/search", "/export", "/score"))
        ):
            assert scopes == {"write"}, name


def test_each_app_builds_its_own_feature_routes(database_url: str) -> None:
    first, second = (create_app(ApiSettings(database_url=database_url)) for _ in range(2))

    def upload_routes(app: Any) -> set[int]:
        return {
            id(getattr(route, "original_route", route))
            for name, route in _routes(app).items()
            if "/publish/uploads/" in name
        }

    assert len(upload_routes(first)) == 5
    assert not upload_routes(first) & upload_routes(second)


def test_two_apps_in_one_process_do_not_share_upload_locks(
    database_url: str, tmp_path: Path
) -> None:
    with psycopg.connect(database_url) as conn:
        key_id, secret = create_key(conn, "locks-" + uuid.uuid4().hex[:6], ["write"])
        conn.commit()
    spools = [tmp_path / "spool-a", tmp_path / "spool-b"]
    trees = [
        dataclasses.replace(
            AppSettings.from_env(ApiSettings(database_url=database_url)),
            uploads=UploadSettings(upload_dir=spool),
        )
        for spool in spools
    ]
    upload_id = "u1"
    folder_a = spools[0] / key_id / upload_id
    folder_a.parent.mkdir(parents=True)
    lock_file = folder_a.parent / f".{upload_id}.lock"
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    servers = [start_server(app=create_app(tree)) for tree in trees]
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # app A's lock on upload u1 of this key, held
        with pytest.raises(Conflict):
            asyncio.run(_try_lock(folder_a))  # (held indeed)
        run = write_run(tmp_path / "run", 20, dims=8, seed=3, encoder="lk-" + uuid.uuid4().hex[:8])
        manifest = (run / "manifest.json").read_bytes()
        r = httpx.put(
            f"{servers[1].base_url}/publish/uploads/{upload_id}/manifest",
            content=manifest,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text  # app B's upload u1 is another one: not locked
        assert (spools[1] / key_id / upload_id / "manifest.json").is_file()
        assert not (folder_a / "manifest.json").exists()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        for server in servers:
            server.stop()


async def _try_lock(folder: Path) -> None:
    async with upload_lock(folder, wait_s=0):
        pass
