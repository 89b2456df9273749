"""The FLORA API client: auth, timeouts, retries, and error answers turned into exceptions.

Only this module (with ``floraq.api_calls``, its request loop) speaks HTTP to FLORA.
Every request goes through ``Caller.call``, which applies ``floraq.retry``; every error
answer becomes ``ApiError.from_response``; every transport failure becomes
``TransportError``. The key travels only in the Authorization header, only to the base
URL's origin, and is scrubbed from anything the server echoes back into an error message.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from floraq import __version__
from floraq.api_calls import Caller
from floraq.core.money import amount
from floraq.core.text import MAX_LINE, one_line
from floraq.errors import ServerError, UsageError
from floraq.request_log import REQUEST_LOGGER as REQUEST_LOGGER  # re-exported: batch, cli
from floraq.request_log import log_request as log_request
from floraq.retry import RetryPolicy, Throttle
from floraq.url_safety import is_loopback_host as is_loopback_host  # re-exported
from floraq.url_safety import origin
from floraq.url_safety import redact_url as redact_url  # re-exported
from floraq.url_safety import url_is_safe as url_is_safe  # re-exported

DEFAULT_BASE_URL = "https://app.flora.ai/api/v1"
DEFAULT_TIMEOUT = 30.0  # seconds of silence on a connection before an attempt fails
DEFAULT_DEADLINE = 120.0  # seconds one API request (headers and body) may take in all
USER_AGENT = f"floraq/{__version__}"
MALFORMED = "malformed_response"
T = TypeVar("T")


class RunStatus(StrEnum):
    """A run's status as FLORA reports it; a StrEnum, so it compares equal to the raw text."""

    PENDING = "pending"  # accepted, queued behind other runs; nothing produced yet
    RUNNING = "running"  # started; ``progress`` and ``started_at`` may be set
    COMPLETED = "completed"  # finished; ``outputs`` hold the files (URLs expire)
    FAILED = "failed"  # finished without outputs; ``error_code``/``error_message`` say why


def run_status(raw: str) -> RunStatus | str:
    """The known status for ``raw``, or ``raw`` itself: a status FLORA adds later is kept."""
    try:
        return RunStatus(raw)
    except ValueError:
        return raw


@dataclass(frozen=True, slots=True)
class RunOutput:
    """One file (or text) a run produced; the URL is on a third-party host."""

    output_id: str
    type: str
    url: str


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What FLORA said about a run, from a create or a poll answer."""

    run_id: str  # opaque: do not assume a run_ prefix
    status: RunStatus | str  # a str only for a status this floraq does not know
    progress: float | None
    created_at: int | None  # epoch ms
    started_at: int | None
    completed_at: int | None
    charged_cost: Decimal | None
    outputs: tuple[RunOutput, ...]
    error_code: str | None
    error_message: str | None
    poll_url: str | None
    replayed: bool  # the answer is a replay of an earlier request with the same key
    request_id: str | None
    raw: bytes = b""  # the answer as sent: kept for a person when it makes no sense

    @classmethod
    def from_response(cls, response: httpx.Response) -> RunInfo:
        """Read a run from a 2xx answer, ignoring unknown fields.

        A body that is not a run (no ``run_id`` or ``status``) raises ServerError with
        code ``malformed_response``: the API answered, but not with what it promised.
        """
        data = _json_object(response)
        run_id, status = data.get("run_id"), data.get("status")
        if not isinstance(run_id, str) or not run_id or not isinstance(status, str):
            raise _malformed(response, "the answer has no run_id or status")
        raw_outputs = data.get("outputs")
        outputs: list[RunOutput] = []
        taken: set[str] = set()
        for index, item in enumerate(raw_outputs if isinstance(raw_outputs, list) else []):
            url = item.get("url") if isinstance(item, dict) else None
            if not isinstance(url, str) or not url:
                raise _malformed(response, f"output {index + 1} has no url")
            kind = _string(item.get("type"))
            output_id = _output_id(item.get("output_id"), index, taken)
            taken.add(output_id)
            outputs.append(RunOutput(output_id=output_id, type=one_line(kind or ""), url=url))
        return cls(
            run_id=run_id,
            status=run_status(status),
            progress=_number(data.get("progress")),
            created_at=_epoch_ms(data.get("created_at")),
            started_at=_epoch_ms(data.get("started_at")),
            completed_at=_epoch_ms(data.get("completed_at")),
            charged_cost=amount(data.get("charged_cost")),
            outputs=tuple(outputs),
            error_code=_text(data.get("error_code"), limit=100),
            error_message=_text(data.get("error_message")),
            poll_url=_string(data.get("poll_url")),
            replayed=response.headers.get("idempotent-replayed", "").strip().lower() == "true",
            request_id=response.headers.get("request-id"),
            raw=response.content,
        )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _epoch_ms(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _string(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _text(value: object, *, limit: int = MAX_LINE) -> str | None:
    """Server text fit to store and show: one line, no control characters."""
    return one_line(value, limit=limit) or None if isinstance(value, str) else None


def _output_id(value: object, index: int, taken: set[str]) -> str:
    """A distinct id for every output: one without an id, or a repeated one, is never lost.

    The server's id when it has one (control characters removed); ``output_N`` by
    position when not; ``<id>.2``, ``<id>.3``, ... for repeats, so two files never share
    a ledger row or a file name. Positions are stable between polls of one run.
    """
    base = one_line(value, limit=100) if isinstance(value, str) else ""
    candidate = base or f"output_{index + 1}"
    suffix = 1
    while candidate in taken:
        suffix += 1
        candidate = f"{base or f'output_{index + 1}'}.{suffix}"
    return candidate


def _malformed(response: httpx.Response, why: str) -> ServerError:
    return ServerError(
        f"malformed response: {why}",
        status=response.status_code,
        code=MALFORMED,
        request_id=response.headers.get("request-id"),
    )


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        raise _malformed(response, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise _malformed(response, "the body is not a JSON object")
    return data


class FloraClient:
    """An async FLORA client over one httpx.AsyncClient; use ``async with``.

    Every attempt waits on the shared ``throttle``; 429, 5xx and transport failures
    are retried per ``policy`` (a POST only with its idempotency key); anything else
    raises at once. ``requests_sent`` counts every HTTP attempt.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        policy: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing is safe
        max_concurrency: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        log: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        base = base_url.strip().rstrip("/")
        if not url_is_safe(base):
            raise UsageError(
                f"refusing base URL {redact_url(base)!r}: use https:// "
                "(plain http:// is allowed only for localhost, 127.0.0.0/8 and ::1)"
            )
        key = api_key.strip()
        if not key:
            raise UsageError("the FLORA API key is empty")
        if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
            raise UsageError("the FLORA API key contains spaces or non-ASCII characters")
        self.base_url = base
        self.deadline = deadline  # the most one attempt may take (a worker's lease outlasts it)
        self._base = httpx.URL(base)
        self._base_origin = origin(self._base)
        self._urls: dict[tuple[str, ...], httpx.URL] = {}  # per-technique paths, parsed once
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            headers={
                "Authorization": f"Bearer {key}",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
        )
        self.throttle = Throttle(max_concurrency=max_concurrency, clock=clock, sleep=sleep)
        self._calls = Caller(
            self._http,
            base=self._base,
            key=key,
            policy=policy,
            throttle=self.throttle,
            sleep=sleep,
            rand=rand,
            clock=clock,
            log=log,
            deadline=deadline,
        )

    @property
    def requests_sent(self) -> int:
        """Every HTTP attempt so far, retries included."""
        return self._calls.requests_sent

    @property
    def rate_limited(self) -> int:
        """How many attempts were answered 429."""
        return self._calls.rate_limited

    def __repr__(self) -> str:
        return f"FloraClient(base_url={self.base_url!r})"

    async def __aenter__(self) -> FloraClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get_technique(self, slug: str) -> dict[str, Any]:
        """The technique's definition (inputs, outputs, run_cost) as raw JSON."""
        return await self._calls.call("GET", self._url("techniques", slug), _json_object)

    async def list_techniques(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Every technique visible to the key, following ``meta.next_cursor`` to the end."""
        techniques: list[dict[str, Any]] = []
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            params = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
            url = self._url("techniques").copy_merge_params(params)
            page, cursor = await self._calls.call("GET", url, _technique_page)
            techniques.extend(page)
            if cursor is None:
                return techniques
            if cursor in seen:
                raise ServerError(
                    "malformed response: the technique list repeats a cursor",
                    status=200,
                    code=MALFORMED,
                )
            seen.add(cursor)

    async def create_run(
        self,
        slug: str,
        *,
        inputs: list[dict[str, str]],
        idempotency_key: str,
        proceed: Callable[[], bool] | None = None,
        guard: Callable[[], bool] | None = None,
    ) -> RunInfo:
        """POST a run; retried with the same key and the same bytes until it answers.

        200 and 201 are both success (a replay says so in ``replayed``); 409/422 raise
        IdempotencyDuplicate at once: a run exists for this key that we cannot see.
        ``proceed`` is asked once more just before the first attempt leaves (after any
        wait for the throttle); when it says no, NotSent is raised and nothing was sent.
        ``guard`` is asked before every attempt, retries too (a worker's lease must outlast
        each one); when it says no, NotSent is raised and that attempt is not sent.
        """
        if not idempotency_key:
            raise ValueError("create_run needs an idempotency key")
        body = {"inputs": inputs, "mode": "async", "idempotency_key": idempotency_key}
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        runs = self._urls.get(("runs", slug))
        if runs is None:
            runs = self._urls[("runs", slug)] = self._url("techniques", slug, "runs")
        return await self._calls.call(
            "POST",
            runs,
            RunInfo.from_response,
            content=content,
            headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
            idempotency_key=idempotency_key,
            proceed=proceed,
            guard=guard,
        )

    async def get_run(self, slug: str, run_id: str, *, poll_url: str | None = None) -> RunInfo:
        """Poll a run: at ``poll_url`` when it is on the base URL's origin, else by path."""
        url: httpx.URL | None = None
        if poll_url:
            try:
                url = httpx.URL(poll_url)
            except httpx.InvalidURL:
                url = None
            if url is not None and origin(url) != self._base_origin:
                url = None
        if url is None:
            url = self._url("techniques", slug, "runs", run_id)
        return await self._calls.call("GET", url, RunInfo.from_response)

    async def call(
        self,
        method: str,
        parts: tuple[str, ...],
        parse: Callable[[httpx.Response], T],
        *,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> T:
        """One request to the API at ``base_url/parts...``, with the retry policy of all.

        For the endpoints without a method of their own (workspaces, assets): a POST is
        retried only with its ``idempotency_key``, sent as the ``Idempotency-Key`` header.
        """
        headers: dict[str, str] = {}
        content = None
        if body is not None:
            content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers["Content-Type"] = "application/json"
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        return await self._calls.call(
            method,
            self._url(*parts),
            parse,
            content=content,
            headers=headers or None,
            idempotency_key=idempotency_key,
        )

    def _url(self, *parts: str) -> httpx.URL:
        return httpx.URL(self.base_url + "".join("/" + quote(p, safe="") for p in parts))


def _technique_page(response: httpx.Response) -> tuple[list[dict[str, Any]], str | None]:
    data = _json_object(response)
    techniques = data.get("techniques")
    if not isinstance(techniques, list) or not all(isinstance(t, dict) for t in techniques):
        raise _malformed(response, "the technique list has no techniques array")
    meta = data.get("meta")
    cursor = meta.get("next_cursor") if isinstance(meta, dict) else None
    return techniques, cursor if isinstance(cursor, str) and cursor else None
