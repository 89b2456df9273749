"""Every branch of a create-run attempt, as one table: what happened -> what the row does.

Rows were derived from `Runner._submit` as it stood before the decision moved to
`floraq.core.submission` (its ten `except` branches, the pre-POST checks and the rounds),
and from the runner tests that pin it (test_runner_safety, test_runner_rounds, the e2e
crash/fault/money tests). Each row compares the whole outcome, so a changed flag fails it.
"""

from __future__ import annotations

from typing import Any

import pytest

from floraq.core.failures import FailureTier
from floraq.core.lifecycle import TRANSITIONS, JobState
from floraq.core.submission import (
    IDENTICAL_500_ROUNDS,
    JOB_ROUNDS,
    MOVES,
    Action,
    Outcome,
    OwnCode,
    PostResult,
    Record,
    Situation,
    Tally,
    decide,
)

R = PostResult
A = Action
CLEAN = Tally()  # this process claimed the intent and nothing has left yet
LEFT = Tally(sent=True)  # ... and an attempt has left, every one of them answered
EARLIER = Tally(doubt=True)  # an earlier process holds the intent: a run may exist
DOUBT = Tally(doubt=True, sent=True)  # ours, but an attempt went unanswered
LAST = Tally(sent=True, rounds=JOB_ROUNDS)  # every round spent
ONE_500 = Tally(sent=True, repeated_500s=IDENTICAL_500_ROUNDS - 1)

KEY_CHANGED = (
    "this row's POST was sent with another API key, and FLORA keeps idempotency keys per API"
    " key: re-sending could pay twice. Check FLORA, then `floraq retry --unknown`"
)
WINDOW_PASSED = (
    "the POST may have created a run, and its idempotency key has expired: re-sending could"
    " pay twice. Check FLORA, then `floraq retry --unknown`"
)
BAD = "row 3: input 'prompt' is required"


def mine(result: PostResult, tally: Tally = CLEAN, **facts: Any) -> Situation:
    """A situation for an intent this process claimed."""
    return Situation(result=result, claimed=True, tally=tally, **facts)


def theirs(result: PostResult, tally: Tally = EARLIER, **facts: Any) -> Situation:
    """A situation for an intent an earlier process committed."""
    return Situation(result=result, claimed=False, tally=tally, **facts)


def out(action: Action, tally: Tally, **effects: Any) -> Outcome:
    return Outcome(action=action, tally=tally, **effects)


def own(action: Action, tally: Tally, code: OwnCode, message: str, **effects: Any) -> Outcome:
    return out(action, tally, record=Record.OWN, error_code=code, error_message=message, **effects)


def unknown(tally: Tally) -> Outcome:
    """A run may exist: unknown_outcome, the answer recorded in full, the quote kept."""
    return out(A.UNKNOWN_OUTCOME, tally, record=Record.ANSWER_IN_FULL)


def report(tally: Tally) -> Outcome:
    """No run can exist, but nobody knows why: failed for a person, the quote released."""
    return out(
        A.FAILED,
        tally,
        release_quote=True,
        record=Record.ANSWER_IN_FULL,
        tier=FailureTier.REPORT,
    )


def rejected(tally: Tally) -> Outcome:
    return out(A.REJECTED, tally, release_quote=True, record=Record.ANSWER_IN_FULL)


def retry(tally: Tally) -> Outcome:
    return out(A.RETRY, tally)


def left_for_resume(tally: Tally) -> Outcome:
    return out(A.KEEP_INTENT, tally, incomplete=True)


ROWS = [
    # -- the checks before a POST ----------------------------------------------------------
    pytest.param(
        theirs(R.NONE_YET, key_changed=True),
        own(A.UNKNOWN_OUTCOME, EARLIER, OwnCode.API_KEY_CHANGED, KEY_CHANGED),
        id="an intent sent under another API key becomes unknown_outcome and keeps its quote",
    ),
    pytest.param(
        mine(R.NONE_YET, key_changed=True, invalid_row=BAD, window_passed=True),
        own(A.UNKNOWN_OUTCOME, CLEAN, OwnCode.API_KEY_CHANGED, KEY_CHANGED),
        id="a changed API key is checked before the row and the key window",
    ),
    pytest.param(
        theirs(R.NONE_YET, invalid_row=BAD),
        own(
            A.UNKNOWN_OUTCOME,
            EARLIER,
            OwnCode.INVALID_ROW,
            f"{BAD}; an earlier POST may have created a run: check FLORA, then"
            " `floraq retry --unknown`",
        ),
        id="an invalid row an earlier process may have sent becomes unknown_outcome",
    ),
    pytest.param(
        mine(R.NONE_YET, invalid_row=BAD, window_passed=True),
        own(
            A.REJECTED,
            CLEAN,
            OwnCode.INVALID_ROW,
            f"{BAD}; fix the row, then `floraq retry --rejected`",
            release_quote=True,
        ),
        id="an invalid row this process just claimed is rejected and releases its quote",
    ),
    pytest.param(
        theirs(R.NONE_YET, window_passed=True),
        own(
            A.UNKNOWN_OUTCOME,
            EARLIER,
            OwnCode.IDEMPOTENCY_WINDOW_PASSED,
            WINDOW_PASSED,
        ),
        id="an intent past its key window becomes unknown_outcome and keeps its quote",
    ),
    pytest.param(
        mine(R.NONE_YET, tally=DOUBT, window_passed=True),
        own(A.UNKNOWN_OUTCOME, DOUBT, OwnCode.IDEMPOTENCY_WINDOW_PASSED, WINDOW_PASSED),
        id="the key window passing between rounds makes the row unknown_outcome",
    ),
    pytest.param(
        mine(R.NONE_YET),
        out(A.POST, CLEAN),
        id="a row that passes every check is posted",
    ),
    pytest.param(
        theirs(R.NONE_YET, posting_stopped=True),
        out(A.POST, EARLIER),
        id="a row is posted even when posting stopped, for the client to withdraw it",
    ),
    # -- answered ---------------------------------------------------------------------------
    pytest.param(
        mine(R.ANSWERED, left=True),
        out(A.SUBMITTED, LEFT),
        id="an answer with a run is submitted and its quote stays committed",
    ),
    pytest.param(
        theirs(R.ANSWERED, left=True),
        out(A.SUBMITTED, Tally(doubt=True, sent=True)),
        id="a replayed run for an earlier process's intent is submitted",
    ),
    # -- withdrawn: cancelled or not sent ---------------------------------------------------
    pytest.param(
        mine(R.CANCELLED),
        out(A.QUEUED, CLEAN, release_quote=True, reraise=True),
        id="a claimed intent cancelled before anything left goes back to queued and re-raises",
    ),
    pytest.param(
        mine(R.CANCELLED, left=True),
        out(A.KEEP_INTENT, LEFT, reraise=True),
        id="a cancel after an attempt left keeps the intent and re-raises",
    ),
    pytest.param(
        mine(R.CANCELLED, tally=LEFT),
        out(A.KEEP_INTENT, LEFT, reraise=True),
        id="a cancel after an earlier round's attempt left keeps the intent",
    ),
    pytest.param(
        theirs(R.CANCELLED),
        out(A.KEEP_INTENT, EARLIER, reraise=True),
        id="a cancel of an earlier process's intent keeps the intent",
    ),
    pytest.param(
        mine(R.NOT_SENT, posting_stopped=True),
        out(A.QUEUED, CLEAN, release_quote=True),
        id="a claimed intent withdrawn before anything left goes back to queued",
    ),
    pytest.param(
        mine(R.NOT_SENT, tally=LEFT, posting_stopped=True),
        out(A.KEEP_INTENT, LEFT),
        id="a POST withdrawn after an earlier round's attempt left keeps the intent",
    ),
    pytest.param(
        theirs(R.NOT_SENT, posting_stopped=True),
        out(A.KEEP_INTENT, EARLIER),
        id="a withdrawn POST of an earlier process's intent keeps the intent",
    ),
    # -- 409/422 -----------------------------------------------------------------------------
    pytest.param(
        mine(R.DUPLICATE, left=True, status=409),
        unknown(LEFT),
        id="a 409 duplicate becomes unknown_outcome even for a fresh intent",
    ),
    pytest.param(
        theirs(R.DUPLICATE, left=True, status=422),
        unknown(DOUBT),
        id="a 422 conflict on an earlier process's intent becomes unknown_outcome",
    ),
    # -- 402 ------------------------------------------------------------------------------
    pytest.param(
        mine(R.INSUFFICIENT_CREDITS, left=True, status=402),
        out(A.QUEUED, LEFT, release_quote=True, record=Record.ANSWER, credits_ran_out=True),
        id="a 402 to every attempt of a fresh intent puts it back in the queue",
    ),
    pytest.param(
        mine(R.INSUFFICIENT_CREDITS, left=True, status=402, unanswered=True),
        out(A.KEEP_INTENT, LEFT, record=Record.ANSWER, incomplete=True, credits_ran_out=True),
        id="a 402 after an unanswered attempt keeps the intent and its time, noted",
    ),
    pytest.param(
        theirs(R.INSUFFICIENT_CREDITS, left=True, status=402),
        out(A.KEEP_INTENT, DOUBT, record=Record.ANSWER, incomplete=True, credits_ran_out=True),
        id="a 402 on an earlier process's intent keeps the intent, noted",
    ),
    # -- 400/404 ----------------------------------------------------------------------------
    pytest.param(
        mine(R.INPUT_REJECTED, left=True, status=400),
        rejected(LEFT),
        id="a 400 to a fresh intent is rejected and releases its quote",
    ),
    pytest.param(
        mine(R.INPUT_REJECTED, left=True, status=400, unanswered=True),
        unknown(LEFT),
        id="a 400 after an unanswered attempt becomes unknown_outcome",
    ),
    pytest.param(
        mine(R.INPUT_REJECTED, tally=DOUBT, left=True, status=400),
        unknown(DOUBT),
        id="a 400 after an earlier round went unanswered becomes unknown_outcome",
    ),
    pytest.param(
        mine(R.NOT_FOUND, left=True, status=404),
        rejected(LEFT),
        id="a 404 to a fresh intent is rejected and releases its quote",
    ),
    pytest.param(
        theirs(R.NOT_FOUND, left=True, status=404),
        unknown(DOUBT),
        id="a 404 on an earlier process's intent becomes unknown_outcome",
    ),
    # -- 401/403 ----------------------------------------------------------------------------
    pytest.param(
        mine(R.AUTH_REFUSED, left=True, status=401),
        out(
            A.QUEUED,
            LEFT,
            release_quote=True,
            record=Record.ANSWER,
            stop_everything=True,
            reraise=True,
        ),
        id="a 401 to a fresh intent stops everything and puts the row back in the queue",
    ),
    pytest.param(
        mine(R.AUTH_REFUSED, left=True, status=403, unanswered=True),
        out(A.KEEP_INTENT, LEFT, stop_everything=True, reraise=True),
        id="a 403 after an unanswered attempt stops everything and keeps the intent",
    ),
    pytest.param(
        theirs(R.AUTH_REFUSED, left=True, status=401),
        out(A.KEEP_INTENT, DOUBT, stop_everything=True, reraise=True),
        id="a 401 on an earlier process's intent stops everything and keeps the intent",
    ),
    # -- 5xx --------------------------------------------------------------------------------
    pytest.param(
        mine(R.SERVER_ERROR, left=True, status=500, repeated=True),
        retry(Tally(sent=True, rounds=1, repeated_500s=1)),
        id="a first round of identical 500s is counted and tried again after a pause",
    ),
    pytest.param(
        mine(R.SERVER_ERROR, tally=ONE_500, status=500, repeated=True),
        report(Tally(sent=True, repeated_500s=IDENTICAL_500_ROUNDS)),
        id="a second round of identical 500s fails the row for a person and releases its quote",
    ),
    pytest.param(
        mine(R.SERVER_ERROR, tally=ONE_500, status=500, repeated=True, unanswered=True),
        unknown(Tally(sent=True, repeated_500s=IDENTICAL_500_ROUNDS)),
        id="identical 500s after an unanswered attempt become unknown_outcome",
    ),
    pytest.param(
        theirs(R.SERVER_ERROR, tally=Tally(doubt=True, repeated_500s=1), status=500, repeated=True),
        unknown(Tally(doubt=True, repeated_500s=IDENTICAL_500_ROUNDS)),
        id="identical 500s on an earlier process's intent become unknown_outcome",
    ),
    pytest.param(
        mine(R.SERVER_ERROR, tally=ONE_500, status=503, repeated=True),
        retry(Tally(sent=True, rounds=1, repeated_500s=IDENTICAL_500_ROUNDS - 1)),
        id="identical 503s are FLORA struggling, not the row: not counted, tried again",
    ),
    pytest.param(
        mine(R.SERVER_ERROR, tally=ONE_500, status=500),
        retry(Tally(sent=True, rounds=1, repeated_500s=IDENTICAL_500_ROUNDS - 1)),
        id="500s that were not identical are not counted and are tried again",
    ),
    pytest.param(
        mine(R.SERVER_ERROR, left=True, status=503, unanswered=True),
        retry(Tally(doubt=True, sent=True, rounds=1)),
        id="a 5xx after an unanswered attempt leaves doubt and is tried again",
    ),
    pytest.param(
        mine(R.SERVER_ERROR, tally=Tally(sent=True, rounds=JOB_ROUNDS - 1), status=503),
        retry(Tally(sent=True, rounds=JOB_ROUNDS)),
        id="the last round is still tried after its pause",
    ),
    pytest.param(
        mine(R.SERVER_ERROR, tally=LAST, status=503),
        left_for_resume(Tally(sent=True, rounds=JOB_ROUNDS + 1)),
        id="a 5xx once every round is spent keeps the intent for the next resume",
    ),
    pytest.param(
        mine(R.SERVER_ERROR, left=True, status=503, posting_stopped=True),
        left_for_resume(Tally(sent=True, rounds=1)),
        id="a 5xx after posting stopped keeps the intent for the next resume",
    ),
    # -- no answer, 429, 408 ------------------------------------------------------------------
    pytest.param(
        mine(R.TRANSPORT_ERROR, left=True),
        retry(Tally(doubt=True, sent=True, rounds=1)),
        id="a transport error leaves doubt and is tried again after a pause",
    ),
    pytest.param(
        mine(R.TRANSPORT_ERROR, tally=LAST),
        left_for_resume(Tally(doubt=True, sent=True, rounds=JOB_ROUNDS + 1)),
        id="a transport error once every round is spent keeps the intent",
    ),
    pytest.param(
        mine(R.RATE_LIMITED, left=True, status=429),
        retry(Tally(sent=True, rounds=1)),
        id="a 429 to every attempt leaves no doubt and is tried again",
    ),
    pytest.param(
        mine(R.RATE_LIMITED, left=True, status=429, unanswered=True),
        retry(Tally(doubt=True, sent=True, rounds=1)),
        id="a 429 after an unanswered attempt leaves doubt and is tried again",
    ),
    pytest.param(
        mine(R.RATE_LIMITED, left=True, status=429, posting_stopped=True),
        left_for_resume(Tally(sent=True, rounds=1)),
        id="a 429 after posting stopped keeps the intent for the next resume",
    ),
    pytest.param(
        mine(R.OTHER_STATUS, left=True, status=408),
        retry(Tally(doubt=True, sent=True, rounds=1)),
        id="a 408 timeout leaves doubt and is tried again",
    ),
    pytest.param(
        mine(R.OTHER_STATUS, tally=LAST, status=408),
        left_for_resume(Tally(doubt=True, sent=True, rounds=JOB_ROUNDS + 1)),
        id="a 408 once every round is spent keeps the intent",
    ),
    pytest.param(
        mine(R.OTHER_STATUS, left=True, status=413),
        report(LEFT),
        id="an undocumented 413 to a fresh intent fails for a person and releases its quote",
    ),
    pytest.param(
        mine(R.OTHER_STATUS, tally=DOUBT, left=True, status=415),
        unknown(DOUBT),
        id="an undocumented 415 after an unanswered attempt becomes unknown_outcome",
    ),
]


@pytest.mark.parametrize(("situation", "outcome"), ROWS)
def test_each_situation_has_one_outcome(situation: Situation, outcome: Outcome) -> None:
    """The whole outcome (action, quote, record, flags, tally) is the one the table gives."""
    assert decide(situation) == outcome


SITUATIONS: list[Situation] = [row.values[0] for row in ROWS]  # type: ignore[misc]
OUTCOMES: list[Outcome] = [row.values[1] for row in ROWS]  # type: ignore[misc]


def test_every_action_is_produced_by_a_row() -> None:
    """No action is unreachable, and the table reaches each one."""
    assert {outcome.action for outcome in OUTCOMES} == set(Action)


def test_every_post_result_has_a_row() -> None:
    """A new kind of result cannot be added without a row saying what it means."""
    assert {situation.result for situation in SITUATIONS} == set(PostResult)


def test_every_move_is_one_the_lifecycle_allows() -> None:
    """An outcome never asks the ledger for a move it would refuse."""
    assert set(MOVES.values()) <= TRANSITIONS[JobState.SUBMITTING]


def test_the_quote_is_released_only_when_no_run_can_exist() -> None:
    """Released quotes go with a row back in the queue, rejected or failed; never a kept one."""
    released = {outcome.action for outcome in OUTCOMES if outcome.release_quote}
    assert released == {A.QUEUED, A.REJECTED, A.FAILED}
