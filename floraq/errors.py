"""Every error floraq raises on purpose, and the exit code each one means.

The CLI catches ``FloraqError`` in one place and prints its message as one line;
anything else that escapes is a bug in floraq.

    FloraqError                      exit 1  (finished, but something needs a look)
    ├── UsageError                   exit 2  bad flags, settings or environment; nothing sent
    │   └── ManifestError            exit 2  manifest or CSV invalid; carries every Problem
    ├── ApiAnswerError               the API answered with an error (ApiError.from_response)
    │   ├── AuthError                exit 3  the API refused the key (401/403)
    │   └── ApiError                 exit 1  any other error answer from the FLORA API
    │       ├── InputRejected        400 input_validation_error / invalid_json
    │       ├── InsufficientCredits  402 (the batch pauses: exit 4)
    │       ├── NotFound             404
    │       ├── IdempotencyDuplicate 409 idempotency_duplicate / 422 idempotency_conflict
    │       ├── RateLimited          429 (carries retry_after)
    │       └── ServerError          5xx, any body (and 2xx bodies that are not what was promised)
    ├── TransportError               connect / read / reset / timeout; no HTTP answer
    ├── NotSent                      a request withdrawn before it left (the batch stopped)
    ├── DownloadError                an output could not be fetched or verified
    │   ├── DownloadExpired          the output URL answers 403/404/410
    │   └── DownloadRefused          the output URL is not one floraq may fetch (plain http)
    ├── DiskError                    exit 7  a write to disk failed (full, read-only, not a folder)
    ├── LedgerError                  exit 2  the ledger cannot be opened or is inconsistent
    │   └── LedgerBusy               exit 5  another floraq holds this ledger
    └── Interrupted                  exit 130  Ctrl-C or SIGTERM; `floraq resume` continues
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any, ClassVar, Self

from floraq.core.text import one_line
from floraq.error_envelope import parse_envelope
from floraq.error_envelope import parse_retry_after as parse_retry_after  # re-exported

if TYPE_CHECKING:
    import httpx

    from floraq.core.problems import Problem


class ExitCode(IntEnum):
    """The documented exit codes; a cron wrapper branches on these."""

    OK = 0  # every row is in a final, good state: nothing more to do
    FAILURES = 1  # finished; some rows failed, were rejected, expired, not downloadable, ...
    USAGE = 2  # invalid manifest, CSV, flags or settings; nothing was sent
    AUTH = 3  # the API refused the credentials; nothing more was sent
    PAUSED = 4  # stopped by credits or the budget cap; rows still queued: run again later
    BUSY = 5  # another floraq process holds this ledger; try again later
    INCOMPLETE = 6  # runs still in flight (--no-wait, or gave up waiting): `floraq resume` later
    DISK = 7  # the disk refused a write (full, read-only, not a folder): fix it, `floraq resume`
    LEDGER_LOST = 8  # the ledger's server dropped the connection: check it, `floraq resume`
    INTERNAL = 70  # a bug in floraq (a traceback was printed)
    INTERRUPTED = 130  # Ctrl-C or SIGTERM; `floraq resume` continues


class FloraqError(Exception):
    """Root of every error floraq raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILURES

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(FloraqError):
    """Bad flags, settings or environment, found before anything is sent."""

    exit_code = ExitCode.USAGE


class ManifestError(UsageError):
    """The manifest or its CSV rows are invalid; carries every problem found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        first = str(errors[0]) if errors else "invalid manifest"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


def _as_is(text: str) -> str:
    return text


class ApiAnswerError(FloraqError):
    """The FLORA API answered, and the answer was an error: the common root of AuthError
    and ApiError, with everything support asks for.

    Built complete by ``from_response`` (server text already scrubbed); a fact learnt later
    (how many attempts the client made) gives a new error through ``with_attempts``,
    so no error is ever patched after it was raised or logged.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        request_id: str | None = None,
        attempts: int = 1,
        unanswered: int = 0,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id
        self.attempts = attempts  # requests sent before this answer
        self.unanswered = unanswered  # of those, how many got no readable answer (a run may exist)

    @staticmethod
    def from_response(
        response: httpx.Response, *, scrub: Callable[[str], str] = _as_is
    ) -> ApiError | AuthError:
        """The right error for any error response, JSON envelope or not, in one place.

        ``scrub`` is applied to every text the server sent (it may echo our key back).
        """
        status = response.status_code
        raw_id = response.headers.get("request-id")
        request_id = None if raw_id is None else scrub(one_line(raw_id, limit=200))
        code, message, fields = parse_envelope(response.content)
        if code is None:
            code = _DEFAULT_CODES.get(status, "server_error" if status >= 500 else "http_error")
        if message is None:
            message = f"HTTP {status} with a non-JSON body"
        message, code = scrub(message), scrub(code)
        if status in (401, 403):
            return AuthError(message, status=status, code=code, request_id=request_id)
        cls = _CLASS_BY_STATUS.get(status, ServerError if status >= 500 else ApiError)
        scrubbed = [{name: scrub(value) for name, value in f.items()} for f in fields]
        extra: dict[str, Any] = {}
        if cls is RateLimited:
            extra["retry_after"] = parse_retry_after(response.headers.get("retry-after"))
        return cls(
            message, status=status, code=code, fields=scrubbed, request_id=request_id, **extra
        )

    def with_attempts(self, attempts: int, *, unanswered: int) -> Self:
        """This error as the client gives it up: after ``attempts`` requests, ``unanswered``
        of which got no readable answer."""
        return self._replace(attempts=attempts, unanswered=unanswered)

    def _values(self) -> dict[str, Any]:
        """The constructor's keyword arguments that rebuild this error (see ``_replace``)."""
        return {
            "status": self.status,
            "code": self.code,
            "request_id": self.request_id,
            "attempts": self.attempts,
            "unanswered": self.unanswered,
        }

    def _replace(self, **changes: Any) -> Self:
        return type(self)(self.message, **(self._values() | changes))


class AuthError(ApiAnswerError):
    """The API refused our key (401) or this action (403); retrying cannot help."""

    exit_code = ExitCode.AUTH

    def __str__(self) -> str:
        where = f", request-id {self.request_id}" if self.request_id else ""
        return (
            f"the API refused the key: {self.message} ({self.status} {self.code}{where});"
            " check FLORA_API_KEY"
        )


class ApiError(ApiAnswerError):
    """Any error answer from the FLORA API other than a refused key."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        fields: Sequence[Mapping[str, str]] = (),
        request_id: str | None = None,
        attempts: int = 1,
        unanswered: int = 0,
    ) -> None:
        super().__init__(
            message,
            status=status,
            code=code,
            request_id=request_id,
            attempts=attempts,
            unanswered=unanswered,
        )
        self.fields = tuple(dict(f) for f in fields)

    def __str__(self) -> str:
        where = f" (request-id {self.request_id})" if self.request_id else ""
        return f"{self.status} {self.code}: {self.message}{where}"

    def _values(self) -> dict[str, Any]:
        return super()._values() | {"fields": self.fields}


class InputRejected(ApiError):
    """400: the API refused this row's inputs; `fields` says which."""


class InsufficientCredits(ApiError):
    """402: the workspace balance cannot cover the run; the batch pauses."""


class NotFound(ApiError):
    """404: unknown technique slug or run id."""


class IdempotencyDuplicate(ApiError):
    """409/422: the key was seen before, but the API will not say which run it made."""


class RateLimited(ApiError):
    """429: slow down; `retry_after` in seconds when the API said so."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        code: str = "rate_limited",
        fields: Sequence[Mapping[str, str]] = (),
        request_id: str | None = None,
        attempts: int = 1,
        unanswered: int = 0,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            status=status,
            code=code,
            fields=fields,
            request_id=request_id,
            attempts=attempts,
            unanswered=unanswered,
        )
        self.retry_after = retry_after

    def _values(self) -> dict[str, Any]:
        return super()._values() | {"retry_after": self.retry_after}


class ServerError(ApiError):
    """5xx: FLORA (or a load balancer in front of it) failed; usually worth a retry.

    ``repeated`` counts the identical answers in a row that made the client give up (0
    when it stopped for another reason): the same 500 again and again usually means
    this request itself is wrong (a malformed id), not that FLORA is struggling.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str,
        fields: Sequence[Mapping[str, str]] = (),
        request_id: str | None = None,
        attempts: int = 1,
        unanswered: int = 0,
        repeated: int = 0,
    ) -> None:
        super().__init__(
            message,
            status=status,
            code=code,
            fields=fields,
            request_id=request_id,
            attempts=attempts,
            unanswered=unanswered,
        )
        self.repeated = repeated

    def with_repeated(self, repeated: int) -> ServerError:
        """This error after ``repeated`` identical answers in a row made the client stop."""
        return self._replace(repeated=repeated)

    def _values(self) -> dict[str, Any]:
        return super()._values() | {"repeated": self.repeated}


class TransportError(FloraqError):
    """No HTTP answer at all: connection refused or reset, timeout, bad TLS."""


class NotSent(FloraqError):
    """A request withdrawn before its first attempt left, because the caller no longer wants it.

    Nothing reached the API, so nothing can have been created or charged.
    """


class DownloadError(FloraqError):
    """An output could not be fetched completely, or did not verify."""


class DownloadExpired(DownloadError):
    """The output URL no longer works (403/404/410); re-poll the run for a fresh one."""


class DownloadFailed(DownloadError):
    """A download no retry can help: a redirect loop, too many redirects, an answer that
    says the request itself is wrong. Reported as itself, never as "still in flight"."""


class DownloadRefused(DownloadError):
    """The output URL (or a redirect) is not https:// to a real host: it is never fetched."""


DISK_ERROR = "disk_error"  # the ledger's error code on a row whose file the disk refused


def os_error_why(exc: OSError) -> str:
    """What the system said, and its errno's name: "No space left on device (ENOSPC)"."""
    name = errno.errorcode.get(exc.errno or 0)
    return (exc.strerror or str(exc)) + (f" ({name})" if name else "")


class DiskError(FloraqError):
    """The disk refused a write (a file, the ledger): no retry helps until it is fixed."""

    exit_code = ExitCode.DISK

    def __init__(
        self,
        path: str,
        why: str,
        *,
        code: str = DISK_ERROR,
        then: str = "fix the disk, then run `floraq resume`",
    ) -> None:
        super().__init__(f"cannot write {path}: {why}; {then}")
        self.path = path
        self.why = why
        self.code = code

    @classmethod
    def from_os_error(cls, exc: OSError, fallback: object) -> DiskError:
        """The OSError said plainly, with its path (``fallback`` when it names none)."""
        path = exc.filename if exc.filename is not None else fallback
        return cls(str(path), os_error_why(exc))

    @classmethod
    def temp_space(cls, why: str) -> DiskError:
        """A big manifest's check found no room for its temporary files (before any row
        is queued, so the same command is simply run again). The folder is TMPDIR as set:
        once it is full, ``tempfile.gettempdir()`` would name its fallback instead."""
        folder = os.environ.get("TMPDIR") or tempfile.gettempdir()
        return cls(
            f"floraq's temporary files in {folder}",
            why,
            then="free space there or set TMPDIR to a folder with room (about 300 bytes"
            " a row), then run the same command again; nothing was queued",
        )


class LedgerError(FloraqError):
    """The ledger cannot be opened, or holds something floraq cannot read."""

    exit_code = ExitCode.USAGE


class LedgerConnectionLost(LedgerError):
    """The connection to a PostgreSQL ledger broke mid-command (the server restarted, an
    admin ended the session, the network dropped): every committed write is kept."""

    exit_code = ExitCode.LEDGER_LOST

    def __init__(self, shown: str, reason: str) -> None:
        super().__init__(
            f"lost the connection to the PostgreSQL ledger {shown} ({reason}): nothing"
            " committed is lost; check the server, then `floraq resume`"
        )


class LedgerRefused(LedgerError):
    """The PostgreSQL ledger's server refused a statement on a live session (a
    ``statement_timeout`` or ``lock_timeout`` it enforces, a deadlock): that transaction is
    rolled back, every earlier commit is kept. Said as itself, never as a lost lease."""

    exit_code = ExitCode.LEDGER_LOST

    def __init__(self, shown: str, reason: str, *, retryable: bool = False) -> None:
        self.retryable = retryable  # a deadlock or serialization failure: run it again
        super().__init__(
            f"the PostgreSQL ledger {shown} refused a statement ({reason}): nothing committed"
            " is lost; check the server's limits (statement_timeout, lock_timeout), then"
            " `floraq resume`"
        )


class LedgerBusy(LedgerError):
    """Another floraq process holds this ledger's lock."""

    exit_code = ExitCode.BUSY


class LeaseLost(LedgerError):
    """This worker no longer holds the lease on a row (or at all): another worker may own
    it now, so the write was refused and the row's task stops."""

    exit_code = ExitCode.INCOMPLETE


class Interrupted(FloraqError):
    """Ctrl-C or SIGTERM; what was known is committed and `floraq resume` continues."""

    exit_code = ExitCode.INTERRUPTED


_CLASS_BY_STATUS: dict[int, type[ApiError]] = {
    400: InputRejected,
    402: InsufficientCredits,
    404: NotFound,
    409: IdempotencyDuplicate,
    422: IdempotencyDuplicate,
    429: RateLimited,
}

_DEFAULT_CODES: dict[int, str] = {
    400: "invalid_request",
    401: "unauthorized",
    402: "insufficient_credits",
    403: "forbidden",
    404: "not_found",
    409: "idempotency_duplicate",
    422: "idempotency_conflict",
    429: "rate_limited",
    503: "service_unavailable",
}
