"""SQLite online store: the embedded default, one file shared by every process on one node.

WAL mode lets all Serve replicas read while one process writes; writers queue on the file's lock for
up to ``timeout`` seconds. Each process and thread opens its own connection (a connection never
crosses a fork). Tables:

- ``versions(vid, entity, name, state)``: every version of an entity's table (loading, live, retired);
- ``live(entity, vid)``: the alias readers follow, swapped in one transaction by ``commit_load``;
- ``feature_rows(vid, id, value)``: rows of every version, keyed by ``(vid, id)``;
- ``embeddings``/``embedding_dims`` and ``history`` (per-user events, newest kept);
- ``logs(seq, name, record)``: durable append-only logs (the event log), offsets are ``seq``
  (:mod:`rayrec.store.sqlite_logs`, with the history: the event-log face);
  ``log_ids(name, id, seq)`` the record ids of :meth:`append_log_once`, ``log_marks(name, consumer,
  seq)`` consumers' positions; created on first use, so store files written before logs existed gain
  the tables without a reload.

Durability: ``synchronous=FULL`` by default (``?synchronous=normal`` in the URL trades it for speed):
every commit, an acknowledged event included, is on disk before the call returns, power cut or not.
With NORMAL in WAL mode a process crash loses nothing, but a power cut or kernel crash may lose the
last commits.

A batched ``get`` is one ``SELECT`` that resolves the alias inside the statement, so it reads a single
snapshot and never mixes versions.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Literal
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayrec.config import repo_root
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
)
from rayrec.store.codec import assemble_vectors, check_vectors, dim_mismatch, pack, pack_vector, unpack
from rayrec.store.sqlite_logs import SqliteEventLog
from rayrec.uri import new_version

__all__ = ["SqliteStoreConfig", "SqliteStore", "copy_file"]

_SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    vid INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,            -- loading | live | retired
    created REAL NOT NULL,
    UNIQUE (entity, name)
);
CREATE TABLE IF NOT EXISTS live (entity TEXT PRIMARY KEY, vid INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS feature_rows (
    vid INTEGER NOT NULL,
    id INTEGER NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (vid, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS embedding_dims (kind TEXT PRIMARY KEY, dim INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS embeddings (
    kind TEXT NOT NULL,
    id INTEGER NOT NULL,
    vec BLOB NOT NULL,
    PRIMARY KEY (kind, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    event BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_user ON history (user_id, seq);
"""

# Created on first use of a log (not in _SCHEMA), so existing store files keep their schema version.

# Bound parameters per statement: SQLite builds before 3.32 allow 999.
_MAX_PARAMS = 900
_UPDATE_BATCH = 500  # ids per write transaction of update_many (at most _MAX_PARAMS)
# IN-lists are padded to one of these lengths so that a handful of prepared statements serve every
# batch size (the sqlite3 module caches statements by their SQL text).
_IN_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, _MAX_PARAMS)
_DELETE_CHUNK = 20_000

# Connections inherited through fork: kept referenced (never closed, never used) because closing a
# copy in the child could disturb the parent's locks and WAL.
_INHERITED: list[sqlite3.Connection] = []


class SqliteStoreConfig(BaseModel):
    """The embedded store: one SQLite file. A relative ``path`` resolves against the repository, not
    the current directory."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["sqlite"] = "sqlite"
    path: str
    timeout: float = Field(default=5.0, gt=0, description="seconds a writer waits for the write lock")
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="full: every commit is on disk when it returns; normal (WAL): a power cut may lose the last commits",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v or v.strip() in (":memory:", ""):
            raise ValueError("the SQLite store needs a file path (an in-memory database is not shared)")
        p = Path(v).expanduser()
        if not p.is_absolute():
            p = repo_root() / p
        return os.path.normpath(p)

    @classmethod
    def from_url(cls, url: str) -> SqliteStoreConfig:
        """``sqlite:///abs/path/store.db[?timeout=5]`` or a plain file path."""
        if "://" not in url:
            return cls(path=url)
        parts = urlsplit(url)
        if parts.scheme != "sqlite":
            raise ValueError(f"{url}: not a sqlite URL")
        if parts.netloc:
            raise ValueError(
                f"{url}: a sqlite URL has no host; write sqlite:///absolute/path/store.db (three slashes) "
                "or a plain file path"
            )
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - {"timeout", "synchronous"})
        if unknown:
            raise ValueError(
                f"{url}: unknown option(s) {', '.join(unknown)} (a sqlite URL takes timeout=<seconds> and "
                "synchronous=full|normal)"
            )
        if "synchronous" in options:
            options["synchronous"] = options["synchronous"].lower()
        return cls(path=unquote(parts.path), **options)  # type: ignore[arg-type]

    def to_url(self) -> str:
        opts = ([] if self.timeout == 5.0 else [f"timeout={self.timeout:g}"]) + (
            [] if self.synchronous == "full" else [f"synchronous={self.synchronous}"]
        )
        return f"sqlite://{quote(self.path)}" + (f"?{'&'.join(opts)}" if opts else "")


@cache
def _in_list(n: int) -> str:
    return ",".join("?" * n)


def _padded(ids: list[int]) -> list[int]:
    """``ids`` padded by repeating the last one up to the next size in ``_IN_SIZES``."""
    n = len(ids)
    size = next(s for s in _IN_SIZES if s >= n)
    return ids + [ids[-1]] * (size - n) if size > n else ids


class SqliteStore(SqliteEventLog, OnlineStore):
    """Online store in one SQLite file (see the module docstring for the layout)."""

    def __init__(self, config: SqliteStoreConfig) -> None:
        self.config = config
        self.url = config.to_url()
        self._path = Path(config.path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[tuple[int, sqlite3.Connection]] = []

    # -- connections and errors -----------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        pid = os.getpid()
        if conn is not None and local.pid == pid:
            return conn
        if conn is not None:
            _INHERITED.append(conn)
        conn = self._connect()
        local.conn, local.pid = conn, pid
        with self._lock:
            self._conns.append((pid, conn))
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(
                f"online store {self.url}: cannot create the folder {self._path.parent} ({e}); "
                "pass a path in a writable folder"
            ) from e
        conn = None
        try:
            conn = sqlite3.connect(
                self._path,
                timeout=self.config.timeout,
                isolation_level=None,  # explicit BEGIN/COMMIT below
                check_same_thread=False,  # each thread still gets its own; close() may run elsewhere
                cached_statements=256,
            )
            mode = self._retry_busy(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"online store {self.url}: the file system refused WAL mode (got {mode!r}); "
                    "put the store on a local disk"
                )
            # FULL: a commit is on disk before it returns (an acknowledged event survives a power cut).
            # NORMAL is durable against process crashes only.
            conn.execute(f"PRAGMA synchronous = {'FULL' if self.config.synchronous == 'full' else 'NORMAL'}")
            self._retry_busy(lambda: self._ensure_schema(conn))
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, sqlite3.Error):
                raise self._error(e, "open the database") from e
            raise
        return conn

    def _retry_busy(self, fn: Any) -> Any:
        """Run ``fn``, retrying while SQLite answers "locked"/"busy" without waiting: switching a new
        file to WAL and creating the schema take locks that bypass the busy timeout, so several
        processes opening one new file at once would otherwise fail at once."""
        deadline = time.monotonic() + self.config.timeout
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if not ("locked" in str(e) or "busy" in str(e)) or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if row is None:
            # executescript commits any open transaction first, so the script carries its own.
            try:
                conn.executescript(
                    "BEGIN IMMEDIATE;"
                    + _SCHEMA
                    + f"INSERT OR IGNORE INTO meta VALUES ('schema', '{_SCHEMA_VERSION}');COMMIT;"
                )
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        found = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if found is None or found[0] != _SCHEMA_VERSION:
            raise StoreError(
                f"online store {self.url}: schema version {found[0] if found else None!r}, this code reads "
                f"{_SCHEMA_VERSION!r}; reload the features into a new file"
            )

    def _error(self, e: sqlite3.Error, what: str) -> StoreError:
        msg = str(e)
        if isinstance(e, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg):
            return StoreUnavailable(
                f"online store {self.url}: could not {what}: waited {self.config.timeout:g}s for the write "
                f"lock ({msg}). Another process holds a long write transaction; retry, or wait longer with "
                "?timeout=<seconds> in the store URL"
            )
        if isinstance(e, sqlite3.OperationalError) and "unable to open" in msg:
            return StoreUnavailable(
                f"online store {self.url}: could not {what} ({msg}); check that {self._path.parent} exists "
                "and is writable, or pass another path"
            )
        return StoreError(f"online store {self.url}: could not {what}: {msg}")

    @contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[None]:
        """A write transaction that takes the lock up front, so read-modify-write is atomic."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- versions -------------------------------------------------------------------------------

    def _version_row(self, conn: sqlite3.Connection, entity: str, version: str) -> tuple[int, str] | None:
        row = conn.execute(
            "SELECT vid, state FROM versions WHERE entity = ? AND name = ?", (entity, version)
        ).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def _loading_vid(self, conn: sqlite3.Connection, entity: str, version: str) -> int:
        found = self._version_row(conn, entity, version)
        if found is None or found[1] != "loading":
            state = "unknown" if found is None else found[1]
            raise ValueError(
                f"version {version!r} of {entity} is {state}, not being loaded: call begin_load first"
            )
        return found[0]

    def _live_vid(self, conn: sqlite3.Connection, entity: str, create: bool) -> int | None:
        """The live version id; inside a write transaction, ``create`` makes an empty live version."""
        row = conn.execute("SELECT vid FROM live WHERE entity = ?", (entity,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            return None
        cur = conn.execute(
            "INSERT INTO versions (entity, name, state, created) VALUES (?, ?, 'live', ?)",
            (entity, new_version(), time.time()),
        )
        vid = int(cur.lastrowid)  # type: ignore[arg-type]
        conn.execute("INSERT INTO live (entity, vid) VALUES (?, ?)", (entity, vid))
        return vid

    def _drop_rows(self, conn: sqlite3.Connection, vid: int) -> None:
        # In chunks, each its own transaction, so real-time writers wait at most one chunk.
        while True:
            cur = conn.execute(
                "DELETE FROM feature_rows WHERE vid = ? AND id IN "
                "(SELECT id FROM feature_rows WHERE vid = ? LIMIT ?)",
                (vid, vid, _DELETE_CHUNK),
            )
            if cur.rowcount < _DELETE_CHUNK:
                break
        conn.execute("DELETE FROM versions WHERE vid = ?", (vid,))

    def begin_load(self, entity: str, version: str | None = None) -> str:
        check_entity(entity)
        version = check_version(version) if version is not None else new_version()
        conn = self._conn()
        try:
            with self._write(conn):
                found = self._version_row(conn, entity, version)
                if found is not None and found[1] != "loading":
                    raise ValueError(f"version {version!r} of {entity} already exists ({found[1]}): pick a new one")
                if found is None:
                    conn.execute(
                        "INSERT INTO versions (entity, name, state, created) VALUES (?, ?, 'loading', ?)",
                        (entity, version, time.time()),
                    )
        except sqlite3.Error as e:
            raise self._error(e, f"begin a load of {entity}") from e
        return version

    def write_rows(self, entity: str, version: str, rows: Iterable[tuple[int, Mapping[str, Any]]]) -> int:
        check_entity(entity)
        check_version(version)
        # Encode before taking the write lock: other writers wait only for the inserts.
        encoded = [(i, pack(r)) for i, r in iter_rows(rows)]
        conn = self._conn()
        try:
            with self._write(conn):
                vid = self._loading_vid(conn, entity, version)
                conn.executemany(
                    "INSERT OR REPLACE INTO feature_rows (vid, id, value) VALUES (?, ?, ?)",
                    [(vid, i, b) for i, b in encoded],
                )
        except sqlite3.Error as e:
            raise self._error(e, f"write {entity} rows") from e
        return len(encoded)

    def commit_load(self, entity: str, version: str) -> None:
        check_entity(entity)
        check_version(version)
        conn = self._conn()
        try:
            with self._write(conn):
                found = self._version_row(conn, entity, version)
                if found is not None and found[1] == "live":
                    return
                vid = self._loading_vid(conn, entity, version)
                old = self._live_vid(conn, entity, create=False)
                conn.execute("UPDATE versions SET state = 'live' WHERE vid = ?", (vid,))
                conn.execute("INSERT OR REPLACE INTO live (entity, vid) VALUES (?, ?)", (entity, vid))
                if old is not None:
                    conn.execute("UPDATE versions SET state = 'retired' WHERE vid = ?", (old,))
            if old is not None:
                self._drop_rows(conn, old)
        except sqlite3.Error as e:
            raise self._error(e, f"commit version {version} of {entity}") from e

    def abort_load(self, entity: str, version: str) -> None:
        check_entity(entity)
        check_version(version)
        conn = self._conn()
        try:
            with self._write(conn):
                found = self._version_row(conn, entity, version)
                if found is None:
                    return
                if found[1] == "live":
                    raise ValueError(f"version {version!r} of {entity} is live: it cannot be aborted")
                conn.execute("UPDATE versions SET state = 'retired' WHERE vid = ?", (found[0],))
            self._drop_rows(conn, found[0])
        except sqlite3.Error as e:
            raise self._error(e, f"abort version {version} of {entity}") from e

    def live_version(self, entity: str) -> str | None:
        check_entity(entity)
        try:
            row = (
                self._conn()
                .execute(
                    "SELECT v.name FROM live AS l JOIN versions AS v ON v.vid = l.vid WHERE l.entity = ?",
                    (entity,),
                )
                .fetchone()
            )
        except sqlite3.Error as e:
            raise self._error(e, f"read the live version of {entity}") from e
        return None if row is None else str(row[0])

    # -- reads and real-time writes -------------------------------------------------------------

    def get(self, entity: str, ids: Sequence[int]) -> list[Row | None]:
        check_entity(entity)
        ids = as_ids(ids)
        if not ids:
            return []
        conn = self._conn()
        try:
            if len(ids) <= _MAX_PARAMS:
                found = dict(self._select(conn, entity, ids))
            else:
                # Several statements: one read transaction keeps them on one snapshot (one version).
                found = {}
                conn.execute("BEGIN")
                try:
                    for start in range(0, len(ids), _MAX_PARAMS):
                        found.update(self._select(conn, entity, ids[start : start + _MAX_PARAMS]))
                finally:
                    conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise self._error(e, f"read {entity} rows") from e
        return [unpack(found[i]) if i in found else None for i in ids]

    @staticmethod
    def _select(conn: sqlite3.Connection, entity: str, ids: list[int]) -> list[tuple[int, bytes]]:
        params = _padded(ids)
        sql = (
            "SELECT id, value FROM feature_rows "
            "WHERE vid = (SELECT vid FROM live WHERE entity = ?) AND id IN (" + _in_list(len(params)) + ")"
        )
        return conn.execute(sql, [entity, *params]).fetchall()

    def put(self, entity: str, rows: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        check_entity(entity)
        encoded = [(i, pack(r)) for i, r in iter_rows(rows)]
        if not encoded:
            return
        conn = self._conn()
        try:
            with self._write(conn):
                vid = self._live_vid(conn, entity, create=True)
                conn.executemany(
                    "INSERT OR REPLACE INTO feature_rows (vid, id, value) VALUES (?, ?, ?)",
                    [(vid, i, b) for i, b in encoded],
                )
        except sqlite3.Error as e:
            raise self._error(e, f"write {entity} rows") from e

    def update(self, entity: str, id: int, fn: Callable[[Row | None], Mapping[str, Any]]) -> Row:
        check_entity(entity)
        (id,) = as_ids([id])
        conn = self._conn()
        try:
            with self._write(conn):
                vid = self._live_vid(conn, entity, create=True)
                row = conn.execute("SELECT value FROM feature_rows WHERE vid = ? AND id = ?", (vid, id)).fetchone()
                blob = pack(fn(None if row is None else unpack(row[0])))
                conn.execute("INSERT OR REPLACE INTO feature_rows (vid, id, value) VALUES (?, ?, ?)", (vid, id, blob))
        except sqlite3.Error as e:
            raise self._error(e, f"update {entity} {id}") from e
        out: Row = unpack(blob)
        return out

    def update_many(self, entity: str, ids: Iterable[int], fn: Callable[[int, Row | None], Mapping[str, Any] | None]) -> int:
        # a batch of ids per write transaction (one commit, not one per id: at 162k users 0.24 ms an
        # id went to the transaction alone); the lock is held for one batch at a time
        check_entity(entity)
        todo = as_ids(list(ids))
        n = 0
        conn = self._conn()
        try:
            for start in range(0, len(todo), _UPDATE_BATCH):
                part = todo[start : start + _UPDATE_BATCH]
                with self._write(conn):
                    vid = self._live_vid(conn, entity, create=True)
                    found = {int(i): v for i, v in conn.execute(
                        f"SELECT id, value FROM feature_rows WHERE vid = ? AND id IN ({_in_list(len(part))})", [vid, *part])}  # noqa: S608  # fmt: skip
                    rows: dict[int, Row | None] = {}
                    blobs: dict[int, bytes] = {}
                    for i in part:  # an id given twice sees its first update, as one update after another would
                        row = rows[i] if i in rows else (unpack(found[i]) if i in found else None)
                        new = fn(i, row)
                        if new is None:
                            continue
                        blobs[i] = pack(new)
                        rows[i] = unpack(blobs[i])
                        n += 1
                    conn.executemany("INSERT OR REPLACE INTO feature_rows (vid, id, value) VALUES (?, ?, ?)",
                                     [(vid, i, b) for i, b in blobs.items()])  # fmt: skip
        except sqlite3.Error as e:
            raise self._error(e, f"update {entity} rows") from e
        return n

    def prune_users(self, stale: Callable[[int, Row], bool], batch: int = 1000) -> list[int]:
        # batches of ids in order, each checked and deleted in one write transaction (no event can
        # change a row between its check and its delete); between batches the lock is left free for at
        # least as long as it was held (0.1 s at least: SQLite's busy handler sleeps up to 0.1 s), so
        # writers waiting on it get in instead of starving until the prune ends
        pruned: list[int] = []
        after, held = -(2**63), 0.0
        conn = self._conn()
        try:
            while True:
                if held:
                    time.sleep(max(0.1, held))
                t = time.monotonic()
                with self._write(conn):
                    vid = self._live_vid(conn, "user", create=False)
                    if vid is None:
                        return pruned
                    rows = conn.execute("SELECT id, value FROM feature_rows WHERE vid = ? AND id > ? ORDER BY id LIMIT ?",
                                        (vid, after, batch)).fetchall()  # fmt: skip
                    gone = [int(i) for i, v in rows if stale(int(i), unpack(v))]
                    for start in range(0, len(gone), _MAX_PARAMS):
                        part = gone[start : start + _MAX_PARAMS]
                        marks = _in_list(len(part))
                        conn.execute(f"DELETE FROM feature_rows WHERE vid = ? AND id IN ({marks})", [vid, *part])  # noqa: S608
                        conn.execute(f"DELETE FROM history WHERE user_id IN ({marks})", part)  # noqa: S608
                held = time.monotonic() - t
                pruned += gone
                if len(rows) < batch:
                    return pruned
                after = int(rows[-1][0])
        except sqlite3.Error as e:
            raise self._error(e, "prune user rows") from e

    # -- embeddings and history -----------------------------------------------------------------

    def get_embeddings(self, kind: str, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        check_kind(kind)
        ids = as_ids(ids)
        conn = self._conn()
        found: dict[int, bytes] = {}
        try:
            for start in range(0, len(ids), _MAX_PARAMS):
                params = _padded(ids[start : start + _MAX_PARAMS])
                found.update(
                    conn.execute(
                        "SELECT id, vec FROM embeddings WHERE kind = ? AND id IN (" + _in_list(len(params)) + ")",
                        [kind, *params],
                    ).fetchall()
                )
            if found:
                dim = len(next(iter(found.values()))) // 4
            else:
                row = conn.execute("SELECT dim FROM embedding_dims WHERE kind = ?", (kind,)).fetchone()
                dim = 0 if row is None else int(row[0])
        except sqlite3.Error as e:
            raise self._error(e, f"read {kind} embeddings") from e
        return assemble_vectors(ids, found, dim)

    def put_embeddings(self, kind: str, ids: Sequence[int], vectors: np.ndarray) -> None:
        check_kind(kind)
        ids = as_ids(ids)
        vectors = check_vectors(ids, vectors)
        if not ids:
            return
        dim = int(vectors.shape[1])
        params = [(kind, i, pack_vector(v)) for i, v in zip(ids, vectors)]
        conn = self._conn()
        try:
            with self._write(conn):
                row = conn.execute("SELECT dim FROM embedding_dims WHERE kind = ?", (kind,)).fetchone()
                if row is None:
                    conn.execute("INSERT INTO embedding_dims (kind, dim) VALUES (?, ?)", (kind, dim))
                elif int(row[0]) != dim:
                    raise ValueError(dim_mismatch(kind, int(row[0]), dim))
                conn.executemany("INSERT OR REPLACE INTO embeddings (kind, id, vec) VALUES (?, ?, ?)", params)
        except sqlite3.Error as e:
            raise self._error(e, f"write {kind} embeddings") from e

    # -- lifecycle ------------------------------------------------------------------------------

    def durability(self) -> str | None:
        if self.config.synchronous == "full":
            return None
        return (f"online store {self.url}: synchronous=normal: a power cut or kernel crash may lose the last "
                "acknowledged events (drop ?synchronous=normal for FULL)")  # fmt: skip

    def ping(self) -> None:
        try:
            self._conn().execute("SELECT count(*) FROM live").fetchone()
        except sqlite3.Error as e:
            raise self._error(e, "read the database") from e

    def close(self) -> None:
        pid = os.getpid()
        with self._lock:
            mine = [c for p, c in self._conns if p == pid]
            self._conns = [(p, c) for p, c in self._conns if p != pid]
        for conn in mine:
            conn.close()
        self._local = threading.local()


def copy_file(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """A consistent copy of the store file ``src`` at ``dst`` (replaced if there), through SQLite's
    backup API: safe while other processes write, WAL content included (a file copy is neither)."""
    target = Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    with sqlite3.connect(src) as a, sqlite3.connect(target) as b:
        a.backup(b)
