"""Writing an export: the Parquet writer (encodings, compression per column), the sink its
bytes go through, and files written atomically with their SHA-256 beside them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


class _Sink:
    """A write-only file object whose bytes are taken out after each row group, or handed
    to ``emit`` as the writer produces them (a file: no row group's bytes held)."""

    def __init__(self, emit: Callable[[bytes], None] | None = None) -> None:
        self.chunks: list[bytes] = []
        self.closed = False
        self.position = 0
        self.emit = emit

    def write(self, data: bytes) -> int:
        if self.emit is not None:
            self.emit(data)
            size = len(memoryview(data))
        else:
            b = bytes(data)
            self.chunks.append(b)
            size = len(b)
        self.position += size
        return size

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take_chunks(self) -> list[bytes]:
        out, self.chunks = self.chunks, []
        return out

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks.clear()
        return out


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet leaf column paths (``embedding.list.element``): what compression is keyed by."""
    buf = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buf)
    meta = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
    return [meta.column(i).path for i in range(len(meta))]


# zstd level of the item columns of the ``minimal`` profile, where the bytes beside the
# vector are the point of the profile: the Hilbert-ordered WKB footprints of 100k publish-
# style chips take 19.0 B a row at Arrow's default level (1) or 3 and 18.5 B at 5 (7: 18.5,
# 19: 18.2 at 25x the time), for ~25 ms more per 100k rows. The full profile keeps the
# default: its columns come out no smaller at 3 (1,623 B a row at float16), in ~15 % more
# of the encoding time.
MINIMAL_ZSTD_LEVEL = 5


def _writer(sink: Any, schema: pa.Schema, dtype: str, columns: str = "full") -> pq.ParquetWriter:
    """The Parquet writer of an export: zstd for the item columns; the vectors plain and
    uncompressed (float noise does not compress; int8 vectors zstd to ~0.9 B a value),
    without statistics or dictionary (min/max of vectors are no use to a reader, and each
    costs a pass); ids and WKB geometries DELTA_BYTE_ARRAY (consecutive ids share their
    prefix; consecutive WKB values share their 13-byte header, which left between the
    points cost zstd ~2 B a row: 21.0 -> 19.0 B a footprint). Keys are Parquet leaf paths:
    a top-level name does not reach nested columns (``links.list.element.href``)."""
    compression = {
        path: "zstd" if dtype == "int8" or path.split(".")[0] != "embedding" else "none"
        for path in _leaf_paths(schema)
    }
    levels = None
    if columns == "minimal":  # the item columns; int8 vectors keep the default level
        levels = {
            path: MINIMAL_ZSTD_LEVEL
            for path, c in compression.items()
            if c == "zstd" and path.split(".")[0] != "embedding"
        }
    # PLAIN list vectors: BYTE_STREAM_SPLIT writes float16 faster, but DuckDB reads it only
    # for 4- and 8-byte values (FLOAT, DOUBLE, INT32, INT64).
    dictionary = [c for c in ("type", "stac_version", "collection") if c in schema.names]
    return pq.ParquetWriter(
        sink,
        schema,
        compression=compression,
        compression_level=levels,
        use_dictionary=dictionary or False,
        column_encoding={"id": "DELTA_BYTE_ARRAY", "geometry": "DELTA_BYTE_ARRAY"},
        write_statistics=["id", "datetime"],
        store_schema=True,
    )


def _write_with_checksum(
    path: Path, produce: Callable[[Callable[[bytes], None]], Iterator[bytes]]
) -> tuple[int, str]:
    """Write what ``produce(emit)`` emits and yields to ``path`` atomically (a ``.part``
    file renamed when complete) and the SHA-256 beside it; returns the bytes written and
    the hex digest."""
    tmp = path.with_name(path.name + ".part")
    digest = hashlib.sha256()
    total = 0
    try:
        with open(tmp, "wb") as fh:

            def emit(chunk: bytes) -> None:
                nonlocal total
                fh.write(chunk)
                digest.update(chunk)
                total += len(memoryview(chunk))

            for chunk in produce(emit):
                if chunk:
                    emit(chunk)
        write_checksum(path, digest.hexdigest())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return total, digest.hexdigest()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_checksum(path: Path, hexdigest: str) -> Path:
    """``<path>.sha256`` holding ``<hex>  <file name>`` (what ``sha256sum -c`` checks)."""
    side = checksum_path(path)
    tmp = side.with_name(side.name + ".part")
    tmp.write_text(f"{hexdigest}  {path.name}\n")
    tmp.replace(side)
    return side
