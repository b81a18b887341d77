"""The upload spool of remote publishing (api.uploads): one folder per key and upload
under ``EMBCAT_UPLOAD_DIR``, its lock, its state and its expiry. File-system only: no
request, no database.

Every request on one upload holds a lock on it: ``flock`` on a file beside its folder, so
that the processes of ``embcat serve --workers N`` exclude each other (on a local file
system; a spool shared by several hosts needs a file system whose ``flock`` is
cluster-wide). Two apps in one process with different spools share no lock.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import re
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from embcat.catalog.errors import (
    Conflict,
    EmbcatError,
    InvalidInput,
    NotFound,
    StorageFull,
    StorageUnavailable,
)
from embcat.encoders.manifest import MANIFEST_NAME, Manifest

_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,200}$")


def read_manifest(folder: Path) -> Manifest | None:
    path = folder / MANIFEST_NAME
    return Manifest.load(path) if path.exists() else None


def name_problem(name: str) -> str | None:
    """Why a shard name cannot be stored in an upload's folder (None: it can)."""
    if not _NAME.match(name):
        return f"invalid shard name {name!r}"
    if name.lower() == MANIFEST_NAME.lower():
        return f"a shard cannot be named {MANIFEST_NAME!r} (the manifest's own file)"
    if name.lower().endswith(".part"):
        return f"a shard name cannot end in '.part' ({name!r}: the spool's partial files)"
    return None


def shard_record(manifest: Manifest, name: str) -> Any:
    problem = name_problem(name)
    if problem:
        raise InvalidInput(problem)
    for rec in manifest.shards:
        if rec.path == name:
            return rec
    raise NotFound(f"shard {name!r} is not in the manifest of this upload")


def spool_state(folder: Path, chunk: int) -> dict[str, Any]:
    manifest = read_manifest(folder)
    shards: dict[str, Any] = {}
    if manifest is not None:
        for rec in manifest.shards:
            done = folder / rec.path
            part = folder / (rec.path + ".part")
            if done.exists():
                shards[rec.path] = {"received": rec.bytes, "complete": True, "sha256": rec.sha256}
            else:
                got = part.stat().st_size if part.exists() else 0
                shards[rec.path] = {"received": got, "complete": False, "sha256": None}
    return {
        "upload_id": folder.name,
        "chunk_bytes": chunk,
        "manifest_sha256": manifest.checksum() if manifest is not None else None,
        "shards": shards,
        "complete": manifest is not None and all(s["complete"] for s in shards.values()),
    }


@contextmanager
def spool_errors() -> Iterator[None]:
    """The spool's file-system errors as answers: 507 when full, 503 when not writable."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, EmbcatError):
            raise
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise StorageFull(
                "the server's upload spool is full; retry later or ask the operator to"
                " free space in EMBCAT_UPLOAD_DIR"
            ) from None
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StorageUnavailable(
                "the server's upload spool cannot be written (read-only or not"
                " accessible); the operator must fix EMBCAT_UPLOAD_DIR"
            ) from None
        raise


# How long a request waits for another one on the same upload (the same chunk sent twice
# by a retrying client) before its 409; a commit does not wait.
LOCK_WAIT_S = 5.0


@asynccontextmanager
async def upload_lock(folder: Path, *, wait_s: float = LOCK_WAIT_S) -> AsyncIterator[None]:
    """An exclusive lock on one upload, shared by every process of the server (``serve
    --workers N``): ``flock`` on a file beside the upload's folder (it outlives the folder,
    so that no process ever locks a file that another has replaced)."""
    path = folder.parent / f".{folder.name}.lock"
    with spool_errors():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Conflict(
                        f"another request is working on upload {folder.name!r}"
                        " (a commit or the same chunk); ask its state and retry"
                    ) from None
                await asyncio.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def manifest_total(folder: Path) -> int:
    try:
        manifest = read_manifest(folder)
    except Exception:  # a half-written or foreign file: counts as nothing
        return 0
    return sum(rec.bytes for rec in manifest.shards) if manifest is not None else 0


def held_by_key(owner: Path, except_id: str) -> int:
    """Bytes of shards the other uploads of one key are declared to hold."""
    if not owner.is_dir():
        return 0
    return sum(
        manifest_total(child)
        for child in owner.iterdir()
        if child.is_dir() and child.name != except_id
    )


def last_touched(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for child in folder.iterdir():
        try:
            newest = max(newest, child.stat().st_mtime)
        except FileNotFoundError:
            continue
    return newest


def expire_uploads(root: Path, max_age_s: float, now: float | None = None) -> list[Path]:
    """Delete the uploads (of every key) untouched for ``max_age_s``; return them."""
    now = time.time() if now is None else now
    gone: list[Path] = []
    if not root.is_dir():
        return gone
    for owner in root.iterdir():
        if not owner.is_dir():
            continue
        for child in owner.iterdir():
            try:
                if child.is_dir() and now - last_touched(child) > max_age_s:
                    shutil.rmtree(child, ignore_errors=True)
                    gone.append(child)
                elif child.name.startswith(".") and child.name.endswith(".lock"):
                    if not (owner / child.name[1:-5]).exists() and (
                        now - child.stat().st_mtime > max_age_s
                    ):
                        child.unlink(missing_ok=True)
            except FileNotFoundError:
                continue
    return gone
