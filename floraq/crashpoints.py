"""Named crash points, for testing that floraq survives dying at its worst moments.

Set ``FLORAQ_CRASH_AT`` to one of ``POINTS`` (optionally ``name:N`` to die the Nth
time the point is reached) and the process kills itself with SIGKILL there:
no cleanup, no flush, exactly like a power cut as far as the ledger can tell.
"""

from __future__ import annotations

import os
import signal

from floraq.errors import UsageError

POINTS: frozenset[str] = frozenset(
    {
        "after_intent_commit",  # the `submitting` intent is on disk; the POST not yet sent
        "after_post_before_commit",  # FLORA created the run; its id is not yet committed
        "mid_download",  # part of an output is in its .part file
        "after_rename_before_commit",  # the output is under its final name; not yet recorded
    }
)
# The upload of a local file's asset (only a batch with local files reaches them).
UPLOAD_POINTS: frozenset[str] = frozenset(
    {
        "after_asset_intent",  # an asset's `creating` intent is on disk; POST /assets not sent
        "after_asset_post_before_commit",  # FLORA made the asset; its id is not yet committed
        "after_upload_before_commit",  # the upload host took the file; not yet recorded
        "after_complete_before_commit",  # complete was answered; not yet recorded
    }
)


class CrashPoints:
    """Die at the configured point; a no-op when none is configured."""

    def __init__(self, spec: str | None) -> None:
        self.name: str | None = None
        self.countdown = 1
        if spec:
            name, _, nth = spec.partition(":")
            if name not in POINTS | UPLOAD_POINTS or not (
                nth == "" or (nth.isdigit() and int(nth) >= 1)
            ):
                raise UsageError(
                    f"FLORAQ_CRASH_AT={spec!r} is not a crash point: use NAME or NAME:N (N >= 1)"
                    f" with NAME one of {', '.join(sorted(POINTS | UPLOAD_POINTS))}"
                )
            self.name = name
            self.countdown = int(nth) if nth else 1

    def __call__(self, point: str) -> None:
        if point != self.name:
            return
        self.countdown -= 1
        if self.countdown <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
