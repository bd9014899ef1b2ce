"""Published indexes: ``<artifacts>/index/<version>/`` and the ``index/LATEST`` pointer.

A version folder holds ``index.faiss`` (the serialised faiss index), ``movie_ids.npy`` (row → movie
id, -1 for retired rows), ``vectors.npy`` (row → unit vector) and ``meta.json`` (factory, search
parameters, dim, n, the embeddings it came from, build-time recall@100 against exact search and query
latency), and ``ease.npz``, the ``ease`` recall path's item-to-item weights (:mod:`rayrec.retrieval.ease`). Files are written first and ``LATEST`` is swapped last, so a reader never sees half a version.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import faiss
import numpy as np

from rayrec import uri
from rayrec.retrieval.index import ItemIndex

__all__ = ["index_root", "save_index", "load_index", "INDEX_FILES"]

INDEX_FILES = ("index.faiss", "movie_ids.npy", "vectors.npy", "meta.json")


def index_root(artifacts: str) -> str:
    return uri.join(artifacts, "index")


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def save_index(
    index: ItemIndex,
    artifacts: str,
    *,
    version: str | None = None,
    publish: bool = True,
    extra: Callable[[str], None] | None = None,
) -> tuple[str, str]:
    """Write ``index`` (and its ``meta``) as a new version; with ``publish``, swap ``LATEST`` to it.
    ``extra(path)`` writes more files of the version (the ``ease`` weights) before the swap.
    Returns ``(version, path)``."""
    version = version or uri.new_version()
    path = uri.join(index_root(artifacts), version)
    faiss_index, ids, vecs = index.snapshot()
    uri.write_bytes(uri.join(path, "index.faiss"), faiss.serialize_index(faiss_index).tobytes())
    uri.write_bytes(uri.join(path, "movie_ids.npy"), _npy(ids))
    uri.write_bytes(uri.join(path, "vectors.npy"), _npy(vecs))
    meta: dict[str, Any] = {
        **index.meta,
        "version": version,
        "factory": index.factory,
        "search_params": index.search_params,
        "metric": "inner_product" if index.faiss_index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2",
        "dim": index.dim,
        "n": len(index),
        "faiss_version": faiss.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    uri.write_json(uri.join(path, "meta.json"), meta)
    index.meta = meta
    if extra is not None:
        extra(path)
    if publish:
        uri.set_latest(index_root(artifacts), version)
    return version, path


def load_index(artifacts: str, version: str | None = "latest") -> ItemIndex:
    """The published index (``"latest"`` follows ``index/LATEST``) as an :class:`ItemIndex`."""
    path = uri.resolve_version(index_root(artifacts), version)
    missing = [f for f in INDEX_FILES if not uri.exists(uri.join(path, f))]
    if missing:
        raise FileNotFoundError(f"index version at {path} is incomplete (missing {', '.join(missing)}): rebuild it")
    meta = uri.read_json(uri.join(path, "meta.json"))
    raw = np.frombuffer(uri.read_bytes(uri.join(path, "index.faiss")), dtype=np.uint8)
    faiss_index = faiss.deserialize_index(raw)
    ids = np.load(io.BytesIO(uri.read_bytes(uri.join(path, "movie_ids.npy"))), allow_pickle=False)
    vecs = np.load(io.BytesIO(uri.read_bytes(uri.join(path, "vectors.npy"))), allow_pickle=False)
    return ItemIndex(
        faiss_index,
        ids,
        vecs,
        factory=str(meta.get("factory", "?")),
        search_params=str(meta.get("search_params", "")),
        meta=meta,
    )
