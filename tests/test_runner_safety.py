"""Never pay twice when an answer is ambiguous: edges found in review, over MockTransport.

Each case is a POST whose first attempt may have created a run (its reply was lost), then
an error answer. Only when no attempt could have reached FLORA may floraq read an error
as "no run exists"; otherwise the row keeps its intent or becomes `unknown_outcome`.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from ledgers import AnyLedger, LedgerWith
from test_runner_rounds import DONE, POSTER, drive, media, states

from floraq.core.keys import api_key_fingerprint
from floraq.core.lifecycle import JobState
from floraq.core.technique import Technique
from floraq.runner import JOB_ROUNDS


class LostReply:
    """FLORA creates the run on the first POST but the reply is lost; then it answers `then`."""

    def __init__(self, then: httpx.Response) -> None:
        self.then = then
        self.posts = 0
        self.runs = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "media.test":
            return media(request)
        if request.method == "POST":
            self.posts += 1
            if self.posts == 1:
                self.runs += 1
                raise httpx.ReadTimeout("reply lost", request=request)
            return self.then
        return httpx.Response(200, json=DONE)


def error_code(ledger: AnyLedger) -> str:
    return str(ledger.query("SELECT error_code FROM jobs WHERE id = 1")[0]["error_code"])


def error(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": code}})


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "input_validation_error"), (404, "not_found"), (500, "unknown_error")],
)
def test_error_after_a_lost_reply_is_an_unknown_outcome(
    ledger_with: LedgerWith, tmp_path: Path, status: int, code: str
) -> None:
    """A 400/404/repeated 500 after a lost reply: a run may exist, so never `failed`/`rejected`."""
    flora = LostReply(error(status, code))
    ledger = ledger_with(["a kite"])
    drive(ledger, flora, tmp_path, clock=lambda: 1_000_000.0)
    assert states(ledger) == {"unknown_outcome": 1}
    assert error_code(ledger) == code


def test_402_after_a_lost_reply_keeps_the_intent_and_its_time(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """A 402 after a lost reply keeps `submitting` and its first time; past the window it is
    `unknown_outcome`, never POSTed again."""
    flora = LostReply(error(402, "insufficient_credits"))
    ledger = ledger_with(["a kite"])
    report = drive(ledger, flora, tmp_path, clock=lambda: 1_000_000.0)
    assert report.paused == {"insufficient_credits"}
    job = ledger.job(1)
    assert (job.state, job.submitting_at) == (JobState.SUBMITTING, 1_000_000.0)
    posts = flora.posts
    drive(ledger, flora, tmp_path, clock=lambda: 1_000_000.0 + 3 * 3600)
    assert states(ledger) == {"unknown_outcome": 1}
    assert flora.posts == posts and flora.runs == 1


def test_a_clean_402_puts_the_row_back_in_the_queue(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """A 402 on the very first attempt means no run: the row is queued again, to send later."""

    def handler(request: httpx.Request) -> httpx.Response:
        return error(402, "insufficient_credits")

    ledger = ledger_with(["a kite"])
    drive(ledger, handler, tmp_path, clock=lambda: 1_000_000.0)
    assert states(ledger) == {"queued": 1}


def test_intent_sent_under_another_api_key_is_never_resent(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """FLORA keeps idempotency keys per API key: a new key must not re-send an old intent."""
    ledger = ledger_with(["a kite"])
    ledger.move(
        1,
        JobState.QUEUED,
        JobState.SUBMITTING,
        submitting_at=1_000_000.0,
        key_fingerprint=api_key_fingerprint("sk_test_old"),
    )
    posts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return httpx.Response(200, json=DONE)

    drive(ledger, handler, tmp_path, clock=lambda: 1_000_100.0, key="sk_test_new")
    assert states(ledger) == {"unknown_outcome": 1}
    assert error_code(ledger) == "api_key_changed"
    assert posts == []


def test_automatic_rerun_keeps_the_failed_runs_charge(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """A "retry now" failure that was charged still counts after the automatic re-run."""
    created = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "media.test":
            return media(request)
        if request.method == "POST":
            created["n"] += 1
            return httpx.Response(200, json={"run_id": f"run_{created['n']}", "status": "pending"})
        if request.url.path.endswith("run_1"):
            failed = {"run_id": "run_1", "status": "failed", "progress": 100}
            return httpx.Response(200, json={**failed, "error_code": "model_timeout",
                                             "charged_cost": 0.1})  # fmt: skip
        return httpx.Response(200, json={**DONE, "run_id": "run_2"})

    ledger = ledger_with(["a kite"])
    drive(ledger, handler, tmp_path, clock=lambda: 1_000_000.0)
    assert states(ledger) == {"downloaded": 1} and created["n"] == 2
    assert ledger.committed_cost("b") == Decimal("0.2")
    kinds = [e["kind"] for e in ledger.query("SELECT kind FROM events WHERE job_id = 1")]
    assert "attempt_archived" in kinds


def test_a_bug_in_one_task_stops_the_loop_and_is_raised(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """An unexpected exception is not swallowed: the loop stops and raises it (exit 70)."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=DONE)

    ledger = ledger_with(["a kite"])
    with pytest.raises(KeyError):
        drive(ledger, handler, tmp_path, clock=lambda: 1_000_000.0, techniques={})
    assert ledger.integrity_ok()


def test_a_run_that_never_finishes_is_left_for_the_next_resume(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """A run stuck in `pending` is polled a bounded number of times, then left `submitted`."""
    polls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            polls["n"] += 1
        return httpx.Response(200, json={"run_id": "run_1", "status": "pending", "progress": 0})

    ledger = ledger_with(["a kite"])
    report = drive(ledger, handler, tmp_path, clock=lambda: 1_000_000.0, max_polls=20)
    assert states(ledger) == {"submitted": 1} and report.incomplete == 1
    assert polls["n"] == 20 == ledger.query("SELECT polls FROM jobs")[0]["polls"]


def test_an_undocumented_413_fails_the_row_for_a_person(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """A 413 to the first POST of a fresh intent: no run, `failed` with tier `report`, sent once."""
    posts: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(request)
        return error(413, "payload_too_large")

    ledger = ledger_with(["a kite"])
    drive(ledger, handler, tmp_path, clock=lambda: 1_000_000.0)
    assert states(ledger) == {"failed": 1} and len(posts) == 1
    [row] = ledger.query("SELECT error_code, failure_tier FROM jobs")
    assert row == {"error_code": "payload_too_large", "failure_tier": "report"}
    assert ledger.committed_cost("b") == 0


def test_a_408_on_every_round_keeps_the_intent_for_resume(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """A 408 may hide a run: each round re-POSTs the same key, then the row stays `submitting`."""
    keys: set[str] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        keys.add(request.headers["idempotency-key"])
        return error(408, "request_timeout")

    ledger = ledger_with(["a kite"])
    report = drive(ledger, handler, tmp_path, clock=lambda: 1_000_000.0)
    assert states(ledger) == {"submitting": 1} and report.incomplete == 1
    assert report.posts == JOB_ROUNDS + 1 and len(keys) == 1


def _poster_with_a_style() -> dict[str, Technique]:
    """The technique as it is now: it gained a required input the row does not have."""
    inputs = [*POSTER["inputs"], {"id": "style", "name": "Style", "type": "text"}]
    return {"poster": Technique.from_api("poster", {**POSTER, "inputs": inputs})}


def test_a_row_the_technique_no_longer_fits_is_rejected_before_any_post(
    ledger_with: LedgerWith, tmp_path: Path
) -> None:
    """A fresh intent whose row misses an input: `rejected` with a fix, nothing sent or held."""
    posts: list[httpx.Request] = []
    ledger = ledger_with(["a kite"])
    drive(ledger, posts.append, tmp_path, techniques=_poster_with_a_style())
    assert states(ledger) == {"rejected": 1} and posts == []
    [row] = ledger.query("SELECT error_code, error_message FROM jobs")
    assert row == {
        "error_code": "invalid_row",
        "error_message": "no value for input style of 'poster'; fix the row,"
        " then `floraq retry --rejected`",
    }
    assert ledger.committed_cost("b") == 0


def test_an_earlier_intent_the_technique_no_longer_fits_is_an_unknown_outcome(
    ledger_with: LedgerWith,
    tmp_path: Path,
) -> None:
    """An earlier process may have sent the row under the old definition: never `rejected`."""
    posts: list[httpx.Request] = []
    ledger = ledger_with(["a kite"])
    ledger.move(1, JobState.QUEUED, JobState.SUBMITTING, submitting_at=1_000_000.0)
    drive(
        ledger,
        posts.append,
        tmp_path,
        clock=lambda: 1_000_100.0,
        techniques=_poster_with_a_style(),
    )
    assert states(ledger) == {"unknown_outcome": 1} and posts == []
    assert error_code(ledger) == "invalid_row"
    assert ledger.query("SELECT error_message FROM jobs")[0]["error_message"].endswith(
        "; an earlier POST may have created a run: check FLORA, then `floraq retry --unknown`"
    )


class Ticking:
    """A clock that moves 60 s each time it is read: the grace passes by count of reads."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 60.0
        return self.now


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ({"run_id": "run_1", "status": "COMPLETED", "progress": 100}, "run_status_unknown"),
        ({"run_id": "run_1", "status": "completed", "outputs": []}, "completed_without_outputs"),
    ],
    ids=["an-unknown-status", "completed-without-outputs"],
)
def test_answers_that_make_no_sense_end_as_a_problem_row_after_the_grace(
    ledger_with: LedgerWith, tmp_path: Path, answer: dict[str, object], code: str
) -> None:
    """Polled for ODD_ANSWER_GRACE after the POST, then `unknown_outcome` with the answer kept.

    Not `submitted` for hours on every resume, and not re-sent: its quote stays committed.
    """
    polls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "/runs/" in request.url.path:  # a poll, not a price check
            polls["n"] += 1
        return httpx.Response(200, json=answer)

    ledger = ledger_with(["a kite"])
    report = drive(ledger, handler, tmp_path, clock=Ticking(), time_scale=1.0)
    [row] = ledger.query("SELECT state, error_code, error_message, polls FROM jobs")
    assert (row["state"], row["error_code"]) == ("unknown_outcome", code)
    kept = row["error_message"]  # the raw answer, as FLORA sent it
    assert kept.startswith("FLORA still answered {") and '"run_id"' in kept
    assert json.dumps(answer["status"]) in kept
    assert "`floraq retry --unknown`" in row["error_message"]
    assert 10 <= polls["n"] == row["polls"] < 100  # ~30 min of 60 s ticks, not 4,000 polls
    assert report.incomplete == 0
    assert ledger.committed_cost("b") == Decimal("0.1")  # the quote stays committed
