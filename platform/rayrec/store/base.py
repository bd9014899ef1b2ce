"""The online feature store interface every backend implements, its errors and shared checks.

Serving reads user and item features, embeddings and recent history from an online store; the
features pipeline bulk-loads it and the real-time path (``POST /events``) writes to it. Bulk loads are
versioned: rows are written under a new version that no reader sees, then one atomic pointer swap
makes the whole table live and the previous version is deleted. A batched read therefore returns
rows of exactly one version, never a mix.
"""

from __future__ import annotations

import logging
import operator
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd
import pyarrow as pa

from rayrec.secrets import mask

log = logging.getLogger(__name__)

__all__ = [
    "ENTITIES",
    "OnlineStore",
    "FeatureStore",
    "EventLog",
    "StoreError",
    "StoreUnavailable",
    "NotDurable",
    "check_durability",
    "Row",
    "mask_url",
    "check_entity",
    "check_version",
    "check_kind",
    "check_log",
    "offset_order",
    "as_ids",
    "iter_rows",
    "batched",
]

ENTITIES = ("user", "item")
Row = dict[str, Any]
RowsInput: TypeAlias = Iterable[tuple[int, Mapping[str, Any]]] | pd.DataFrame | pa.Table | pa.RecordBatch

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class _Unchanged(Exception):
    """``update_many``'s function left a row as it is."""


class StoreError(RuntimeError):
    """The online store failed or holds something unexpected."""


class StoreUnavailable(StoreError):
    """The online store cannot be reached or opened. The message names the store URL (password
    masked), what failed and how to fix it."""


class NotDurable(StoreError):
    """The store cannot keep an acknowledged write through a restart, and its ``durability`` setting
    is ``require``."""


def check_durability(store: OnlineStore, logger: Any = None) -> str | None:
    """Ask ``store`` whether an acknowledged write could be lost and act on its ``durability``
    setting (``warn`` when it has none): ``require`` raises :class:`NotDurable`, ``warn`` logs a
    warning, ``off`` says nothing. Returns the store's reason, or None."""
    reason = store.durability()
    setting = getattr(getattr(store, "config", None), "durability", "warn")
    if reason is None or setting == "off":
        return reason
    if setting == "require":
        raise NotDurable(f"{reason} (durability=require)")
    if logger is not None:
        logger.warning("NOT DURABLE: %s", reason)
    return reason


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs): the one in
    ``user:password@`` and secret query options (``?password=…``, ``?token=…``)."""
    if "://" not in url:
        return mask(url)
    parts = urlsplit(url)
    if parts.password is None:
        return mask(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return mask(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))


def check_entity(entity: str) -> str:
    if entity not in ENTITIES:
        raise ValueError(f"unknown entity {entity!r}: the online store holds {', '.join(map(repr, ENTITIES))}")
    return entity


def check_version(version: str) -> str:
    """Version names end up in keys and file rows: letters, digits and ``_.-`` only."""
    if not isinstance(version, str) or not _NAME_RE.match(version):
        raise ValueError(f"bad version name {version!r}: use 1-128 letters, digits, '_', '.' or '-'")
    return version


def check_kind(kind: str) -> str:
    """Embedding kinds (``"user"``, ``"item"``, ``"item_two_tower"``…) end up in keys, like versions."""
    if not isinstance(kind, str) or not _NAME_RE.match(kind):
        raise ValueError(f"bad embedding kind {kind!r}: use 1-128 letters, digits, '_', '.' or '-'")
    return kind


def offset_order(offset: str) -> tuple[int, int]:
    """A sort key of a log offset of either backend (SQLite ``"<seq>"``, Redis ``"<ms>-<seq>"``)."""
    head, _, tail = str(offset).partition("-")
    return int(head), int(tail or 0)


def check_log(name: str) -> str:
    """Log names (``"events"``, ``"items"``…) end up in keys and rows, like versions."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"bad log name {name!r}: use 1-128 letters, digits, '_', '.' or '-'")
    return name


def as_ids(ids: Sequence[int] | np.ndarray) -> list[int]:
    """Ids as Python ints in the int64 range; numpy integer arrays and scalars are accepted, floats and
    strings are not (an id that silently became ``1.0`` or ``"1"`` is a bug upstream)."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise TypeError(f"ids must be a 1-d array of integers, got dtype {ids.dtype} and shape {ids.shape}")
        out: list[int] = ids.astype(np.int64, copy=False).tolist()
        return out
    try:
        out = [operator.index(i) for i in ids]
    except TypeError:
        bad = next(i for i in ids if not hasattr(i, "__index__"))
        raise TypeError(f"ids must be integers, got {bad!r} ({type(bad).__name__})") from None
    if out and (min(out) < _INT64_MIN or max(out) > _INT64_MAX):
        raise ValueError("ids must fit in int64")
    return out


def iter_rows(rows: RowsInput, key: str | None = None) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """``(id, row)`` pairs from a DataFrame or an Arrow table (ids from the ``key`` column, which stays
    in the row) or from an iterable of pairs."""
    if isinstance(rows, (pd.DataFrame, pa.Table, pa.RecordBatch)):
        columns = list(rows.columns) if isinstance(rows, pd.DataFrame) else rows.schema.names
        if key is None:
            raise ValueError(f"pass key=<id column> to write a table (columns: {columns})")
        if key not in columns:
            raise ValueError(f"key column {key!r} is not in the table (columns: {columns})")
        if isinstance(rows, pd.DataFrame):
            return zip(_key_ids(rows[key].to_numpy(), int(rows[key].isna().sum()), key), rows.to_dict("records"))
        col = rows.column(key)
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            raise ValueError(f"key column {key!r} holds {col.type}, not integer ids")
        return zip(_key_ids(col.to_numpy(zero_copy_only=False), col.null_count, key), rows.to_pylist())
    if key is not None:
        raise ValueError("key= applies to tables only; pass (id, row) pairs otherwise")
    return ((_id(i), r) for i, r in rows)


def _key_ids(ids: np.ndarray, missing: int, key: str) -> list[int]:
    if missing:
        raise ValueError(f"{missing} row(s) have no {key!r}: every row needs an id")
    if not np.issubdtype(ids.dtype, np.integer):
        try:
            as_int = ids.astype(np.int64)
            exact = bool(np.array_equal(as_int, ids.astype(np.float64)))
        except (TypeError, ValueError, OverflowError):
            exact = False
        if not exact:
            raise ValueError(f"key column {key!r} holds non-integer ids (dtype {ids.dtype})")
        ids = as_int
    out: list[int] = ids.astype(np.int64, copy=False).tolist()
    return out


def _id(i: Any) -> int:
    out = operator.index(i)
    if not _INT64_MIN <= out <= _INT64_MAX:
        raise ValueError(f"id {out} does not fit in int64")
    return out


def batched(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Consecutive lists of at most ``n`` items."""
    it = iter(it)
    while chunk := list(islice(it, n)):
        yield chunk


class FeatureStore(ABC):
    """The feature-store face: low-latency reads of user and item features and embeddings, versioned
    bulk loads and real-time row updates.

    Entities are ``"user"`` and ``"item"``, keyed by int64 id; a row is a dict of JSON-like values
    (int, float, str, bool, None, lists and dicts of them). Missing values read back as ``None``:
    ``NaN`` floats are stored as ``None``, like ``pd.NA`` and Arrow nulls; numpy values become Python
    ones (see :mod:`rayrec.store.codec`). Columns are not fixed: the store keeps whatever the features
    pipeline writes.

    A store object may be shared by the threads of one process; after a fork, each process opens its
    own connections. ``close`` releases connections; later calls open them again.
    """

    #: The store's URL with any password masked, for messages.
    url: str
    #: Rows per ``write_rows`` call in :meth:`load`.
    load_batch_size: int = 10_000

    # -- bulk, versioned loads ------------------------------------------------------------------

    def load(
        self,
        entity: str,
        rows: RowsInput,
        *,
        key: str | None = None,
        version: str | None = None,
    ) -> str:
        """Replace the whole table of ``entity``: write every row under a new version, then make it
        live in one atomic swap (readers see the old table or the new one, never a mix) and delete
        the old version. ``rows`` are ``(id, row)`` pairs, or a DataFrame or Arrow table whose ids
        come from its ``key`` column. Returns the new version; if
        writing fails the half-written version is dropped and the live one stays."""
        version = self.begin_load(entity, version)
        try:
            for chunk in batched(iter_rows(rows, key), self.load_batch_size):
                self.write_rows(entity, version, chunk)
            self.commit_load(entity, version)
        except BaseException as e:
            # Drop the half-written version; a failure to do so must not hide the original error.
            try:
                if self.live_version(entity) != version:
                    self.abort_load(entity, version)
            except Exception as cleanup:
                note = f"(version {version} of {entity} was left behind: {cleanup})"
                if hasattr(e, "add_note"):  # Python ≥ 3.11; on 3.10 the note would raise in the error path
                    e.add_note(note)
                else:
                    log.warning(note)
            raise
        return version

    @abstractmethod
    def begin_load(self, entity: str, version: str | None = None) -> str:
        """Start a versioned load of ``entity`` and return its version (a new sortable name when
        None). Its rows stay invisible to readers until :meth:`commit_load`. Split from :meth:`load`
        so that several processes (Ray Data tasks) can :meth:`write_rows` blocks in parallel."""

    @abstractmethod
    def write_rows(self, entity: str, version: str, rows: Iterable[tuple[int, Mapping[str, Any]]]) -> int:
        """Write ``(id, row)`` pairs into a version started by :meth:`begin_load`; a later row with
        the same id replaces an earlier one. Returns the number of rows written. Safe to call from
        several processes at once."""

    @abstractmethod
    def commit_load(self, entity: str, version: str) -> None:
        """Make ``version`` the live table of ``entity`` in one atomic swap, then delete the version
        it replaced. Committing the version that is already live does nothing (safe to retry)."""

    @abstractmethod
    def abort_load(self, entity: str, version: str) -> None:
        """Drop a version that was started but not committed (a failed load), rows included."""

    @abstractmethod
    def live_version(self, entity: str) -> str | None:
        """The version readers see for ``entity``; None before the first load or write."""

    # -- reads and real-time writes -------------------------------------------------------------

    @abstractmethod
    def get(self, entity: str, ids: Sequence[int]) -> list[Row | None]:
        """Rows of the live version for ``ids``, in the same order; None for an id the store does
        not hold (unknown ids never raise). One round trip however many ids, and all rows of one
        call come from the same version."""

    @abstractmethod
    def put(self, entity: str, rows: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        """Insert or replace ``(id, row)`` pairs in the live version (real-time updates). With no
        live version yet, one is created. A load committed later replaces these rows."""

    @abstractmethod
    def update(self, entity: str, id: int, fn: Callable[[Row | None], Mapping[str, Any]]) -> Row:
        """Atomically replace the row of ``id`` with ``fn(current row or None)`` and return the
        stored row. Concurrent updates of one id from several processes never lose an update.
        ``fn`` may run more than once (a backend retries on conflict): keep it free of side effects."""

    def update_many(self, entity: str, ids: Iterable[int], fn: Callable[[int, Row | None], Mapping[str, Any] | None]) -> int:
        """:meth:`update` of many ids: each row atomically replaced by ``fn(id, current row or None)``,
        or left as it is where ``fn`` returns None. Returns how many rows were replaced. A backend may
        write a batch of ids in one transaction; this one updates id by id."""
        n = 0
        for i in as_ids(list(ids)):

            def one(row: Row | None, i: int = i) -> Mapping[str, Any]:
                out = fn(i, row)
                if out is None:
                    raise _Unchanged
                return out

            try:
                self.update(entity, i, one)
            except _Unchanged:
                continue
            n += 1
        return n

    # -- embeddings -------------------------------------------------------------------------------

    @abstractmethod
    def get_embeddings(self, kind: str, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, found)``: float32 ``(N, D)`` vectors in the order of ``ids``, zeros where the
        store has none, and the bool ``(N,)`` mask of the ids it has. ``D`` is 0 for a kind never
        written."""

    @abstractmethod
    def put_embeddings(self, kind: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        """Insert or replace embeddings (``vectors`` is ``(N, D)``). Every vector of a kind has the
        dimension of the first one written: a model with another dimension writes a new kind."""

    # -- lifecycle ------------------------------------------------------------------------------

    @abstractmethod
    def ping(self) -> None:
        """Check that the store answers; raises :class:`StoreUnavailable` saying why and what to do."""

    @abstractmethod
    def close(self) -> None:
        """Release this process's connections."""

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class EventLog(ABC):
    """The event-log face: each user's recent history and the durable, append-only, named logs
    (events, new items, impressions) with consumers' marks."""

    # -- history ----------------------------------------------------------------------------------

    @abstractmethod
    def append_history(self, user_id: int, events: Sequence[Mapping[str, Any]], max_len: int = 200) -> None:
        """Append events (dicts, oldest first) to the user's recent history, keeping the newest
        ``max_len``."""

    def get_history(self, user_id: int, limit: int | None = None) -> list[Row]:
        """The user's recent events, oldest first and newest last; the newest ``limit`` if given."""
        (user_id,) = as_ids([user_id])
        if limit is not None and limit <= 0:
            return []
        return self._read_history(user_id, limit)

    @abstractmethod
    def _read_history(self, user_id: int, limit: int | None) -> list[Row]:
        """:meth:`get_history` for a checked id and a positive ``limit`` (or None: all)."""

    # -- durable append-only logs ---------------------------------------------------------------
    # The real-time path records every accepted event here before applying it, so that the next
    # training run can replay what users did (see rayrec.realtime). A log is named; offsets are opaque
    # strings that only the backend orders. Not abstract: backends without logs raise.

    def append_log(self, name: str, records: Sequence[Mapping[str, Any]], *, maxlen: int | None = None) -> list[str]:
        """Durably append ``records`` (dicts) to log ``name`` in order and return their offsets. With
        ``maxlen`` the log is trimmed to about its newest ``maxlen`` records (Redis trims whole
        internal nodes, so it may keep a few more). Safe to call from several processes at once:
        records of one call stay together and in order."""
        raise NotImplementedError(f"{type(self).__name__} keeps no logs")

    def append_log_once(
        self, name: str, records: Sequence[Mapping[str, Any]], ids: Sequence[str], *, maxlen: int | None = None
    ) -> list[tuple[str, bool]]:
        """Like :meth:`append_log`, but each record carries an id and a record whose id the log already
        holds (from an earlier call, any process, or earlier in this call) is not appended again:
        returns ``(offset, appended)`` per record, the offset of the first record with that id when
        ``appended`` is False. Atomic per call, so a retried or concurrent duplicate is logged once.
        Ids are kept as long as their records (trimming a log forgets their ids)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no logs")

    def log_end(self, name: str) -> str:
        """The offset of the last record of log ``name``, or, for an empty log, one before any record
        it will hold: ``read_log(name, after=log_end(name))`` returns only records appended later."""
        raise NotImplementedError(f"{type(self).__name__} keeps no logs")

    def log_mark(self, name: str, consumer: str) -> str | None:
        """The offset up to which ``consumer`` has processed log ``name`` (None: never set)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no logs")

    def set_log_mark(self, name: str, consumer: str, offset: str) -> str:
        """Move ``consumer``'s mark on log ``name`` forward to ``offset`` (never back: several
        processes may set it at once) and return the mark now stored."""
        raise NotImplementedError(f"{type(self).__name__} keeps no logs")

    def read_log(self, name: str, after: str | None = None, limit: int | None = None) -> list[tuple[str, Row]]:
        """``(offset, record)`` pairs of log ``name`` in append order, starting after offset ``after``
        (from the start when None), at most ``limit`` of them. An unknown log reads as empty."""
        raise NotImplementedError(f"{type(self).__name__} keeps no logs")

    def log_length(self, name: str) -> int:
        """How many records log ``name`` holds now."""
        raise NotImplementedError(f"{type(self).__name__} keeps no logs")

    def trim_log(self, name: str, upto: str) -> int:
        """Delete the records of log ``name`` up to and including offset ``upto`` (once a training
        run has replayed them); returns how many were deleted."""
        raise NotImplementedError(f"{type(self).__name__} keeps no logs")

    def prune_users(self, stale: Callable[[int, Row], bool], batch: int = 1000) -> list[int]:
        """Delete the live user rows for which ``stale(id, row)`` holds, each with its history, and
        return their ids. Each user's check and delete are one atomic step against concurrent
        updates: a row an event changes meanwhile is checked again or kept, never deleted on a stale
        read. For bounded state (:func:`rayrec.gc.prune_unrated_users`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot prune users")

    def durability(self) -> str | None:
        """Why an acknowledged write could be lost on a crash or restart of the store (None: it
        cannot, as far as the store can tell). Checked when serving starts (see each backend's
        ``durability`` setting)."""
        return None


class OnlineStore(FeatureStore, EventLog):
    """Both faces in one store, what every backend implements (one module per face per backend:
    ``sqlite``/``sqlite_logs``, ``redis_store``/``redis_logs``). Code that needs one face takes it."""

    def __enter__(self) -> OnlineStore:
        return self
