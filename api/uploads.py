"""Remote publishing: an HPC job uploads its shards + manifest, then asks the server to publish.

Every route needs the ``write`` scope; a key limited to one collection may publish only to
that collection. An upload lives in a spool folder per key (``EMBCAT_UPLOAD_DIR``)::

    GET    /publish/uploads/{upload_id}                     what the server holds (resume)
    PUT    /publish/uploads/{upload_id}/manifest?collection=   manifest.json (validated, and
                                                        the target checked: scope, id, space)
    PUT    /publish/uploads/{upload_id}/shards/{name}?offset=N   one chunk of a shard
    POST   /publish/uploads/{upload_id}/commit?collection=&mode=&defer_index=
    DELETE /publish/uploads/{upload_id}

Every request on one upload holds a lock on it (api.upload_spool, the spool's file-system
side): ``flock`` on a file beside its folder, so that the processes of ``embcat serve
--workers N`` exclude each other (on a local file system; a spool shared by several hosts
needs a file system whose ``flock`` is cluster-wide). A second commit of a running one is
a 409 at once. Shard names that collide with the spool's own files (``manifest.json``,
``*.part``) are refused; uploads untouched for ``upload_expire_s`` are deleted when the
next manifest arrives; the uploads of one key hold at most ``upload_key_max_bytes``
together (507 past it, as when the disk is full).

Shards travel in chunks of at most ``chunk_bytes`` (below the API's body limit), appended
at ``offset``; a shard is complete when it reaches the manifest's size and its sha256
matches. A client that was interrupted asks what arrived and continues from there, and
never sends a complete shard again. The commit runs catalog.publish.publish on the spool
folder in a worker thread: the same validation and loading as a local publish.

``GET /collections/{collection_id}/model`` serves the encoder of a collection's space as a
STAC MLM item (the target of the collection's ``emb:model`` link).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from embcat.api.auth import principal_of
from embcat.api.db import base_url, connection
from embcat.api.features import FeatureContext
from embcat.api.settings import UploadSettings
from embcat.api.upload_spool import (
    expire_uploads,
    held_by_key,
    name_problem,
    read_manifest,
    shard_record,
    spool_errors,
    spool_state,
    upload_lock,
)
from embcat.catalog.errors import (
    Conflict,
    EmbcatError,
    Forbidden,
    InvalidInput,
    NotFound,
    StorageFull,
    Unauthorized,
)
from embcat.catalog.keys import Principal
from embcat.catalog.settings import DatabaseSettings
from embcat.encoders.manifest import MANIFEST_NAME, Manifest, sha256_file

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MANIFEST_MAX = 16 << 20


def _settings(request: Request) -> UploadSettings:
    """The app's upload settings (``create_app`` puts its settings tree's ``uploads`` here)."""
    settings: UploadSettings = request.app.state.upload_settings
    return settings


def _chunk_bytes(request: Request) -> int:
    limit = getattr(request.app.state.settings, "max_body_bytes", 10 << 20)
    return max(1 << 16, min(_settings(request).upload_chunk_bytes, limit - (64 << 10)))


def _folder(request: Request, principal: Principal, upload_id: str) -> Path:
    if not _ID.match(upload_id):
        raise InvalidInput("upload id must be 1..64 letters, digits, '-' or '_'")
    owner = principal.key_id or "anonymous"
    if not _ID.match(owner):
        owner = "key-" + hashlib.sha256(owner.encode()).hexdigest()[:32]
    return _settings(request).upload_dir / owner / upload_id


async def _write(request: Request) -> Principal:
    """A key with the write scope; a key limited to one collection is accepted here and
    checked against the target collection at commit."""
    principal = await principal_of(request)
    if principal is None:
        raise Unauthorized("publishing needs an API key with the 'write' scope")
    if not principal.allows("write", principal.collection_id):
        raise Forbidden(f"the API key {principal.key_id} lacks the 'write' scope")
    return principal


WritePrincipal = Annotated[Principal, Depends(_write)]


async def upload_state(
    request: Request, upload_id: str, principal: WritePrincipal
) -> dict[str, Any]:
    folder = _folder(request, principal, upload_id)
    return await run_in_threadpool(spool_state, folder, _chunk_bytes(request))


async def put_manifest(
    request: Request,
    upload_id: str,
    principal: WritePrincipal,
    collection: Annotated[
        str | None, Query(description="Target collection id (default: the run's)")
    ] = None,
) -> dict[str, Any]:
    """Creates (or resumes) the upload. Before any shard is accepted it checks what the
    commit would refuse: the key's scope for the target collection, the collection id and
    the collection's embedding space (the encoder options of the run)."""
    from embcat.catalog.publish import check_target
    from embcat.catalog.stacgen import default_collection_id

    folder = _folder(request, principal, upload_id)
    body = await request.body()
    if len(body) > _MANIFEST_MAX:
        raise InvalidInput("manifest too large")
    try:
        manifest = Manifest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"invalid manifest: {where}: {first['msg']}") from exc
    names = [rec.path for rec in manifest.shards]
    for name in names:
        problem = name_problem(name)
        if problem:
            raise InvalidInput(f"{problem} in the manifest")
    if len({n.lower() for n in names}) != len(names):
        raise InvalidInput("the manifest names the same shard more than once")
    total = sum(rec.bytes for rec in manifest.shards)
    settings = _settings(request)
    limit = settings.upload_max_bytes
    if total > limit:
        raise InvalidInput(f"the run has {total} bytes of shards; this server accepts {limit}")
    cid = collection if collection is not None else default_collection_id(manifest)
    allowed = principal.allows("write", cid)
    if collection is not None and not allowed:
        raise Forbidden(f"the API key {principal.key_id} may not publish to collection {cid!r}")
    if allowed:  # (a client that names no target may still name it at commit)

        def check() -> None:
            with connection(request) as conn:
                check_target(conn, manifest, cid)

        await run_in_threadpool(check)
    await run_in_threadpool(expire_uploads, settings.upload_dir, settings.upload_expire_s)
    held = await run_in_threadpool(held_by_key, folder.parent, upload_id)
    if held + total > settings.upload_key_max_bytes:
        raise StorageFull(
            f"this key's other uploads hold {held} bytes; with this run's {total} that is"
            f" more than the {settings.upload_key_max_bytes} one key may hold: commit or"
            " delete them first"
        )
    async with upload_lock(folder):
        old = await run_in_threadpool(read_manifest, folder)
        with spool_errors():
            if old is not None and old.checksum() != manifest.checksum():
                # A different run under the same id: start over.
                await run_in_threadpool(shutil.rmtree, folder, True)
            folder.mkdir(parents=True, exist_ok=True)
            manifest.dump(folder)
        return await run_in_threadpool(spool_state, folder, _chunk_bytes(request))


async def put_shard_chunk(
    request: Request,
    upload_id: str,
    name: str,
    principal: WritePrincipal,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    folder = _folder(request, principal, upload_id)
    manifest = await run_in_threadpool(read_manifest, folder)
    if manifest is None:
        raise Conflict("upload the manifest before the shards")
    rec = shard_record(manifest, name)
    chunk = _chunk_bytes(request)
    done = folder / name
    part = folder / (name + ".part")
    async with upload_lock(folder):
        if not folder.is_dir():
            raise NotFound(f"upload {upload_id!r} does not exist (committed or deleted)")
        if done.exists():
            return {"name": name, "received": rec.bytes, "complete": True, "sha256": rec.sha256}
        have = part.stat().st_size if part.exists() else 0
        if offset != have:
            raise Conflict(f"shard {name}: the server holds {have} bytes; send from offset {have}")
        received = 0
        with spool_errors(), open(part, "ab") as f:
            try:
                async for piece in request.stream():
                    received += len(piece)
                    if received > chunk or have + received > rec.bytes:
                        raise InvalidInput(
                            f"shard {name}: chunk larger than {chunk} bytes or beyond the"
                            f" manifest's size ({rec.bytes})"
                        )
                    f.write(piece)
                f.flush()
            except BaseException:
                f.truncate(have)  # nothing of a refused or failed chunk stays
                raise
        size = have + received
        if size == rec.bytes:
            digest = await run_in_threadpool(sha256_file, part)
            if digest != rec.sha256:
                part.unlink()
                raise InvalidInput(
                    f"shard {name}: sha256 {digest[:12]}... does not match the manifest;"
                    " the received copy was discarded, send it again"
                )
            os.replace(part, done)
            return {"name": name, "received": size, "complete": True, "sha256": digest}
        return {"name": name, "received": size, "complete": False, "sha256": None}


async def commit_upload(
    request: Request,
    upload_id: str,
    principal: WritePrincipal,
    collection: Annotated[str | None, Query(description="Collection id (default: run's)")] = None,
    mode: Annotated[Literal["insert", "upsert", "ignore"], Query()] = "ignore",
    defer_index: Annotated[bool, Query()] = False,
) -> dict[str, Any]:
    from embcat.catalog.publish import publish
    from embcat.catalog.stacgen import default_collection_id

    folder = _folder(request, principal, upload_id)
    state = await run_in_threadpool(spool_state, folder, _chunk_bytes(request))
    if state["manifest_sha256"] is None:
        raise NotFound(f"upload {upload_id!r} has no manifest")
    if not state["complete"]:
        missing = [n for n, s in state["shards"].items() if not s["complete"]]
        raise Conflict(f"upload {upload_id!r} is incomplete; missing shards: {missing[:10]}")
    manifest = await run_in_threadpool(read_manifest, folder)
    assert manifest is not None
    cid = default_collection_id(manifest) if collection is None else collection
    if not principal.allows("write", cid):
        raise Forbidden(f"the API key {principal.key_id} may not publish to collection {cid!r}")
    db: DatabaseSettings = request.app.state.settings
    # A second commit of the same upload (a retry while the first still runs, another
    # worker process) does not wait: 409 at once, and the first one's answer stands.
    async with upload_lock(folder, wait_s=0):
        if not (folder / MANIFEST_NAME).exists():
            raise NotFound(f"upload {upload_id!r} has no manifest (committed or deleted)")
        try:
            result = await run_in_threadpool(
                publish,
                folder,
                collection_id=cid,
                mode=mode,
                settings=db,
                index=request.app.state.app_settings.index,
                progress=False,
                defer_index=defer_index,
                origin=f"upload:{principal.key_id or 'anonymous'}",
            )
        except EmbcatError as exc:
            # The spool's path is the server's business: name the upload instead.
            exc.args = tuple(
                a.replace(str(folder), f"upload {upload_id}") if isinstance(a, str) else a
                for a in exc.args
            )
            raise
        await run_in_threadpool(shutil.rmtree, folder, True)
    return {**result.as_dict(), "summary": result.summary()}


async def delete_upload(request: Request, upload_id: str, principal: WritePrincipal) -> None:
    folder = _folder(request, principal, upload_id)
    if not folder.exists():
        raise NotFound(f"upload {upload_id!r} does not exist")
    async with upload_lock(folder):
        await run_in_threadpool(shutil.rmtree, folder, True)


async def collection_model(request: Request, collection_id: str) -> dict[str, Any]:
    from embcat.catalog.stac import get_collection_row
    from embcat.catalog.stacgen import model_item
    from embcat.catalog.store.spaces import collection_space

    def run() -> dict[str, Any]:
        with connection(request) as conn:
            space = collection_space(conn, collection_id)
            stored = get_collection_row(conn, collection_id)["stac"]
        if space is None:
            raise NotFound(f"collection {collection_id!r} has no embeddings yet")
        out = model_item(space, collection_id, stored)
        root = base_url(request).rstrip("/")
        for link in out.get("links", []):
            if link["href"].startswith("/"):
                link["href"] = root + link["href"]
        return out

    return await run_in_threadpool(run)


def build_router(ctx: FeatureContext) -> APIRouter:
    """The publishing routes of one app. Every upload route needs the write scope (a key
    limited to one collection passes here and is checked against the target collection
    at the manifest and the commit); reading an upload's state, the read scope too."""
    router = APIRouter(tags=["Publishing"])
    uploads = "/publish/uploads/{upload_id}"
    write = [ctx.write(any_collection=True)]
    router.add_api_route(
        uploads,
        upload_state,
        methods=["GET"],
        summary="What the server holds of an upload",
        dependencies=[ctx.read(any_collection=True)],
    )
    router.add_api_route(
        f"{uploads}/manifest",
        put_manifest,
        methods=["PUT"],
        summary="Upload the run's manifest.json",
        dependencies=write,
    )
    router.add_api_route(
        f"{uploads}/shards/{{name}}",
        put_shard_chunk,
        methods=["PUT"],
        summary="Upload one chunk of a shard at offset",
        dependencies=write,
    )
    router.add_api_route(
        f"{uploads}/commit",
        commit_upload,
        methods=["POST"],
        summary="Publish an uploaded run",
        dependencies=write,
    )
    router.add_api_route(
        uploads,
        delete_upload,
        methods=["DELETE"],
        summary="Discard an upload",
        status_code=204,
        dependencies=write,
    )
    router.add_api_route(
        "/collections/{collection_id}/model",
        collection_model,
        methods=["GET"],
        summary="The encoder of the collection's embedding space (STAC MLM item)",
        dependencies=[ctx.read()],
    )
    return router
