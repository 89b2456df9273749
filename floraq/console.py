"""Everything floraq prints: tables and JSON to stdout; progress, warnings, errors to stderr.

Nothing colourful or animated unless stderr is a terminal: under cron, progress is
one plain line every few seconds.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm

from floraq import status_view
from floraq.core.lifecycle import JobState
from floraq.core.money import as_json, usd
from floraq.core.problems import Problem
from floraq.core.technique import Technique
from floraq.core.text import one_line
from floraq.errors import ExitCode
from floraq.results import (
    BatchSummary,
    ExportResult,
    PlanResult,
    ReportResult,
    RetryResult,
    RunResult,
    StatusResult,
    VerifyResult,
)

PLAIN_PROGRESS_EVERY = 5.0  # seconds between progress lines when not on a terminal


def out(text: str = "") -> None:
    print(text, file=sys.stdout)


def err(text: str) -> None:
    print(text, file=sys.stderr)


def error_line(message: str) -> None:
    """The one line a failed command prints; no server text can break it into more."""
    err(f"floraq: error: {one_line(message, limit=20_000)}")


def problems(items: Iterable[Problem], *, stream: TextIO | None = None) -> None:
    """One line per problem, errors first, each with its location."""
    target = stream or sys.stderr
    ordered = sorted(items, key=lambda p: (p.severity != "error",))
    for problem in ordered:
        print(f"{problem.severity}: {one_line(str(problem), limit=20_000)}", file=target)


# -- plan ---------------------------------------------------------------------------------


def plan(result: PlanResult, *, quiet: bool = False) -> None:
    """The problems, then the cost table; with ``quiet``, the errors and one summary line."""
    problems(result.errors if quiet else result.problems, stream=sys.stdout)
    if result.errors:
        out(f"{len(result.errors)} error(s): fix them and run `floraq plan` again; nothing sent")
        return
    manifest = result.manifest
    cap = None
    if result.cap is not None:
        over = result.total_cost - result.cap
        verdict = "fits" if result.fits else f"EXCEEDS the cap by {usd(over)} USD"
        cap = f"max_cost {usd(result.cap)} USD: {verdict}"
    duplicates = f"{result.duplicates} duplicate row(s) will be submitted once"
    if quiet:
        parts = [f"{result.total_cost:.4f} USD", cap, duplicates if result.duplicates else None]
        out(
            f"batch {manifest.batch}: {result.rows} row(s) to run; "
            + "; ".join(filter(None, parts))
        )
        return
    out(f"batch {manifest.batch}: {result.rows} row(s) to run")
    out(f"{'technique':<28} {'rows':>7} {'run_cost':>10} {'cost (USD)':>12}")
    for cost in result.costs:
        out(f"{cost.slug:<28} {cost.rows:>7} {cost.run_cost:>10.4f} {cost.cost:>12.4f}")
    out(f"{'total':<28} {result.rows:>7} {'':>10} {result.total_cost:>12.4f}")
    if cap is not None:
        out(cap)
    if result.duplicates:
        out(duplicates)
    if result.uploads:
        out(
            f"local files: {len(result.uploads)} to upload ({result.upload_bytes:,} bytes),"
            f" {result.uploaded} of them already uploaded, to workspace {result.workspace_id}"
        )


# -- submit / resume ----------------------------------------------------------------------


def run_summary(result: RunResult, *, quiet: bool = False) -> None:
    """The end of submit/resume: what happened, what it cost, and what to do next.

    With ``quiet``, only the summary line and errors (a refused key): the exit code says
    what to do next, as a cron job reads it.
    """
    if result.plan is not None and result.plan.warnings and not quiet:
        problems(result.plan.warnings)
    status = result.status
    states = _by_state(status)
    parts = [f"{state} {n}" for state, n in states.items() if n]
    cost = status_view.cost_text(status)
    out(
        f"{', '.join(result.batches) or 'no batch'}: {status.total()} row(s):"
        f" {', '.join(parts) or 'nothing'}; {cost}"
    )
    if not quiet:
        for line in status_view.technique_cost_lines(status):
            out(line)
    auth = result.report.auth_error
    if quiet:
        if auth is not None:
            err(str(auth))
        return
    if result.inserted:
        out(f"{result.inserted} new row(s) queued")
    for change in status.cost_changes:
        err(f"warning: {change.describe()}")
    for note in result.notes:
        err(note)
    if result.report.paused:
        reasons = " and ".join(sorted(result.report.paused)).replace("_", " ")
        err(f"paused ({reasons}): the remaining rows stay queued; run `floraq resume` later")
    if result.exit_code == ExitCode.INCOMPLETE:
        err("runs are still in flight: run `floraq resume` to finish them")
    if status.failures:
        err(f"{len(status.failures)} row(s) need a look: `floraq status` lists them")


# -- status and batches (formatted by floraq.status_view) -----------------------------------


def status(result: StatusResult) -> None:
    for line in status_view.status_lines(result):
        out(line)


def status_json(result: StatusResult) -> None:
    out(json.dumps(status_view.status_document(result), indent=2, sort_keys=True, default=as_json))


def batches(items: list[BatchSummary]) -> None:
    for line in status_view.batches_lines(items):
        out(line)


def batches_json(items: list[BatchSummary]) -> None:
    out(json.dumps(status_view.batches_document(items), indent=2, sort_keys=True))


def techniques(items: list[Technique], *, detailed: bool) -> None:
    if not detailed:
        out(f"{'slug':<32} {'run_cost':>9}  inputs")
        for t in items:
            inputs = ", ".join(f"{i.id}:{i.type}" for i in t.inputs)
            out(f"{t.slug:<32} {t.run_cost:>9.4f}  {inputs}")
        return
    for t in items:
        out(f"{t.slug}  ({t.name}, {t.technique_id})  run_cost {t.run_cost:.4f} USD")
        for i in t.inputs:
            out(f"  input  {i.id:<24} {i.type:<12} {i.name}")
        for o in t.outputs:
            out(f"  output {o.id:<24} {o.type:<12} {o.name}")


# -- progress -----------------------------------------------------------------------------


class ProgressDisplay:
    """tqdm bars on a terminal; otherwise one plain line every few seconds; or nothing."""

    KINDS = ("submitted", "completed", "downloaded")

    def __init__(self, *, bars: bool, quiet: bool, clock: Any = time.monotonic) -> None:
        self.quiet = quiet
        self.clock = clock
        self.counts: dict[str, int] = defaultdict(int)
        self.last_line = clock()
        self.bars: dict[str, tqdm[Any]] = {}
        if bars and not quiet:
            self.bars = {
                kind: tqdm(desc=f"{kind:>10}", unit="run", position=i, leave=True, file=sys.stderr)
                for i, kind in enumerate(self.KINDS)
            }

    def advance(self, what: str, n: int = 1) -> None:
        self.counts[what] += n
        if self.quiet:
            return
        if what in self.bars:
            self.bars[what].update(n)
            return
        if not self.bars and self.clock() - self.last_line >= PLAIN_PROGRESS_EVERY:
            self.last_line = self.clock()
            err(self.line())

    def line(self) -> str:
        return "progress: " + ", ".join(f"{k} {self.counts[k]}" for k in self.KINDS)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _by_state(status: StatusResult) -> dict[str, int]:
    totals: dict[str, int] = {s.value: 0 for s in JobState}
    for c in status.counts:
        totals[c.state] = totals.get(c.state, 0) + c.count
    return totals


# -- costs per technique ------------------------------------------------------------------


# -- export, retry, report, batches, verify -------------------------------------------------


def data_stream() -> TextIO:
    """Where data goes when no file is named: stdout."""
    return sys.stdout


def export_done(result: ExportResult) -> None:
    where = str(result.path) if result.path is not None else "stdout"
    err(f"exported {result.rows} row(s) of {', '.join(result.batches) or 'no batch'} to {where}")


def retry_summary(result: RetryResult, *, quiet: bool = False) -> None:
    """What was re-queued and the run that followed; with ``quiet``, one line."""
    for line in [] if quiet else result.skipped:
        err(f"skipped: {line}")
    parts = [f"{kind} {n}" for kind, n in result.requeued.items()]
    total = sum(result.requeued.values())
    if not total and not result.refetched:
        why = f"{len(result.skipped)} row(s) skipped" if result.skipped else "no such row"
        out(f"nothing to retry: {why}")
        return
    if total and (result.run is None or not quiet):
        out(f"{total} row(s) given a new attempt: {', '.join(parts)}")
    if result.refetched and (result.run is None or not quiet):  # no new run: the same files
        out(f"{result.refetched} download_failed row(s) to fetch again (same run, no new charge)")
    if result.run is None:
        if not quiet:
            err("queued only: run `floraq resume` to send or fetch them")
        return
    run_summary(result.run, quiet=quiet)


def report_done(result: ReportResult) -> None:
    out(
        f"wrote {result.path}: {result.rows} row(s) of {', '.join(result.batches) or 'no batch'},"
        f" {result.images} output image(s)"
        + (
            f", on {result.pages} pages ({result.path.name} links the rest)"
            if result.pages > 1
            else ""
        )
    )


def verify(result: VerifyResult, *, quiet: bool = False) -> None:
    """Each missing or changed file, then the count; with ``quiet``, the count alone."""
    for p in [] if quiet else result.problems:
        f = p.file
        if p.kind == "missing":
            out(f"missing: {f.path} ({f.location}, output {f.output_id})")
        else:
            out(
                f"changed: {f.path} ({f.location}, output {f.output_id}):"
                f" {p.actual_bytes} bytes, sha256 {p.actual_sha256 or '(not hashed)'};"
                f" the ledger has {f.bytes} bytes, sha256 {f.sha256}"
            )
    missing = sum(1 for p in result.problems if p.kind == "missing")
    changed = len(result.problems) - missing
    out(f"{result.checked} file(s) checked: {missing} missing, {changed} changed")
    if result.problems and not quiet:
        err("run `floraq resume --redownload-missing` to fetch them again while their URLs work")
