"""What every part of the SQLite ledger shares: the connection, row mapping, ``IN`` lists."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

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


def _disk_trouble(e: sqlite3.OperationalError) -> bool:
    """The disk under the ledger (full, failing), not floraq's SQL."""
    text = str(e).lower()
    return "disk is full" in text or "disk i/o error" in text


class SqliteBase:
    """The connection and the helpers the reading and writing halves both use."""

    def __init__(self, conn: sqlite3.Connection, *, clock: Callable[[], float] = time.time) -> None:
        self.conn = conn
        self.conn.row_factory = sqlite3.Row
        self.clock = clock
        self.commits = 0
        self._savepoints = 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One ``BEGIN IMMEDIATE`` transaction; nested calls join the outer one."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.conn.execute("COMMIT")
        except BaseException as e:
            if self.conn.in_transaction:  # a failed COMMIT may have rolled back already
                self.conn.execute("ROLLBACK")
            if isinstance(e, sqlite3.OperationalError) and _disk_trouble(e):
                raise self._disk_error(e) from e
            raise
        self.commits += 1

    def _disk_error(self, e: sqlite3.OperationalError) -> DiskError:
        """A full or failing disk under the ledger, said plainly: earlier commits are safe."""
        try:
            path = str(self.conn.execute("PRAGMA database_list").fetchone()[2] or "the ledger")
        except sqlite3.Error:
            path = "the ledger"
        return DiskError(f"the ledger {path}", f"{e} (every earlier commit is kept)")

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
