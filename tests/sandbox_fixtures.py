"""Fixtures and helpers for the sandbox tests: one server per module, reset per test.

A test module takes the fixtures with ``from sandbox_fixtures import *`` (names listed
in ``__all__``); ``tests/conftest.py`` has its own ``sandbox`` fixture, a fresh server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from floraq.sandbox import SandboxConfig, SandboxServer

__all__ = ["anon", "api", "shared_clients", "shared_sandbox", "shared_sandbox_server"]

FAST = SandboxConfig(seed=7, time_scale=0.001)  # catalog runs of 5-60 s take 5-60 ms
IMAGE = "https://storage.googleapis.com/demo/a.jpg"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def portrait(image: str = IMAGE, **extra: Any) -> dict[str, Any]:
    """A valid create-run body for portrait-enhancer."""
    inputs = [{"id": "input_image", "type": "imageUrl", "value": image}]
    return {"inputs": inputs, "mode": "async"} | extra


def poster(prompt: str, **extra: Any) -> dict[str, Any]:
    """A valid create-run body for poster-maker."""
    return {"inputs": [{"id": "prompt", "type": "text", "value": prompt}], "mode": "async"} | extra


def wait_done(api: httpx.Client, poll_url: str, *, timeout: float = 3.0) -> dict[str, Any]:
    """Poll a run until it is completed or failed."""
    deadline = time.monotonic() + timeout
    while True:
        run: dict[str, Any] = api.get(poll_url).json()
        if run["status"] in ("completed", "failed") or time.monotonic() > deadline:
            return run
        time.sleep(0.01)


@pytest.fixture(scope="module")
def shared_sandbox_server() -> Iterator[SandboxServer]:
    """One server per test module (starting one per test would cost ~0.1 s each)."""
    with SandboxServer(FAST) as server:
        yield server


@pytest.fixture
def shared_sandbox(shared_sandbox_server: SandboxServer) -> SandboxServer:
    """The module's server with no runs, zero counters and its starting knobs."""
    shared_sandbox_server.reset(restore_config=True)
    return shared_sandbox_server


@pytest.fixture(scope="module")
def shared_clients(shared_sandbox_server: SandboxServer) -> Iterator[tuple[httpx.Client, ...]]:
    """An authenticated and an anonymous client, kept for the module (each costs ~15 ms)."""
    base_url, key = shared_sandbox_server.base_url, shared_sandbox_server.api_key
    with (
        httpx.Client(base_url=base_url, headers=auth(key), trust_env=False, timeout=5) as api,
        httpx.Client(base_url=base_url, trust_env=False, timeout=5) as anon,
    ):
        yield api, anon


@pytest.fixture
def api(shared_sandbox: SandboxServer, shared_clients: tuple[httpx.Client, ...]) -> httpx.Client:
    """A client of the shared sandbox's API, with its key."""
    return shared_clients[0]


@pytest.fixture
def anon(shared_sandbox: SandboxServer, shared_clients: tuple[httpx.Client, ...]) -> httpx.Client:
    """A client without credentials."""
    return shared_clients[1]
