"""Files to an asset's upload host: streamed from disk, never with the FLORA key.

The upload host is a third party (ImageKit, S3...), so this client has no
Authorization header at all, like the downloader's; the key is only used to scrub
messages. The form is the reservation's fields, then the file in its ``file_field``,
read from disk in chunks on every attempt (httpx's multipart encoder streams a file
object), under the same retry policy as every other request.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from floraq.api import USER_AGENT
from floraq.api_calls import Caller
from floraq.errors import ApiError, AuthError, UsageError
from floraq.retry import RetryPolicy, Throttle
from floraq.url_safety import redact_url, url_is_safe

MIN_RATE = 256 * 1024  # bytes/s: how slow an upload may be before it counts as stuck
BASE_DEADLINE = 120.0  # seconds for the answer, on top of the bytes at MIN_RATE
UPLOAD_TIMEOUT = 60.0  # seconds of silence on a connection


class UploadRefused(ApiError):
    """The upload host refused the form: a 401/403 there is an expired or bad reservation,
    not FLORA refusing the key (the key never goes there), so it stops nothing else."""


class UploadHost:
    """One key-less httpx client for every upload host; use ``async with``.

    Plain ``http://`` is allowed only to this machine, and only when the API itself is
    local (the sandbox), as for downloads.
    """

    def __init__(
        self,
        *,
        api_key: str,
        policy: RetryPolicy,
        concurrency: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        log: Callable[[str], None] | None = None,
        plain_http: bool = False,
    ) -> None:
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=UPLOAD_TIMEOUT,
            follow_redirects=False,
            headers={"User-Agent": USER_AGENT},  # never an Authorization header
        )
        self._key = api_key  # only to scrub it from messages
        self._policy = policy
        self.throttle = Throttle(max_concurrency=concurrency, clock=time.monotonic, sleep=sleep)
        self._sleep, self._rand, self._log = sleep, rand, log
        self.uploads = 0
        self._plain_http = plain_http  # http:// to this machine: only for a local API

    async def __aenter__(self) -> UploadHost:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def upload(self, reservation: dict[str, Any], path: Path, content_type: str) -> None:
        """POST the form and the file to the reservation's URL until it is taken.

        Raises ApiError (a refused form: an expired reservation is 4xx), TransportError,
        UsageError for an upload URL floraq will not send a file to, or OSError (the file).
        """
        url = httpx.URL(reservation["url"])
        if not url_is_safe(url) or (url.scheme == "http" and not self._plain_http):
            raise UsageError(
                f"refusing upload URL {redact_url(url)}: use https:// (plain http:// only"
                " to this machine)"
            )
        size = path.stat().st_size
        caller = Caller(
            self._http,
            base=url.copy_with(path="/", query=None),
            key=self._key,
            policy=self._policy,
            throttle=self.throttle,
            sleep=self._sleep,
            rand=self._rand,
            clock=time.monotonic,
            log=self._log,
            deadline=BASE_DEADLINE + size / MIN_RATE,
        )

        @contextmanager
        def form() -> Iterator[dict[str, Any]]:
            with path.open("rb") as f:
                yield {
                    "data": reservation["form_fields"],
                    "files": {reservation["file_field"]: (path.name, f, content_type)},
                }

        try:
            await caller.call("POST", url, lambda r: None, form=form, retryable=True)
        except AuthError as e:
            raise UploadRefused(
                e.message, status=e.status, code=e.code, request_id=e.request_id
            ) from None
        self.uploads += 1
