"""A manifest check's memory of rows already seen, kept on disk instead of in Python sets."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from floraq.ledger.base import chunks, marks


class SeenRows:
    """Idempotency keys and output folders a manifest check has met so far, on disk.

    A million-row manifest would need hundreds of MB as Python sets; this keeps them in a
    private temporary SQLite database (SQLite spills it to a temp file), so the check's
    memory stays flat however many rows it reads. Ask about a chunk, then add it.
    """

    def __init__(self) -> None:
        self.conn = sqlite3.connect("", isolation_level=None)  # "": private, temporary
        self.conn.execute("PRAGMA journal_mode = OFF")
        self.conn.execute("PRAGMA synchronous = OFF")
        self.conn.execute("CREATE TABLE keys (key TEXT PRIMARY KEY) WITHOUT ROWID")
        self.conn.execute(
            "CREATE TABLE folders (technique TEXT, folder TEXT, location TEXT,"
            " PRIMARY KEY (technique, folder)) WITHOUT ROWID"
        )

    def __enter__(self) -> SeenRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def known_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` were added before."""
        found: set[str] = set()
        for part in chunks(list(dict.fromkeys(keys))):
            rows = self.conn.execute(f"SELECT key FROM keys WHERE key IN ({marks(part)})", part)
            found.update(key for (key,) in rows)
        return found

    def folder_owners(self, technique: str, folders: Sequence[str]) -> dict[str, str]:
        """folder -> location of the row that claimed it first, for ``folders`` already added."""
        owners: dict[str, str] = {}
        for part in chunks(list(dict.fromkeys(folders))):
            rows = self.conn.execute(
                "SELECT folder, location FROM folders WHERE technique = ?"
                f" AND folder IN ({marks(part)})",
                [technique, *part],
            )
            owners.update(rows)
        return owners

    def add(self, keys: Iterable[str], folders: Iterable[tuple[str, str, str]]) -> None:
        """Remember keys and (technique, folder, location) claims; the first claim stays."""
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT OR IGNORE INTO keys VALUES (?)", ((k,) for k in keys))
        self.conn.executemany("INSERT OR IGNORE INTO folders VALUES (?, ?, ?)", folders)
        self.conn.execute("COMMIT")
