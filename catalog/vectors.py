"""Canonical vector bytes, checksums and the asset href of an item's vector.

The ``embeddings`` asset of every item carries ``file:size`` and ``file:checksum`` of the
bytes that ``GET /collections/{cid}/items/{iid}/embedding`` serves by default: a ``.npy``
file (format 1.0) of float32 values, exactly as stored (halfvec storage rounds to float16
first, so the checksum is computed after that rounding). ``file:checksum`` is a multihash:
``1220`` (sha2-256, 32 bytes) followed by the lowercase hex digest.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import numpy.typing as npt

NPY_MEDIA_TYPE = "application/x-npy"
EMBEDDINGS_ASSET = "embeddings"


def stored_values(values: npt.ArrayLike, storage: str = "halfvec") -> np.ndarray:
    """The float32 values the database will hold for ``values`` in ``storage``."""
    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    if storage == "halfvec":
        arr = arr.astype(np.float16).astype(np.float32)
    return arr


def npy_bytes(values: npt.ArrayLike, dtype: str = "float32") -> bytes:
    """``.npy`` (format 1.0) bytes of a 1-D vector in ``dtype`` (float32 or float16)."""
    arr = np.ascontiguousarray(
        np.asarray(values).reshape(-1).astype(np.dtype(dtype).newbyteorder("<"))
    )
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, version=(1, 0), allow_pickle=False)
    return buf.getvalue()


def multihash_sha256(data: bytes) -> str:
    return "1220" + hashlib.sha256(data).hexdigest()


def file_fields(values: npt.ArrayLike, storage: str = "halfvec") -> dict[str, object]:
    """``file:size`` and ``file:checksum`` of the canonical bytes served for ``values``."""
    data = npy_bytes(stored_values(values, storage))
    return {"file:size": len(data), "file:checksum": multihash_sha256(data)}


def embedding_href(collection_id: str, item_id: str) -> str:
    """Root-relative href of an item's vector; the API makes it absolute when serving."""
    from urllib.parse import quote

    return f"/collections/{quote(collection_id, safe='')}/items/{quote(item_id, safe='')}/embedding"


def npy_size(dimensions: int) -> int:
    """``file:size`` of every vector of a space: the .npy header plus float32 values."""
    return len(npy_bytes([0.0] * dimensions))


def npy_header(dimensions: int) -> bytes:
    """The constant ``.npy`` header that precedes the values of a ``dimensions`` vector."""
    return npy_bytes([0.0] * dimensions)[: npy_size(dimensions) - 4 * dimensions]


def npy_digests(stored: np.ndarray) -> np.ndarray:
    """sha256 of each row's canonical .npy bytes (header + little-endian float32) of an
    ``(n, D)`` array of stored values, as ``(n, 32)`` bytes (one hash object a row)."""
    dims = stored.shape[1]
    base = hashlib.sha256(npy_header(dims))
    le = np.ascontiguousarray(stored, dtype="<f4")
    mv = le.data.cast("B")
    row = 4 * dims
    digests = bytearray()
    for i in range(len(stored)):
        h = base.copy()
        h.update(mv[i * row : (i + 1) * row])
        digests += h.digest()
    return np.frombuffer(bytes(digests), dtype=np.uint8).reshape(-1, 32)
