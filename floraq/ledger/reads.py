"""The ledger's reads: pages of jobs, views for exports, totals for ``status``.

SQL both backends run. State lists come from ``core.lifecycle``, bound as parameters, never
spelled in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from floraq.core.lifecycle import (
    PROBLEM_STATES,
    QUOTE_COMMITTED,
    JobState,
    OutputState,
)
from floraq.core.money import from_micros
from floraq.errors import LedgerError
from floraq.ledger.base import chunks, marks, values
from floraq.ledger.lean_rows import (
    OUTPUT_PATH,
    OUTPUTS_JOINED,
    REBUILT,
    digest_of,
    in_batches,
    in_states,
)
from floraq.ledger.records import (
    BatchRecord,
    JobRecord,
    JobView,
    OutputRecord,
    StoredFile,
    from_row,
)
from floraq.ledger.totals import TotalsReads

# An OutputRecord's columns, its path made whole (from ``OUTPUTS_JOINED``).
_OUTPUT_COLUMNS = (
    "o.job_id, o.output_id, o.type, o.url, o.url_seen_at, o.state,"
    f" {OUTPUT_PATH} AS path, o.bytes, o.sha256"
)


class SqliteReads(TotalsReads):
    """Everything that only reads."""

    def integrity_ok(self) -> bool:
        return bool(self.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok")

    def batch(self, name: str) -> BatchRecord | None:
        found = self._all(BatchRecord, "SELECT * FROM batches WHERE name = ?", (name,))
        return found[0] if found else None

    def batch_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM batches ORDER BY created_at")]

    def techniques_used(self, batches: Sequence[str]) -> list[str]:
        """The technique slugs the jobs of these batches run."""
        found: set[str] = set()
        for part in chunks(batches):
            sql = f"SELECT DISTINCT technique FROM jobs WHERE batch IN ({marks(part)})"
            found.update(r[0] for r in self.conn.execute(sql, part))
        return sorted(found)

    def technique(self, slug: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT definition FROM techniques WHERE slug = ?", (slug,)
        ).fetchone()
        return dict(json.loads(row[0])) if row else None

    def existing_rows(self, batch: str, technique: str, row_keys: Sequence[str]) -> dict[str, str]:
        """row_key -> inputs_digest for the rows of this batch and technique already known."""
        found: dict[str, str] = {}
        for part in chunks(row_keys):
            sql = (
                "SELECT row_key, inputs_digest, inputs FROM jobs WHERE batch = ? AND technique = ?"
                f" AND row_key IN ({marks(part)})"
            )
            for r in self.conn.execute(sql, [batch, technique, *part]):
                found[r[0]] = r[1] if r[1] != REBUILT else digest_of(r[2])
        return found

    def folders_of_other_batches(
        self, batch: str, output_dir: str, technique: str, row_keys: Sequence[str]
    ) -> dict[str, str]:
        """row_key -> the other batch whose outputs already live in that folder.

        Batch by batch, so each look-up goes through UNIQUE (batch, technique, row_key).
        """
        others = [
            r[0]
            for r in self.conn.execute(
                "SELECT name FROM batches WHERE output_dir = ? AND name != ? ORDER BY created_at",
                (output_dir, batch),
            )
        ]
        found: dict[str, str] = {}
        for other in others:
            for part in chunks(row_keys):
                sql = (
                    "SELECT row_key FROM jobs WHERE batch = ? AND technique = ?"
                    f" AND row_key IN ({marks(part)})"
                )
                for row in self.conn.execute(sql, [other, technique, *part]):
                    found.setdefault(row[0], other)
        return found

    def jobs(
        self,
        *,
        batches: Sequence[str],
        states: Iterable[JobState],
        after_id: int = 0,
        limit: int = 500,
    ) -> list[JobRecord]:
        """A page of jobs in the given states, in id order (for streaming through big batches)."""
        state_list = values(states)
        if not batches or not state_list:
            return []
        return self._all(
            JobRecord,
            f"SELECT * FROM jobs WHERE {in_batches(batches, state_list)}"
            f" AND {in_states(state_list)} AND id > ? ORDER BY id LIMIT ?",
            [*batches, *state_list, after_id, limit],
        )

    def job(self, job_id: int) -> JobRecord:
        found = self._all(JobRecord, "SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not found:
            raise LedgerError(f"no job {job_id} in the ledger")
        return found[0]

    def outputs(self, job_id: int) -> list[OutputRecord]:
        return self._all(
            OutputRecord,
            f"SELECT {_OUTPUT_COLUMNS} FROM {OUTPUTS_JOINED} WHERE o.job_id = ? ORDER BY o.id",
            (job_id,),
        )

    def committed_cost(self, batch: str) -> Decimal:
        """What a batch has spent or may be spending: the figure its cost cap guards.

        Charged runs count at their charge (earlier attempts included); runs in flight,
        finished runs whose charge has not settled, and unknown outcomes (a run may
        exist) count at their quote. Kept as a counter, so this reads one row.
        """
        row = self.conn.execute(
            "SELECT committed_micros FROM batches WHERE name = ?", (batch,)
        ).fetchone()
        return from_micros(int(row[0]) if row else 0)

    def committed_cost_recomputed(self, batch: str) -> Decimal:
        """The same figure summed over every row (a check on the counter; O(rows))."""
        committed = values(QUOTE_COMMITTED)
        row = self.conn.execute(
            f"""
            SELECT COALESCE(SUM(prior_charged_micros + CASE
                WHEN charged_micros IS NOT NULL THEN charged_micros
                WHEN state IN ({marks(committed)}) THEN COALESCE(estimated_micros, 0)
                ELSE 0 END), 0)
            FROM jobs WHERE batch = ?
            """,
            [*committed, batch],
        ).fetchone()
        return from_micros(int(row[0]))

    def problem_rows(self, batches: Sequence[str]) -> list[dict[str, Any]]:
        """Every failed, rejected, unknown or expired row, with what support will ask for."""
        if not batches:
            return []
        problems = values(PROBLEM_STATES)
        rows = self.conn.execute(
            f"""
            SELECT batch, technique, location, row_key, state, run_id, error_code,
                error_message, error_fields, failure_tier, request_id, attempt,
                charged_micros, prior_charged_micros, job_number, row_number, csv_line
            FROM jobs WHERE batch IN ({marks(batches)}) AND {in_states(problems)}
            ORDER BY id
            """,
            [*batches, *problems],
        ).fetchall()
        shown = [self.whole(r) for r in rows]
        for row in shown:
            for column in ("job_number", "row_number", "csv_line"):
                del row[column]
        return shown

    def job_id_for_key(self, key: str) -> int:
        row = self.conn.execute("SELECT id FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        if row is None:
            raise LedgerError(f"no job with idempotency key {key}")
        return int(row[0])

    def typical_durations(self, technique: str, limit: int = 50) -> list[float]:
        """Creation-to-completion seconds of this technique's recent runs, by the API's clock."""
        return self._recent_spans(technique, "remote_created_at", limit)

    def typical_run_times(self, technique: str, limit: int = 50) -> list[float]:
        """Start-to-completion seconds of this technique's recent completed runs (API clock).

        Unlike ``typical_durations`` these leave out the wait for a slot, which depends on
        the night's queue, not on the technique.
        """
        return self._recent_spans(technique, "remote_started_at", limit)

    def _recent_spans(self, technique: str, since: str, limit: int) -> list[float]:
        """Seconds from ``since`` (a column of API epoch ms) to completion, newest first."""
        rows = self.conn.execute(
            f"""
            SELECT (remote_completed_at - {since}) / 1000.0 FROM jobs
            WHERE technique = ? AND remote_completed_at IS NOT NULL AND {since} IS NOT NULL
            ORDER BY id DESC LIMIT ?
            """,
            (technique, limit),
        ).fetchall()
        return [float(r[0]) for r in rows if r[0] is not None and r[0] >= 0]

    def job_views(
        self,
        batches: Sequence[str],
        *,
        states: Iterable[JobState] | None = None,
        technique: str | None = None,
        after_id: int = 0,
        limit: int = 500,
    ) -> list[JobView]:
        """A page of jobs with their outputs, in id order, for exports and reports."""
        if not batches:
            return []
        state_list = values(states) if states is not None else []
        sql = f"SELECT * FROM jobs WHERE {in_batches(batches, state_list)} AND id > ?"
        params: list[Any] = [*batches, after_id]
        if states is not None:
            sql += f" AND {in_states(state_list)}"
            params += state_list
        if technique is not None:
            sql += " AND technique = ?"
            params.append(technique)
        rows = self.conn.execute(sql + " ORDER BY id LIMIT ?", [*params, limit]).fetchall()
        outputs: dict[int, list[OutputRecord]] = {r["id"]: [] for r in rows}
        for part in chunks(list(outputs)):
            for o in self._all(
                OutputRecord,
                f"SELECT {_OUTPUT_COLUMNS} FROM {OUTPUTS_JOINED}"
                f" WHERE o.job_id IN ({marks(part)}) ORDER BY o.id",
                part,
            ):
                outputs[o.job_id].append(o)
        return [from_row(JobView, self.whole(r), outputs=tuple(outputs[r["id"]])) for r in rows]

    def input_ids(self, batches: Sequence[str], technique: str | None = None) -> list[str]:
        """Every input id the rows of these batches use, in the order techniques declare them."""
        return self._port_ids(batches, technique, "inputs")

    def output_ids(self, batches: Sequence[str], technique: str | None = None) -> list[str]:
        """Every output id these batches' techniques declare or their runs returned."""
        return self._port_ids(batches, technique, "outputs")

    def _port_ids(self, batches: Sequence[str], technique: str | None, kind: str) -> list[str]:
        slugs = [technique] if technique is not None else self.techniques_used(batches)
        found: list[str] = []
        for slug in slugs:
            definition = self.technique(slug) or {}
            found += [str(p["id"]) for p in definition.get(kind) or [] if isinstance(p, dict)]
        if not batches:
            return list(dict.fromkeys(found))
        only = " AND j.technique = ?" if technique is not None else ""
        params = [*batches, *([technique] if technique is not None else [])]
        if kind == "inputs":
            sql = (
                f"SELECT DISTINCT k.key FROM jobs j, json_each({self._INPUTS_JSON}) k"
                f" WHERE j.batch IN ({marks(batches)}){only}"
            )
        else:
            sql = (
                "SELECT DISTINCT o.output_id FROM outputs o JOIN jobs j ON j.id = o.job_id"
                f" WHERE j.batch IN ({marks(batches)}){only}"
            )
        seen = sorted(r[0] for r in self.conn.execute(sql, params))
        return list(dict.fromkeys([*found, *seen]))

    def last_activity(self) -> dict[str, float]:
        """Batch name -> the latest time anything about it changed (epoch seconds)."""
        return {
            r[0]: float(r[1])
            for r in self.conn.execute(
                "SELECT b.name, CASE WHEN MAX(j.updated_at) > b.updated_at"
                " THEN MAX(j.updated_at) ELSE b.updated_at END"
                " FROM batches b LEFT JOIN jobs j ON j.batch = b.name GROUP BY b.name"
            )
        }

    def downloaded_by_url(self) -> dict[str, str]:
        """Output URL -> local path of every downloaded file (the report's local inputs).

        A row whose input is an earlier run's output URL can show that file beside its
        own output.
        """
        rows = self.conn.execute(
            f"SELECT o.url, {OUTPUT_PATH} AS path FROM {OUTPUTS_JOINED}"
            " WHERE o.state = ? AND o.path IS NOT NULL",
            (OutputState.DOWNLOADED.value,),
        )
        return {r[0]: r[1] for r in rows}

    def downloaded_files(
        self, batches: Sequence[str], *, after_id: int = 0, limit: int = 500
    ) -> list[StoredFile]:
        """A page of outputs recorded as on disk, in id order (for `verify`)."""
        if not batches:
            return []
        return self._all(
            StoredFile,
            f"""
            SELECT o.id, o.job_id, o.output_id, {OUTPUT_PATH} AS path, o.bytes, o.sha256,
                j.batch, j.technique, j.row_key, j.location, j.job_number, j.row_number,
                j.csv_line
            FROM outputs o JOIN jobs j ON j.id = o.job_id JOIN batches b ON b.name = j.batch
            WHERE j.batch IN ({marks(batches)}) AND o.state = ?
                AND o.path IS NOT NULL AND o.id > ?
            ORDER BY o.id LIMIT ?
            """,
            [*batches, OutputState.DOWNLOADED.value, after_id, limit],
        )
