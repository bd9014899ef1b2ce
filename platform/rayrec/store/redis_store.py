"""Redis online store: the production backend (redis-py, pipelined batch reads, versioned keys).

Keys (``<prefix>`` defaults to ``rayrec``):

- ``<prefix>:<entity>:v<version>:<id>``: one feature row (MessagePack), optionally with a TTL;
- ``<prefix>:<entity>:live``: the alias holding the live version, swapped atomically by ``commit_load``;
- ``<prefix>:<entity>:loading``: a set of versions started by ``begin_load`` and not yet committed;
- ``<prefix>:emb:<kind>:<id>`` (float32 bytes) and ``<prefix>:emb:<kind>:dim``;
- ``<prefix>:history:<user_id>``: a list of events, newest last;
- ``<prefix>:log:<name>``: a stream, one durable append-only log (the event log); offsets are stream
  ids (``<ms>-<seq>``), each record one MessagePack field ``r``; ``<prefix>:logids:<name>`` a hash
  record id → offset (:meth:`append_log_once`), ``<prefix>:logmark:<name>:<consumer>`` a consumer's mark.

Durability: Redis acknowledges a write once it is in memory. ``durability`` (URL option) says what
to do when the server keeps no append-only file (AOF), checked when serving starts: ``warn`` (the
default) logs it loudly, ``require`` refuses to serve, ``off`` says nothing. ``wait_replicas=N``
makes every log append wait (``WAIT``) until N replicas hold it, or fail.

A batched ``get`` sends ``GET alias`` and ``MGET`` of the rows of the version it last saw in one
``MULTI``/``EXEC`` round trip: the two run atomically, so if the alias still names that version every
row belongs to it; after a swap the alias differs and the read is repeated once with the new version.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import numpy as np
import redis
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    InvalidResponse,
    ConnectionError as RedisConnectionError,
    RedisError,
    TimeoutError as RedisTimeoutError,
    WatchError,
)
from redis.retry import Retry

from rayrec.store.base import (
    OnlineStore,
    Row,
    StoreError,
    StoreUnavailable,
    as_ids,
    check_entity,
    check_kind,
    check_version,
    iter_rows,
    mask_url,
)
from rayrec.store.redis_logs import _APPEND_ONCE_LUA, _BATCH, _MARK_LUA, RedisEventLog
from rayrec.store.codec import assemble_vectors, check_vectors, dim_mismatch, pack, pack_vector, unpack
from rayrec.uri import new_version

__all__ = ["RedisStoreConfig", "RedisStore"]

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:{}/\-]{1,64}$")
_OWN_OPTIONS = {"prefix", "ttl", "timeout", "max_connections", "durability", "wait_replicas", "wait_timeout_ms"}
_UPDATE_ATTEMPTS = 1000

# Makes a committed version live: atomic check-and-swap of the alias. Returns {code, previous alias}:
# 0 = version was never begun, 1 = already live, 2 = swapped.
_COMMIT_LUA = """
local live = redis.call('GET', KEYS[1])
if live == ARGV[1] then return {1, live} end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {0, ''} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
return {2, live or ''}
"""




class RedisStoreConfig(BaseModel):
    """A Redis server (``rediss``/``ssl`` for TLS, ``username``/``password`` for ACL users)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["redis"] = "redis"
    host: str = "127.0.0.1"
    port: int = Field(default=6379, ge=1, le=65535)
    db: int = Field(default=0, ge=0)
    username: str | None = None
    password: SecretStr | None = None
    ssl: bool = False
    prefix: str = "rayrec"
    ttl: int | None = Field(default=None, gt=0, description="seconds a feature row lives; None keeps rows")
    timeout: float = Field(default=1.0, gt=0, description="socket connect and read timeout in seconds")
    max_connections: int = Field(default=64, ge=1)
    durability: Literal["off", "warn", "require"] = Field(
        default="warn", description="a server without AOF: say nothing, log a warning when serving starts, or refuse"
    )
    wait_replicas: int = Field(default=0, ge=0, description="replicas that must hold a log append (WAIT) before it returns")
    wait_timeout_ms: int = Field(default=100, ge=1, description="how long a log append waits for its replicas")
    # Further redis-py connection options from the URL query, e.g. ssl_cert_reqs=none, ssl_ca_certs=…
    options: dict[str, str] = Field(default_factory=dict)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _PREFIX_RE.match(v):
            raise ValueError(f"bad key prefix {v!r}: use 1-64 letters, digits or any of _.:{{}}/-")
        return v

    @classmethod
    def from_url(cls, url: str) -> RedisStoreConfig:
        """``redis[s]://[user:password@]host:port/db?prefix=rayrec&ttl=3600&timeout=0.5``; other query
        options go to redis-py as connection options."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"{url}: not a redis:// or rediss:// URL")
        try:
            port = parts.port
        except ValueError as e:
            raise ValueError(f"{mask_url(url)}: bad port ({e})") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{mask_url(url)}: the path must be a database number such as /0, got /{path}")
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        own: dict[str, Any] = {k: query.pop(k) for k in list(query) if k in _OWN_OPTIONS}
        if own.get("ttl", "").lower() in ("0", "none"):
            own["ttl"] = None
        return cls(
            host=unquote(parts.hostname or "127.0.0.1"),
            port=port or 6379,
            db=int(path or 0),
            username=unquote(parts.username) if parts.username else None,
            password=SecretStr(unquote(parts.password)) if parts.password else None,
            ssl=parts.scheme == "rediss",
            options=query,
            **own,
        )

    def to_url(self, mask_password: bool = True) -> str:
        auth = ""
        if self.username or self.password:
            secret = self.password.get_secret_value() if self.password else ""
            auth = quote(self.username or "", safe="") + (
                ":" + ("***" if mask_password else quote(secret, safe="")) if self.password else ""
            )
            auth += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = {"prefix": self.prefix} if self.prefix != "rayrec" else {}
        if self.ttl is not None:
            query["ttl"] = str(self.ttl)
        if self.durability != "warn":
            query["durability"] = self.durability
        if self.wait_replicas:
            query.update(wait_replicas=str(self.wait_replicas), wait_timeout_ms=str(self.wait_timeout_ms))
        query.update(self.options)
        qs = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())
        return f"{'rediss' if self.ssl else 'redis'}://{auth}{host}:{self.port}/{self.db}" + (f"?{qs}" if qs else "")


class RedisStore(RedisEventLog, OnlineStore):
    """Online store on a Redis server (see the module docstring for the key layout)."""

    def __init__(self, config: RedisStoreConfig) -> None:
        self.config = config
        self.url = mask_url(config.to_url())  # secret connection options (?password=…) masked too
        self._prefix = config.prefix
        self._ttl = config.ttl
        scheme = "rediss" if config.ssl else "redis"
        host = f"[{config.host}]" if ":" in config.host else config.host  # IPv6 literal
        base = f"{scheme}://{host}:{config.port}/{config.db}"
        if config.options:
            base += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in config.options.items())
        try:
            self._pool = redis.ConnectionPool.from_url(
                base,
                username=config.username,
                password=config.password.get_secret_value() if config.password else None,
                socket_timeout=config.timeout,
                socket_connect_timeout=config.timeout,
                max_connections=config.max_connections,
                # One quick retry re-dials a pooled connection the server closed (restart, idle
                # timeout); a server that is down fails within about two timeouts.
                retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
            )
            # Connections open lazily; building one here rejects unknown options now, not mid-request.
            self._pool.connection_class(**self._pool.connection_kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{self.url}: bad connection option ({e}); the URL takes prefix, ttl, timeout, max_connections "
                "and redis-py connection options such as ssl_cert_reqs"
            ) from e
        self._r = redis.Redis(connection_pool=self._pool)
        self._commit = self._r.register_script(_COMMIT_LUA)
        self._append_once = self._r.register_script(_APPEND_ONCE_LUA)
        self._mark = self._r.register_script(_MARK_LUA)
        self._live: dict[str, str] = {}  # last live version seen per entity

    # -- keys and errors ------------------------------------------------------------------------

    def _alias(self, entity: str) -> str:
        return f"{self._prefix}:{entity}:live"

    def _loading(self, entity: str) -> str:
        return f"{self._prefix}:{entity}:loading"

    def _rows(self, entity: str, version: str) -> str:
        """Key prefix of one version's rows (append the id)."""
        return f"{self._prefix}:{entity}:v{version}:"

    def _error(self, e: RedisError, what: str) -> StoreError:
        where = f"online store {self.url}"
        if isinstance(e, (AuthenticationError, AuthorizationError)) or any(
            code in str(e) for code in ("NOAUTH", "WRONGPASS", "NOPERM")
        ):
            return StoreUnavailable(
                f"{where}: could not {what}: the server refused the credentials ({e}); check the username "
                "and password in the URL (redis://user:password@host:port/db) and the user's ACL"
            )
        hostport = f"{self.config.host}:{self.config.port}"
        if isinstance(e, InvalidResponse):
            return StoreUnavailable(
                f"{where}: could not {what}: the server at {hostport} does not speak the Redis protocol ({e}); "
                "check the host and port in the URL" + (" and whether it expects TLS" if not self.config.ssl else "")
            )
        if isinstance(e, (RedisConnectionError, RedisTimeoutError)):
            tls = " If the server does not use TLS, write redis:// instead of rediss://." if self.config.ssl else ""
            return StoreUnavailable(
                f"{where}: could not {what}: {str(e).rstrip('.')}. Is redis-server running and reachable at "
                f"{hostport}? Start one with `redis-server --port {self.config.port} --save ''` (or `docker run "
                f"-d -p {self.config.port}:6379 redis:7`), fix the host and port in the URL, or use the embedded "
                f"SQLite store (the default when no store URL is given).{tls}"
            )
        return StoreError(f"{where}: could not {what}: {e}")

    def _decode(self, value: bytes | None) -> str | None:
        return None if value is None else value.decode()

    def _drop_version(self, entity: str, version: str) -> None:
        """Delete one version's rows: SCAN for its keys, UNLINK them in batches (freed in the background)."""
        batch: list[bytes] = []
        for key in self._r.scan_iter(match=_glob_escape(self._rows(entity, version)) + "*", count=_BATCH):
            batch.append(key)
            if len(batch) >= _BATCH:
                self._r.unlink(*batch)
                batch = []
        if batch:
            self._r.unlink(*batch)

    # -- versions -------------------------------------------------------------------------------

    def begin_load(self, entity: str, version: str | None = None) -> str:
        check_entity(entity)
        version = check_version(version) if version is not None else new_version()
        try:
            if self._decode(self._r.get(self._alias(entity))) == version:
                raise ValueError(f"version {version!r} of {entity} is already live: pick a new one")
            self._r.sadd(self._loading(entity), version)
        except RedisError as e:
            raise self._error(e, f"begin a load of {entity}") from e
        return version

    def write_rows(self, entity: str, version: str, rows: Iterable[tuple[int, Mapping[str, Any]]]) -> int:
        check_entity(entity)
        check_version(version)
        base, ttl, n = self._rows(entity, version), self._ttl, 0
        try:
            if not self._r.sismember(self._loading(entity), version):
                raise ValueError(f"version {version!r} of {entity} is not being loaded: call begin_load first")
            pipe = self._r.pipeline(transaction=False)
            for i, row in iter_rows(rows):
                pipe.set(base + str(i), pack(row), ex=ttl)
                n += 1
                if len(pipe) >= _BATCH:
                    pipe.execute()
            if len(pipe):
                pipe.execute()
        except RedisError as e:
            raise self._error(e, f"write {entity} rows") from e
        return n

    def commit_load(self, entity: str, version: str) -> None:
        check_entity(entity)
        check_version(version)
        try:
            code, previous = self._commit(keys=[self._alias(entity), self._loading(entity)], args=[version])
            if code == 0:
                raise ValueError(f"version {version!r} of {entity} is not being loaded: call begin_load first")
            self._live[entity] = version
            previous = previous.decode()
            if code == 2 and previous and previous != version:
                self._drop_version(entity, previous)
        except RedisError as e:
            raise self._error(e, f"commit version {version} of {entity}") from e

    def abort_load(self, entity: str, version: str) -> None:
        check_entity(entity)
        check_version(version)
        try:
            if self._decode(self._r.get(self._alias(entity))) == version:
                raise ValueError(f"version {version!r} of {entity} is live: it cannot be aborted")
            self._r.srem(self._loading(entity), version)
            self._drop_version(entity, version)
        except RedisError as e:
            raise self._error(e, f"abort version {version} of {entity}") from e

    def live_version(self, entity: str) -> str | None:
        check_entity(entity)
        try:
            return self._decode(self._r.get(self._alias(entity)))
        except RedisError as e:
            raise self._error(e, f"read the live version of {entity}") from e

    # -- reads and real-time writes -------------------------------------------------------------

    def get(self, entity: str, ids: Sequence[int]) -> list[Row | None]:
        check_entity(entity)
        ids = as_ids(ids)
        if not ids:
            return []
        alias = self._alias(entity)
        version = self._live.get(entity)
        try:
            for _ in range(10):
                pipe = self._r.pipeline(transaction=True)
                pipe.get(alias)
                if version is not None:
                    base = self._rows(entity, version)
                    pipe.mget([base + str(i) for i in ids])
                replies = pipe.execute()
                live = self._decode(replies[0])
                if live is None:
                    self._live.pop(entity, None)
                    return [None] * len(ids)
                if live == version:
                    return [None if v is None else unpack(v) for v in replies[1]]
                version = self._live[entity] = live
        except RedisError as e:
            raise self._error(e, f"read {entity} rows") from e
        raise StoreError(f"online store {self.url}: the live version of {entity} changed on every read; retry")

    def _in_live(self, entity: str, body: Callable[[Any, str], None]) -> None:
        """Run ``body(pipe, live version)`` in a MULTI that commits only if the alias did not change
        meanwhile (the rows land in the version live when they commit); creates an empty live version
        when there is none."""
        alias = self._alias(entity)
        for _ in range(_UPDATE_ATTEMPTS):
            with self._r.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(alias)
                    live = self._decode(pipe.get(alias))
                    pipe.multi()
                    if live is None:
                        live = new_version()
                        pipe.set(alias, live)
                    body(pipe, live)
                    pipe.execute()
                    self._live[entity] = live
                    return
                except WatchError:
                    continue
        raise StoreError(f"online store {self.url}: could not write {entity} rows: the live version kept changing")

    def put(self, entity: str, rows: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        check_entity(entity)
        encoded = [(i, pack(r)) for i, r in iter_rows(rows)]
        ttl = self._ttl

        try:
            for start in range(0, len(encoded), _BATCH):
                chunk = encoded[start : start + _BATCH]

                def body(pipe: Any, live: str, chunk: list[tuple[int, bytes]] = chunk) -> None:
                    base = self._rows(entity, live)
                    for i, b in chunk:
                        pipe.set(base + str(i), b, ex=ttl)

                self._in_live(entity, body)
        except RedisError as e:
            raise self._error(e, f"write {entity} rows") from e

    def update(self, entity: str, id: int, fn: Callable[[Row | None], Mapping[str, Any]]) -> Row:
        check_entity(entity)
        (id,) = as_ids([id])
        alias = self._alias(entity)
        try:
            for attempt in range(_UPDATE_ATTEMPTS):
                version = self._live.get(entity)
                with self._r.pipeline(transaction=True) as pipe:
                    try:
                        # WATCH the alias and the row of the version last seen, read both, write in
                        # MULTI: EXEC fails if either changed meanwhile, and the update is redone.
                        keys = [alias] + ([self._rows(entity, version) + str(id)] if version else [])
                        pipe.watch(*keys)
                        values = pipe.mget(keys)
                        live = self._decode(values[0])
                        if live is not None and live != version:
                            self._live[entity] = live
                            continue
                        current = None if live is None else values[1]
                        blob = pack(fn(None if current is None else unpack(current)))
                        pipe.multi()
                        if live is None:
                            live = new_version()
                            pipe.set(alias, live)
                        pipe.set(self._rows(entity, live) + str(id), blob, ex=self._ttl)
                        pipe.execute()
                        self._live[entity] = live
                        out: Row = unpack(blob)
                        return out
                    except WatchError:
                        if attempt >= 3:  # heavy contention: spread the retries out a little
                            time.sleep(random.uniform(0, 0.002 * min(attempt, 20)))
        except RedisError as e:
            raise self._error(e, f"update {entity} {id}") from e
        raise StoreError(
            f"online store {self.url}: could not update {entity} {id}: it kept changing "
            f"({_UPDATE_ATTEMPTS} attempts); too many writers on one id"
        )

    def prune_users(self, stale: Callable[[int, Row], bool], batch: int = 1000) -> list[int]:
        # per user: WATCH the row and its history, read, check, DEL both in MULTI; a row an event
        # changed meanwhile fails EXEC and is kept (checked again by the next run)
        pruned: list[int] = []
        try:
            live = self._decode(self._r.get(self._alias("user")))
            if live is None:
                return pruned
            base = self._rows("user", live)
            for key in self._r.scan_iter(match=_glob_escape(base) + "*", count=batch):
                name = key.decode() if isinstance(key, bytes) else str(key)
                try:
                    uid = int(name[len(base) :])
                except ValueError:
                    continue
                history = self._history(uid)
                with self._r.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(name, history)
                        blob = pipe.get(name)
                        if blob is None or not stale(uid, unpack(blob)):
                            pipe.unwatch()
                            continue
                        pipe.multi()
                        pipe.delete(name, history)
                        pipe.execute()
                        pruned.append(uid)
                    except WatchError:
                        continue
        except RedisError as e:
            raise self._error(e, "prune user rows") from e
        return pruned

    # -- embeddings and history -----------------------------------------------------------------

    def _emb(self, kind: str) -> str:
        return f"{self._prefix}:emb:{kind}:"

    def get_embeddings(self, kind: str, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        check_kind(kind)
        ids = as_ids(ids)
        base = self._emb(kind)
        try:
            pipe = self._r.pipeline(transaction=False)
            pipe.get(base + "dim")
            if ids:
                pipe.mget([base + str(i) for i in ids])
            replies = pipe.execute()
        except RedisError as e:
            raise self._error(e, f"read {kind} embeddings") from e
        dim = 0 if replies[0] is None else int(replies[0])
        found = {i: v for i, v in zip(ids, replies[1] if ids else []) if v is not None}
        return assemble_vectors(ids, found, dim)

    def put_embeddings(self, kind: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        check_kind(kind)
        ids = as_ids(ids)
        vectors = check_vectors(ids, vectors)
        if not ids:
            return
        dim = int(vectors.shape[1])
        base = self._emb(kind)
        try:
            pipe = self._r.pipeline(transaction=True)
            pipe.set(base + "dim", dim, nx=True)
            pipe.get(base + "dim")
            stored = int(pipe.execute()[1])
            if stored != dim:
                raise ValueError(dim_mismatch(kind, stored, dim))
            pipe = self._r.pipeline(transaction=False)
            for i, v in zip(ids, vectors):
                pipe.set(base + str(i), pack_vector(v))
                if len(pipe) >= _BATCH:
                    pipe.execute()
            if len(pipe):
                pipe.execute()
        except RedisError as e:
            raise self._error(e, f"write {kind} embeddings") from e

    # -- lifecycle ------------------------------------------------------------------------------

    def durability(self) -> str | None:
        """None when the server writes an append-only file; else why an acknowledged event could be
        lost (an error when the server cannot be asked is raised as :class:`StoreUnavailable`)."""
        try:
            info = self._r.info("persistence")
        except RedisError as e:
            raise self._error(e, "read the server's persistence settings") from e
        if int(info.get("aof_enabled", 0)):
            return None
        return (f"online store {self.url}: the Redis server keeps no append-only file (appendonly no): events "
                "it acknowledged are lost if it restarts. Run it with --appendonly yes (appendfsync everysec or "
                "always), or put durability=off in the store URL to accept this")  # fmt: skip

    def ping(self) -> None:
        try:
            self._r.ping()
        except RedisError as e:
            raise self._error(e, "ping the server") from e

    def close(self) -> None:
        self._pool.disconnect()


def _glob_escape(text: str) -> str:
    """``text`` as a literal inside a Redis MATCH pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)
