"""The error tree: every API answer becomes the right exception, with its exit code."""

from __future__ import annotations

import httpx
import pytest

from floraq.core.lifecycle import TRANSITIONS, IllegalTransition, JobState, check_transition
from floraq.core.problems import Problem
from floraq.errors import (
    ApiError,
    AuthError,
    ExitCode,
    IdempotencyDuplicate,
    InputRejected,
    InsufficientCredits,
    LedgerBusy,
    ManifestError,
    NotFound,
    RateLimited,
    ServerError,
)


def response(status: int, body: bytes | str, **headers: str) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return httpx.Response(status, content=content, headers=headers)


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "input_validation_error", InputRejected),
        (400, "invalid_json", InputRejected),
        (402, "insufficient_credits", InsufficientCredits),
        (404, "not_found", NotFound),
        (409, "idempotency_duplicate", IdempotencyDuplicate),
        (422, "idempotency_conflict", IdempotencyDuplicate),
        (429, "rate_limited", RateLimited),
        (500, "unknown_error", ServerError),
        (503, "service_unavailable", ServerError),
    ],
)
def test_envelope_maps_to_class(status: int, code: str, cls: type[ApiError]) -> None:
    """Each documented code becomes its own exception, keeping code and message."""
    body = f'{{"error": {{"code": "{code}", "message": "m"}}}}'
    error = ApiError.from_response(response(status, body, **{"request-id": "req_1"}))
    assert type(error) is cls
    assert (error.code, error.message, error.request_id) == (code, "m", "req_1")


@pytest.mark.parametrize("status", [401, 403])
def test_auth_answers_exit_3(status: int) -> None:
    """401 and 403 stop the batch with the credentials exit code."""
    error = ApiError.from_response(response(status, '{"error":{"code":"x","message":"no"}}'))
    assert isinstance(error, AuthError)
    assert error.exit_code == ExitCode.AUTH == 3


def test_html_body_from_a_load_balancer() -> None:
    """A 503 with an HTML page is a ServerError with a readable message."""
    error = ApiError.from_response(response(503, "<html><body>Bad gateway</body></html>"))
    assert isinstance(error, ServerError)
    assert str(error) == "503 service_unavailable: HTTP 503 with a non-JSON body"


def test_validation_fields_are_kept() -> None:
    """`fields` of a validation error reach the ledger and the user."""
    body = (
        '{"error":{"code":"input_validation_error","message":"bad",'
        '"fields":[{"field":"workspace_id","message":"must start with ws_"}]}}'
    )
    error = ApiError.from_response(response(400, body))
    assert error.fields == ({"field": "workspace_id", "message": "must start with ws_"},)


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), ("0.5", 0.5), ("soon", None)])
def test_retry_after(header: str, seconds: float | None) -> None:
    """Retry-After in seconds is read; anything else counts as absent."""
    error = ApiError.from_response(
        response(
            429, '{"error":{"code":"rate_limited","message":"slow"}}', **{"retry-after": header}
        )
    )
    assert isinstance(error, RateLimited)
    assert error.retry_after == seconds


def test_manifest_error_summarises_all_problems() -> None:
    """The one-line message names the first problem and how many more there are."""
    error = ManifestError([Problem("a.yaml: job 1", "bad"), Problem("a.yaml: job 2", "worse")])
    assert str(error) == "a.yaml: job 1: bad (and 1 more)"
    assert error.exit_code == ExitCode.USAGE


def test_busy_exit_code() -> None:
    """A held ledger exits with the documented busy code."""
    assert LedgerBusy("x").exit_code == ExitCode.BUSY == 5


def test_every_state_has_a_transition_row() -> None:
    """The transition table covers every state."""
    assert set(TRANSITIONS) == set(JobState)


def test_illegal_transition_names_the_move() -> None:
    """An illegal move says which move and what would have been allowed."""
    with pytest.raises(IllegalTransition, match=r"downloaded cannot move to submitting"):
        check_transition(JobState.DOWNLOADED, JobState.SUBMITTING)
