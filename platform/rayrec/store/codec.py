"""How a feature row, an event or an embedding is stored as bytes, the same for every backend.

Rows and events are MessagePack: on rows shaped like the MovieLens user and item features it encodes
about 8x and decodes about 3x faster than ``json`` and is a quarter smaller (measured with the
standard-library ``json`` and ``msgpack`` 1.1).

Missing values read back as ``None``: a NaN float (anywhere in a row, lists included), ``pd.NA``,
``NaT`` and Arrow nulls are all stored as ``None``. One marker whatever the source (a pandas NaN, an
Arrow null from Parquet or Ray Data's Arrow-backed batches), and rows stay valid JSON for the HTTP
layer. numpy scalars and arrays become Python numbers and lists, tuples become lists; anything else
that is not JSON-like (datetimes, objects, non-string keys) is refused with a TypeError.

Embeddings are raw little-endian float32 bytes: the dimension is the byte length over four.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np
import pandas as pd

__all__ = [
    "normalize",
    "pack",
    "unpack",
    "pack_vector",
    "unpack_vectors",
    "check_vectors",
    "assemble_vectors",
    "dim_mismatch",
    "VECTOR_DTYPE",
]

VECTOR_DTYPE = np.dtype("<f4")


_PLAIN = (int, str, bool, type(None))


def normalize(value: Any) -> Any:
    """``value`` with NaN and pandas missing markers as None and numpy values as Python ones; returned
    as is when there is nothing to change (the common case, so writes stay cheap)."""
    t = type(value)
    if t is int or t is str or value is None or t is bool:
        return value
    if t is float:
        return value if value == value else None
    if t is list or t is tuple:
        for x in value:
            if type(x) not in _PLAIN:
                return [normalize(x) for x in value]
        return value
    if t is dict or isinstance(value, Mapping):
        out = {}
        for k, x in value.items():
            if type(k) is not str:
                raise TypeError(f"keys of a stored dict must be strings, got {k!r} ({type(k).__name__})")
            out[k] = normalize(x)
        return out
    if isinstance(value, np.ndarray):
        return normalize(value.tolist())
    if isinstance(value, np.generic):
        return normalize(value.item())
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):  # a float subclass
        return float(value) if value == value else None
    return value  # bytes pass; anything else is refused by _refuse when packed


def _refuse(obj: Any) -> Any:
    # msgpack calls this for values it cannot pack.
    raise TypeError(
        f"cannot store a value of type {type(obj).__name__} ({obj!r:.60}) in the online store: "
        "use int, float, str, bool, None, or lists and dicts of them"
    )


def pack(row: Mapping[str, Any]) -> bytes:
    """Encode one feature row or event (a mapping with string keys)."""
    if not isinstance(row, Mapping):
        raise TypeError(f"a feature row or event must be a dict, got {type(row).__name__}")
    try:
        # packb builds a packer per call (about 1 µs): a shared Packer is not safe across threads.
        return msgpack.packb(normalize(row), default=_refuse)
    except OverflowError as e:
        raise TypeError(f"an integer in the row does not fit in 64 bits: {e}") from e


def unpack(data: bytes) -> Any:
    """Decode bytes written by :func:`pack`."""
    return msgpack.unpackb(data, raw=False)


def pack_vector(vec: np.ndarray) -> bytes:
    """One embedding as little-endian float32 bytes."""
    return np.ascontiguousarray(vec, dtype=VECTOR_DTYPE).tobytes()


def unpack_vectors(blobs: list[bytes], dim: int) -> np.ndarray:
    """Several embeddings of one dimension as a native float32 ``(len(blobs), dim)`` array."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    flat = np.frombuffer(b"".join(blobs), dtype=VECTOR_DTYPE)
    if flat.size != len(blobs) * dim:
        raise ValueError(f"stored embeddings do not all have dimension {dim}")
    return flat.reshape(len(blobs), dim).astype(np.float32, copy=False)


def check_vectors(ids: Sequence[int], vectors: np.ndarray) -> np.ndarray:
    """``vectors`` as an ``(len(ids), D)`` array, or ValueError naming the shape expected."""
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[0] != len(ids):
        raise ValueError(f"vectors must be (len(ids), D) = ({len(ids)}, D), got shape {arr.shape}")
    if len(ids) and arr.shape[1] < 1:
        raise ValueError("vectors must have at least one dimension")
    return arr


def dim_mismatch(kind: str, stored: int, got: int) -> str:
    return (
        f"embeddings of kind {kind!r} have dimension {stored} in the store, got {got}: "
        f"write the vectors of another model under a new kind (e.g. '{kind}_d{got}')"
    )


def assemble_vectors(ids: Sequence[int], found: Mapping[int, bytes], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, found mask)`` in the order of ``ids`` from the blobs found; zeros where missing."""
    mask = np.fromiter((i in found for i in ids), dtype=bool, count=len(ids))
    out = np.zeros((len(ids), dim), dtype=np.float32)
    if mask.any():
        out[mask] = unpack_vectors([found[i] for i in ids if i in found], dim)
    return out, mask
