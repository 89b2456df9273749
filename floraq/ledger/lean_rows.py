"""What a lean row leaves out and how it is rebuilt (step ``0011_lean_rows``).

A job or output row stores only what cannot be rebuilt from the rest of the ledger; the
reads put the rest back before any record is made, so callers get the values they always
got. Each rule stores the short form only when rebuilding it gives the exact value back
(checked when writing); anything else is stored as given.

- ``jobs.location`` is ``''`` when it is ``<stem>, row <row_number>`` (and, for a CSV row,
  `` (<csv> line <csv_line>)``) with the stem and CSV name of its batch's job number,
  kept once in ``job_sources``.
- ``jobs.inputs_digest`` is ``''`` when it is the sha256 of the stored ``inputs`` text
  (canonical JSON, as ``core.keys`` hashes it).
- ``jobs.poll_url`` is NULL with ``jobs.poll_base`` set when the URL is
  ``<base>/techniques/<technique>/runs/<run_id>``: the base is kept once in ``poll_bases``.
  A server that answers another URL (another host or path) has it stored as it came.
- ``jobs.key_fingerprint`` is ``''`` when it is the batch's (``batches.key_fingerprint``,
  the first fingerprint a row of the batch was claimed under; never changed after).
- ``outputs.path`` is ``*<ext>`` when the file is ``<output_dir>/<technique>/<row_key>/
  <output_id><ext>`` (the runner's folders), else relative to its batch's ``output_dir``
  when under it; ``OUTPUT_PATH`` is the one expression every reader of it goes through.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, TypeVar

from floraq.core.keys import inputs_json
from floraq.ledger.base import SqliteBase
from floraq.ledger.lean_step import UNINDEXED_STATE
from floraq.ledger.records import from_row

R = TypeVar("R")

REBUILT = ""  # a column whose value the rules rebuild (never a real location or digest)

# The stored path made whole (``o`` an outputs row, ``j`` its job, ``b`` their batch).
OUTPUT_PATH = (
    "CASE WHEN o.path IS NULL OR o.path LIKE '/%' THEN o.path"
    " WHEN o.path LIKE '*%' THEN b.output_dir || '/' || j.technique || '/' || j.row_key"
    " || '/' || o.output_id || substr(o.path, 2)"
    " ELSE b.output_dir || '/' || o.path END"
)
# Outputs with what their path is built from, for ``OUTPUT_PATH``.
OUTPUTS_JOINED = "outputs o JOIN jobs j ON j.id = o.job_id JOIN batches b ON b.name = j.batch"


def digest_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def location_parts(location: str, row_number: int, csv_line: int | None) -> tuple[str, str] | None:
    """(stem, csv name or '') such that ``built`` gives ``location`` back; None if none."""
    tail = f", row {row_number}"
    if csv_line is None:
        return (location[: -len(tail)], "") if location.endswith(tail) else None
    end = f" line {csv_line})"
    at = location.rfind(tail + " (")
    if at < 0 or not location.endswith(end) or at + len(tail) + 2 > len(location) - len(end):
        return None
    parts = (location[:at], location[at + len(tail) + 2 : -len(end)])
    return parts if built(parts, row_number, csv_line) == location else None


def built(parts: tuple[str, str], row_number: int, csv_line: int | None) -> str:
    """A row's location from its job's stem and CSV name."""
    stem, csv = parts
    where = f"{stem}, row {row_number}"
    return where if csv_line is None else f"{where} ({csv} line {csv_line})"


def in_states(states: Sequence[str], column: str = "state") -> str:
    """SQL for ``column IN (states)`` (bound as ``states``), saying so when the states
    leave out the one the batch-and-state index does not hold, so the index serves it."""
    sql = f"{column} IN ({', '.join('?' * len(states))})"
    if UNINDEXED_STATE not in states:
        sql += f" AND {column} != '{UNINDEXED_STATE}'"
    return sql


def in_batches(batches: Sequence[str], states: Sequence[str]) -> str:
    """SQL for ``batch IN (batches)`` in a page of jobs in ``states``, in id order.

    When the states include the one the batch-and-state index leaves out, the batch is
    not looked up by index (``|| ''``): the page is read in id order and stops at its
    limit, where the batch prefix of UNIQUE (batch, technique, row_key) would sort every
    row of the batch for each page.
    """
    column = "batch || ''" if UNINDEXED_STATE in states else "batch"
    return f"{column} IN ({', '.join('?' * len(batches))})"


def poll_suffix(technique: str, run_id: str) -> str:
    return f"/techniques/{technique}/runs/{run_id}"


def stored_path(path: str, output_dir: str, technique: str, row_key: str, output_id: str) -> str:
    """``path`` as stored: ``*<ext>`` for ``<output_dir>/<technique>/<row_key>/<output_id><ext>``,
    else relative to ``output_dir`` when under it, else whole (``OUTPUT_PATH`` reverses it)."""
    prefix = output_dir + "/"
    if not (output_dir.startswith("/") and path.startswith(prefix) and len(path) > len(prefix)):
        return path
    relative = path[len(prefix) :]
    folder = f"{technique}/{row_key}/{output_id}"
    if relative.startswith(folder) and "/" not in relative[len(folder) :]:
        return "*" + relative[len(folder) :]
    return path if relative.startswith("*") else relative


class LeanRows(SqliteBase):
    """Rebuilds lean columns on read and chooses their short form on write."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sources: dict[tuple[str, int], tuple[str, str]] = {}
        self._bases: dict[int, str] = {}
        self._base_ids: dict[str, int] = {}
        self._fingerprints: dict[str, str] = {}

    def _forget(self) -> None:
        """After a rollback: what was read in it may not have been committed."""
        self._sources.clear()
        self._bases.clear()
        self._base_ids.clear()
        self._fingerprints.clear()

    # -- reads --------------------------------------------------------------------------

    def _record(self, cls: type[R], row: Any) -> R:
        return from_row(cls, self.whole(row))

    def whole(self, row: Any) -> dict[str, Any]:
        """A row with every lean column rebuilt (columns it does not have are left out)."""
        out = dict(row)
        if out.get("location") == REBUILT:
            key = (out["batch"], int(out["job_number"]))
            out["location"] = built(self._source(key), out["row_number"], out["csv_line"])
        if out.get("inputs_digest") == REBUILT:
            out["inputs_digest"] = digest_of(out["inputs"])
        if out.get("poll_base") is not None and out.get("poll_url") is None:
            base = self._base(int(out["poll_base"]))
            out["poll_url"] = base + poll_suffix(out["technique"], out["run_id"])
        if out.get("key_fingerprint") == REBUILT:
            out["key_fingerprint"] = self._batch_fingerprint(out["batch"])
        return out

    def _source(self, key: tuple[str, int]) -> tuple[str, str]:
        if key not in self._sources:
            row = self.conn.execute(
                "SELECT stem, csv FROM job_sources WHERE batch = ? AND job_number = ?", key
            ).fetchone()
            self._sources[key] = (row[0], row[1] or "")
        return self._sources[key]

    def _base(self, base_id: int) -> str:
        if base_id not in self._bases:
            row = self.conn.execute("SELECT base FROM poll_bases WHERE id = ?", (base_id,))
            self._bases[base_id] = row.fetchone()[0]
        return self._bases[base_id]

    def _batch_fingerprint(self, batch: str) -> str:
        if batch not in self._fingerprints:
            row = self.conn.execute(
                "SELECT key_fingerprint FROM batches WHERE name = ?", (batch,)
            ).fetchone()
            self._fingerprints[batch] = row[0]
        return self._fingerprints[batch]

    # -- writes ---------------------------------------------------------------------------

    def _job_sources(self, wanted: dict[tuple[str, int], tuple[str, str]]) -> dict[Any, Any]:
        """The stored stem and CSV name of each (batch, job number), the first one seen
        kept (these are written once; a row whose location has another stem is stored whole)."""
        self.conn.executemany(
            "INSERT INTO job_sources (batch, job_number, stem, csv) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (batch, job_number) DO NOTHING",
            [(b, n, stem, csv) for (b, n), (stem, csv) in wanted.items()],
        )
        return {key: self._source(key) for key in wanted}

    def _lean_job(self, job: Any) -> tuple[str, str, str]:
        """(location, inputs, inputs_digest) as a new job's row stores them."""
        text = inputs_json(job.inputs)
        digest = REBUILT if digest_of(text) == job.inputs_digest else job.inputs_digest
        return job.location, text, digest

    def _lean_columns(self, job_id: int, columns: dict[str, Any]) -> dict[str, Any]:
        """A move's or update's columns with the poll URL and fingerprint in short form."""
        if "poll_url" not in columns and not columns.get("key_fingerprint"):
            return columns
        row = self.conn.execute(
            "SELECT batch, technique, run_id FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            return columns
        out = dict(columns)
        if "poll_url" in columns:
            out["poll_url"], out["poll_base"] = self._lean_poll(
                columns["poll_url"], row["technique"], columns.get("run_id", row["run_id"])
            )
        if columns.get("key_fingerprint"):
            out["key_fingerprint"] = self._lean_fingerprint(
                row["batch"], columns["key_fingerprint"]
            )
        return out

    def _lean_poll(self, url: str | None, technique: str, run_id: str | None) -> tuple[Any, Any]:
        """(poll_url, poll_base) as stored for this URL."""
        if url is None or run_id is None:
            return url, None
        suffix = poll_suffix(technique, run_id)
        if not url.endswith(suffix) or len(url) == len(suffix):
            return url, None
        base = url[: -len(suffix)]
        if base not in self._base_ids:  # once per base (and again after a rollback)
            self.conn.execute(
                "INSERT INTO poll_bases (base) VALUES (?) ON CONFLICT (base) DO NOTHING", (base,)
            )
            found = self.conn.execute("SELECT id FROM poll_bases WHERE base = ?", (base,))
            self._base_ids[base] = int(found.fetchone()[0])
        return None, self._base_ids[base]

    def _lean_fingerprint(self, batch: str, fingerprint: str) -> str:
        if self._fingerprints.get(batch) is None:  # the batch's is written once, then kept
            self.conn.execute(
                "UPDATE batches SET key_fingerprint = ? WHERE name = ? AND key_fingerprint IS NULL",
                (fingerprint, batch),
            )
            self._fingerprints.pop(batch, None)
        return REBUILT if self._batch_fingerprint(batch) == fingerprint else fingerprint

    def _stored_path(self, job_id: int, output_id: str, path: str) -> str:
        row = self.conn.execute(
            "SELECT b.output_dir, j.technique, j.row_key FROM jobs j"
            " JOIN batches b ON b.name = j.batch WHERE j.id = ?",
            (job_id,),
        ).fetchone()
        return path if row is None else stored_path(path, row[0], row[1], row[2], output_id)

    def _pin_paths(self, batch: str) -> None:
        """Before a batch's ``output_dir`` changes: its files stay where they are, so the
        paths stored against the old folder are made whole (while the batch still has it)."""
        self.conn.execute(
            f"UPDATE outputs SET path = (SELECT {OUTPUT_PATH} FROM {OUTPUTS_JOINED}"
            " WHERE o.id = outputs.id) WHERE path IS NOT NULL AND path NOT LIKE '/%'"
            " AND job_id IN (SELECT id FROM jobs WHERE batch = ?)",
            (batch,),
        )
