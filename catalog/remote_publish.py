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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from embcat.catalog.errors import (
    Conflict,
    DatabaseUnavailable,
    EmbcatError,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthorized,
)
from embcat.catalog.http import DEFAULT_RETRY, Answer, HttpClient, RetryPolicy
from embcat.catalog.publish import load_manifest, verify_shards
from embcat.catalog.stacgen import default_collection_id

_STATUS: dict[int, type[EmbcatError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidInput,
    422: InvalidInput,
}


_JSON_LIMIT = 64 << 20  # the server's JSON answers (upload state, publish result)


def upload_id_for(manifest_sha256: str) -> str:
    return "run-" + manifest_sha256[:40]


def _error(answer: Answer, what: str) -> EmbcatError:
    """The domain error of an error answer (what the server's status means)."""
    cls = _STATUS.get(answer.status)
    if cls is None:
        cls = DatabaseUnavailable if answer.status in (502, 503, 504) else EmbcatError
    return cls(f"{what}: HTTP {answer.status}: {answer.message()}")


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
    on_progress: Callable[[int, int], None] | None = None,
    timeout_s: float = 60.0,
    request_deadline_s: float = 3600.0,
    commit_timeout_s: float = 6 * 3600.0,
    retry: RetryPolicy = DEFAULT_RETRY,
    max_chunks: int | None = None,
) -> dict[str, Any]:
    """Upload the run at ``source`` to the catalogue at ``url`` and publish it there.

    Every request goes through ``catalog.http.HttpClient``: retried on connection failures
    and 429/502/503/504 (each is safe to repeat: the manifest PUT is idempotent, a chunk
    names its offset, a commit of a published run changes nothing), the key sent to
    ``url``'s origin only, each answer within ``request_deadline_s`` (the commit within
    ``commit_timeout_s``). ``on_progress(bytes_held, bytes_total)`` follows the upload (the
    CLI draws the bar). Returns the server's publish result (a dict with ``summary``).
    ``max_chunks`` stops after that many chunk uploads (for tests of resuming; raises
    ``InterruptedError``).
    """
    manifest, folder = load_manifest(Path(source))
    verify_shards(manifest, folder)  # never upload a run that is broken locally
    checksum = manifest.checksum()
    upload = upload_id_for(checksum)
    base = f"/publish/uploads/{upload}"
    sent_chunks = 0
    started = time.perf_counter()
    sent_bytes = 0
    with HttpClient(
        url,
        {"Authorization": f"Bearer {key}"},
        timeout_s=timeout_s,
        deadline_s=request_deadline_s,
        retry=retry,
        error=_error,
    ) as http:

        def call(method: str, path: str, what: str, **kwargs: Any) -> Answer:
            return http.fetch(method, path, what, limit=_JSON_LIMIT, **kwargs)

        # Sent every time, even when the server holds it (it keeps what it received of
        # the same manifest): the server checks the key's scope, the collection id and the
        # collection's embedding space here, before the first shard byte.
        body = json.dumps(manifest.model_dump(mode="json"), sort_keys=True).encode()
        target = collection_id or default_collection_id(manifest)
        state = call(
            "PUT", base + "/manifest", "manifest upload", params={"collection": target},
            content=body, headers={"Content-Type": "application/json"},
        ).json()  # fmt: skip
        chunk = int(state["chunk_bytes"])
        total = sum(rec.bytes for rec in manifest.shards)
        held_bytes = sum(s["received"] for s in state["shards"].values())
        if on_progress is not None:
            on_progress(held_bytes, total)
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
                answer = call(
                    "PUT", f"{base}/shards/{rec.path}", f"shard {rec.path}",
                    params={"offset": offset},
                    content=lambda p=path, o=offset, n=size: _chunks(p, o, n, chunk),
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Length": str(size)},
                    check=False,
                )  # fmt: skip
                if answer.status == 409:  # the server holds another offset: ask it
                    again = call("GET", base, "upload state").json()
                    held = again["shards"].get(rec.path, {})
                    if held.get("complete"):
                        break
                    if int(held.get("received", 0)) == offset:
                        raise _error(answer, f"shard {rec.path}")
                    offset = int(held.get("received", 0))
                    continue
                if answer.status >= 300:
                    raise _error(answer, f"shard {rec.path}")
                sent_chunks += 1
                sent_bytes += size
                new_offset = int(answer.json()["received"])
                held_bytes += new_offset - offset
                offset = new_offset
                if on_progress is not None:
                    on_progress(held_bytes, total)
        params: dict[str, Any] = {"mode": mode, "defer_index": str(defer_index).lower()}
        if collection_id is not None:  # "" is refused by the server, not defaulted
            params["collection"] = collection_id
        result: dict[str, Any] = call(
            "POST", base + "/commit", "publish", params=params, deadline_s=commit_timeout_s,
            timeout=commit_timeout_s,
        ).json()  # fmt: skip
    result["uploaded_bytes"] = sent_bytes
    result["upload_s"] = round(time.perf_counter() - started, 3)
    return result
