"""One loop for every request to FLORA: the throttle, the retry policy, error answers, log lines.

``Caller.call`` sends one request until it is answered, retried per ``floraq.retry``
(a POST only with its idempotency key); every error answer becomes
``ApiError.from_response``, every transport failure ``TransportError``, and every line
it logs or raises is scrubbed of the key first. ``FloraClient`` says what to send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

import httpx

from floraq.errors import (
    ApiError,
    AuthError,
    NotSent,
    RateLimited,
    ServerError,
    TransportError,
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

T = TypeVar("T")
# Opens a multipart body for one attempt (``data`` and ``files`` for httpx) and closes it
# after: a file is read from its start on every attempt, in chunks, never held whole.
Form = Callable[[], AbstractContextManager[dict[str, Any]]]


class Caller:
    """Sends requests over ``http`` to ``base``; counts every attempt and every 429."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base: httpx.URL,
        key: str,
        policy: RetryPolicy,
        throttle: Throttle,
        sleep: Callable[[float], Awaitable[None]],
        rand: Callable[[], float],
        clock: Callable[[], float],
        log: Callable[[str], None] | None,
        deadline: float,
    ) -> None:
        self._http = http
        self._deadline = deadline
        self._base = base
        self._key = key
        self._policy = policy
        self.throttle = throttle
        self._sleep = sleep
        self._rand = rand
        self._clock = clock
        self._log = log
        self.requests_sent = 0
        self.rate_limited = 0

    def _path(self, url: httpx.URL) -> str:
        path = url.raw_path.decode("ascii", "replace").split("?", 1)[0]
        base = self._base.raw_path.decode("ascii", "replace").rstrip("/")
        return path[len(base) :] if base and path.startswith(base + "/") else path

    async def call(
        self,
        method: str,
        url: httpx.URL,
        parse: Callable[[httpx.Response], T],
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        proceed: Callable[[], bool] | None = None,
        guard: Callable[[], bool] | None = None,
        form: Form | None = None,
        retryable: bool = False,
    ) -> T:
        """One request, retried per the policy; ``proceed`` is asked before the first
        attempt only, ``guard`` before every attempt (a worker's lease: NotSent if no).
        ``retryable``: a POST that may be sent again without a key (an upload to its
        reservation lands in one place however often it is sent)."""
        retryable = retryable or method in IDEMPOTENT_METHODS or bool(idempotency_key)
        state = RetryState(self._policy, rand=self._rand, clock=self._clock)
        label = f"{method} {self._path(url)}"
        unanswered = 0  # attempts that may have reached FLORA without a readable answer
        while True:
            answer, ms = await self._attempt(
                method, url, label, (content, form), headers, proceed, guard
            )
            proceed = None  # asked before the first attempt only: retries must go on
            if isinstance(answer, httpx.HTTPError):
                unanswered += 1
                await self._sleep(self._failure_delay(answer, label, ms, state, retryable))
                continue
            request_id = answer.headers.get("request-id")
            outcome = f"{label} -> {answer.status_code} in {ms} ms" + (
                f" (request-id {request_id})" if request_id else ""
            )
            error: ApiError | AuthError
            if answer.is_success:
                try:
                    result = parse(answer)
                except ServerError as exc:
                    unanswered += 1  # a 2xx we cannot read: the request probably succeeded
                    error, rule = exc, Rule.BACKOFF
                else:
                    self.throttle.on_success()
                    self._emit(outcome, None)
                    return result
            else:
                error = ApiError.from_response(answer, scrub=self._scrub)
                rule = rule_for_status(answer.status_code)
            delay = self._error_delay(error, rule, answer.status_code, state, retryable)
            self._emit(outcome, delay)
            if delay is None:
                raise self._given_up(error, rule, state, unanswered)
            if rule is not Rule.RETRY_AFTER:
                await self._sleep(delay)  # a 429's wait is the shared pause, taken on entry

    async def _attempt(
        self,
        method: str,
        url: httpx.URL,
        label: str,
        body: tuple[bytes | None, Form | None],
        headers: dict[str, str] | None,
        proceed: Callable[[], bool] | None,
        guard: Callable[[], bool] | None = None,
    ) -> tuple[httpx.Response | httpx.HTTPError, int]:
        """One request under the throttle: its answer or its failure, and its milliseconds."""
        async with self.throttle:
            if proceed is not None and not proceed():
                raise NotSent(f"{label}: withdrawn before it was sent")
            if guard is not None and not guard():
                raise NotSent(f"{label}: not sent: this worker's lease is too short for it")
            self.requests_sent += 1
            started = time.perf_counter()
            answer: httpx.Response | httpx.HTTPError
            content, form = body
            try:
                async with asyncio.timeout(self._deadline):
                    if form is None:
                        answer = await self._http.request(
                            method, url, content=content, headers=headers
                        )
                    else:
                        with form() as parts:
                            answer = await self._http.request(method, url, headers=headers, **parts)
            except httpx.HTTPError as exc:
                answer = exc
            except TimeoutError:
                # Per-read timeouts let a server that trickles a byte at a time hold us
                # forever; the deadline covers the whole exchange, headers and body.
                answer = httpx.ReadTimeout(f"no complete answer within {self._deadline:g} s")
            return answer, round((time.perf_counter() - started) * 1000)

    def _failure_delay(
        self, failure: httpx.HTTPError, label: str, ms: int, state: RetryState, retryable: bool
    ) -> float:
        """The wait before another try after no answer at all; TransportError when none."""
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
        return delay

    def _error_delay(
        self,
        error: ApiError | AuthError,
        rule: Rule,
        status: int,
        state: RetryState,
        retryable: bool,
    ) -> float | None:
        """The wait before retrying an error answer (None: give up); the throttle reacts."""
        retry_after = error.retry_after if isinstance(error, RateLimited) else None
        identity = (status, error.code) if rule is Rule.BACKOFF else None
        delay = (
            state.delay_for(rule, identity=identity, retry_after=retry_after) if retryable else None
        )
        if rule is Rule.RETRY_AFTER:
            self.rate_limited += 1
            self.throttle.on_rate_limited()
            self.throttle.pause_all(retry_after_delay(self._policy, retry_after))
        elif rule is Rule.NEVER:
            self.throttle.on_success()
        return delay

    def _given_up(
        self, error: ApiError | AuthError, rule: Rule, state: RetryState, unanswered: int
    ) -> ApiError | AuthError:
        """The error as raised: with how many attempts were made, and how many identical."""
        error = error.with_attempts(state.attempts, unanswered=unanswered)
        if isinstance(error, ServerError) and rule is Rule.BACKOFF:
            limit = self._policy.max_identical_5xx
            error = error.with_repeated(state.identical if state.identical >= limit else 0)
        return error

    def _emit(self, line: str, delay: float | None) -> None:
        if self._log is not None:
            suffix = f"; retrying in {delay:.2f} s" if delay is not None else ""
            self._log(self._scrub(line + suffix))

    def _scrub(self, text: str) -> str:
        """The server may echo our key back; never let it reach a message or a log."""
        return text.replace(self._key, "[redacted]")
