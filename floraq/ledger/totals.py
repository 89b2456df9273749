"""The ledger's kept totals and audit trail: what `status` reads without a pass over every row.

``state_totals`` and ``quote_totals`` are kept by triggers (step ``0009_lean``) in the
transaction of every job write; each has an O(rows) ``*_recomputed`` twin the tests
compare it with. ``history`` joins a job's events with the moves its row tells.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from floraq.core.lifecycle import RUN_FINISHED, USUAL_PATH, JobState
from floraq.core.money import from_micros, to_micros
from floraq.ledger.base import marks, values
from floraq.ledger.lean_rows import LeanRows


@dataclass(frozen=True, slots=True)
class StateTotals:
    """Rows, quotes, charges and unsettled charges of one batch, technique and state."""

    batch: str
    technique: str
    state: JobState
    n: int
    estimated: Decimal
    charged: Decimal
    unsettled: int


@dataclass(frozen=True, slots=True)
class QuoteGroup:
    """Rows of a batch and technique quoted at one price, and that technique's run_cost now."""

    batch: str
    technique: str
    quote: Decimal
    n: int
    run_cost: Decimal | None
    differs: int  # settled runs charged something other than their quote


# What ``usual_events`` reads of a job (``j``): its row and when its files landed.
USUAL_COLUMNS = (
    "j.*, (SELECT MAX(o.downloaded_at) FROM outputs o WHERE o.job_id = j.id) AS downloaded_at"
)


def usual_events(row: Any) -> list[tuple[str, float, dict[str, Any]]]:
    """(kind, at, detail) of each move a job not yet logged made, as its row tells it.

    ``row`` has ``USUAL_COLUMNS``. Such a job has only moved along ``USUAL_PATH``, so its
    state says how far; details hold the row's values now, marked ``from_row``.
    """
    later = row["updated_at"]
    reached = USUAL_PATH.index(JobState(row["state"])) if row["state"] in USUAL_PATH else 0

    def money(column: str) -> Decimal | None:
        return None if row[column] is None else from_micros(int(row[column]))

    def told(**detail: Any) -> dict[str, Any]:
        return {**{k: v for k, v in detail.items() if v is not None}, "from_row": True}

    return [
        ("queued", row["queued_at"] or later, told(location=row["location"])),
        (
            "queued->submitting",
            row["submitting_at"] or later,
            told(
                estimated_cost=money("estimated_micros"),
                key_fingerprint=row["key_fingerprint"],
                submitting_at=row["submitting_at"],
            ),
        ),
        (
            "submitting->submitted",
            row["submitted_at"] or later,
            told(
                run_id=row["run_id"],
                poll_url=row["poll_url"],
                request_id=row["request_id"],
                remote_created_at=row["remote_created_at"],
                submitted_at=row["submitted_at"],
            ),
        ),
        (
            "submitted->completed",
            row["completed_at"] or later,
            told(
                charged_cost=money("charged_micros"),
                completed_at=row["completed_at"],
                remote_completed_at=row["remote_completed_at"],
            ),
        ),
        ("completed->downloaded", row["downloaded_at"] or later, told()),
    ][: reached + 1]


def _state_totals(r: Any) -> StateTotals:
    """A totals row as a record. Unsettled: every unknown outcome, every finished run
    without a charge, and earlier attempts' unsettled charges (decided here, not in SQL)."""
    state = JobState(r["state"])
    if state is JobState.UNKNOWN_OUTCOME:
        unsettled = int(r["n"])
    else:
        unsettled = int(r["uncharged"] or 0) if state in RUN_FINISHED else 0
    return StateTotals(
        batch=r["batch"],
        technique=r["technique"],
        state=state,
        n=int(r["n"]),
        estimated=from_micros(int(r["estimated_micros"])),
        charged=from_micros(int(r["charged_micros"])),
        unsettled=unsettled + int(r["prior_unsettled"] or 0),
    )


class TotalsReads(LeanRows):
    """Totals per batch, technique and state or quote; a job's whole trail."""

    def state_counts(self, batches: Sequence[str]) -> list[StateTotals]:
        """Rows, quotes, charges and unsettled charges per batch, technique and state."""
        if not batches:
            return []
        rows = self.conn.execute(
            "SELECT * FROM state_totals WHERE n > 0"
            f" AND batch IN ({marks(batches)}) ORDER BY batch, technique, state",
            list(batches),
        ).fetchall()
        return [_state_totals(r) for r in rows]

    def state_counts_recomputed(self, batches: Sequence[str]) -> list[StateTotals]:
        """The same totals summed over every row (a check on the counters; O(rows))."""
        if not batches:
            return []
        rows = self.conn.execute(
            f"""
            SELECT batch, technique, state, COUNT(*) AS n,
                COALESCE(SUM(estimated_micros), 0) AS estimated_micros,
                COALESCE(SUM(COALESCE(charged_micros, 0) + prior_charged_micros), 0)
                    AS charged_micros,
                SUM(CASE WHEN charged_micros IS NULL THEN 1 ELSE 0 END) AS uncharged,
                SUM(prior_unsettled) AS prior_unsettled
            FROM jobs WHERE batch IN ({marks(batches)})
            GROUP BY batch, technique, state ORDER BY batch, technique, state
            """,
            list(batches),
        ).fetchall()
        return [_state_totals(r) for r in rows]

    def history(self, job_id: int) -> list[dict[str, Any]]:
        """A job's audit trail (at, batch, kind, detail): the moves its row tells, in path
        order (written to ``events`` only when the row stops telling), then its events."""
        trail = [
            {"at": at, "batch": row["batch"] if kind == "queued" else None, "kind": kind,
             "detail": detail}
            for row in self.conn.execute(
                f"SELECT {USUAL_COLUMNS} FROM jobs j WHERE j.id = ? AND j.logged = 0", (job_id,)
            ).fetchall()
            for kind, at, detail in usual_events(self.whole(row))
        ]  # fmt: skip
        for e in self.conn.execute(
            "SELECT at, batch, kind, detail FROM events WHERE job_id = ? ORDER BY id", (job_id,)
        ).fetchall():
            detail = None if e["detail"] is None else json.loads(e["detail"])
            trail.append({"at": e["at"], "batch": e["batch"], "kind": e["kind"], "detail": detail})
        return trail

    def quotes(self, batches: Sequence[str]) -> list[QuoteGroup]:
        """Per batch and technique: each price its rows were quoted at, and today's run_cost.

        Prices in the order their first row was queued (looked up only for a technique
        quoted at more than one price: a scan of its rows, rare by nature).
        """
        if not batches:
            return []
        rows = self.conn.execute(
            "SELECT q.batch, q.technique, q.quote, q.n, q.differs, t.run_cost_micros AS run_cost"
            " FROM quote_totals q LEFT JOIN techniques t ON t.slug = q.technique"
            f" WHERE q.n > 0 AND q.batch IN ({marks(batches)}) ORDER BY q.batch, q.technique",
            list(batches),
        ).fetchall()
        groups = [_quote_group(r) for r in rows]
        prices = Counter((g.batch, g.technique) for g in groups)
        if max(prices.values(), default=1) == 1:
            return groups
        first = {g: self._first_quoted(g) for g in groups if prices[(g.batch, g.technique)] > 1}
        return sorted(groups, key=lambda g: (g.batch, g.technique, first.get(g, 0)))

    def _first_quoted(self, group: QuoteGroup) -> int:
        row = self.conn.execute(
            "SELECT MIN(id) FROM jobs WHERE batch = ? AND technique = ? AND estimated_micros = ?",
            (group.batch, group.technique, _micros(group.quote)),
        ).fetchone()
        return int(row[0] or 0)

    def quotes_recomputed(self, batches: Sequence[str]) -> list[QuoteGroup]:
        """The same groups summed over every row (a check on the counters; O(rows))."""
        if not batches:
            return []
        finished = values(RUN_FINISHED)
        rows = self.conn.execute(
            f"""
            SELECT j.batch, j.technique, j.estimated_micros AS quote, COUNT(*) AS n,
                MAX(t.run_cost_micros) AS run_cost,
                SUM(CASE WHEN j.charged_micros IS NOT NULL AND j.state IN ({marks(finished)})
                    AND j.charged_micros != COALESCE(j.estimated_micros, 0)
                    THEN 1 ELSE 0 END) AS differs
            FROM jobs j LEFT JOIN techniques t ON t.slug = j.technique
            WHERE j.batch IN ({marks(batches)}) AND j.estimated_micros IS NOT NULL
            GROUP BY j.batch, j.technique, j.estimated_micros
            ORDER BY j.batch, j.technique, MIN(j.id)
            """,
            [*finished, *batches],
        ).fetchall()
        return [
            QuoteGroup(
                batch=r["batch"],
                technique=r["technique"],
                quote=from_micros(int(r["quote"])),
                n=int(r["n"]),
                run_cost=None if r["run_cost"] is None else from_micros(int(r["run_cost"])),
                differs=int(r["differs"] or 0),
            )
            for r in rows
        ]


def _quote_group(r: Any) -> QuoteGroup:
    return QuoteGroup(
        batch=r["batch"],
        technique=r["technique"],
        quote=from_micros(int(r["quote"])),
        n=int(r["n"]),
        run_cost=None if r["run_cost"] is None else from_micros(int(r["run_cost"])),
        differs=int(r["differs"] or 0),
    )


def _micros(amount: Decimal) -> int:
    return to_micros(amount)
