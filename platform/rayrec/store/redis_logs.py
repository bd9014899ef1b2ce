"""The Redis store's event-log face: per-user history (a list per user) and the durable logs (a stream
per log, with the ids of :meth:`append_log_once` in a hash and consumers' marks in keys); see
:mod:`rayrec.store.redis_store` for the layout and durability settings."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import RedisError

from rayrec.store.base import Row, StoreError, StoreUnavailable, as_ids, check_log
from rayrec.store.codec import pack, unpack

if TYPE_CHECKING:
    from rayrec.store.redis_store import RedisStoreConfig

__all__ = ["RedisEventLog"]

_BATCH = 1000  # commands per pipeline when writing

_STREAM_ID_RE = re.compile(r"^(\d+)-(\d+)$")

# Appends the records whose ids the log does not hold yet, atomically. KEYS: stream, ids hash.
# ARGV: maxlen (0: none), then id, blob pairs. Returns {offset, appended (1/0)} per record.
_APPEND_ONCE_LUA = """
local out = {}
local maxlen = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local id, blob = ARGV[i], ARGV[i + 1]
  local found = redis.call('HGET', KEYS[2], id)
  if found then
    table.insert(out, {found, 0})
  else
    local offset
    if maxlen > 0 then
      offset = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'r', blob)
    else
      offset = redis.call('XADD', KEYS[1], '*', 'r', blob)
    end
    redis.call('HSET', KEYS[2], id, offset)
    table.insert(out, {offset, 1})
  end
end
return out
"""

# Moves a mark forward only. KEYS: the mark. ARGV: ms, seq of the new offset. Returns the stored mark.
_MARK_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ms, seq = string.match(cur, '^(%d+)-(%d+)$')
  if tonumber(ms) > tonumber(ARGV[1]) or (tonumber(ms) == tonumber(ARGV[1]) and tonumber(seq) >= tonumber(ARGV[2])) then
    return cur
  end
end
local new = ARGV[1] .. '-' .. ARGV[2]
redis.call('SET', KEYS[1], new)
return new
"""


class RedisEventLog:
    """History and logs of :class:`rayrec.store.redis_store.RedisStore` (its client and errors)."""

    if TYPE_CHECKING:
        url: str
        config: RedisStoreConfig
        _prefix: str
        _r: Any
        _append_once: Any
        _mark: Any

        def _error(self, e: RedisError, what: str) -> StoreError: ...

        def _decode(self, value: bytes | None) -> str | None: ...

    def _history(self, user_id: int) -> str:
        return f"{self._prefix}:history:{user_id}"

    def append_history(self, user_id: int, events: Sequence[Mapping[str, Any]], max_len: int = 200) -> None:
        (user_id,) = as_ids([user_id])
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        blobs = [pack(e) for e in events]
        if not blobs:
            return
        key = self._history(user_id)
        try:
            pipe = self._r.pipeline(transaction=True)
            pipe.rpush(key, *blobs)
            pipe.ltrim(key, -max_len, -1)
            pipe.execute()
        except RedisError as e:
            raise self._error(e, f"append history of user {user_id}") from e

    def _read_history(self, user_id: int, limit: int | None) -> list[Row]:
        try:
            values = self._r.lrange(self._history(user_id), 0 if limit is None else -limit, -1)
        except RedisError as e:
            raise self._error(e, f"read history of user {user_id}") from e
        return [unpack(v) for v in values]

    # -- durable append-only logs ---------------------------------------------------------------

    def _log(self, name: str) -> str:
        return f"{self._prefix}:log:{check_log(name)}"

    @staticmethod
    def _stream_id(offset: str, what: str) -> tuple[int, int]:
        m = _STREAM_ID_RE.match(offset) if isinstance(offset, str) else None
        if m is None:
            raise ValueError(f"bad log offset {what}={offset!r}: pass an offset returned by this store (<ms>-<seq>)")
        return int(m.group(1)), int(m.group(2))

    def append_log(self, name: str, records: Sequence[Mapping[str, Any]], *, maxlen: int | None = None) -> list[str]:
        key = self._log(name)
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        blobs = [pack(r) for r in records]
        if not blobs:
            return []
        try:
            # MULTI/EXEC: the records of one call land together, in order (XADD ids only grow).
            pipe = self._r.pipeline(transaction=len(blobs) > 1)
            for b in blobs:
                pipe.xadd(key, {"r": b}, maxlen=maxlen, approximate=True)
            ids: list[bytes] = pipe.execute()
        except RedisError as e:
            raise self._error(e, f"append to log {name}") from e
        self._wait(name)
        return [i.decode() for i in ids]

    def append_log_once(
        self, name: str, records: Sequence[Mapping[str, Any]], ids: Sequence[str], *, maxlen: int | None = None
    ) -> list[tuple[str, bool]]:
        key = self._log(name)
        if len(ids) != len(records):
            raise ValueError(f"{len(records)} records but {len(ids)} ids")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        if not records:
            return []
        args: list[Any] = [maxlen or 0]
        for i, r in zip(ids, records):
            args += [str(i), pack(r)]
        try:
            got = self._append_once(keys=[key, f"{self._prefix}:logids:{name}"], args=args)
        except RedisError as e:
            raise self._error(e, f"append to log {name}") from e
        if any(int(new) for _, new in got):
            self._wait(name)
        return [(o.decode() if isinstance(o, bytes) else str(o), bool(int(new))) for o, new in got]

    def _wait(self, name: str) -> None:
        """With ``wait_replicas``, block until that many replicas acknowledged the writes so far."""
        n = self.config.wait_replicas
        if not n:
            return
        try:
            got = int(self._r.execute_command("WAIT", n, self.config.wait_timeout_ms))
        except RedisError as e:
            raise self._error(e, f"wait for replicas of log {name}") from e
        if got < n:
            raise StoreUnavailable(
                f"online store {self.url}: {got} of {n} replicas confirmed the append to log {name} within "
                f"{self.config.wait_timeout_ms} ms; it is on the primary only"
            )

    def log_end(self, name: str) -> str:
        key = self._log(name)
        try:
            last = self._r.xrevrange(key, max="+", min="-", count=1)
        except RedisError as e:
            raise self._error(e, f"read the end of log {name}") from e
        if not last:
            return "0-0"
        entry_id = last[0][0]
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def log_mark(self, name: str, consumer: str) -> str | None:
        self._log(name)
        try:
            return self._decode(self._r.get(f"{self._prefix}:logmark:{name}:{consumer}"))
        except RedisError as e:
            raise self._error(e, f"read the mark of {consumer} on log {name}") from e

    def set_log_mark(self, name: str, consumer: str, offset: str) -> str:
        self._log(name)
        ms, seq = self._stream_id(offset, "offset")
        try:
            out = self._mark(keys=[f"{self._prefix}:logmark:{name}:{consumer}"], args=[ms, seq])
        except RedisError as e:
            raise self._error(e, f"set the mark of {consumer} on log {name}") from e
        return out.decode() if isinstance(out, bytes) else str(out)

    def read_log(self, name: str, after: str | None = None, limit: int | None = None) -> list[tuple[str, Row]]:
        key = self._log(name)
        if after is not None:
            self._stream_id(after, "after")
        if limit is not None and limit <= 0:
            return []
        try:
            entries = cast(
                "list[tuple[bytes, dict[bytes, bytes]]]",
                self._r.xrange(key, min="-" if after is None else "(" + after, max="+", count=limit),
            )
        except RedisError as e:
            raise self._error(e, f"read log {name}") from e
        return [(i.decode(), unpack(fields[b"r"])) for i, fields in entries]

    def log_length(self, name: str) -> int:
        key = self._log(name)
        try:
            return int(self._r.xlen(key))
        except RedisError as e:
            raise self._error(e, f"count log {name}") from e

    def trim_log(self, name: str, upto: str) -> int:
        key = self._log(name)
        ms, seq = self._stream_id(upto, "upto")
        try:
            # MINID keeps ids >= minid: the id right after ``upto``.
            n = int(self._r.xtrim(key, minid=f"{ms}-{seq + 1}", approximate=False))
            ids_key = f"{self._prefix}:logids:{name}"
            stale = [i for i, o in self._r.hscan_iter(ids_key, count=_BATCH) if self._stream_id(o.decode(), "id") <= (ms, seq)]
            for chunk in range(0, len(stale), _BATCH):
                self._r.hdel(ids_key, *stale[chunk : chunk + _BATCH])
            return n
        except RedisError as e:
            raise self._error(e, f"trim log {name}") from e
