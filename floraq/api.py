"""The FLORA API client: auth, timeouts, retries, and error answers turned into exceptions.

Only this module speaks HTTP to FLORA. Every request goes through one loop
(``FloraClient._call``) that applies ``floraq.retry``; every error answer becomes
``ApiError.from_response``; every transport failure becomes ``TransportError``. The
key travels only in the Authorization header, only to the base URL's origin, and is
scrubbed from anything the server echoes back into an error message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from floraq import __version__
from floraq.core.money import amount
from floraq.errors import (
    ApiError,
    AuthError,
    NotSent,
    RateLimited,
    ServerError,
    TransportError,
    UsageError,
)
from floraq.retry import (
    IDEMPOTENT_METHODS,
    RETRIED_ERRORS,
    RetryPolicy,
    RetryState,
    Rule,
    Throttle,
    retry_after_delay,
    rule_for_status,
)

DEFAULT_BASE_URL = "https://app.flora.ai/api/v1"
DEFAULT_TIMEOUT = 30.0
USER_AGENT = f"floraq/{__version__}"
MALFORMED = "malformed_response"
REQUEST_LOGGER = "floraq.requests"  # one line per HTTP attempt; the CLI shows it with -v

T = TypeVar("T")


def log_request(line: str) -> None:
    """Hand one request line (already free of the key) to the ``floraq.requests`` logger."""
    logging.getLogger(REQUEST_LOGGER).info(line)


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: the only hosts plain HTTP may reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_is_safe(url: str | httpx.URL) -> bool:
    """https:// anywhere, http:// only to a loopback host; nothing else."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL:
        return False
    if not parsed.host:
        return False
    if parsed.scheme == "https":
        return True
    return parsed.scheme == "http" and is_loopback_host(parsed.host)


def redact_url(url: str | httpx.URL) -> str:
    """A URL fit for a message: no userinfo, no query (either may hold a secret)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid URL>"
    return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host.lower(), url.port)


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
    status: str  # pending | running | completed | failed; unknown strings kept as-is
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
        for index, item in enumerate(raw_outputs if isinstance(raw_outputs, list) else []):
            url = item.get("url") if isinstance(item, dict) else None
            if not isinstance(url, str) or not url:
                raise _malformed(response, f"output {index + 1} has no url")
            output_id = item.get("output_id")
            kind = item.get("type")
            outputs.append(
                RunOutput(
                    output_id=output_id if isinstance(output_id, str) else f"output_{index + 1}",
                    type=kind if isinstance(kind, str) else "",
                    url=url,
                )
            )
        return cls(
            run_id=run_id,
            status=status,
            progress=_number(data.get("progress")),
            created_at=_epoch_ms(data.get("created_at")),
            started_at=_epoch_ms(data.get("started_at")),
            completed_at=_epoch_ms(data.get("completed_at")),
            charged_cost=amount(data.get("charged_cost")),
            outputs=tuple(outputs),
            error_code=_string(data.get("error_code")),
            error_message=_string(data.get("error_message")),
            poll_url=_string(data.get("poll_url")),
            replayed=response.headers.get("idempotent-replayed", "").strip().lower() == "true",
            request_id=response.headers.get("request-id"),
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
        self._base = httpx.URL(base)
        self._base_origin = _origin(self._base)
        self._urls: dict[tuple[str, ...], httpx.URL] = {}  # per-technique paths, parsed once
        self._key = key
        self._policy = policy
        self._sleep = sleep
        self._rand = rand
        self._clock = clock
        self._log = log
        self.throttle = Throttle(max_concurrency=max_concurrency, clock=clock, sleep=sleep)
        self.requests_sent = 0
        self.rate_limited = 0
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
        return await self._call("GET", self._url("techniques", slug), _json_object)

    async def list_techniques(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Every technique visible to the key, following ``meta.next_cursor`` to the end."""
        techniques: list[dict[str, Any]] = []
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            params = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
            url = self._url("techniques").copy_merge_params(params)
            page, cursor = await self._call("GET", url, _technique_page)
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
    ) -> RunInfo:
        """POST a run; retried with the same key and the same bytes until it answers.

        200 and 201 are both success (a replay says so in ``replayed``); 409/422 raise
        IdempotencyDuplicate at once: a run exists for this key that we cannot see.
        ``proceed`` is asked once more just before the first attempt leaves (after any
        wait for the throttle); when it says no, NotSent is raised and nothing was sent.
        """
        if not idempotency_key:
            raise ValueError("create_run needs an idempotency key")
        body = {"inputs": inputs, "mode": "async", "idempotency_key": idempotency_key}
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        runs = self._urls.get(("runs", slug))
        if runs is None:
            runs = self._urls[("runs", slug)] = self._url("techniques", slug, "runs")
        return await self._call(
            "POST",
            runs,
            RunInfo.from_response,
            content=content,
            headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
            idempotency_key=idempotency_key,
            proceed=proceed,
        )

    async def get_run(self, slug: str, run_id: str, *, poll_url: str | None = None) -> RunInfo:
        """Poll a run: at ``poll_url`` when it is on the base URL's origin, else by path."""
        url: httpx.URL | None = None
        if poll_url:
            try:
                url = httpx.URL(poll_url)
            except httpx.InvalidURL:
                url = None
            if url is not None and _origin(url) != self._base_origin:
                url = None
        if url is None:
            url = self._url("techniques", slug, "runs", run_id)
        return await self._call("GET", url, RunInfo.from_response)

    def _url(self, *parts: str) -> httpx.URL:
        return httpx.URL(self.base_url + "".join("/" + quote(p, safe="") for p in parts))

    def _path(self, url: httpx.URL) -> str:
        path = url.raw_path.decode("ascii", "replace").split("?", 1)[0]
        base = self._base.raw_path.decode("ascii", "replace").rstrip("/")
        return path[len(base) :] if base and path.startswith(base + "/") else path

    async def _call(
        self,
        method: str,
        url: httpx.URL,
        parse: Callable[[httpx.Response], T],
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        proceed: Callable[[], bool] | None = None,
    ) -> T:
        retryable = method in IDEMPOTENT_METHODS or bool(idempotency_key)
        state = RetryState(self._policy, rand=self._rand, clock=self._clock)
        label = f"{method} {self._path(url)}"
        unanswered = 0  # attempts that may have reached FLORA without a readable answer
        while True:
            async with self.throttle:
                if proceed is not None and not proceed():
                    raise NotSent(f"{label}: withdrawn before it was sent")
                proceed = None  # asked before the first attempt only: retries must go on
                self.requests_sent += 1
                started = time.perf_counter()
                try:
                    response = await self._http.request(
                        method, url, content=content, headers=headers
                    )
                except httpx.HTTPError as exc:
                    failure: httpx.HTTPError | None = exc
                else:
                    failure = None
                ms = round((time.perf_counter() - started) * 1000)

            if failure is not None:
                unanswered += 1
                retried = isinstance(failure, RETRIED_ERRORS) and retryable
                delay = state.delay_for(Rule.BACKOFF) if retried else None
                self._emit(f"{label} -> {type(failure).__name__} after {ms} ms", delay)
                if delay is None:
                    raise TransportError(
                        self._scrub(
                            f"{label}: no answer from {self._base.host} after "
                            f"{state.attempts} attempt(s) ({type(failure).__name__}: {failure})"
                        )
                    ) from failure
                await self._sleep(delay)
                continue

            request_id = response.headers.get("request-id")
            outcome = f"{label} -> {response.status_code} in {ms} ms" + (
                f" (request-id {request_id})" if request_id else ""
            )
            error: ApiError | AuthError
            if response.is_success:
                try:
                    result = parse(response)
                except ServerError as exc:
                    unanswered += 1  # a 2xx we cannot read: the request probably succeeded
                    error = exc
                else:
                    self.throttle.on_success()
                    self._emit(outcome, None)
                    return result
                rule = Rule.BACKOFF
            else:
                error = ApiError.from_response(response)
                rule = rule_for_status(response.status_code)

            retry_after = error.retry_after if isinstance(error, RateLimited) else None
            identity = (response.status_code, error.code) if rule is Rule.BACKOFF else None
            delay = (
                state.delay_for(rule, identity=identity, retry_after=retry_after)
                if retryable
                else None
            )
            if rule is Rule.RETRY_AFTER:
                self.rate_limited += 1
                self.throttle.on_rate_limited()
                self.throttle.pause_all(retry_after_delay(self._policy, retry_after))
            elif rule is Rule.NEVER:
                self.throttle.on_success()
            self._emit(outcome, delay)
            if delay is None:
                error.attempts = state.attempts
                error.unanswered = unanswered
                if isinstance(error, ServerError) and identity is not None:
                    limit = self._policy.max_identical_5xx
                    error.repeated = state.identical if state.identical >= limit else 0
                raise self._scrubbed(error)
            if rule is not Rule.RETRY_AFTER:
                await self._sleep(delay)  # a 429's wait is the shared pause, taken on entry

    def _emit(self, line: str, delay: float | None) -> None:
        if self._log is not None:
            suffix = f"; retrying in {delay:.2f} s" if delay is not None else ""
            self._log(self._scrub(line + suffix))

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "[redacted]")

    def _scrubbed(self, error: ApiError | AuthError) -> ApiError | AuthError:
        """The server may echo our key in its message; never let it reach a log."""
        error.message = self._scrub(error.message)
        error.args = (error.message,)
        if isinstance(error, ApiError):
            error.fields = tuple(
                {name: self._scrub(value) for name, value in field.items()}
                for field in error.fields
            )
        return error


def _technique_page(response: httpx.Response) -> tuple[list[dict[str, Any]], str | None]:
    data = _json_object(response)
    techniques = data.get("techniques")
    if not isinstance(techniques, list) or not all(isinstance(t, dict) for t in techniques):
        raise _malformed(response, "the technique list has no techniques array")
    meta = data.get("meta")
    cursor = meta.get("next_cursor") if isinstance(meta, dict) else None
    return techniques, cursor if isinstance(cursor, str) and cursor else None
