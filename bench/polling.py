"""Polling workloads (issue 14 item 3): polls per run and detection latency, per workload.

Each workload is one run-time spread on one server capacity at one time scale, with its
own sandbox per client. At real speed (time scale 1) every workload runs at once, the
before and after clients too (a real-speed client is idle nearly all the time, so they do
not slow each other much). The scaled ones (time scale 0.1) run one workload at a time,
before and after side by side. Not 0.01: there the client is CPU-bound (``makespan``
scenario, finding 1) and most runs end before their first poll whatever the schedule.
Latency is the ledger's ``completed_at`` (when floraq saw the run done) minus the
sandbox's ``completed_at``, in unscaled seconds.
"""

from __future__ import annotations

import statistics
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.harness import ChildRun, Sandbox, run_floraq, write_inline_manifest
from bench.scenarios import BALANCE, POLL, _ledger_seen, _round
from floraq.core.poll_floor import polls_floor, uniform_run_times

TARGET_POLLS = 1.5  # polls per run
TARGET_P95 = 2.0  # seconds, unscaled


@dataclass(frozen=True, slots=True)
class Workload:
    """Run times (unscaled seconds, uniform), server capacity, rows and time scale."""

    name: str
    duration: tuple[float, float]
    capacity: int
    rows: int
    time_scale: float


REAL = (
    Workload("3-12s c10 real", (3.0, 12.0), 10, 120, 1.0),
    Workload("3-12s c200 real", (3.0, 12.0), 200, 400, 1.0),
    Workload("5-60s c10 real", (5.0, 60.0), 10, 60, 1.0),
    Workload("5-60s c50 real", (5.0, 60.0), 50, 150, 1.0),
    Workload("1-10min c200 real", (60.0, 600.0), 200, 40, 1.0),
)
SCALED = (
    Workload("3-12s c10 x0.1", (3.0, 12.0), 10, 300, 0.1),
    Workload("5-60s c10 x0.1", (5.0, 60.0), 10, 150, 0.1),
    Workload("5-60s c50 x0.1", (5.0, 60.0), 50, 400, 0.1),
    Workload("1-10min c200 x0.1", (60.0, 600.0), 200, 200, 0.1),
)


def run_all(
    work: Path, trees: dict[str, Path | None], *, real: bool = True, second_night: bool = False
) -> dict[str, Any]:
    """Every workload for every client tree (label -> checkout; None is this one).

    ``second_night``: each client first runs the workload's rows once unmeasured on the
    same ledger (another batch), so the measured run starts with run times learned.

    The real-speed workloads all run at once; the scaled ones one after another, each with
    its clients side by side, in a thread of their own next to the real-speed ones.
    """
    results: dict[str, Any] = {}

    def together(workloads: Sequence[Workload]) -> None:
        threads = [
            threading.Thread(target=_into, args=(results, work, w, label, tree, second_night))
            for w in workloads
            for label, tree in trees.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def scaled() -> None:
        for w in SCALED:
            together([w])

    side = threading.Thread(target=scaled)
    side.start()
    if real:
        together(REAL)
    side.join()
    return {name: results[name] for name in [w.name for w in (*REAL, *SCALED)] if name in results}


def _into(
    results: dict[str, Any], work: Path, w: Workload, label: str, tree: Path | None, again: bool
) -> None:
    entry = results.setdefault(w.name, {"workload": asdict(w)})
    try:
        entry[label] = measure(work, w, label, tree, second_night=again)
    except Exception as e:  # one broken workload must not lose the others' figures
        entry[label] = {"error": str(e)[-500:]}


def measure(
    work: Path, w: Workload, label: str, tree: Path | None, *, second_night: bool = False
) -> dict[str, Any]:
    """One floraq `submit` of the workload's rows against its own sandbox (after a first,
    unmeasured night on the same ledger and sandbox if ``second_night``)."""
    folder = work / f"{w.name.replace(' ', '_')}-{label}"
    folder.mkdir(parents=True)
    batch = "bench-polling"
    manifest = write_inline_manifest(folder / "jobs.yaml", batch=batch, rows=w.rows)
    ledger = folder / "state" / "floraq.db"
    knobs: dict[str, Any] = {
        "seed": 14,
        "time_scale": w.time_scale,
        "duration": w.duration,
        "capacity": w.capacity,
        "balance": BALANCE,
    }
    with Sandbox(folder, **knobs) as sandbox:
        if second_night:
            _first_night(folder / "night1", w, sandbox, ledger, tree)
        run = _submit(manifest, w, sandbox, ledger, tree, night="")
        stats, served = sandbox.stats(), sandbox.runs()
    seen = _ledger_seen(ledger)
    done = {r["run_id"]: r["completed_at"] / 1000 for r in served if r["completed_at"]}
    gaps = [(at - done[rid]) / w.time_scale for rid, (at, _) in seen.items() if rid in done]
    polls = stats["requests"].get(POLL, 0)
    return {
        "polls_per_run": _round(polls / w.rows),
        "detection_unscaled_s": _quantiles(gaps),
        "makespan_s": _round(run.wall),
        "cpu_s": _round(run.cpu),
        "ideal_s": _round(stats["schedule"]["ideal_makespan"]),
    }


def _first_night(
    folder: Path, w: Workload, sandbox: Sandbox, ledger: Path, tree: Path | None
) -> None:
    """The workload's rows once, as another batch on the same ledger; then the sandbox forgets."""
    folder.mkdir()
    manifest = write_inline_manifest(folder / "jobs.yaml", batch="bench-polling-1", rows=w.rows)
    _submit(manifest, w, sandbox, ledger, tree, night=" (first night)")
    sandbox.reset()


def _submit(
    manifest: Path, w: Workload, sandbox: Sandbox, ledger: Path, tree: Path | None, night: str
) -> ChildRun:
    """`floraq submit MANIFEST` run to the end in its folder; a failure stops the bench."""
    run = run_floraq(
        ["submit", str(manifest)],
        cwd=manifest.parent,
        sandbox=sandbox,
        ledger=ledger,
        time_scale=w.time_scale,
        tree=tree,
        timeout=3600,
    )
    if run.exit_code != 0:
        raise RuntimeError(f"floraq exited {run.exit_code}{night}: {run.stderr[-1000:]}")
    return run


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    if len(values) < 2:
        return {}
    cuts = statistics.quantiles(sorted(values), n=100, method="inclusive")
    return {"p50": _round(cuts[49], 2), "p95": _round(cuts[94], 2), "max": _round(max(values), 2)}


def table(found: dict[str, Any], labels: Sequence[str]) -> str:
    """One line per workload and client: polls per run, p50/p95 detection, targets."""
    lines = [
        f"polling workloads (targets: <= {TARGET_POLLS} polls/run, p95 <= {TARGET_P95} s unscaled)",
        "  floor: fewest polls/run any client can average at that p95 (2 - F(q05 + 2 s));"
        " aimed: the same with whole-percent progress; x aimed: polls/run over aimed",
        f"  {'workload':22}{'client':>8}{'rows':>6}{'polls/run':>11}{'floor':>7}{'aimed':>7}"
        f"{'x aimed':>8}{'p50 s':>8}{'p95 s':>8}{'makespan/ideal':>16}  targets",
    ]
    for name, entry in found.items():
        w = entry["workload"]
        least = polls_floor(uniform_run_times(*w["duration"]), TARGET_P95)
        for label in labels:
            got = entry.get(label)
            if got is None:
                continue
            if "error" in got:
                lines.append(f"  {name:22}{label:>8}  error: {got['error'][:80]}")
                continue
            lat = got["detection_unscaled_s"]
            ratio = got["makespan_s"] / got["ideal_s"] if got["ideal_s"] else 0.0
            polls_met = got["polls_per_run"] <= TARGET_POLLS
            p95_met = lat.get("p95", 1e9) <= TARGET_P95
            marks = (
                f"polls {'met' if polls_met else 'MISSED'}, p95 {'met' if p95_met else 'MISSED'}"
            )
            over = got["polls_per_run"] / least.whole_percent
            lines.append(
                f"  {name:22}{label:>8}{w['rows']:>6}{got['polls_per_run']:>11}"
                f"{least.any_client:>7.2f}{least.whole_percent:>7.2f}{over:>8.2f}"
                f"{lat.get('p50', '-')!s:>8}{lat.get('p95', '-')!s:>8}{ratio:>16.3f}  {marks}"
            )
    return "\n".join(lines)
