"""The FLORA client against httpx.MockTransport: requests, retries, errors, no key leaks."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Coroutine
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pytest

from floraq.api import FloraClient, RunInfo, RunOutput, RunStatus
from floraq.errors import (
    AuthError,
    ExitCode,
    IdempotencyDuplicate,
    InputRejected,
    InsufficientCredits,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    UsageError,
)

BASE = "https://flora.test/api/v1"
CANARY = "sk_live_CANARY_do_not_leak_7f3a"
T = TypeVar("T")
Handler = Callable[[httpx.Request], httpx.Response]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def envelope(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    body = {"error": {"code": code, "message": message}}
    return httpx.Response(status, json=body, headers={"request-id": "req_1", **headers})


def run_body(**extra: Any) -> dict[str, Any]:
    return {"run_id": "j57abc", "status": "pending", "progress": 0, "created_at": 1, **extra}


class Recorder:
    """Serves a scripted list of answers and keeps every request it saw."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def with_client(
    handler: Handler,
    use: Callable[[FloraClient], Awaitable[T]],
    *,
    sleeps: list[float] | None = None,
    log: list[str] | None = None,
    **kwargs: Any,
) -> T:
    async def fake_sleep(seconds: float) -> None:
        (sleeps if sleeps is not None else []).append(round(seconds, 3))

    async with FloraClient(
        base_url=BASE,
        api_key=CANARY,
        transport=httpx.MockTransport(handler),
        sleep=fake_sleep,
        rand=lambda: 1.0,
        log=log.append if log is not None else None,
        **kwargs,
    ) as client:
        return await use(client)


def create(client: FloraClient) -> Awaitable[RunInfo]:
    inputs = [{"id": "prompt", "type": "text", "value": "a cat"}]
    return client.create_run("portrait", inputs=inputs, idempotency_key="fq1-abc")


def test_create_run_sends_key_in_header_and_body() -> None:
    """The idempotency key travels in both the header and the JSON body."""
    recorder = Recorder(httpx.Response(200, json=run_body()))
    run(with_client(recorder, create))
    (request,) = recorder.requests
    assert request.method == "POST"
    assert request.url.path == "/api/v1/techniques/portrait/runs"
    assert request.headers["Idempotency-Key"] == "fq1-abc"
    assert request.headers["Authorization"] == f"Bearer {CANARY}"
    assert request.headers["User-Agent"].startswith("floraq/")
    assert json.loads(request.content) == {
        "inputs": [{"id": "prompt", "type": "text", "value": "a cat"}],
        "mode": "async",
        "idempotency_key": "fq1-abc",
    }


def test_post_retried_with_identical_body_and_key() -> None:
    """5xx answers are retried with byte-identical bodies and the same key."""
    recorder = Recorder(
        envelope(503, "service_unavailable", "busy"),
        envelope(500, "unknown_error", "oops"),
        httpx.Response(201, json=run_body()),
    )
    sleeps: list[float] = []
    info = run(with_client(recorder, create, sleeps=sleeps))
    assert info.run_id == "j57abc"
    assert sleeps == [0.5, 1.0]
    assert len({r.content for r in recorder.requests}) == 1
    assert {r.headers["Idempotency-Key"] for r in recorder.requests} == {"fq1-abc"}


@pytest.mark.parametrize("status", [200, 201])
def test_create_accepts_200_and_201_and_sees_replays(status: int) -> None:
    """Both success codes give a RunInfo; the replay header is surfaced."""
    answer = httpx.Response(
        status, json=run_body(), headers={"idempotent-replayed": "true", "request-id": "req_9"}
    )
    info = run(with_client(Recorder(answer), create))
    assert (info.run_id, info.replayed, info.request_id) == ("j57abc", True, "req_9")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("pending", RunStatus.PENDING),
        ("running", RunStatus.RUNNING),
        ("completed", RunStatus.COMPLETED),
        ("failed", RunStatus.FAILED),
    ],
)
def test_known_run_statuses_become_the_enum(raw: str, expected: RunStatus) -> None:
    """Each documented status is a RunStatus that still equals the text FLORA sent."""
    info = RunInfo.from_response(httpx.Response(200, json=run_body(status=raw)))
    assert info.status is expected and info.status == raw


def test_an_unknown_run_status_is_kept_as_sent() -> None:
    """A status FLORA adds later is kept verbatim, not refused nor mapped to a known one."""
    info = RunInfo.from_response(httpx.Response(200, json=run_body(status="cancelled")))
    assert info.status == "cancelled" and not isinstance(info.status, RunStatus)


def test_run_parsing_is_tolerant_and_ids_opaque() -> None:
    """Unknown fields are ignored, run ids kept verbatim, outputs read."""
    body = run_body(
        run_id="opaque-ID/42",
        status="completed",
        progress=100,
        charged_cost=0.05,
        completed_at=1710000030000.0,
        outputs=[{"output_id": "out", "type": "imageUrl", "url": "https://cdn.test/a.png"}],
        brand_new_field={"x": 1},
    )
    info = run(with_client(Recorder(httpx.Response(200, json=body)), create))
    assert info.run_id == "opaque-ID/42"
    assert (info.status, info.progress, info.charged_cost) == ("completed", 100.0, Decimal("0.05"))
    assert info.completed_at == 1710000030000
    assert info.outputs == (RunOutput("out", "imageUrl", "https://cdn.test/a.png"),)
    assert (info.poll_url, info.error_code, info.replayed) == (None, None, False)


def test_malformed_success_is_retried_then_raises() -> None:
    """A 2xx that is not a run is retried like a 5xx, then raises ServerError."""
    recorder = Recorder(httpx.Response(200, text="<html>oops</html>"))
    with pytest.raises(ServerError) as caught:
        run(with_client(recorder, create))
    assert caught.value.code == "malformed_response"
    assert str(caught.value) == "200 malformed_response: malformed response: the body is not JSON"
    assert len(recorder.requests) == 3


def test_429_honours_retry_after_through_the_shared_pause() -> None:
    """Retry-After: 7 makes the next attempt wait 7 s, and halves the allowed concurrency."""
    recorder = Recorder(
        envelope(429, "rate_limited", "slow down", **{"Retry-After": "7"}),
        httpx.Response(200, json=run_body()),
    )
    sleeps: list[float] = []

    async def use(client: FloraClient) -> int:
        await create(client)
        return client.throttle.limit

    assert run(with_client(recorder, use, sleeps=sleeps)) == 4
    assert sleeps == [pytest.approx(7.0, abs=0.5)]


def test_429_without_retry_after_waits_5s() -> None:
    """Without Retry-After the wait is the vendor's 5 seconds."""
    recorder = Recorder(envelope(429, "rate_limited", "slow"), httpx.Response(200, json=run_body()))
    sleeps: list[float] = []
    run(with_client(recorder, create, sleeps=sleeps))
    assert sleeps == [pytest.approx(5.0, abs=0.5)]


def test_429_gives_up_with_rate_limited_after_the_attempt_bound() -> None:
    """Endless 429s end as RateLimited carrying retry_after."""
    recorder = Recorder(envelope(429, "rate_limited", "slow", **{"Retry-After": "1"}))
    with pytest.raises(RateLimited) as caught:
        run(with_client(recorder, create))
    assert caught.value.retry_after == 1.0
    assert len(recorder.requests) == 6


def test_shared_pause_slows_other_requests() -> None:
    """A 429 on one request makes a request from another task wait too."""
    limited = asyncio.Event()
    calls: dict[str, int] = {"a": 0, "b": 0}
    sleeps_by_task: dict[str, list[float]] = {"A": [], "B": []}

    def handler(request: httpx.Request) -> httpx.Response:
        run_id = request.url.path.rsplit("/", 1)[1]
        calls[run_id] += 1
        if run_id == "a" and calls["a"] == 1:
            limited.set()
            return envelope(429, "rate_limited", "slow", **{"Retry-After": "3"})
        return httpx.Response(200, json=run_body(run_id=run_id))

    async def fake_sleep(seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        sleeps_by_task[task.get_name()].append(seconds)
        await asyncio.sleep(0)

    async def scenario() -> None:
        async with FloraClient(
            base_url=BASE, api_key=CANARY, transport=httpx.MockTransport(handler), sleep=fake_sleep
        ) as client:

            async def second() -> RunInfo:
                await limited.wait()
                return await client.get_run("t", "b")

            await asyncio.gather(
                asyncio.create_task(client.get_run("t", "a"), name="A"),
                asyncio.create_task(second(), name="B"),
            )

    run(scenario())
    assert calls == {"a": 2, "b": 1}
    assert sleeps_by_task["B"] == [pytest.approx(3.0, abs=0.5)]


def test_html_503_is_retried_and_reported() -> None:
    """A load balancer's HTML 503 is a ServerError with a readable message."""
    html = httpx.Response(503, text="<html><body>Service Unavailable</body></html>")
    recorder = Recorder(html)
    with pytest.raises(ServerError) as caught:
        run(with_client(recorder, create))
    assert str(caught.value) == "503 service_unavailable: HTTP 503 with a non-JSON body"
    assert len(recorder.requests) == 3


def test_three_identical_500s_stop_the_request() -> None:
    """The same 500 three times in a row ends it, attempts to spare or not."""
    recorder = Recorder(envelope(500, "unknown_error", "An unknown error occurred."))
    with pytest.raises(ServerError) as caught:
        run(with_client(recorder, create))
    assert str(caught.value) == "500 unknown_error: An unknown error occurred. (request-id req_1)"
    assert len(recorder.requests) == 3


def test_5xx_then_success() -> None:
    """A 502 then a 200 is just a success with one back-off wait."""
    recorder = Recorder(
        httpx.Response(502, text="Bad Gateway"), httpx.Response(200, json=run_body())
    )
    sleeps: list[float] = []
    info = run(with_client(recorder, lambda c: c.get_run("t", "j57abc"), sleeps=sleeps))
    assert (info.status, sleeps, len(recorder.requests)) == ("pending", [0.5], 2)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "input_validation_error", InputRejected),
        (401, "invalid_api_key", AuthError),
        (402, "insufficient_credits", InsufficientCredits),
        (403, "forbidden", AuthError),
        (404, "not_found", NotFound),
        (409, "idempotency_duplicate", IdempotencyDuplicate),
        (422, "idempotency_conflict", IdempotencyDuplicate),
    ],
)
def test_client_errors_are_never_retried(status: int, code: str, error: type[Exception]) -> None:
    """400/401/402/403/404/409/422 raise at once, after exactly one request."""
    recorder = Recorder(envelope(status, code, "no"))
    sleeps: list[float] = []
    with pytest.raises(error) as caught:
        run(with_client(recorder, create, sleeps=sleeps))
    assert getattr(caught.value, "code", None) == code
    assert (len(recorder.requests), sleeps) == (1, [])


def test_transport_errors_retried_then_raise_transport_error() -> None:
    """Connection failures are retried to the attempt bound, then TransportError."""
    recorder = Recorder(httpx.ConnectError("connection refused"))
    with pytest.raises(TransportError) as caught:
        run(with_client(recorder, create))
    assert str(caught.value) == (
        "POST /techniques/portrait/runs: no answer from flora.test after 6 attempt(s) "
        "(ConnectError: connection refused)"
    )
    assert len(recorder.requests) == 6


def test_read_timeout_then_success() -> None:
    """A timeout is retried with the same key and then succeeds."""
    recorder = Recorder(httpx.ReadTimeout("slow"), httpx.Response(200, json=run_body()))
    info = run(with_client(recorder, create))
    assert info.run_id == "j57abc"
    assert [r.headers["Idempotency-Key"] for r in recorder.requests] == ["fq1-abc"] * 2


def test_poll_path_built_and_quoted_without_poll_url() -> None:
    """Without poll_url the client builds the documented path, URL-quoting each part."""
    recorder = Recorder(httpx.Response(200, json=run_body()))
    run(with_client(recorder, lambda c: c.get_run("cctv cam", "run/7?x")))
    assert recorder.requests[0].url.raw_path == b"/api/v1/techniques/cctv%20cam/runs/run%2F7%3Fx"


def test_poll_url_on_the_same_origin_is_used() -> None:
    """A poll_url on the API's own origin is followed as given."""
    recorder = Recorder(httpx.Response(200, json=run_body()))
    poll = "https://flora.test/api/v1/runs/j57abc?fresh=1"
    run(with_client(recorder, lambda c: c.get_run("t", "j57abc", poll_url=poll)))
    assert str(recorder.requests[0].url) == poll


@pytest.mark.parametrize(
    "poll_url",
    ["https://evil.test/api/v1/techniques/t/runs/j57abc", "http://flora.test/api/v1/x", "::bad"],
)
def test_poll_url_elsewhere_is_ignored(poll_url: str) -> None:
    """A poll_url on another host or scheme never receives the key."""
    recorder = Recorder(httpx.Response(200, json=run_body()))
    run(with_client(recorder, lambda c: c.get_run("t", "j57abc", poll_url=poll_url)))
    assert str(recorder.requests[0].url) == f"{BASE}/techniques/t/runs/j57abc"


def test_list_techniques_follows_cursors() -> None:
    """Pages are followed through meta.next_cursor until it is null."""
    pages = {
        None: {"techniques": [{"id": "a"}, {"id": "b"}], "meta": {"next_cursor": "c1"}},
        "c1": {"techniques": [{"id": "c"}], "meta": {"next_cursor": "c2"}},
        "c2": {"techniques": [{"id": "d"}], "meta": {"next_cursor": None}},
    }
    seen: list[tuple[str | None, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        cursor = request.url.params.get("cursor")
        seen.append((request.url.params.get("limit"), cursor))
        return httpx.Response(200, json=pages[cursor])

    techniques = run(with_client(handler, lambda c: c.list_techniques(limit=2)))
    assert [t["id"] for t in techniques] == ["a", "b", "c", "d"]
    assert seen == [("2", None), ("2", "c1"), ("2", "c2")]


def test_get_technique_returns_raw_json() -> None:
    """The technique definition comes back as the JSON object the API sent."""
    body = {"technique_id": "tech_x", "run_cost": 0.05, "inputs": [], "future": True}
    recorder = Recorder(httpx.Response(200, json=body))
    assert run(with_client(recorder, lambda c: c.get_technique("x"))) == body
    assert recorder.requests[0].url.path == "/api/v1/techniques/x"


def test_log_lines_one_per_attempt() -> None:
    """Each attempt logs method, path, status, time, request id and any retry wait."""
    recorder = Recorder(
        envelope(503, "service_unavailable", "busy"), httpx.Response(200, json=run_body())
    )
    log: list[str] = []
    run(with_client(recorder, create, log=log))
    assert len(log) == 2
    assert re.fullmatch(
        r"POST /techniques/portrait/runs -> 503 in \d+ ms \(request-id req_1\); "
        r"retrying in 0\.50 s",
        log[0],
    )
    assert re.fullmatch(r"POST /techniques/portrait/runs -> 200 in \d+ ms", log[1])


def test_key_never_leaks_into_errors_logs_or_repr() -> None:
    """Even when the server echoes the key back, it appears nowhere we produce."""
    echo = envelope(401, "invalid_api_key", f"Invalid API key {CANARY}")
    log: list[str] = []
    client_repr: list[str] = []

    async def use(client: FloraClient) -> RunInfo:
        client_repr.append(repr(client))
        return await create(client)

    with pytest.raises(AuthError) as caught:
        run(with_client(Recorder(echo), use, log=log))
    texts = [str(caught.value), repr(caught.value), *log, *client_repr]
    assert all(CANARY not in text for text in texts)
    assert caught.value.message == "Invalid API key [redacted]"
    assert str(caught.value).startswith("the API refused the key: Invalid API key [redacted] (401")
    assert caught.value.exit_code == ExitCode.AUTH


@pytest.mark.parametrize(
    "base_url",
    ["http://flora.example/api/v1", "ftp://flora.example/api", "http://10.0.0.1/api", "nope"],
)
def test_insecure_base_url_is_refused(base_url: str) -> None:
    """Plain HTTP to a non-loopback host is a usage error (exit 2); nothing is sent."""
    with pytest.raises(UsageError) as caught:
        FloraClient(base_url=base_url, api_key=CANARY)
    assert caught.value.exit_code == ExitCode.USAGE
    assert CANARY not in str(caught.value)


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:8000/api/v1", "http://localhost:1/api/v1", "http://[::1]:9/v1"]
)
def test_loopback_http_base_url_is_allowed(base_url: str) -> None:
    """The sandbox on 127.0.0.1, localhost or ::1 may use plain HTTP."""

    async def make() -> str:
        async with FloraClient(base_url=base_url, api_key=CANARY) as client:
            return client.base_url

    assert run(make()) == base_url


@pytest.mark.parametrize("key", ["", "   ", "sk_live_a b", "sk_live_\u00e9"])
def test_unusable_key_is_a_usage_error(key: str) -> None:
    """An empty key, or one no HTTP header can carry, is refused without echoing it."""
    with pytest.raises(UsageError) as caught:
        FloraClient(base_url=BASE, api_key=key)
    assert "sk_live" not in str(caught.value)
