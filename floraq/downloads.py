"""Run outputs to disk: streamed, verified, durable, and never under a half-written name.

Output URLs live on third-party hosts, so the ``Downloader`` has its own HTTP client
that never carries the API key (no Authorization header, no credentials in URLs).
A file is written to ``<final>.part`` while it is hashed, checked against the length
the server announced, fsynced, and only then renamed to its final name; a body cut
short is fetched again (resumed with ``Range`` when the server allows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from floraq.api import USER_AGENT
from floraq.core.media_types import EXTENSIONS as EXTENSIONS  # re-exported
from floraq.core.media_types import extension_for as extension_for  # re-exported
from floraq.errors import (
    DiskError,
    DownloadError,
    DownloadExpired,
    DownloadFailed,
    DownloadRefused,
    parse_retry_after,
)
from floraq.partfile import PartFile, commit, sweep_parts
from floraq.partfile import sha256_file as sha256_file  # re-exported: verify, tests
from floraq.retry import (
    RETRIED_ERRORS,
    RetryPolicy,
    RetryState,
    Rule,
    rule_for_status,
)
from floraq.url_safety import redact_url, url_is_safe

DEFAULT_TIMEOUT = 60.0
# A download may take as long as it needs while it makes progress; one that moves less than
# STALL_MIN_RATE bytes a second over STALL_WINDOW seconds is stalled: the attempt is cut and
# retried (resuming where it stopped when the host allows), so a trickling host is given up
# after the policy's attempts, within minutes, while a big file on a healthy link finishes.
STALL_WINDOW = 30.0
STALL_MIN_RATE = 1024.0
MAX_REDIRECTS = 5
EXPIRED_STATUSES: frozenset[int] = frozenset({403, 404, 410})

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Downloaded:
    """A verified file under its final name."""

    path: Path
    bytes: int
    sha256: str
    content_type: str | None


def _refusal(url: httpx.URL, *, plain_http: bool) -> str | None:
    """Why this URL may not be fetched, or None when it may.

    Plain http:// is fetched only from this machine, and only when the API itself is
    plain http:// on this machine (the sandbox, a test): an https:// API must never be
    able to point floraq at a local service.
    """
    if not url_is_safe(url):
        return "only https:// URLs (or http:// to a loopback host) are fetched"
    if url.scheme != "https" and not plain_http:
        return (
            "the API is https://, so its outputs must be too; plain http:// to this"
            " machine is fetched only from an http:// API on this machine"
        )
    if url.userinfo:
        return "URLs with credentials in them are not fetched"
    return None


def _parse(url: str) -> httpx.URL | None:
    """The URL parsed once for every check and the request itself; None when it is invalid."""
    try:
        return httpx.URL(url)
    except httpx.InvalidURL:
        return None


class _Stalled(Exception):
    """The body is arriving too slowly to be worth waiting for on this attempt."""


@dataclass(frozen=True, slots=True)
class _Retry:
    """One attempt failed in a way worth another try."""

    rule: Rule
    reason: str
    identity: tuple[int, str] | None = None
    retry_after: float | None = None


class Downloader:
    """Fetches output files with bounded concurrency and the retry policy.

    Use ``async with``. ``crash`` is called with ``"mid_download"`` after the first
    chunk of a download is on disk and ``"after_rename_before_commit"`` once the final name exists,
    so crash tests can die exactly there.
    """

    def __init__(
        self,
        *,
        policy: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so sharing is safe
        max_concurrency: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        crash: Callable[[str], None] = lambda point: None,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
        plain_http: bool = False,
        stall_window: float = STALL_WINDOW,
        stall_min_rate: float = STALL_MIN_RATE,
        part_tag: str | None = None,
    ) -> None:
        """``plain_http``: the API is plain http:// on this machine, so its outputs may be.

        Every redirect is checked by the same rule as the first URL. ``part_tag``: several
        workers may fetch the same output (one stalled past its lease, one that took its
        row over), so each writes its own ``<final>.<tag>.part`` and none writes into
        another's; a part left by a dead worker is removed once the file is final.
        """
        self._part_tag = part_tag
        self._policy = policy
        self._plain_http = plain_http
        self._stall = (stall_window, stall_min_rate)
        self._log = log
        self._sleep = sleep
        self._rand = rand
        self._crash = crash
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrency)
        self.downloads_started = 0
        self.bytes_received = 0
        self._http = httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            follow_redirects=True,
            max_redirects=MAX_REDIRECTS,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            event_hooks={"request": [self._check_request]},
        )

    def __repr__(self) -> str:
        return f"Downloader(downloads_started={self.downloads_started})"

    async def _check_request(self, request: httpx.Request) -> None:
        why = _refusal(request.url, plain_http=self._plain_http)
        if why is not None:
            raise DownloadRefused(f"refusing to fetch {redact_url(request.url)}: {why}")

    async def __aenter__(self) -> Downloader:
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

    async def download(self, url: str, *, dest_stem: Path, output_type: str) -> Downloaded:
        """Fetch ``url`` to ``dest_stem`` + an extension from its Content-Type.

        403/404/410 raise DownloadExpired at once; 429, 5xx, transport errors and
        short bodies are retried per policy, then raise DownloadError. A stale
        ``.part`` from a crashed process is overwritten, never trusted.
        """
        parsed = _parse(url)
        why = (
            "the URL is not valid"
            if parsed is None
            else _refusal(parsed, plain_http=self._plain_http)
        )
        if why is not None or parsed is None:
            raise DownloadRefused(f"refusing to fetch {redact_url(url)}: {why}")
        self.downloads_started += 1
        state = RetryState(self._policy, rand=self._rand, clock=self._clock)
        progress = PartFile(dest_stem, output_type, tag=self._part_tag)
        try:
            while True:
                async with self._slots:
                    outcome = await self._attempt(parsed, progress)
                if isinstance(outcome, Downloaded):
                    return outcome
                delay = state.delay_for(
                    outcome.rule, identity=outcome.identity, retry_after=outcome.retry_after
                )
                if delay is None:
                    raise DownloadError(
                        f"could not download {redact_url(parsed)} after {state.attempts} "
                        f"attempt(s): {outcome.reason}"
                    )
                await self._sleep(delay)
        except DownloadError:
            progress.discard()
            raise
        except DiskError:
            with contextlib.suppress(OSError):
                progress.discard()
            raise
        except BaseException:
            if self._part_tag is not None:  # a tagged part is nobody else's to finish
                with contextlib.suppress(OSError):
                    progress.discard()
            raise

    async def _attempt(self, url: httpx.URL, progress: PartFile) -> Downloaded | _Retry:
        resume = progress.can_resume()
        headers: dict[str, str] = {}
        if resume:
            headers["Range"] = f"bytes={progress.received}-"
            if progress.validator:
                headers["If-Range"] = progress.validator
        started = time.perf_counter()

        def label() -> str:  # only when there is a log line to write: redacting costs a parse
            return f"GET {redact_url(url)}" + (f" from byte {progress.received}" if resume else "")

        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if self._log is not None:
                    ms = round((time.perf_counter() - started) * 1000)
                    self._log(f"{label()} -> {response.status_code} in {ms} ms")
                return await self._receive(url, response, progress, resume)
        except RETRIED_ERRORS as exc:
            if self._log is not None:
                self._log(f"{label()} -> {type(exc).__name__}")
            return _Retry(Rule.BACKOFF, f"{type(exc).__name__}: {exc}")
        except _Stalled as stalled:
            if self._log is not None:
                self._log(f"{label()} -> stalled")
            return _Retry(Rule.BACKOFF, str(stalled))
        except httpx.TooManyRedirects:
            raise DownloadFailed(
                f"could not download {redact_url(url)}: more than {MAX_REDIRECTS} redirects"
                " (a redirect loop?)"
            ) from None
        except httpx.HTTPError as exc:
            raise DownloadError(f"could not download {redact_url(url)}: {exc}") from exc
        except OSError as exc:  # the disk, not the network: no retry can help
            raise DiskError.from_os_error(exc, progress.part or progress.dest_stem) from exc

    async def _receive(
        self, url: httpx.URL, response: httpx.Response, progress: PartFile, resume: bool
    ) -> Downloaded | _Retry:
        status = response.status_code
        if not response.is_success:
            return _refused(url, response, progress, resume)
        if status == 206:
            if not resume or not self._resumes_at(response, progress):
                progress.discard()
                return _Retry(Rule.BACKOFF, "the server sent a range that does not fit")
            mode = "ab"
        else:
            progress.start_over(response)
            mode = "wb"
        part, final = progress.part, progress.final
        assert part is not None and final is not None
        this_answer = await self._write(response, part, mode, progress)
        cut = _cut_short(response, this_answer, progress)
        if cut is not None:
            if not progress.can_resume():
                progress.discard()
            return cut
        if self._part_tag is not None and not part.exists():
            # Swept by the worker that took this row over and finished the file first.
            return _Retry(Rule.BACKOFF, "its part file was removed by another worker")
        await asyncio.to_thread(commit, part, final)
        if self._part_tag is not None:
            await asyncio.to_thread(sweep_parts, final)
        self._crash("after_rename_before_commit")
        return Downloaded(
            path=final,
            bytes=progress.received,
            sha256=progress.digest.hexdigest(),
            content_type=progress.content_type,
        )

    async def _write(
        self, response: httpx.Response, part: Path, mode: str, progress: PartFile
    ) -> int:
        """Stream the body into ``part`` while hashing it; the bytes this answer carried.

        Raises _Stalled when the body moves slower than the stall rule allows.
        """
        this_answer = 0
        window, min_rate = self._stall
        since, moved = self._clock(), 0
        with part.open(mode) as f:
            async for chunk in response.aiter_bytes():
                moved += len(chunk)
                now = self._clock()
                if now - since >= window:
                    if moved < min_rate * (now - since):
                        raise _Stalled(
                            f"the download stalled: {moved} bytes in {now - since:.0f} s"
                            f" (under {min_rate:g} bytes/s for {window:g} s)"
                        )
                    since, moved = now, 0
                f.write(chunk)
                this_answer += len(chunk)
                progress.digest.update(chunk)
                progress.received += len(chunk)
                self.bytes_received += len(chunk)
                if not progress.first_chunk_seen:
                    progress.first_chunk_seen = True
                    f.flush()
                    self._crash("mid_download")
        return this_answer

    @staticmethod
    def _resumes_at(response: httpx.Response, progress: PartFile) -> bool:
        """True when a 206 continues exactly where our part file ends."""
        match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
        if match is None or int(match.group(1)) != progress.received:
            return False
        total = match.group(3)
        return total == "*" or progress.total is None or int(total) == progress.total


def _refused(url: httpx.URL, response: httpx.Response, progress: PartFile, resume: bool) -> _Retry:
    """An error answer: DownloadExpired or DownloadError when no retry can help."""
    status = response.status_code
    if status in EXPIRED_STATUSES:
        raise DownloadExpired(
            f"{redact_url(url)} answered {status}: the output URL no longer works; "
            "poll the run again for a fresh one"
        )
    rule = rule_for_status(status)
    if status == 416 and resume:
        progress.discard()
        return _Retry(Rule.BACKOFF, "the server refused to resume (416)")
    if rule is Rule.NEVER:
        raise DownloadFailed(f"could not download {redact_url(url)}: HTTP {status}")
    return _Retry(
        rule,
        f"HTTP {status}",
        identity=(status, "") if rule is Rule.BACKOFF else None,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def _cut_short(response: httpx.Response, this_answer: int, progress: PartFile) -> _Retry | None:
    """A retry when the body is shorter than this answer announced, or than the whole file."""
    announced = response.headers.get("content-length")
    encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
    short = (
        announced is not None
        and announced.isdigit()
        and not encoded
        and this_answer != int(announced)
    )
    if not short and (progress.total is None or progress.received == progress.total):
        return None
    expected = progress.total if progress.total is not None else announced
    return _Retry(
        Rule.BACKOFF, f"the body was cut short at {progress.received} of {expected} bytes"
    )
