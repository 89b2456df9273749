"""The error tree: every API answer becomes the right exception, with its exit code."""

from __future__ import annotations

import httpx
import pytest

from floraq.core.lifecycle import TRANSITIONS, IllegalTransition, JobState, check_transition
from floraq.core.problems import Problem
from floraq.errors import (
    ApiAnswerError,
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


def test_auth_and_api_errors_share_one_base_but_stay_apart() -> None:
    """Both are answers from the API; catching ApiError still never swallows a refused key."""
    auth = ApiError.from_response(response(401, '{"error":{"code":"x","message":"no"}}'))
    other = ApiError.from_response(response(400, '{"error":{"code":"x","message":"no"}}'))
    assert isinstance(auth, ApiAnswerError) and isinstance(other, ApiAnswerError)
    assert not isinstance(auth, ApiError) and not isinstance(other, AuthError)
    assert (auth.exit_code, other.exit_code) == (ExitCode.AUTH, ExitCode.FAILURES)


def test_from_response_scrubs_every_text_the_server_sent() -> None:
    """An echoed key never survives into the message, code, fields or request id."""
    body = (
        '{"error":{"code":"bad_sk_1","message":"key sk_1 is odd",'
        '"fields":[{"field":"sk_1","message":"was sk_1"}]}}'
    )
    error = ApiError.from_response(
        response(400, body, **{"request-id": "req_sk_1"}),
        scrub=lambda text: text.replace("sk_1", "[redacted]"),
    )
    assert isinstance(error, InputRejected)
    assert str(error) == "400 bad_[redacted]: key [redacted] is odd (request-id req_[redacted])"
    assert error.fields == ({"field": "[redacted]", "message": "was [redacted]"},)


def test_with_attempts_returns_a_new_complete_error() -> None:
    """The client's later facts make a new error of the same class; the first is untouched."""
    first = ApiError.from_response(
        response(429, '{"error":{"code":"rate_limited","message":"slow"}}', **{"retry-after": "3"})
    )
    given_up = first.with_attempts(7, unanswered=2)
    assert type(given_up) is RateLimited and given_up is not first
    assert (given_up.attempts, given_up.unanswered, given_up.retry_after) == (7, 2, 3.0)
    assert (given_up.code, given_up.message, str(given_up)) == (first.code, "slow", str(first))
    assert (first.attempts, first.unanswered) == (1, 0)


def test_server_error_with_repeated_keeps_everything_else() -> None:
    """`repeated` is set on a copy that keeps status, code, request id and attempts."""
    error = ApiError.from_response(response(500, "oops", **{"request-id": "req_9"}))
    assert isinstance(error, ServerError)
    repeated = error.with_attempts(4, unanswered=1).with_repeated(4)
    assert (repeated.repeated, repeated.attempts, repeated.unanswered) == (4, 4, 1)
    assert (repeated.status, repeated.code, repeated.request_id) == (500, "server_error", "req_9")
    assert error.repeated == 0


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


def test_no_error_is_patched_after_it_is_built() -> None:
    """No module sets an error's facts from outside: each is complete when constructed."""
    import ast
    from pathlib import Path

    import floraq

    facts = {"attempts", "unanswered", "repeated", "fields", "message", "retry_after", "args"}
    patched = []
    for path in sorted(Path(floraq.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            patched += [
                f"{path.name}:{node.lineno}"
                for t in targets
                if isinstance(t, ast.Attribute)
                and t.attr in facts
                and not (isinstance(t.value, ast.Name) and t.value.id == "self")
            ]
    assert patched == []
