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

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction (``_BEGIN``); nested calls join the outer one."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute(self._BEGIN)
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        self.commits += 1

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
                self.conn.execute(f"RELEASE SAVEPOINT {name}")
                raise
            finally:
                self._savepoints -= 1
            self.conn.execute(f"RELEASE SAVEPOINT {name}")

    def _all(self, cls: type[R], sql: str, params: Sequence[Any] = ()) -> list[R]:
        return [from_row(cls, r) for r in self.conn.execute(sql, params).fetchall()]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, for tests and operators; floraq itself uses the typed methods."""
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]
