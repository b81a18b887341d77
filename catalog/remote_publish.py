"""Client of remote publishing (``embcat publish --to URL --key KEY RUN``); see api/uploads.py.

HPC centres often cannot reach the catalogue's database, but can make HTTPS requests. The
client checks the run locally (manifest and shard checksums), uploads the manifest with
the target collection (the server checks the key's scope, the collection id and the
collection's embedding space then, before any shard is sent), then each shard in chunks
streamed from the file, skipping what the server already holds with the same sha256, and
finally asks the server to publish. An interrupted upload is resumed by
running the same command again: the upload id is derived from the manifest's checksum.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from catalog.errors import (
    Conflict,
    DatabaseUnavailable,
    EmbcatError,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
)
from catalog.publish import load_manifest, verify_shards
from catalog.stacgen import default_collection_id

_STATUS: dict[int, type[EmbcatError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidInput,
    422: InvalidInput,
}


def upload_id_for(manifest_sha256: str) -> str:
    return "run-" + manifest_sha256[:40]


def _raise_for(resp: httpx.Response, what: str) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
        message = body.get("description") or body.get("detail") or resp.text
    except ValueError:
        message = resp.text
    cls = _STATUS.get(resp.status_code)
    if cls is None:
        cls = DatabaseUnavailable if resp.status_code in (502, 503, 504) else EmbcatError
    raise cls(f"{what}: HTTP {resp.status_code}: {message}")


def _chunks(path: Path, start: int, size: int, limit: int) -> Iterator[bytes]:
    """Stream ``size`` bytes of ``path`` from ``start`` in 1 MiB pieces (never all in memory)."""
    with open(path, "rb") as f:
        f.seek(start)
        left = size
        while left > 0:
            block = f.read(min(limit, left, 1 << 20))
            if not block:
                break
            left -= len(block)
            yield block


def remote_publish(
    source: Path,
    url: str,
    *,
    key: str,
    collection_id: str | None = None,
    mode: str = "ignore",
    defer_index: bool = False,
    progress: bool = True,
    timeout_s: float = 60.0,
    commit_timeout_s: float = 6 * 3600.0,
    max_chunks: int | None = None,
) -> dict[str, Any]:
    """Upload the run at ``source`` to the catalogue at ``url`` and publish it there.

    Returns the server's publish result (a dict with ``summary``). ``max_chunks`` stops
    after that many chunk uploads (for tests of resuming; raises ``InterruptedError``).
    """
    from tqdm import tqdm

    manifest, folder = load_manifest(Path(source))
    verify_shards(manifest, folder)  # never upload a run that is broken locally
    checksum = manifest.checksum()
    upload = upload_id_for(checksum)
    base = url.rstrip("/") + f"/publish/uploads/{upload}"
    headers = {"Authorization": f"Bearer {key}"}
    sent_chunks = 0
    started = time.perf_counter()
    sent_bytes = 0
    with httpx.Client(headers=headers, timeout=timeout_s) as http:
        # Sent every time, even when the server holds it (it keeps what it received of
        # the same manifest): the server checks the key's scope, the collection id and the
        # collection's embedding space here, before the first shard byte.
        body = json.dumps(manifest.model_dump(mode="json"), sort_keys=True).encode()
        target = collection_id or default_collection_id(manifest)
        resp = http.put(
            base + "/manifest",
            params={"collection": target},
            content=body,
            headers={"Content-Type": "application/json"},
        )
        _raise_for(resp, "manifest upload")
        state = resp.json()
        chunk = int(state["chunk_bytes"])
        total = sum(rec.bytes for rec in manifest.shards)
        already = sum(s["received"] for s in state["shards"].values())
        bar = tqdm(
            total=total,
            initial=already,
            unit="B",
            unit_scale=True,
            disable=not progress,
            desc="upload",
        )
        try:
            for rec in manifest.shards:
                held = state["shards"].get(rec.path, {})
                if held.get("complete") and held.get("sha256") == rec.sha256:
                    continue  # the server has this shard with the same checksum
                offset = int(held.get("received", 0))
                path = folder / rec.path
                while offset < rec.bytes:
                    if max_chunks is not None and sent_chunks >= max_chunks:
                        raise InterruptedError(f"stopped after {sent_chunks} chunks")
                    size = min(chunk, rec.bytes - offset)
                    resp = http.put(
                        f"{base}/shards/{rec.path}",
                        params={"offset": offset},
                        content=_chunks(path, offset, size, chunk),
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Length": str(size),
                        },
                    )
                    if resp.status_code == 409:  # the server holds another offset: ask it
                        again = http.get(base)
                        _raise_for(again, "upload state")
                        held = again.json()["shards"].get(rec.path, {})
                        if held.get("complete"):
                            break
                        if int(held.get("received", 0)) == offset:
                            _raise_for(resp, f"shard {rec.path}")
                        offset = int(held.get("received", 0))
                        continue
                    _raise_for(resp, f"shard {rec.path}")
                    sent_chunks += 1
                    sent_bytes += size
                    offset = int(resp.json()["received"])
                    bar.update(size)
        finally:
            bar.close()
        params: dict[str, Any] = {"mode": mode, "defer_index": str(defer_index).lower()}
        if collection_id is not None:  # "" is refused by the server, not defaulted
            params["collection"] = collection_id
        resp = http.post(base + "/commit", params=params, timeout=commit_timeout_s)
        _raise_for(resp, "publish")
        result: dict[str, Any] = resp.json()
    result["uploaded_bytes"] = sent_bytes
    result["upload_s"] = round(time.perf_counter() - started, 3)
    return result
