"""The runner's poll schedule on a fake clock: pending runs back off, running runs are predicted.

One run waits 20 s for a slot, then runs 30 s. The server's clock is far from ours, so the
prediction must come from the server's own ``created_at``/``started_at`` difference.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import httpx
import pytest
from ledgers import LedgerWith
from test_runner_rounds import MEDIA, drive, media, states

from floraq.core.polling import PollPolicy

SERVER_EPOCH_MS = 1_700_000_000_000  # the server's created_at; our fake clock starts at 0
WAIT, RUN = 20.0, 30.0  # seconds pending, then seconds running


class FakeFlora:
    """One run whose answers follow the fake clock, as the sandbox's do for real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.polls: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)

    def run(self) -> dict[str, Any]:
        t = self.now
        body: dict[str, Any] = {"run_id": "run_1", "created_at": SERVER_EPOCH_MS, "progress": 0}
        if t < WAIT:
            return body | {"status": "pending"}
        body["started_at"] = SERVER_EPOCH_MS + int(WAIT * 1000)
        if t < WAIT + RUN:
            return body | {"status": "running", "progress": math.floor(100 * (t - WAIT) / RUN)}
        return body | {
            "status": "completed",
            "progress": 100,
            "completed_at": SERVER_EPOCH_MS + int((WAIT + RUN) * 1000),
            "charged_cost": 0.1,
            "outputs": [{"output_id": "poster", "type": "imageUrl", "url": MEDIA}],
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "media.test":
            return media(request)
        if request.method == "POST":
            return httpx.Response(200, json=self.run())
        self.polls.append(round(self.now, 3))
        return httpx.Response(200, json=self.run())


def test_pending_polls_back_off_and_progress_predicts_the_end(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """Pending polls back off (5, 7.5, 10 s); then progress points past the end: 5 polls."""
    fake = FakeFlora()
    ledger = ledger_with(["a kite"])

    drive(
        ledger,
        fake.handler,
        tmp_path,
        slots=8,
        clock=lambda: fake.now,
        sleep=fake.sleep,
        rand=lambda: 0.0,
        time_scale=1.0,
    )
    assert states(ledger) == {"downloaded": 1}
    # 1.6 s (2 s less 20 % jitter), then pending back-off 5, 7.5, 10 (capped at 5 + 5 with
    # nothing learned); at 24.1 s it has run 4.1 s at 13 %: it ends between 49.29 s and
    # 51.54 s, so the next poll aims at the soonest end plus the 2 s target latency (not at
    # the soonest end itself, where it would still be running) and sees it completed.
    assert fake.polls == pytest.approx([1.6, 6.6, 14.1, 24.1, 51.286], abs=0.001)
    row = ledger.query("SELECT polls, completed_at FROM jobs")[0]
    assert row["polls"] == 5
    assert row["completed_at"] - (WAIT + RUN) == pytest.approx(1.286, abs=0.001)
    assert row["completed_at"] - (WAIT + RUN) <= PollPolicy().target_latency


def test_a_run_left_pending_is_left_for_resume_after_as_long_as_max_polls_would_take(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """Fewer, longer waits do not hold the ledger longer: max_polls x max_interval at most."""
    fake = FakeFlora()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            fake.polls.append(round(fake.now, 3))
        return httpx.Response(200, json={"run_id": "run_1", "status": "pending", "progress": 0})

    ledger = ledger_with(["a kite"])
    report = drive(
        ledger,
        handler,
        tmp_path,
        clock=lambda: fake.now,
        sleep=fake.sleep,
        rand=lambda: 0.0,
        time_scale=1.0,
        max_polls=20,
    )
    assert states(ledger) == {"submitted": 1} and report.incomplete == 1
    assert len(fake.polls) < 20  # the pending back-off reached 10 s between polls
    assert fake.polls[-1] - fake.polls[0] >= 20 * PollPolicy().max_interval
    assert fake.polls[-2] - fake.polls[0] < 20 * PollPolicy().max_interval
    assert ledger.query("SELECT polls FROM jobs")[0]["polls"] == len(fake.polls)
