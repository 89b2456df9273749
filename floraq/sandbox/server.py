"""``SandboxServer``: the sandbox's two apps served by uvicorn in a background thread.

The server thread owns the state; every call from other threads (``stats``,
``configure`` …) goes over HTTP to ``/_sandbox/*``, so nothing is shared across threads.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn

from floraq.sandbox.app import API_PREFIX, create_apps
from floraq.sandbox.config import SandboxConfig
from floraq.sandbox.state import SandboxState

DEFAULT_HOST = "127.0.0.1"
STARTUP_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 5.0


class SandboxServer:
    """A running sandbox: API, media host and upload host on three ports of ``host``.

    Use it as a context manager; ``port=0``, ``media_port=0`` and ``upload_port=0`` pick
    free ports.
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        media_port: int = 0,
        upload_port: int = 0,
    ) -> None:
        self.config = config or SandboxConfig()
        self.host = host
        self._ports = (port, media_port, upload_port)
        self._servers: list[uvicorn.Server] = []
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._inspector: httpx.Client | None = None
        self._inspector_lock = threading.Lock()
        self.port = port
        self.media_port = media_port
        self.upload_port = upload_port

    @property
    def root_url(self) -> str:
        """Where ``/_sandbox/*`` lives: the API server without the ``/api/v1`` prefix."""
        return f"http://{_url_host(self.host)}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + API_PREFIX

    @property
    def media_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.media_port}"

    @property
    def upload_url(self) -> str:
        """The upload host's root (assets' reservations point under it)."""
        return f"http://{_url_host(self.host)}:{self.upload_port}"

    def assets(self) -> list[dict[str, Any]]:
        """Every asset with its uploaded bytes' sha256, as ``GET /_sandbox/assets``."""
        result: list[dict[str, Any]] = self._call("GET", "/_sandbox/assets")
        return result

    @property
    def api_key(self) -> str:
        return self.config.api_keys[0]

    def start(self) -> SandboxServer:
        """Bind both ports and serve until ``stop``; returns once both accept connections."""
        if self._thread is not None:
            raise RuntimeError("the sandbox is already running")
        sockets: list[socket.socket] = []
        try:
            for port in self._ports:
                sockets.append(_bind(self.host, port))
            self.port, self.media_port, self.upload_port = (s.getsockname()[1] for s in sockets)
            state = SandboxState(
                self.config,
                clock=time.monotonic,
                wall=time.time,
                media_base_url=self.media_url,
                upload_base_url=self.upload_url,
            )
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        self._servers = [uvicorn.Server(_uvicorn_config(app)) for app in create_apps(state)]
        self._thread = threading.Thread(
            target=self._serve, args=(sockets,), name="floraq-sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not all(server.started for server in self._servers):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the sandbox did not start: {self._failure!r}")
            time.sleep(0.002)
        return self

    def _serve(self, sockets: list[socket.socket]) -> None:
        async def both() -> None:
            await asyncio.gather(
                *(
                    server.serve(sockets=[sock])
                    for server, sock in zip(self._servers, sockets, strict=True)
                )
            )

        try:
            asyncio.run(both())
        except BaseException as exc:
            self._failure = exc
        finally:
            for sock in sockets:
                sock.close()

    def stop(self) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with self._inspector_lock:
            if self._inspector is not None:
                self._inspector.close()
                self._inspector = None
        for server in self._servers:
            server.should_exit = True
        thread.join(SHUTDOWN_TIMEOUT)
        if thread.is_alive():
            for server in self._servers:
                server.force_exit = True
            thread.join(SHUTDOWN_TIMEOUT)

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C in the calling thread interrupts)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(0.5)

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """The counters, as ``GET /_sandbox/stats``."""
        result: dict[str, Any] = self._call("GET", "/_sandbox/stats")
        return result

    def runs(self) -> list[dict[str, Any]]:
        """Every run with its outputs' sha256, as ``GET /_sandbox/runs``."""
        result: list[dict[str, Any]] = self._call("GET", "/_sandbox/runs")
        return result

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change knobs at once (``balance`` sets the live balance); returns every knob."""
        result: dict[str, Any] = self._call("POST", "/_sandbox/config", knobs)
        return result

    def advance_clock(self, seconds: float) -> None:
        """Move the sandbox clock on by ``seconds``: with ``frozen_clock``, the only way it moves.

        Runs progress, keys age and URLs expire exactly as if that much time had passed,
        however fast or slow the machine is.
        """
        self._call("POST", "/_sandbox/clock", {"advance": seconds})

    def reset(self, *, restore_config: bool = False) -> None:
        """Forget runs and counters; with ``restore_config``, also undo ``configure``."""
        self._call("POST", "/_sandbox/reset", {"restore_config": restore_config})

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        with self._inspector_lock:
            if self._thread is None:
                raise RuntimeError("the sandbox is not running")
            if self._inspector is None:
                self._inspector = httpx.Client(base_url=self.root_url, trust_env=False, timeout=10)
            response = self._inspector.request(method, path, json=body)
        if response.status_code != 200:
            raise ValueError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket; proto IPPROTO_TCP so asyncio sets TCP_NODELAY on accepted ones.

    (``socket.create_server`` leaves proto 0, and every answer then waits ~40 ms for a
    delayed ACK.)
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return DEFAULT_HOST
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _uvicorn_config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        http="h11",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=1,
    )
