"""The plain values the use cases return, for the console (or a library caller) to show.

Kept apart from the use cases so that printing them needs none of the machinery that
produced them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from floraq.core.lifecycle import JobState
from floraq.core.limits import ApiLimit
from floraq.core.manifest import Manifest
from floraq.core.money import ZERO, CostTotals, amount, total, totals_by
from floraq.core.problems import Problem
from floraq.errors import ExitCode
from floraq.ledger import StoredFile
from floraq.ledger.leases import WorkerView
from floraq.local_inputs import LocalFile, LocalFiles
from floraq.runner import RunReport

RetryKind = Literal["failed", "rejected", "expired", "download_failed", "unknown"]


@dataclass(frozen=True, slots=True)
class TechniqueCost:
    slug: str
    rows: int
    run_cost: Decimal

    @property
    def cost(self) -> Decimal:
        return self.rows * self.run_cost


@dataclass(slots=True)
class PlanResult:
    manifest: Manifest
    problems: list[Problem]
    costs: list[TechniqueCost]
    duplicates: int = 0
    folder_problems: list[Problem] = field(default_factory=list)  # refuse even --skip-invalid
    read_ledger: bool = False  # the rows were checked against an existing, current ledger
    local_files: LocalFiles | None = None  # the files checked (and hashed) on the way
    uploads: dict[str, LocalFile] = field(default_factory=dict)  # sha256 -> a file with it
    workspace_id: str | None = None  # where they are uploaded
    uploaded: int = 0  # of ``uploads``, how many the ledger has ready assets for

    @property
    def upload_bytes(self) -> int:
        return sum(f.size for f in self.uploads.values())

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def total_cost(self) -> Decimal:
        return sum((c.cost for c in self.costs), ZERO)

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.costs)

    @property
    def cap(self) -> Decimal | None:
        """The manifest's max_cost as an exact amount (None: no cap)."""
        return None if self.manifest.max_cost is None else amount(self.manifest.max_cost)

    @property
    def fits(self) -> bool:
        """Whether the whole batch, priced at today's run_cost, stays within the cap."""
        return self.cap is None or self.total_cost <= self.cap


@dataclass(slots=True)
class StateCount:
    batch: str
    technique: str
    state: str
    count: int
    estimated_cost: Decimal
    charged_cost: Decimal
    unsettled: int  # finished runs whose charge has not been reported yet

    @property
    def totals(self) -> CostTotals:
        return CostTotals(self.count, self.estimated_cost, self.charged_cost, self.unsettled)


@dataclass(frozen=True, slots=True)
class CostChange:
    """A technique whose price moved since the batch started: its cost plan no longer holds."""

    batch: str
    technique: str
    quotes: tuple[tuple[Decimal, int], ...]  # (price quoted, rows quoted at it), oldest first
    run_cost: Decimal | None  # the run_cost floraq last fetched
    differs: int  # settled runs charged something other than their quote

    def describe(self) -> str:
        """One line for the operator: what moved, and that the plan no longer holds."""
        quoted = ", ".join(f"{n} row(s) at {price:.4f}" for price, n in self.quotes)
        now = f"; run_cost is now {self.run_cost:.4f}" if self.run_cost is not None else ""
        off = f"; {self.differs} run(s) charged other than quoted" if self.differs else ""
        return (
            f"batch {self.batch}: the price of {self.technique} changed since the batch started"
            f" ({quoted}{now}{off}): the manifest's cost plan no longer holds"
        )


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def limit_line(row: ApiLimit) -> str:
    """One line of `status` for an API host and workspace: what the next start will use."""
    learned = (
        f"learned concurrency {row.concurrency}"
        if row.concurrency is not None
        else "no concurrency learned yet"
    )
    pause = ""
    if row.pause_left > 0 and row.paused_until is not None:
        pause = f"; paused after a 429 until {_utc(row.paused_until)} ({row.pause_left:.0f} s left)"
    return f"API {row.api_host}, workspace {row.workspace}: {learned}{pause}"


def limit_json(row: ApiLimit) -> dict[str, Any]:
    """The same for `status --json`: a pause only while it is in force."""
    in_force = row.pause_left > 0 and row.paused_until is not None
    return {
        "api_host": row.api_host,
        "workspace": row.workspace,
        "learned_concurrency": row.concurrency,
        "paused_until": _utc(row.paused_until) if in_force and row.paused_until else None,
        "pause_seconds_left": round(row.pause_left, 3) if in_force else 0,
        "recent_429s": row.recent_429s,
        "updated_at": _utc(row.updated_at),
    }


@dataclass(slots=True)
class StatusResult:
    counts: list[StateCount]
    failures: list[dict[str, Any]]
    cost_changes: list[CostChange] = field(default_factory=list)
    api_limits: list[ApiLimit] = field(default_factory=list)  # per API host and workspace
    workers: WorkersStatus | None = None  # a shared (PostgreSQL) ledger only

    def total(self, *states: str) -> int:
        return sum(c.count for c in self.counts if not states or c.state in states)

    @property
    def totals(self) -> CostTotals:
        return total(c.totals for c in self.counts)

    def totals_by_technique(self) -> dict[tuple[str, str], CostTotals]:
        """(batch, technique) -> its totals, in ledger order."""
        return totals_by(((c.batch, c.technique), c.totals) for c in self.counts)

    @property
    def charged(self) -> Decimal:
        return self.totals.charged

    @property
    def estimated(self) -> Decimal:
        return self.totals.estimated

    @property
    def unsettled(self) -> int:
        return self.totals.unsettled


@dataclass(frozen=True, slots=True)
class WorkersStatus:
    """The workers of a shared (PostgreSQL) ledger as ``status`` shows them."""

    workers: tuple[WorkerView, ...]

    @property
    def expired_rows(self) -> int:
        """Active rows whose worker's lease has passed: the next worker takes them over."""
        return sum(w.rows for w in self.workers if w.expired)

    def lines(self) -> list[str]:
        if not self.workers:
            return ["workers: none holds a lease"]
        found = [f"workers ({len(self.workers)}):"]
        for w in self.workers:
            lease = "lease expired" if w.expired else f"lease {w.lease_left:.0f} s left"
            found.append(
                f"  {w.host} pid {w.pid}: {w.rows} row(s) leased;"
                f" last heartbeat {w.heartbeat_age:.0f} s ago; {lease}"
            )
        if self.expired_rows:
            found.append(
                f"rows whose lease expired: {self.expired_rows}"
                " (the next worker to look takes them over)"
            )
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "workers": [
                {
                    "id": w.id,
                    "host": w.host,
                    "pid": w.pid,
                    "rows_leased": w.rows,
                    "last_heartbeat": w.heartbeat_at,
                    "seconds_since_heartbeat": round(w.heartbeat_age, 3),
                    "lease_seconds_left": round(w.lease_left, 3),
                    "lease_expired": w.expired,
                }
                for w in self.workers
            ],
            "rows_lease_expired": self.expired_rows,
        }


@dataclass(slots=True)
class RunResult:
    """What submit/resume did, and how the process should exit."""

    batches: list[str]
    inserted: int
    report: RunReport
    status: StatusResult
    plan: PlanResult | None = None
    exit_code: ExitCode = ExitCode.OK
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExportResult:
    batches: list[str]
    rows: int
    path: Path | None  # None: written to the stream given


@dataclass(slots=True)
class RetryResult:
    requeued: Counter[str]  # kind (failed, rejected, ...) -> rows given a new attempt
    skipped: list[str]  # rows left alone, with why
    run: RunResult | None = None  # the run that followed, unless queue_only
    refetched: int = 0  # download_failed rows to fetch again: the same run, no new attempt

    @property
    def exit_code(self) -> ExitCode:
        return self.run.exit_code if self.run is not None else ExitCode.OK


@dataclass(frozen=True, slots=True)
class ReportResult:
    path: Path
    batches: list[str]
    rows: int
    images: int
    pages: int = 1


@dataclass(frozen=True, slots=True)
class BatchSummary:
    name: str
    states: dict[str, int]
    charged: Decimal
    estimated: Decimal
    unsettled: int
    last_activity: float  # epoch seconds

    @property
    def rows(self) -> int:
        return sum(self.states.values())

    def count(self, states: Iterable[JobState]) -> int:
        return sum(self.states.get(s.value, 0) for s in states)


@dataclass(frozen=True, slots=True)
class FileProblem:
    kind: Literal["missing", "changed"]
    file: StoredFile
    actual_sha256: str | None = None
    actual_bytes: int | None = None


@dataclass(slots=True)
class VerifyResult:
    batches: list[str]
    checked: int
    problems: list[FileProblem]

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.FAILURES if self.problems else ExitCode.OK


@dataclass(frozen=True, slots=True)
class Refetch:
    """What `resume --redownload-missing` queued again before running."""

    files: int  # missing or changed on disk
    expired_jobs: int  # expired or download_failed jobs: fetched again, fresh URLs if need be

    def describe(self) -> str:
        return (
            f"redownload: {self.files} file(s) missing or changed on disk and"
            f" {self.expired_jobs} expired or download_failed row(s) fetched again"
        )
