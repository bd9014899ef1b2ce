"""The online feature store: serving reads user and item features, embeddings and recent history
from here; the features pipeline bulk-loads it and the real-time path writes to it.

``open_store(url_or_config)`` picks the backend:

- ``None``: ``RAYREC_STORE_URL`` if set, else the embedded default, SQLite at ``<artifacts>/online/store.sqlite``;
- ``sqlite:///abs/path/store.db`` or a plain path (relative paths resolve against the repository);
- ``redis://[user:password@]host:port/db?prefix=rayrec&ttl=3600&timeout=0.5``, ``rediss://…`` for TLS;
- a config object, or a dict with a ``type`` key (from YAML).

Backends are imported only when used (a lazy name→class map), so SQLite users never import redis-py.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from rayrec.config import configured_store_url, default_artifacts
from rayrec.store.base import ENTITIES, EventLog, FeatureStore, OnlineStore, StoreError, StoreUnavailable, mask_url

__all__ = [
    "ENTITIES",
    "OnlineStore",
    "FeatureStore",
    "EventLog",
    "StoreError",
    "StoreUnavailable",
    "BACKENDS",
    "SCHEMES",
    "open_store",
    "parse_store_url",
    "store_class",
    "config_class",
    "default_store_url",
    # imported on first use:
    "SqliteStore",
    "SqliteStoreConfig",
    "RedisStore",
    "RedisStoreConfig",
    "load_table",
]

#: Backend name → (module, store class, config class); imported on first use.
BACKENDS: dict[str, tuple[str, str, str]] = {
    "sqlite": ("rayrec.store.sqlite", "SqliteStore", "SqliteStoreConfig"),
    "redis": ("rayrec.store.redis_store", "RedisStore", "RedisStoreConfig"),
}
#: URL scheme → backend name ("" is a plain file path).
SCHEMES: dict[str, str] = {"": "sqlite", "sqlite": "sqlite", "redis": "redis", "rediss": "redis"}

_URL_HELP = (
    "use sqlite:///absolute/path/store.db, a file path, redis://[user:password@]host:port/db "
    "or rediss://… (TLS)"
)


def _backend(name: str) -> tuple[str, str, str]:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown online store type {name!r}: expected one of {sorted(BACKENDS)}") from None


def store_class(name: str) -> type[OnlineStore]:
    """The store class registered under ``name`` (``"sqlite"``, ``"redis"``)."""
    module, cls, _ = _backend(name)
    out: type[OnlineStore] = getattr(importlib.import_module(module), cls)
    return out


def config_class(name: str) -> type[BaseModel]:
    """The pydantic config class of backend ``name``."""
    module, _, cls = _backend(name)
    out: type[BaseModel] = getattr(importlib.import_module(module), cls)
    return out


def default_store_url(artifacts: str | None = None) -> str:
    """The default store: ``RAYREC_STORE_URL`` when set (a cluster's Redis), else the embedded SQLite
    file ``<artifacts>/online/store.sqlite`` (artifacts must be a local path)."""
    configured = configured_store_url()
    if configured:
        return configured
    artifacts = artifacts or default_artifacts()
    if "://" in artifacts and not artifacts.startswith("file://"):
        raise ValueError(
            f"the default online store lives under the artifacts URI, which is not local ({artifacts}): "
            "pass a store URL (sqlite:///path/on/this/node.db or redis://host:port/db)"
        )
    return os.path.join(artifacts.removeprefix("file://"), "online", "store.sqlite")


def parse_store_url(url: str) -> BaseModel:
    """The typed config a store URL describes; ValueError naming the URL when it is not one."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"empty online store URL: {_URL_HELP}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported online store URL scheme {scheme!r} in {mask_url(url)}: {_URL_HELP}")
    cls = config_class(SCHEMES[scheme])
    try:
        config: BaseModel = cls.from_url(url)  # type: ignore[attr-defined]
    except ValidationError as e:
        raise ValueError(f"bad online store URL {mask_url(url)}: {_errors(e)}") from None
    return config


def open_store(url_or_config: str | BaseModel | Mapping[str, Any] | None = None) -> OnlineStore:
    """Open the online store named by a URL, a config object or a ``{"type": …}`` dict; None opens the
    embedded SQLite default. Opening does not contact a server: call ``ping()`` to check."""
    if url_or_config is None:
        url_or_config = default_store_url()
    if isinstance(url_or_config, str):
        config = parse_store_url(url_or_config)
    elif isinstance(url_or_config, BaseModel):
        config = url_or_config
    elif isinstance(url_or_config, Mapping):
        name = url_or_config.get("type")
        if name is None:
            raise ValueError(f"online store config needs a 'type' ({' or '.join(map(repr, BACKENDS))})")
        try:
            config = config_class(str(name)).model_validate(dict(url_or_config))
        except ValidationError as e:
            raise ValueError(f"bad online store config: {_errors(e)}") from None
    else:
        raise TypeError(f"open_store takes a URL, a config or a dict, got {type(url_or_config).__name__}")
    return store_class(config.type)(config)  # type: ignore[attr-defined,call-arg]


_LAZY = {
    "SqliteStore": "rayrec.store.sqlite",
    "SqliteStoreConfig": "rayrec.store.sqlite",
    "RedisStore": "rayrec.store.redis_store",
    "RedisStoreConfig": "rayrec.store.redis_store",
    "load_table": "rayrec.store.loader",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _errors(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}" for err in e.errors())
