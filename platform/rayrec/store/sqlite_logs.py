"""The SQLite store's event-log face: per-user history and the durable append-only logs (the event
log, the items log, the impressions log), in the same file as the feature rows (see
:mod:`rayrec.store.sqlite` for the layout and durability)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from rayrec.store.base import Row, StoreError, as_ids, check_log
from rayrec.store.codec import pack, unpack

__all__ = ["SqliteEventLog"]

_LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_name ON logs (name, seq);
CREATE TABLE IF NOT EXISTS log_ids (
    name TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (name, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS log_ids_by_seq ON log_ids (name, seq);
CREATE TABLE IF NOT EXISTS log_marks (
    name TEXT NOT NULL,
    consumer TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (name, consumer)
) WITHOUT ROWID;
"""


class SqliteEventLog:
    """History and logs of :class:`rayrec.store.sqlite.SqliteStore` (its connections and errors)."""

    if TYPE_CHECKING:
        _local: threading.local

        def _conn(self) -> sqlite3.Connection: ...

        def _write(self, conn: sqlite3.Connection) -> AbstractContextManager[None]: ...

        def _error(self, e: sqlite3.Error, what: str) -> StoreError: ...

    def append_history(self, user_id: int, events: Sequence[Mapping[str, Any]], max_len: int = 200) -> None:
        (user_id,) = as_ids([user_id])
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        blobs = [(user_id, pack(e)) for e in events]
        if not blobs:
            return
        conn = self._conn()
        try:
            with self._write(conn):
                conn.executemany("INSERT INTO history (user_id, event) VALUES (?, ?)", blobs)
                _keep_last(conn, "history", "user_id", user_id, max_len)
        except sqlite3.Error as e:
            raise self._error(e, f"append history of user {user_id}") from e

    def _read_history(self, user_id: int, limit: int | None) -> list[Row]:
        try:
            rows = (
                self._conn()
                .execute(
                    "SELECT event FROM history WHERE user_id = ? ORDER BY seq DESC LIMIT ?",
                    (user_id, -1 if limit is None else limit),
                )
                .fetchall()
            )
        except sqlite3.Error as e:
            raise self._error(e, f"read history of user {user_id}") from e
        return [unpack(r[0]) for r in reversed(rows)]

    # -- durable append-only logs ---------------------------------------------------------------

    def _log_conn(self) -> sqlite3.Connection:
        """This thread's connection, with the logs table created once per connection."""
        conn = self._conn()
        if getattr(self._local, "log_conn", None) is not conn:
            try:
                conn.executescript("BEGIN IMMEDIATE;" + _LOG_SCHEMA + "COMMIT;")
            except BaseException as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self._error(e, "create the logs table") from e
                raise
            self._local.log_conn = conn
        return conn

    @staticmethod
    def _offset(offset: str, what: str) -> int:
        try:
            return int(offset)
        except (TypeError, ValueError):
            raise ValueError(f"bad log offset {what}={offset!r}: pass an offset returned by this store") from None

    def append_log(self, name: str, records: Sequence[Mapping[str, Any]], *, maxlen: int | None = None) -> list[str]:
        check_log(name)
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        blobs = [pack(r) for r in records]
        if not blobs:
            return []
        conn = self._log_conn()
        try:
            with self._write(conn):
                offsets = [
                    str(conn.execute("INSERT INTO logs (name, record) VALUES (?, ?) RETURNING seq", (name, b)).fetchone()[0])
                    for b in blobs
                ]
                if maxlen is not None:
                    _keep_last(conn, "logs", "name", name, maxlen)
        except sqlite3.Error as e:
            raise self._error(e, f"append to log {name}") from e
        return offsets

    def append_log_once(
        self, name: str, records: Sequence[Mapping[str, Any]], ids: Sequence[str], *, maxlen: int | None = None
    ) -> list[tuple[str, bool]]:
        check_log(name)
        if len(ids) != len(records):
            raise ValueError(f"{len(records)} records but {len(ids)} ids")
        if maxlen is not None and maxlen < 1:
            raise ValueError(f"maxlen must be at least 1, got {maxlen}")
        blobs = [(str(i), pack(r)) for i, r in zip(ids, records)]
        if not blobs:
            return []
        conn = self._log_conn()
        out: list[tuple[str, bool]] = []
        try:
            with self._write(conn):  # one transaction: a concurrent duplicate waits, then sees this one
                for id_, blob in blobs:
                    found = conn.execute("SELECT seq FROM log_ids WHERE name = ? AND id = ?", (name, id_)).fetchone()
                    if found is not None:
                        out.append((str(found[0]), False))
                        continue
                    seq = conn.execute("INSERT INTO logs (name, record) VALUES (?, ?) RETURNING seq", (name, blob)).fetchone()[0]
                    conn.execute("INSERT INTO log_ids (name, id, seq) VALUES (?, ?, ?)", (name, id_, seq))
                    out.append((str(seq), True))
                if maxlen is not None:
                    _keep_last(conn, "logs", "name", name, maxlen)
                    conn.execute("DELETE FROM log_ids WHERE name = ? AND seq < (SELECT min(seq) FROM logs WHERE name = ?)",
                                 (name, name))  # fmt: skip
        except sqlite3.Error as e:
            raise self._error(e, f"append to log {name}") from e
        return out

    def log_end(self, name: str) -> str:
        check_log(name)
        try:
            row = self._log_conn().execute("SELECT max(seq) FROM logs WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error as e:
            raise self._error(e, f"read the end of log {name}") from e
        return str(row[0] or 0)  # seq is AUTOINCREMENT: never reused, so 0 precedes every record

    def log_mark(self, name: str, consumer: str) -> str | None:
        check_log(name)
        try:
            row = self._log_conn().execute(
                "SELECT seq FROM log_marks WHERE name = ? AND consumer = ?", (name, consumer)
            ).fetchone()
        except sqlite3.Error as e:
            raise self._error(e, f"read the mark of {consumer} on log {name}") from e
        return None if row is None else str(row[0])

    def set_log_mark(self, name: str, consumer: str, offset: str) -> str:
        check_log(name)
        seq = self._offset(offset, "offset")
        conn = self._log_conn()
        try:
            with self._write(conn):
                conn.execute(
                    "INSERT INTO log_marks (name, consumer, seq) VALUES (?, ?, ?) "
                    "ON CONFLICT (name, consumer) DO UPDATE SET seq = max(seq, excluded.seq)",
                    (name, consumer, seq),
                )
                stored = conn.execute("SELECT seq FROM log_marks WHERE name = ? AND consumer = ?", (name, consumer)).fetchone()
        except sqlite3.Error as e:
            raise self._error(e, f"set the mark of {consumer} on log {name}") from e
        return str(stored[0])

    def read_log(self, name: str, after: str | None = None, limit: int | None = None) -> list[tuple[str, Row]]:
        check_log(name)
        start = -1 if after is None else self._offset(after, "after")
        if limit is not None and limit <= 0:
            return []
        try:
            rows = (
                self._log_conn()
                .execute(
                    "SELECT seq, record FROM logs WHERE name = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (name, start, -1 if limit is None else limit),
                )
                .fetchall()
            )
        except sqlite3.Error as e:
            raise self._error(e, f"read log {name}") from e
        return [(str(seq), unpack(blob)) for seq, blob in rows]

    def log_length(self, name: str) -> int:
        check_log(name)
        try:
            row = self._log_conn().execute("SELECT count(*) FROM logs WHERE name = ?", (name,)).fetchone()
        except sqlite3.Error as e:
            raise self._error(e, f"count log {name}") from e
        return int(row[0])

    def trim_log(self, name: str, upto: str) -> int:
        check_log(name)
        end = self._offset(upto, "upto")
        conn = self._log_conn()
        try:
            with self._write(conn):
                cur = conn.execute("DELETE FROM logs WHERE name = ? AND seq <= ?", (name, end))
                conn.execute("DELETE FROM log_ids WHERE name = ? AND seq <= ?", (name, end))
        except sqlite3.Error as e:
            raise self._error(e, f"trim log {name}") from e
        return int(cur.rowcount)


def _keep_last(conn: sqlite3.Connection, table: str, column: str, key: Any, n: int) -> None:
    """Delete the rows of ``table`` whose ``column`` is ``key``, all but the ``n`` latest by ``seq``
    (``table`` and ``column`` are this module's names, never input)."""
    conn.execute(
        f"DELETE FROM {table} WHERE {column} = ? AND seq <= "
        f"(SELECT seq FROM {table} WHERE {column} = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
        (key, key, n),
    )
