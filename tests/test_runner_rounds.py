"""The runner against httpx.MockTransport: rounds after the client gives up, and clean stops.

These are the edges no sandbox knob reaches exactly (a FLORA that fails every poll for a
while, one row whose POST always gets the same 500, a 401 while other POSTs wait for a
slot); nothing here sleeps for real.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from ledgers import AnyLedger, LedgerWith

from floraq.core.technique import Technique
from floraq.retry import RetryPolicy
from floraq.runner import JOB_ROUNDS, RunReport, Seams, build_runner
from floraq.runner.context import DEFAULT_MAX_POLLS
from floraq.settings import Settings

BASE = "https://flora.test/api/v1"
MEDIA = "https://media.test/out.png"
POSTER = {
    "technique_id": "tech_poster",
    "name": "Poster",
    "run_cost": 0.1,
    "inputs": [{"id": "prompt", "name": "Prompt", "type": "text"}],
    "outputs": [{"id": "poster", "name": "Poster", "type": "imageUrl"}],
}
DONE = {
    "run_id": "run_1",
    "status": "completed",
    "progress": 100,
    "charged_cost": 0.1,
    "outputs": [{"output_id": "poster", "type": "imageUrl", "url": MEDIA}],
}


async def no_wait(_: float) -> None:
    await asyncio.sleep(0)


def drive(
    ledger: AnyLedger,
    handler: Callable[[httpx.Request], httpx.Response],
    tmp: Path,
    *,
    slots: int = 1,
    key: str = "sk_test",
    techniques: dict[str, Technique] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = no_wait,
    rand: Callable[[], float] = random.random,
    time_scale: float = 0.0,
    max_polls: int = DEFAULT_MAX_POLLS,
) -> RunReport:
    """Run every job of batch `b` to the end against `handler`, never sleeping for real.

    The runner is built as the CLI builds it (``build_runner``): batch `b` writes to
    ``tmp`` with no cap and one automatic re-run, and ``techniques`` (the poster by
    default) are what the ledger has cached.
    """
    ledger.save_batch(
        "b",
        manifest_path=None,
        output_dir=str(tmp),
        concurrency=2,
        max_cost=None,
        retry_failed_runs=1,
    )
    known = {"poster": Technique.from_api("poster", POSTER)} if techniques is None else techniques
    for slug, technique in known.items():
        ledger.save_technique(slug, technique.to_api(), technique.run_cost)
    settings = Settings(api_key=key, base_url=BASE, concurrency=slots, time_scale=time_scale)
    seams = Seams(
        transport=httpx.MockTransport(handler),
        net_sleep=no_wait,
        clock=clock,
        sleep=sleep,
        rand=rand,
        max_polls=max_polls,
    )

    async def go() -> RunReport:
        async with build_runner(settings, ledger, ["b"], seams=seams) as runner:
            return await runner.run()

    return asyncio.run(go())


def states(ledger: AnyLedger) -> dict[str, int]:
    rows = ledger.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


def media(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"png", headers={"content-type": "image/png"})


def test_polls_that_keep_failing_for_a_while_are_retried_in_rounds(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """Polls that fail past the client's retries are tried again later; the row completes."""
    failures = {"left": 2 * RetryPolicy().max_attempts}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "media.test":
            return media(request)
        if request.method == "POST":
            return httpx.Response(200, json={"run_id": "run_1", "status": "pending"})
        if failures["left"] > 0:
            failures["left"] -= 1
            raise httpx.ConnectError("down", request=request)
        return httpx.Response(200, json=DONE)

    ledger = ledger_with(["a kite"])
    report = drive(ledger, handler, tmp_path, slots=2)
    assert states(ledger) == {"downloaded": 1}
    assert report.incomplete == 0


def test_a_step_that_never_recovers_is_left_for_resume(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """After JOB_ROUNDS more rounds the job stays `submitted`, counted as incomplete."""
    attempts = {"polls": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"run_id": "run_1", "status": "pending"})
        attempts["polls"] += 1
        return httpx.Response(503, json={"error": {"code": "service_unavailable"}})

    ledger = ledger_with(["a kite"])
    report = drive(ledger, handler, tmp_path, slots=2)
    assert states(ledger) == {"submitted": 1}
    assert report.incomplete == 1
    assert attempts["polls"] > JOB_ROUNDS  # every round asked again, each within the policy


def test_the_same_500_again_and_again_fails_only_that_row(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """A row whose POST always gets 500 unknown_error stops as `failed`; the other finishes."""
    posts: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "media.test":
            return media(request)
        if request.method == "POST":
            prompt = json.loads(request.content)["inputs"][0]["value"]
            posts[prompt] = posts.get(prompt, 0) + 1
            if "prj_bad" in prompt:
                body = {"error": {"code": "unknown_error", "message": "An unknown error."}}
                return httpx.Response(500, json=body, headers={"request-id": "req_500"})
            return httpx.Response(200, json={"run_id": "run_1", "status": "pending"})
        return httpx.Response(200, json=DONE)

    ledger = ledger_with(["a kite", "prj_bad kite"])
    drive(ledger, handler, tmp_path, slots=2)
    assert states(ledger) == {"downloaded": 1, "failed": 1}
    [row] = ledger.query("SELECT error_code, failure_tier, request_id FROM jobs WHERE id = 2")
    assert row == {"error_code": "unknown_error", "failure_tier": "report", "request_id": "req_500"}
    assert posts == {"a kite": 1, "prj_bad kite": 6}


def test_401_withdraws_the_posts_still_waiting_for_a_slot(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """With one request slot, the first POST's 401 means no other POST is ever sent."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        body = {"error": {"code": "invalid_api_key", "message": "Invalid API key."}}
        return httpx.Response(401, json=body)

    ledger = ledger_with([f"kite {n}" for n in range(5)])
    report = drive(ledger, handler, tmp_path, slots=1)
    assert seen == ["POST"]
    assert report.auth_error is not None and report.auth_error.status == 401
    assert states(ledger) == {"queued": 5}
    assert ledger.query("SELECT COUNT(*) AS n FROM jobs WHERE error_code = 'invalid_api_key'") == [
        {"n": 1}
    ]


def test_402_pauses_new_posts_but_finishes_the_runs_in_flight(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """After a 402, waiting POSTs go back to `queued`; runs already made are downloaded."""
    created = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "media.test":
            return media(request)
        if request.method == "POST":
            if created["n"] >= 2:
                body = {"error": {"code": "insufficient_credits", "message": "Top up."}}
                return httpx.Response(402, json=body)
            created["n"] += 1
            run_id = f"run_{created['n']}"
            return httpx.Response(200, json={"run_id": run_id, "status": "pending"})
        return httpx.Response(200, json=DONE)

    ledger = ledger_with([f"kite {n}" for n in range(6)])
    report = drive(ledger, handler, tmp_path, slots=1)
    assert report.paused == {"insufficient_credits"}
    assert states(ledger) == {"downloaded": 2, "queued": 4}


def test_plain_http_output_url_is_never_fetched_and_ends_refused(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """An http:// output URL on a real host is refused, re-polled, then reported as refused
    (state download_failed: the run completed and was paid for; not expired)."""
    seen: list[str] = []
    insecure = {
        **DONE,
        "outputs": [{"output_id": "poster", "type": "imageUrl", "url": "http://media.test/a.png"}],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.host}")
        if request.method == "POST":
            return httpx.Response(200, json={"run_id": "run_1", "status": "pending"})
        return httpx.Response(200, json=insecure)

    ledger = ledger_with(["a kite"])
    report = drive(ledger, handler, tmp_path, slots=2)
    assert states(ledger) == {"download_failed": 1}
    assert report.incomplete == 0
    assert "media.test" not in " ".join(seen)
    [row] = ledger.query("SELECT error_code, error_message FROM jobs")
    assert row["error_code"] == "output_refused"
    assert row["error_message"].startswith("refusing to fetch http://media.test/a.png")


def test_a_redirect_loop_is_reported_as_itself_not_left_in_flight(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """An output URL that redirects to itself: state and code `download_failed` after
    fresh-URL re-polls.

    Not "still in flight" (exit 6) on every resume, and not mistaken for an expired URL.
    """
    media_gets = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "media.test":
            media_gets["n"] += 1
            return httpx.Response(302, headers={"Location": MEDIA})
        if request.method == "POST":
            return httpx.Response(200, json={"run_id": "run_1", "status": "pending"})
        return httpx.Response(200, json=DONE)

    ledger = ledger_with(["a kite"])
    report = drive(ledger, handler, tmp_path, slots=2)
    assert states(ledger) == {"download_failed": 1} and report.incomplete == 0
    [row] = ledger.query("SELECT error_code, error_message FROM jobs")
    assert row["error_code"] == "download_failed"
    assert row["error_message"] == (
        "could not download https://media.test/out.png: more than 5 redirects (a redirect loop?)"
    )
    assert media_gets["n"] == 3 * 6  # three passes (two fresh-URL re-polls), 6 requests each
