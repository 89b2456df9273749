"""Smoke check of the benchmarks (bench/): the quickest mode still runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import clean_env

REPO = Path(__file__).resolve().parent.parent


def test_bench_quick_mode_writes_every_scenario_and_target(tmp_path: Path) -> None:
    """`python -m bench.run --quick` exits 0 and reports all scenarios, baselines and targets."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert set(results["scenarios"]) == {"makespan", "overhead", "scale"}
    makespan = results["scenarios"]["makespan"]
    assert makespan["floraq"]["runs_created"] == makespan["rows"]
    assert makespan["floraq"]["requests"]["per_row"]["submit"] == 1
    assert {"thread_pool_8", "naive_loop"} <= set(makespan)
    assert len(results["targets"]) == 10
    assert "targets:" in done.stdout
