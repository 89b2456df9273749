"""The SQLite ledger: the source of truth for every batch, job, run and output.

WAL with ``synchronous=FULL``: a commit is on disk when it returns, because a lost
run id can mean paying for the run twice after a power cut. Writes happen in
``BEGIN IMMEDIATE`` transactions (take the write lock up front, never upgrade
half-way). Every job move is checked against the lifecycle table and appended to
``events``. No API key is ever written here.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from floraq.errors import DiskError, LedgerError
from floraq.ledger.attempts import LedgerAttempts
from floraq.ledger.limits import LedgerLimits
from floraq.ledger.migrations import migrations, refuse_if_foreign
from floraq.ledger.sqlite_utils_lean import Database
from floraq.lock import ensure_private_dir, writable

BUSY_TIMEOUT_MS = 10_000


class SqliteLedger(LedgerAttempts, LedgerLimits):
    """Owns the SQLite file: migrates on open, every transition atomic."""

    def __init__(self, conn: sqlite3.Connection, *, clock: Callable[[], float] = time.time) -> None:
        conn.row_factory = sqlite3.Row
        super().__init__(conn, clock=clock)
        self.sqlite = conn  # the typed connection, for what only SQLite has
        self.db = Database(conn)  # for migrations (sqlite-utils) and tests

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], float] = time.time) -> SqliteLedger:
        """Open (creating user-only if new) and migrate the ledger at ``path``."""
        ensure_private_dir(path.parent)
        if not path.exists():
            try:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as e:  # a full or read-only disk, or a path under a file
                raise DiskError.from_os_error(e, path) from None
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _refuse_if_not_ours(conn, path)  # before anything (even WAL mode) writes to it
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"cannot open the ledger {path}: {e}") from None
        if mode != "wal":
            raise LedgerError(f"the ledger {path} cannot use WAL mode (got {mode})")
        ledger = cls(conn, clock=clock)
        ledger.name = str(path)
        ledger.migrate()
        for suffix in ("-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.chmod(0o600)
        return ledger

    @classmethod
    def open_readonly(cls, path: Path) -> SqliteLedger | None:
        """Open an existing, up-to-date ledger for reading only; None if there is none yet."""
        if not path.exists():
            return None
        conn = _connect_readonly(path)
        try:
            _refuse_if_not_ours(conn, path)
            ledger = cls(conn)
            ledger.name = str(path)
            if migrations.pending(ledger.db):
                conn.close()
                return None
        except sqlite3.DatabaseError as e:
            conn.close()
            raise LedgerError(f"cannot read the ledger {path}: {e}") from None
        return ledger

    @classmethod
    def open_for_reading(cls, path: Path) -> SqliteLedger:
        """An existing ledger for a command that only reads it; never written if read-only.

        Up to date: opened read-only, whether the file may be written or not. An older
        ledger is migrated first when it is writable (as any command would), and refused
        with one line when it is not: a read must not change the file.
        """
        ledger = cls.open_readonly(path)
        if ledger is not None:
            return ledger
        if not writable(path):
            raise LedgerError(
                f"the ledger {path} was written by an older floraq and needs a schema"
                " update, but it is read-only: open it writable once (any floraq command"
                " with write access updates it), then it can be read from here"
            )
        return cls.open(path)

    @classmethod
    def in_memory(cls, *, clock: Callable[[], float] = time.time) -> SqliteLedger:
        ledger = cls(sqlite3.connect(":memory:", isolation_level=None), clock=clock)
        ledger.migrate()
        return ledger

    def migrate(self) -> None:
        try:
            migrations.apply(self.db)
        except sqlite3.DatabaseError as e:
            raise LedgerError(f"cannot migrate the ledger: {e}") from None

    def close(self) -> None:
        self.sqlite.close()


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection that writes nothing, not even beside the file.

    SQLite needs a ``-shm`` file to read a WAL ledger; in a folder it cannot write (a
    read-only mount) with no ``-wal`` left behind, the file is opened as immutable,
    which reads it as it is on disk. A ``-wal`` with changes is read through (it
    exists, so SQLite can use it); immutable would ignore it.
    """
    uri = f"file:{quote(str(path))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.DatabaseError as e:  # not a database, or (OperationalError) no -shm
        conn.close()
        wal = path.with_name(path.name + "-wal")
        unreadable = not isinstance(e, sqlite3.OperationalError)
        if unreadable or writable(path) or (wal.exists() and wal.stat().st_size > 0):
            raise LedgerError(f"cannot read the ledger {path}: {e}") from None
    try:
        conn = sqlite3.connect(uri + "&immutable=1", uri=True, isolation_level=None)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.DatabaseError as e:
        raise LedgerError(f"cannot read the ledger {path}: {e}") from None
    return conn


def _refuse_if_not_ours(conn: sqlite3.Connection, path: Path) -> None:
    """A LedgerError, leaving the file untouched, unless it is a floraq ledger we can read.

    Not ours: a SQLite database with tables but no floraq migrations (another program's
    file, pointed at by mistake), or one a newer floraq migrated further than we know.
    An empty database is a new ledger.
    """
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    applied = (
        [r[0] for r in conn.execute(_APPLIED, (migrations.name,))]
        if migrations.migrations_table in tables
        else []
    )
    refuse_if_foreign(
        tables,
        applied,
        bookkeeping=migrations.migrations_table,
        shown=str(path),
        kind="SQLite database",
    )


_APPLIED = f"SELECT name FROM {migrations.migrations_table} WHERE migration_set = ?"
