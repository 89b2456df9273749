"""What every part of the ledger shares: the connection, row mapping, ``IN`` lists.

The reads and writes are written once, in SQL both SQLite and PostgreSQL run (``?``
placeholders; the PostgreSQL connection translates them). Where the two differ, a class
attribute of the backend says how (``_LOCK_BATCH``, ``_INPUTS_JSON``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from floraq.errors import DiskError
from floraq.ledger.records import from_row

R = TypeVar("R")
T = TypeVar("T")

# Bound parameters per ``IN (...)`` list, well inside SQLite's limit (999 on old builds).
CHUNK = 500


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[list[T]]:
    """Slices small enough for SQLite's limit on bound parameters."""
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def marks(values: Sequence[Any]) -> str:
    """``?, ?, ?``: the placeholders of an ``IN (...)`` list of ``values``."""
    return ", ".join("?" * len(values))


def values(states: Iterable[Any]) -> list[str]:
    """Enum members as the strings the ledger stores, in a stable order."""
    return sorted(str(s.value if hasattr(s, "value") else s) for s in states)


class Cursor(Protocol):
    """What the ledger reads from an executed statement (``sqlite3.Cursor`` has it)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection whose rows answer both ``row[0]`` and ``row["name"]``.

    ``sqlite3.Connection`` with ``sqlite3.Row`` is one; ``floraq.ledger.pg_connection``
    wraps psycopg into another.
    """

    @property
    def in_transaction(self) -> bool: ...
    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any: ...
    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...
    def close(self) -> None: ...


_DISK_TROUBLE = ("disk is full", "disk i/o error", "no space left on device")


def _disk_trouble(e: BaseException) -> bool:
    """The disk under the ledger (full, failing), not floraq's SQL: SQLite's and
    PostgreSQL's own words for it."""
    text = str(e).lower()
    return any(words in text for words in _DISK_TROUBLE)


class SqliteBase:
    """The connection and the helpers the reading and writing halves both use."""

    # SQL the two databases spell differently; PostgreSQL's backend overrides them.
    _BEGIN = "BEGIN IMMEDIATE"  # SQLite: take the write lock up front, never upgrade
    _LOCK_BATCH = ""  # claim: SQLite's BEGIN IMMEDIATE already holds the only write lock
    _INPUTS_JSON = "j.inputs"  # the jobs' inputs as JSON for json_each

    def __init__(self, conn: Connection, *, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.clock = clock
        self.commits = 0
        self._savepoints = 0
        self.name = "in memory"  # how messages name this ledger: its path, or a masked URL

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction (``_BEGIN``); nested calls join the outer one."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute(self._BEGIN)
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException as e:
            if self.conn.in_transaction:  # a failed COMMIT may have rolled back already
                self.conn.execute("ROLLBACK")
            self._forget()
            if isinstance(e, Exception) and _disk_trouble(e):
                raise self._disk_error(e) from e
            raise
        self.commits += 1

    def _disk_error(self, e: Exception) -> DiskError:
        """A full or failing disk under the ledger, said plainly: earlier commits are safe."""
        return DiskError(f"the ledger {self.name}", f"{e} (every earlier commit is kept)")

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the open transaction that an exception undoes alone (the rest stays)."""
        with self.transaction():
            self._savepoints += 1
            name = f"sp{self._savepoints}"
            self.conn.execute(f"SAVEPOINT {name}")
            try:
                yield
            except BaseException:
                self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                self._forget()
                self.conn.execute(f"RELEASE SAVEPOINT {name}")
                raise
            finally:
                self._savepoints -= 1
            self.conn.execute(f"RELEASE SAVEPOINT {name}")

    def _fence(self, job_id_column: str = "id") -> tuple[str, list[Any]]:
        """SQL (and its parameters) that lets a write touch only rows this worker leases.

        Empty here: SQLite has one process per ledger. PostgreSQL's workers override it
        (``floraq.ledger.leases``); the write then checks the lease in its own statement.
        """
        return "", []

    def _forget(self) -> None:
        """Drop what was cached from reads of a transaction that rolled back."""

    def _record(self, cls: type[R], row: Any) -> R:
        """A record from a row (the lean rows' reads rebuild columns first)."""
        return from_row(cls, row)

    def _all(self, cls: type[R], sql: str, params: Sequence[Any] = ()) -> list[R]:
        return [self._record(cls, r) for r in self.conn.execute(sql, params).fetchall()]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, for tests and operators; floraq itself uses the typed methods."""
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]
