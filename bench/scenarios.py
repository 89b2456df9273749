"""The four scenarios of issue 6; each returns a JSON-able dict of what it measured.

Times are real seconds at ``TIME_SCALE`` (0.01): multiply by 100 for what they would be
against FLORA (``unscaled``). Every scenario starts its own sandbox process.
"""

from __future__ import annotations

import sqlite3
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import baselines
from bench.harness import (
    API_KEY,
    TECHNIQUE,
    TIME_SCALE,
    ChildRun,
    Sandbox,
    disk_bytes,
    image_rows,
    run_floraq,
    write_csv_manifest,
    write_inline_manifest,
)
from floraq.core.keys import idempotency_key
from floraq.sandbox.config import SandboxConfig, load_catalog
from floraq.sandbox.state import ideal_makespan, plan_run

BALANCE = 1e9  # USD: no scenario is about running out of credits
POST = "POST /techniques/{slug}/runs"
POLL = "GET /techniques/{slug}/runs/{run_id}"


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each scenario is; ``--quick`` shrinks them for a smoke check."""

    makespan_rows: int = 1000
    naive_sample: int = 100  # rows the sequential baseline really runs (0: all of them)
    overhead_rows: int = 10_000
    scale_rows: int = 100_000
    capacity: int = 50  # sandbox slots in scenario 1 (lower: less client load per second)
    baselines: bool = True  # False: floraq only (quicker, to compare two floraq trees)


FULL = Sizes()
QUICK = Sizes(makespan_rows=60, naive_sample=5, overhead_rows=300, scale_rows=1_000)


def _round(value: float, digits: int = 3) -> float:
    return round(value, digits)


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    """p50, p95 and max of latencies in real seconds, and the same unscaled."""
    if not values:
        return {}
    ordered = sorted(values)
    if len(ordered) == 1:
        p50 = p95 = ordered[0]
    else:
        cuts = statistics.quantiles(ordered, n=100, method="inclusive")
        p50, p95 = cuts[49], cuts[94]
    real = {"p50": p50, "p95": p95, "max": ordered[-1]}
    return {
        **{f"{k}_s": _round(v, 4) for k, v in real.items()},
        **{f"{k}_unscaled_s": _round(v / TIME_SCALE, 2) for k, v in real.items()},
    }


def _requests(stats: dict[str, Any], rows: int) -> dict[str, Any]:
    """Requests the sandbox counted, per row, split by what they were for."""
    by_route: dict[str, int] = stats["requests"]
    submit = by_route.get(POST, 0)
    poll = by_route.get(POLL, 0)
    download = int(stats["media_requests"])
    other = sum(by_route.values()) - submit - poll
    total = submit + poll + download + other
    return {
        "submit": submit,
        "poll": poll,
        "download": download,
        "other": other,
        "total": total,
        "per_row": {
            "submit": _round(submit / rows),
            "poll": _round(poll / rows),
            "download": _round(download / rows),
            "total": _round(total / rows),
        },
    }


def _child(run: ChildRun, rows: int) -> dict[str, Any]:
    """The usual figures of one floraq process."""
    ready = float(run.report.get("imported", run.started))
    return {
        "args": run.args,
        "exit_code": run.exit_code,
        "wall_s": _round(run.wall),
        "cpu_s": _round(run.cpu),
        "cpu_ms_per_row": _round(1000 * run.cpu / rows),
        "rows_per_s": _round(rows / run.wall, 1),
        "peak_rss_mb": _round(run.max_rss_mb, 1),
        "ledger_commits": run.commits,
        "start_to_main_s": _round(ready - run.started),  # interpreter start + imports
    }


def _check(run: ChildRun, expected: int) -> None:
    if run.exit_code != expected:
        raise RuntimeError(
            f"floraq {' '.join(run.args)} exited {run.exit_code}, expected {expected}:\n"
            f"{run.stderr[-2000:]}"
        )


# -- scenario 1 and 2: makespan and requests per run, with both baselines -----------------------


def makespan(work: Path, sizes: Sizes) -> dict[str, Any]:
    """1,000 rows of 5-60 s runs on 50 slots: floraq, the naive loop, and 8 threads."""
    rows = sizes.makespan_rows
    batch = "bench-makespan"
    knobs: dict[str, Any] = {
        "seed": 1,
        "time_scale": TIME_SCALE,
        "duration": (5.0, 60.0),
        "capacity": sizes.capacity,
        "balance": BALANCE,
    }
    plan = _schedule(batch, rows, knobs)
    manifest = write_inline_manifest(work / "makespan.yaml", batch=batch, rows=rows)
    ledger = work / "state" / "makespan.db"
    result: dict[str, Any] = {
        "rows": rows,
        "sandbox": {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()},
        "ideal_s": _round(plan["ideal"]),
        "ideal_unscaled_s": _round(plan["ideal"] / TIME_SCALE, 1),
        "sum_of_durations_s": _round(sum(plan["durations"])),
    }
    with Sandbox(work, **knobs) as sandbox:
        server_cpu = sandbox.cpu()
        run = run_floraq(["submit", str(manifest)], cwd=work, sandbox=sandbox, ledger=ledger)
        server_cpu = sandbox.cpu() - server_cpu
        _check(run, 0)
        stats, served = sandbox.stats(), sandbox.runs()
        seen = _ledger_seen(ledger)
        first_created = min(r["created_at"] for r in served) / 1000
        last_completed = max(r["completed_at"] for r in served) / 1000
        result["floraq"] = {
            **_child(run, rows),
            "makespan_s": _round(run.wall),
            "makespan_over_ideal": _round(run.wall / plan["ideal"]),
            "runs_phase_over_ideal": _round((last_completed - first_created) / plan["ideal"]),
            "sandbox_ideal_s": _round(stats["schedule"]["ideal_makespan"]),
            "phases_s": {
                "start_to_first_run": _round(first_created - run.started),
                "first_run_to_last_completion": _round(last_completed - first_created),
                "last_completion_to_exit": _round(run.ended - last_completed),
            },
            "server_cpu_s": _round(server_cpu),
            "requests": _requests(stats, rows),
            "detection_latency": _latencies(served, seen),
            "runs_created": stats["runs_created"],
        }
        if sizes.baselines:
            result["thread_pool_8"] = _baseline(
                sandbox, work, plan, rows=rows, workers=8, label="threads"
            )
            sample = sizes.naive_sample or rows
            result["naive_loop"] = _baseline(
                sandbox, work, plan, rows=min(sample, rows), workers=1, label="naive"
            )
    for name in ("thread_pool_8", "naive_loop"):
        base = result.get(name)
        if base is None:
            continue
        base["makespan_over_ideal"] = _round(base["makespan_s"] / plan["ideal"])
        base["floraq_speedup"] = _round(base["makespan_s"] / result["floraq"]["makespan_s"], 1)
    return result


def _schedule(batch: str, rows: int, knobs: dict[str, Any]) -> dict[str, Any]:
    """The sandbox's own schedule for these rows: each run's duration, and the ideal makespan.

    Same seed, slug and key as the run will have, so the same durations; the ideal is when
    the last run would end if every run were submitted at t=0, in row order.
    """
    config = SandboxConfig(
        seed=knobs["seed"],
        time_scale=knobs["time_scale"],
        duration=knobs["duration"],
        capacity=knobs["capacity"],
    )
    technique = load_catalog().find(TECHNIQUE)
    assert technique is not None
    durations: list[float] = []
    rows_out: list[baselines.BaselineRow] = []
    for number, values in enumerate(image_rows(rows), 1):
        key = idempotency_key(batch=batch, technique=TECHNIQUE, inputs=values, attempt=1)
        inputs = tuple((slot.id, slot.type, values[slot.id]) for slot in technique.inputs)
        durations.append(plan_run(config, technique, inputs, key, number - 1).duration)
        rows_out.append(
            baselines.BaselineRow(
                number=number,
                inputs=[{"id": i, "type": t, "value": v} for i, t, v in inputs],
                idempotency_key=key,
            )
        )
    return {
        "durations": durations,
        "rows": rows_out,
        "ideal": ideal_makespan(durations, config.capacity),
    }


def _ledger_seen(ledger: Path) -> dict[str, tuple[float, int]]:
    """run id -> (when floraq saw it finished, local epoch s; its polls), from the ledger."""
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT run_id, completed_at, polls FROM jobs WHERE completed_at IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    return {run_id: (float(at), int(polls)) for run_id, at, polls in rows}


def _latencies(served: list[dict[str, Any]], seen: dict[str, tuple[float, int]]) -> dict[str, Any]:
    """How long after the sandbox completed each run the client saw it (same machine clock)."""
    done = {r["run_id"]: r["completed_at"] / 1000 for r in served if r["completed_at"]}
    gaps = [at - done[run_id] for run_id, (at, _) in seen.items() if run_id in done]
    polls = [p for _, p in seen.values()]
    return {
        "runs": len(gaps),
        **_quantiles(gaps),
        "polls_per_run_mean": _round(statistics.fmean(polls), 2) if polls else None,
        "polls_per_run_max": max(polls, default=None),
    }


def _baseline(
    sandbox: Sandbox,
    work: Path,
    plan: dict[str, Any],
    *,
    rows: int,
    workers: int,
    label: str,
) -> dict[str, Any]:
    """Run a baseline on the first ``rows`` rows; extrapolate to all rows if that is fewer."""
    sandbox.reset()
    total_rows = len(plan["rows"])
    t0 = time.perf_counter()
    seen = baselines.run_rows(
        plan["rows"][:rows],
        base_url=sandbox.base_url,
        api_key=API_KEY,
        slug=TECHNIQUE,
        out_dir=work / f"baseline-{label}",
        workers=workers,
        poll_every=baselines.POLL_EVERY * TIME_SCALE,
    )
    wall = time.perf_counter() - t0
    stats, served = sandbox.stats(), sandbox.runs()
    measured = {s.run_id: (s.seen_at, s.polls) for s in seen}
    result: dict[str, Any] = {
        "workers": workers,
        "poll_every_s": baselines.POLL_EVERY * TIME_SCALE,
        "rows_run": rows,
        "measured_wall_s": _round(wall),
        "requests": _requests(stats, rows),
        "detection_latency": _latencies(served, measured),
    }
    if rows < total_rows:
        # One row at a time, so its time is a sum over rows: scale by the rows' work.
        durations = plan["durations"]
        factor = sum(durations) / sum(durations[:rows])
        result["makespan_s"] = _round(wall * factor)
        result["extrapolated"] = f"from {rows} of {total_rows} rows, x{factor:.2f} (their run time)"
    else:
        result["makespan_s"] = _round(wall)
    return result


# -- scenario 3: client overhead --------------------------------------------------------------


def overhead(work: Path, sizes: Sizes) -> dict[str, Any]:
    """10,000 instant runs: what floraq itself costs per row, end to end."""
    rows = sizes.overhead_rows
    knobs: dict[str, Any] = {
        "seed": 3,
        "time_scale": TIME_SCALE,
        "duration": (0.0, 0.0),
        "capacity": 50,
        "balance": BALANCE,
    }
    manifest = write_csv_manifest(work / "overhead.yaml", batch="bench-overhead", rows=rows)
    ledger = work / "state" / "overhead.db"
    with Sandbox(work, **knobs) as sandbox:
        server_cpu = sandbox.cpu()
        run = run_floraq(["submit", str(manifest)], cwd=work, sandbox=sandbox, ledger=ledger)
        server_cpu = sandbox.cpu() - server_cpu
        _check(run, 0)
        stats = sandbox.stats()
    return {
        "rows": rows,
        "floraq": {
            **_child(run, rows),
            "ledger_commits_per_s": _round(run.commits / run.wall, 1),
            "ledger_commits_per_row": _round(run.commits / rows, 2),
            "server_cpu_s": _round(server_cpu),
            "server_cpu_ms_per_row": _round(1000 * server_cpu / rows),
            "requests": _requests(stats, rows),
            "ledger_mb": _round(disk_bytes(ledger) / 2**20, 1),
        },
    }


# -- scenario 4: scale ----------------------------------------------------------------------


def scale(work: Path, sizes: Sizes) -> dict[str, Any]:
    """A 100,000-row CSV: `plan` time, `submit --no-wait` peak RSS, ledger size; and at 1/10."""
    knobs: dict[str, Any] = {
        "seed": 4,
        "time_scale": TIME_SCALE,
        "duration": (5.0, 60.0),
        "capacity": 50,
        "balance": BALANCE,
    }
    result: dict[str, Any] = {"rows": sizes.scale_rows, "by_size": {}}
    with Sandbox(work, **knobs) as sandbox:
        for rows in (sizes.scale_rows // 10, sizes.scale_rows):
            sandbox.reset()
            folder = work / f"scale-{rows}"
            folder.mkdir()
            manifest = write_csv_manifest(folder / "jobs.yaml", batch=f"bench-{rows}", rows=rows)
            ledger = folder / "state" / "floraq.db"
            planned = run_floraq(
                ["plan", str(manifest)], cwd=folder, sandbox=sandbox, ledger=ledger
            )
            _check(planned, 0)
            submitted = run_floraq(
                ["submit", "--no-wait", str(manifest)],
                cwd=folder,
                sandbox=sandbox,
                ledger=ledger,
                sample_rss=0.5,
            )
            _check(submitted, 6)
            runs_created = sandbox.stats()["runs_created"]
            result["by_size"][str(rows)] = {
                "csv_mb": _round(manifest.with_suffix(".csv").stat().st_size / 2**20, 1),
                "plan": _child(planned, rows),
                "submit_no_wait": {
                    **_child(submitted, rows),
                    "runs_created": runs_created,
                    "rss_mb_over_time": _rss_curve(submitted),
                },
                "ledger_mb": _round(disk_bytes(ledger) / 2**20, 1),
                "ledger_bytes_per_row": round(disk_bytes(ledger) / rows),
            }
    small, big = (result["by_size"][str(n)] for n in (sizes.scale_rows // 10, sizes.scale_rows))
    extra_rows = sizes.scale_rows - sizes.scale_rows // 10
    for what in ("plan", "submit_no_wait"):
        growth = big[what]["peak_rss_mb"] - small[what]["peak_rss_mb"]
        result[f"{what}_rss_kb_per_1000_rows"] = _round(1024 * growth / extra_rows * 1000, 1)
    return result


def _rss_curve(run: ChildRun, points: int = 12) -> list[tuple[float, float]]:
    """About ``points`` (seconds, MiB) samples spread over the run, to show the shape."""
    samples = run.rss_samples
    if not samples:
        return []
    step = max(1, len(samples) // points)
    picked = samples[::step]
    if picked[-1] != samples[-1]:
        picked.append(samples[-1])
    return [(t, _round(kb / 1024, 1)) for t, kb in picked]
