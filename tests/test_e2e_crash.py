"""Crash safety end to end: die at every dangerous instant, or at random ones, then resume.

Every test ends with ``assert_sound``: no row was paid for twice, every output on disk is
the sandbox's exact bytes under its final name (no partial file anywhere), the ledger
passes ``PRAGMA integrity_check``, and every row is in a final state.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Floraq, output_files, served_outputs, sha256, status_json

from floraq.crashpoints import POINTS
from floraq.ledger.lean_rows import OUTPUT_PATH, OUTPUTS_JOINED
from floraq.sandbox import SandboxServer

IMG = "https://storage.googleapis.com/floraq-crash/{n}.jpg"
FINAL = {"downloaded", "failed", "rejected", "unknown_outcome", "expired"}
SOAK = os.environ.get("FLORAQ_SOAK") == "1"


def manifest(floraq: Floraq, rows: int, *, batch: str = "crash", concurrency: int = 8) -> Path:
    """`rows` rows: a third social-pack (two outputs, one of them text), the rest portraits."""
    social = rows // 3
    jobs: list[dict[str, Any]] = [
        {
            "technique": "portrait-enhancer",
            "rows": [{"input_image": IMG.format(n=n)} for n in range(rows - social)],
        }
    ]
    if social:
        jobs.append(
            {
                "technique": "social-pack",
                "with": {"tone": "warm"},
                "rows": [{"input_image": IMG.format(n=f"s{n}")} for n in range(social)],
            }
        )
    return floraq.write_manifest(batch=batch, concurrency=concurrency, jobs=jobs)


def assert_sound(floraq: Floraq, sandbox: SandboxServer, rows: int) -> dict[str, int]:
    """The invariants of crash safety; returns the rows per state."""
    runs = sandbox.runs()
    keys = [r["idempotency_key"] for r in runs]
    assert len(keys) == len(set(keys)) == sandbox.stats()["runs_created"], "a row paid twice"
    jobs = floraq.query("SELECT id, state, idempotency_key, run_id FROM jobs")
    assert len(jobs) == rows and {j["state"] for j in jobs} <= FINAL
    by_key = {r["idempotency_key"]: r["run_id"] for r in runs}
    for job in jobs:
        if job["run_id"] is not None:
            assert by_key[job["idempotency_key"]] == job["run_id"]
        if job["state"] == "unknown_outcome":
            assert job["run_id"] is None
    served = served_outputs(sandbox)
    outputs = floraq.query(
        f"SELECT j.idempotency_key, o.output_id, {OUTPUT_PATH} AS path, o.sha256, o.state"
        " FROM outputs o JOIN jobs j ON j.id = o.job_id JOIN batches b ON b.name = j.batch"
        " WHERE j.state = 'downloaded'"
    )
    for out in outputs:
        path = Path(out["path"])
        assert out["state"] == "downloaded"
        assert (
            sha256(path) == out["sha256"] == served[f"{out['idempotency_key']}/{out['output_id']}"]
        )
    assert (floraq.cwd / "outputs" / ".floraq" / "owner.json").is_file()
    on_disk = sorted(output_files(floraq.cwd / "outputs"))
    assert [p for p in on_disk if p.name.endswith(".part")] == []
    assert on_disk == sorted(Path(o["path"]) for o in outputs)
    conn = sqlite3.connect(floraq.ledger_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    states: dict[str, int] = {}
    for job in jobs:
        states[job["state"]] = states.get(job["state"], 0) + 1
    return states


# -- (a) named crash points ---------------------------------------------------------------


@pytest.mark.parametrize("mode", ["replay", "suppress"])
@pytest.mark.parametrize("point", sorted(POINTS))
def test_crash_point_then_resume_never_pays_twice(
    floraq: Floraq, sandbox: SandboxServer, point: str, mode: str
) -> None:
    """Dying at each crash point, under both idempotency readings, loses and doubles nothing."""
    sandbox.configure(idempotency=mode, duration=[1, 3])
    jobs = manifest(floraq, 12, concurrency=4)
    crashed = floraq("submit", str(jobs), FLORAQ_CRASH_AT=f"{point}:5")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    files = output_files(floraq.cwd / "outputs")
    recorded = {
        o["path"]
        for o in floraq.query(
            f"SELECT {OUTPUT_PATH} AS path FROM {OUTPUTS_JOINED} WHERE o.path IS NOT NULL"
        )
    }
    if point == "mid_download":  # it died with half a file, under its .part name only
        assert any(p.name.endswith(".part") for p in files)
    if point == "after_rename_before_commit":  # a complete file the ledger does not know yet
        assert any(str(p) not in recorded for p in files if not p.name.endswith(".part"))
    done = floraq("resume")
    states = assert_sound(floraq, sandbox, 12)
    lost_reply = point == "after_post_before_commit"
    if mode == "replay" or not lost_reply:
        assert done.returncode == 0, done.stderr
        assert states == {"downloaded": 12}
        assert sandbox.stats()["runs_created"] == 12
    else:
        # The run exists but its id was never committed, and a 409 will not tell it: the
        # row is `unknown_outcome`, never re-sent on its own; the rest finish.
        assert done.returncode == 1, done.stderr
        assert states["unknown_outcome"] >= 1
        assert states["unknown_outcome"] + states["downloaded"] == 12
        assert sandbox.stats()["idempotency_rejections"] == states["unknown_outcome"]


def test_crash_point_names_match_the_readme() -> None:
    """The README documents exactly the crash points the code knows."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("| `FLORAQ_CRASH_AT`"))
    assert set(re.findall(r"`([a-z_]+)`", line)) == POINTS


def test_unknown_crash_point_is_a_usage_error_before_anything_is_written(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """A misspelt FLORAQ_CRASH_AT stops at once with exit 2; no ledger, no request."""
    jobs = manifest(floraq, 3)
    done = floraq("submit", str(jobs), FLORAQ_CRASH_AT="after_everything")
    assert done.returncode == 2
    assert "FLORAQ_CRASH_AT='after_everything' is not a crash point" in done.stderr
    assert "Traceback" not in done.stderr
    assert not floraq.ledger_path.exists()
    assert sandbox.stats()["requests"] == {}


# -- (b) SIGKILL at random instants ---------------------------------------------------------


def queued_rows(floraq: Floraq) -> int:
    """Rows in the ledger so far (a kill can leave a ledger file with no tables yet)."""
    try:
        return int(floraq.query("SELECT COUNT(*) AS n FROM jobs")[0]["n"])
    except sqlite3.OperationalError:
        return 0


def steps_done(floraq: Floraq) -> int:
    """The batch's progress in the ledger: rows with a committed run id, plus rows downloaded."""
    try:
        [row] = floraq.query(
            "SELECT COUNT(run_id) AS runs,"
            " COALESCE(SUM(state = 'downloaded'), 0) AS downloaded FROM jobs"
        )
    except sqlite3.OperationalError:
        return 0
    return int(row["runs"]) + int(row["downloaded"])


KILL_WAIT = 60.0  # seconds to wait for a process to reach its kill point before killing anyway


def wait_for_steps(floraq: Floraq, proc: subprocess.Popen[str], *, rows: int, steps: int) -> None:
    """Wait until every row is queued and the ledger shows `steps` steps (or `proc` exits)."""
    deadline = time.monotonic() + KILL_WAIT
    while proc.poll() is None and time.monotonic() < deadline:
        if queued_rows(floraq) == rows and steps_done(floraq) >= steps:
            return
        time.sleep(0.005)


def kill_and_resume(
    floraq: Floraq, sandbox: SandboxServer, *, rows: int, kills: int, seed: int
) -> dict[str, int]:
    """Start, SIGKILL at a seeded random instant, start again; `kills` times, then finish.

    Instants are counted in the batch's own progress, not in seconds, so they land in
    the batch whatever the machine's speed: most kills come a seeded 0-30 ms after the
    process has moved the ledger 1-8 steps on (a POST, a commit, a download may each be
    under way); once the batch is under way, some come blind, 0-0.4 s after start (in
    start-up or the first steps), as a power cut would. Returns the rows per state
    after the final run.
    """
    sandbox.configure(duration=[1, 4])
    jobs = manifest(floraq, rows, batch=f"kill-{seed}")
    rng = random.Random(seed)
    mid_batch = 0
    for _ in range(kills):
        queued = queued_rows(floraq) == rows
        under_way, before = queued and steps_done(floraq) > 0, steps_done(floraq)
        proc = floraq.start(*(("resume",) if queued else ("submit", str(jobs))))
        if under_way and rng.random() < 0.25:
            time.sleep(rng.uniform(0, 0.4))
        else:
            wait_for_steps(floraq, proc, rows=rows, steps=before + rng.randint(1, 8))
            time.sleep(rng.uniform(0, 0.03))
        proc.kill()
        proc.communicate()
        if sandbox.stats()["runs_created"] > 0 and queued_rows(floraq) == rows:
            mid_batch += floraq.states() != {"downloaded": rows}
    assert mid_batch >= kills // 2, "most kills must land while the batch is under way"
    done = floraq("submit", str(jobs))
    assert done.returncode == 0, done.stderr
    return assert_sound(floraq, sandbox, rows)


@pytest.mark.slow
def test_twenty_random_kills_pay_each_row_once(floraq: Floraq, sandbox: SandboxServer) -> None:
    """20 SIGKILLs across a 300-row batch (seeded), resumed after each: every row once."""
    states = kill_and_resume(floraq, sandbox, rows=300, kills=20, seed=4)
    assert states == {"downloaded": 300}
    assert sandbox.stats()["runs_created"] == 300


@pytest.mark.soak
@pytest.mark.skipif(not SOAK, reason="soak: set FLORAQ_SOAK=1")
@pytest.mark.parametrize("seed", range(5))
def test_soak_random_kills(floraq: Floraq, sandbox: SandboxServer, seed: int) -> None:
    """Soak: 60 kills across 1,000 rows per seed."""
    states = kill_and_resume(floraq, sandbox, rows=1000, kills=60, seed=100 + seed)
    assert states == {"downloaded": 1000}


# -- the idempotency window -----------------------------------------------------------------


def test_intent_older_than_the_key_window_is_never_resent(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """A POST whose reply was lost, found after the window: unknown_outcome, not a second run."""
    sandbox.configure(idempotency_window=0.5)
    jobs = manifest(floraq, 1, concurrency=1)
    window = {"FLORAQ_IDEMPOTENCY_WINDOW": "0.5"}
    crashed = floraq("submit", str(jobs), FLORAQ_CRASH_AT="after_post_before_commit", **window)
    assert crashed.returncode == -signal.SIGKILL
    time.sleep(0.6)
    done = floraq("resume", **window)
    assert done.returncode == 1, done.stderr
    stats = sandbox.stats()
    assert stats["runs_created"] == 1
    assert stats["requests"]["POST /techniques/{slug}/runs"] == 1
    [row] = status_json(floraq)["failures"]
    assert row["state"] == "unknown_outcome"
    assert row["error_code"] == "idempotency_window_passed"
    assert "floraq retry --unknown" in row["error_message"]


def test_lost_reply_inside_the_window_is_recovered_by_a_replay(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """Inside the window, the same key gets the same run back: one run, every file."""
    jobs = manifest(floraq, 1, concurrency=1)
    crashed = floraq("submit", str(jobs), FLORAQ_CRASH_AT="after_post_before_commit")
    assert crashed.returncode == -signal.SIGKILL
    assert floraq("resume").returncode == 0
    assert sandbox.stats()["idempotent_replays"] == 1
    assert assert_sound(floraq, sandbox, 1) == {"downloaded": 1}


def test_409_in_suppress_mode_means_unknown_outcome_with_request_id(
    floraq: Floraq, sandbox: SandboxServer
) -> None:
    """A 409 to a repeated key: the row waits, with its request id, until `retry --unknown`."""
    sandbox.configure(idempotency="suppress")
    jobs = manifest(floraq, 1, concurrency=1)
    floraq("submit", str(jobs), FLORAQ_CRASH_AT="after_post_before_commit")
    done = floraq("resume")
    assert done.returncode == 1
    assert sandbox.stats()["runs_created"] == 1
    shown = floraq("status")
    assert "unknown_outcome" in shown.stdout and "idempotency_duplicate" in shown.stdout
    assert "request-id req_" in shown.stdout
    # The operator's explicit way out: a new attempt, a new key, a new (paid) run.
    retried = floraq("retry", "--unknown")
    assert retried.returncode == 0, retried.stderr
    assert floraq.query("SELECT state, attempt FROM jobs") == [
        {"state": "downloaded", "attempt": 2}
    ]
    assert sandbox.stats()["runs_created"] == 2


# -- signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_a_signal_stops_at_once_and_resume_finishes(
    floraq: Floraq, sandbox: SandboxServer, signum: int
) -> None:
    """Ctrl-C or SIGTERM mid-batch: exit 130 without waiting for the runs in flight;
    `resume` then finishes every row.

    The sandbox's clock is frozen, so no run can finish while floraq is stopping: an exit
    at all proves it did not wait for them (no bound that depends on the machine's speed).
    """
    sandbox.configure(duration=[50, 100], frozen_clock=True)
    jobs = manifest(floraq, 16)
    proc = floraq.start("submit", str(jobs))
    deadline = time.monotonic() + 30
    while sandbox.stats()["runs_created"] < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert sandbox.stats()["downloads"] == 0  # it stopped with every run still running
    sandbox.configure(frozen_clock=False)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "floraq resume" in err and "Traceback" not in err
    known = floraq.query("SELECT COUNT(*) AS n FROM jobs WHERE run_id IS NOT NULL")[0]["n"]
    assert known >= 10 - 8  # every reply that arrived is committed (8 may have been in flight)
    sandbox.configure(duration=[1, 3])
    done = floraq("resume")
    assert done.returncode == 0, done.stderr
    assert assert_sound(floraq, sandbox, 16) == {"downloaded": 16}
