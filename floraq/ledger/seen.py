"""A manifest check's memory of rows already seen, kept on disk instead of in Python sets."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from floraq.errors import DiskError
from floraq.ledger.base import chunks, marks

# A Bloom filter per kind: 2**25 bits (4 MiB), two probes from the value's hash. Nearly
# every row is new, and the filter says so without a query; at a million values about one
# lookup in 300 is a false alarm, which the runs on disk answer exactly.
_FILTER_BITS = 25
_FILTER_MASK = (1 << _FILTER_BITS) - 1
# Values held in memory before they go to disk as one sorted run (a few MB at most).
_BUFFERED = 25_000


class _Kind:
    """One kind of value (keys, or folder claims): filter, in-memory buffer, sorted runs."""

    def __init__(self, conn: sqlite3.Connection, name: str) -> None:
        self.conn = conn
        self.name = name
        self.bits = bytearray(1 << (_FILTER_BITS - 3))
        self.buffer: dict[str, str] = {}  # value -> location of its first claim
        self.runs: list[str] = []

    def lookup(self, wanted: Iterable[str]) -> dict[str, str]:
        """value -> its first location, for the values of ``wanted`` added before."""
        found: dict[str, str] = {}
        maybe: list[str] = []
        buffer, bits = self.buffer, self.bits
        for value in wanted:
            if value in buffer:
                found[value] = buffer[value]
            elif self.runs:
                h = hash(value)
                a, b = h & _FILTER_MASK, (h >> _FILTER_BITS) & _FILTER_MASK
                if bits[a >> 3] >> (a & 7) & 1 and bits[b >> 3] >> (b & 7) & 1:
                    maybe.append(value)
        for run in self.runs if maybe else ():
            for part in chunks(list(dict.fromkeys(maybe))):
                sql = f"SELECT value, location FROM {run} WHERE value IN ({marks(part)})"
                found.update(self.conn.execute(sql, part))
        return found

    def add(self, items: Iterable[tuple[str, str]], *, new: bool = False) -> None:
        """Remember (value, location) pairs; a value added before keeps its first location.

        Callers have just looked their values up, so only the filter's few "maybe"s are
        looked up again on disk; with ``new`` the caller vouches that none was found and
        none comes twice, and nothing is looked up.
        """
        buffer, bits = self.buffer, self.bits
        if new:
            fresh = items if isinstance(items, list) else list(items)
            on_disk: dict[str, str] = {}
        else:
            fresh = [(v, at) for v, at in items if v not in buffer]
            on_disk = self.lookup(v for v, _ in fresh) if self.runs else {}
        for value, location in fresh:
            if not new and (value in on_disk or value in buffer):
                continue
            buffer[value] = location
            h = hash(value)
            a, b = h & _FILTER_MASK, (h >> _FILTER_BITS) & _FILTER_MASK
            bits[a >> 3] |= 1 << (a & 7)
            bits[b >> 3] |= 1 << (b & 7)
        if len(buffer) >= _BUFFERED:
            self.flush()

    def flush(self) -> None:
        """The buffer as a new sorted run: written in key order, so the B-tree is built
        front to back instead of by random inserts into one ever larger index."""
        run = f"{self.name}_{len(self.runs)}"
        try:
            self.conn.execute(
                f"CREATE TABLE {run} (value TEXT PRIMARY KEY, location TEXT) WITHOUT ROWID"
            )
            self.conn.execute("BEGIN")
            rows = sorted(self.buffer.items())
            self.conn.executemany(f"INSERT INTO {run} VALUES (?, ?)", rows)
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_FULL:
                raise
            raise DiskError.temp_space("no space left on device (SQLITE_FULL)") from exc
        self.runs.append(run)
        self.buffer.clear()


class SeenRows:
    """Idempotency keys and output folders a manifest check has met so far, on disk.

    A million-row manifest would need hundreds of MB as Python sets; this keeps a fixed
    Bloom filter and a bounded buffer in memory and the values themselves in a private
    temporary SQLite database (SQLite spills it to a temp file), so the check's memory
    stays flat however many rows it reads. Ask about a chunk, then add it.
    """

    def __init__(self) -> None:
        self.conn = sqlite3.connect("", isolation_level=None)  # "": private, temporary
        self.conn.execute("PRAGMA journal_mode = OFF")
        self.conn.execute("PRAGMA synchronous = OFF")
        self._keys = _Kind(self.conn, "keys")
        self._folders = _Kind(self.conn, "folders")

    def __enter__(self) -> SeenRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.conn.close()

    def known_keys(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` were added before."""
        return set(self._keys.lookup(keys))

    def folder_owners(self, technique: str, folders: Sequence[str]) -> dict[str, str]:
        """folder -> location of the row that claimed it first, for ``folders`` already added."""
        wanted = {_claim(technique, f): f for f in folders}
        return {wanted[v]: at for v, at in self._folders.lookup(list(wanted)).items()}

    def add(
        self, keys: Iterable[str], folders: Iterable[tuple[str, str, str]], *, new: bool = False
    ) -> None:
        """Remember keys and (technique, folder, location) claims; the first claim stays.

        ``new``: the caller has just asked about every one (``known_keys``,
        ``folder_owners``) and found none, nor any twice, so nothing is asked again.
        """
        self._keys.add([(key, "") for key in keys], new=new)
        self._folders.add([(_claim(t, f), at) for t, f, at in folders], new=new)


def _claim(technique: str, folder: str) -> str:
    """One text for a (technique, folder) claim; a technique slug holds no newline."""
    return f"{technique}\n{folder}"
