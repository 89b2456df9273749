"""Idempotency keys under every reading: replay, suppress, window, concurrency, drops."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from sandbox_fixtures import *  # noqa: F403
from sandbox_fixtures import IMAGE, auth, portrait

from floraq.sandbox import SandboxServer

RUNS = "/techniques/portrait-enhancer/runs"


def test_fifty_posts_with_one_key_make_one_run_in_replay_mode(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """Replay: 50 POSTs with one key create one run, charge once, and replay 49 times."""
    answers = [api.post(RUNS, json=portrait(idempotency_key="row-1")) for _ in range(50)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["run_id"] for a in answers}) == 1
    assert [a.headers.get("idempotent-replayed") for a in answers[:2]] == [None, "true"]
    stats = shared_sandbox.stats()
    assert (stats["runs_created"], stats["idempotent_replays"]) == (1, 49)
    assert stats["charged_total"] == 0.05


def test_fifty_posts_with_one_key_give_49_conflicts_in_suppress_mode(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """Suppress: one run, then 49 x 409 idempotency_duplicate without a run id."""
    shared_sandbox.configure(idempotency="suppress")
    answers = [api.post(RUNS, json=portrait(idempotency_key="row-1")) for _ in range(50)]
    assert [a.status_code for a in answers] == [200] + [409] * 49
    assert answers[1].json() == {
        "error": {"code": "idempotency_duplicate", "message": "Duplicate idempotency key."}
    }
    stats = shared_sandbox.stats()
    assert (stats["runs_created"], stats["idempotency_rejections"]) == (1, 49)
    assert stats["charged_total"] == 0.05


def test_replay_returns_the_current_state_of_the_run(api: httpx.Client) -> None:
    """A replay after completion shows the completed run, outputs and all."""
    first = api.post(RUNS, json=portrait(idempotency_key="k")).json()
    time.sleep(0.1)
    replay = api.post(RUNS, json=portrait(idempotency_key="k")).json()
    assert replay["run_id"] == first["run_id"]
    assert replay["status"] == "completed" and replay["outputs"]


def test_same_key_with_a_different_body_is_a_conflict(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """Replay mode: the key reused with other inputs is 422 idempotency_conflict."""
    api.post(RUNS, json=portrait(idempotency_key="k"))
    response = api.post(RUNS, json=portrait(f"{IMAGE}?other", idempotency_key="k"))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "idempotency_conflict"
    assert shared_sandbox.stats()["idempotency_rejections"] == 1


def test_header_key_alone_is_honoured(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """The spec's Idempotency-Key header works without the body field."""
    for _ in range(3):
        api.post(RUNS, json=portrait(), headers={"Idempotency-Key": "h-1"})
    assert shared_sandbox.stats()["runs_created"] == 1


def test_header_and_body_keys_are_one_key(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """A key sent in the body, then in the header only, then in both: one run."""
    api.post(RUNS, json=portrait(idempotency_key="k"))
    api.post(RUNS, json=portrait(), headers={"Idempotency-Key": "k"})
    api.post(RUNS, json=portrait(idempotency_key="k"), headers={"Idempotency-Key": "k"})
    assert shared_sandbox.stats()["runs_created"] == 1
    assert shared_sandbox.runs()[0]["idempotency_key"] == "k"


def test_header_and_body_keys_that_differ_are_rejected(api: httpx.Client) -> None:
    """Different keys in the header and the body: 400 on idempotency_key."""
    response = api.post(RUNS, json=portrait(idempotency_key="a"), headers={"Idempotency-Key": "b"})
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == [
        {"field": "idempotency_key", "message": "Does not match the Idempotency-Key header"}
    ]


def test_keys_are_scoped_per_api_key(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """The same key string under another API key is a new entry and a new run."""
    shared_sandbox.configure(api_keys=["sk_test_sandbox", "sk_test_other"])
    api.post(RUNS, json=portrait(idempotency_key="k"))
    api.post(RUNS, json=portrait(idempotency_key="k"), headers=auth("sk_test_other"))
    assert shared_sandbox.stats()["runs_created"] == 2


def test_key_is_forgotten_after_the_window(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """After idempotency_window seconds, a repeated key creates a new billed run."""
    shared_sandbox.configure(idempotency_window=0.2, frozen_clock=True)  # no machine is too slow
    first = api.post(RUNS, json=portrait(idempotency_key="k")).json()["run_id"]
    assert api.post(RUNS, json=portrait(idempotency_key="k")).json()["run_id"] == first
    shared_sandbox.advance_clock(0.19)
    assert api.post(RUNS, json=portrait(idempotency_key="k")).json()["run_id"] == first
    shared_sandbox.advance_clock(0.06)
    assert api.post(RUNS, json=portrait(idempotency_key="k")).json()["run_id"] != first
    assert shared_sandbox.stats()["charged_total"] == 0.1


def test_rejected_request_does_not_claim_the_key(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """A 402 leaves the key free: after a top-up the same key creates the run."""
    shared_sandbox.configure(balance=0)
    assert api.post(RUNS, json=portrait(idempotency_key="k")).status_code == 402
    shared_sandbox.configure(balance=1)
    response = api.post(RUNS, json=portrait(idempotency_key="k"))
    assert (response.status_code, response.headers.get("idempotent-replayed")) == (200, None)


async def _post_together(sandbox: SandboxServer, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(
        base_url=sandbox.base_url, headers=auth(sandbox.api_key), trust_env=False
    ) as client:
        body = portrait(idempotency_key="together")
        return list(await asyncio.gather(*(client.post(RUNS, json=body) for _ in range(count))))


@pytest.mark.parametrize(("coalesce", "runs"), [(True, 1), (False, 2)])
def test_concurrent_requests_with_one_key(
    shared_sandbox: SandboxServer, api: httpx.Client, coalesce: bool, runs: int
) -> None:
    """Two overlapping POSTs with one key: one run when coalescing, two when not."""
    shared_sandbox.configure(coalesce=coalesce)
    answers = asyncio.run(_post_together(shared_sandbox, 2))
    assert [a.status_code for a in answers] == [200, 200]
    assert shared_sandbox.stats()["runs_created"] == runs


def test_post_dropped_after_creation_is_replayed_on_retry(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """A POST whose connection drops after the run was made: the retry replays that run."""
    shared_sandbox.configure(drop_rate=1.0)
    created_before = 0
    for n in range(20):
        with pytest.raises(httpx.TransportError):
            api.post(RUNS, json=portrait(idempotency_key=f"k{n}"))
        created = shared_sandbox.stats()["runs_created"]
        if created > created_before:
            break
    assert created == 1
    shared_sandbox.configure(drop_rate=0.0)
    retry = api.post(RUNS, json=portrait(idempotency_key=f"k{n}"))
    assert retry.headers["idempotent-replayed"] == "true"
    assert shared_sandbox.stats()["runs_created"] == 1
