"""Injected faults: 429, 5xx (JSON or HTML), dropped connections, latency; all seeded."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sandbox_fixtures import *  # noqa: F403
from sandbox_fixtures import portrait

from floraq.sandbox import SandboxConfig, SandboxServer


def test_rate_limited_with_retry_after(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """rate_429=1: every API request is 429 rate_limited with the configured Retry-After."""
    shared_sandbox.configure(rate_429=1.0, retry_after=2.5)
    response = api.get("/techniques")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2.5"
    assert response.json() == {"error": {"code": "rate_limited", "message": "Rate limit exceeded."}}
    assert shared_sandbox.stats()["faults"]["429"] == 1


def test_rate_limited_without_retry_after(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """retry_after=None sends the 429 without a Retry-After header."""
    shared_sandbox.configure(rate_429=1.0, retry_after=None)
    response = api.get("/techniques")
    assert response.status_code == 429 and "retry-after" not in response.headers


def test_the_next_n_run_posts_are_rate_limited_then_served(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """rate_limit_next_creates=2: exactly the next two create-run POSTs get 429; reads never."""
    shared_sandbox.configure(rate_limit_next_creates=2, retry_after=4)
    assert api.get("/techniques").status_code == 200
    answers = [api.post("/techniques/portrait-enhancer/runs", json=portrait()) for _ in range(3)]
    assert [r.status_code for r in answers] == [429, 429, 200]
    assert answers[0].headers["retry-after"] == "4"
    stats = shared_sandbox.stats()
    assert (stats["faults"]["429"], stats["runs_created"]) == (2, 1)


def test_the_most_requests_answered_at_once_is_counted(shared_sandbox: SandboxServer) -> None:
    """With latency, four parallel requests are all being answered at the same time."""
    shared_sandbox.configure(latency=0.3)
    headers = {"Authorization": f"Bearer {shared_sandbox.api_key}"}

    async def four() -> None:
        async with httpx.AsyncClient(
            base_url=shared_sandbox.base_url, headers=headers, trust_env=False
        ) as c:
            await asyncio.gather(*(c.get("/workspaces") for _ in range(4)))

    asyncio.run(four())
    assert shared_sandbox.stats()["max_in_flight"] == 4
    shared_sandbox.reset()
    assert shared_sandbox.stats()["max_in_flight"] == 0


def test_server_errors_are_500_and_503_envelopes(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """error_5xx_rate=1 answers 500 unknown_error or 503 service_unavailable, as JSON."""
    shared_sandbox.configure(error_5xx_rate=1.0)
    answers = {}
    for _ in range(20):
        response = api.get("/workspaces")
        answers[response.status_code] = response.json()["error"]["code"]
    assert answers == {500: "unknown_error", 503: "service_unavailable"}
    assert shared_sandbox.stats()["faults"]["5xx"] == 20


def test_html_5xx_looks_like_a_load_balancer(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """html_5xx makes 5xx bodies an HTML page served as text/html, with a request id."""
    shared_sandbox.configure(error_5xx_rate=1.0, html_5xx=True)
    response = api.get("/workspaces")
    assert response.status_code in (500, 503)
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.text.startswith("<html>") and f"<h1>{response.status_code} " in response.text
    assert response.headers["request-id"].startswith("req_")


def test_dropped_connection_gets_no_answer(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """drop_rate=1: the client sees the connection close without a response."""
    shared_sandbox.configure(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        api.get("/techniques")
    assert shared_sandbox.stats()["faults"]["drop"] == 1


def test_half_the_dropped_posts_happen_after_the_run_is_made(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """Of 40 dropped POSTs, some created a run and some did not."""
    shared_sandbox.configure(drop_rate=1.0)
    for n in range(40):
        with pytest.raises(httpx.TransportError):
            api.post("/techniques/portrait-enhancer/runs", json=portrait(idempotency_key=f"{n}"))
    assert 8 <= shared_sandbox.stats()["runs_created"] <= 32


def test_latency_is_added_to_api_requests(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """latency=0.2 makes an API request take at least 0.2 s."""
    shared_sandbox.configure(latency=0.2)
    started = time.monotonic()
    api.get("/workspaces")
    assert time.monotonic() - started >= 0.2


def test_inspection_endpoints_never_see_faults(shared_sandbox: SandboxServer) -> None:
    """With every fault at 100 %, /_sandbox/* still answers at once and is not counted."""
    shared_sandbox.configure(drop_rate=1.0, rate_429=1.0, error_5xx_rate=1.0, latency=1.0)
    started = time.monotonic()
    stats = shared_sandbox.stats()
    assert time.monotonic() - started < 0.5
    assert stats["requests"] == {} and stats["faults"] == {
        "5xx": 0,
        "429": 0,
        "drop": 0,
        "truncate": 0,
    }
    assert shared_sandbox.runs() == []


def _fault_sequence(seed: int) -> list[int]:
    config = SandboxConfig(seed=seed, rate_429=0.3, error_5xx_rate=0.3, retry_after=0)
    with SandboxServer(config) as sandbox, httpx.Client(trust_env=False) as client:
        return [client.get(f"{sandbox.base_url}/workspaces").status_code for _ in range(30)]


def test_faults_are_reproducible_from_the_seed() -> None:
    """The same seed gives the same sequence of statuses; another seed a different one."""
    first = _fault_sequence(3)
    assert first == _fault_sequence(3)
    assert first != _fault_sequence(4)
    assert {401, 429} <= set(first)


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/techniques/portrait-enhancer/runs", {"content": b"\xff\xfe"}),
        ("POST", "/techniques/portrait-enhancer/runs", {"content": b"[" * 100_000}),
        ("POST", "/techniques/portrait-enhancer/runs", {"json": {"inputs": [None, 3, "x"]}}),
        ("POST", "/techniques/portrait-enhancer/runs", {"json": {"inputs": [{"id": 1}]}}),
        ("GET", "/techniques", {"params": {"limit": "9" * 50}}),
        ("GET", "/techniques/%00/runs/%00", {}),
        ("DELETE", "/techniques/portrait-enhancer", {}),
        ("POST", "/techniques/portrait-enhancer/runs/x", {}),
    ],
)
def test_garbage_requests_never_get_a_500(
    api: httpx.Client, method: str, path: str, kwargs: dict[str, object]
) -> None:
    """Malformed requests get a 4xx in the error envelope, never a traceback or a 500."""
    response = api.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert 400 <= response.status_code < 500
    assert set(response.json()["error"]) >= {"code", "message"}
