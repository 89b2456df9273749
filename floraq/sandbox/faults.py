"""Injected faults, drawn from seeded streams so a fault storm replays exactly."""

from __future__ import annotations

import random
from enum import Enum

from floraq.sandbox.config import SandboxConfig


class Fault(Enum):
    """What the front door does to one API request instead of (or after) answering it."""

    NONE = "none"
    DROP = "drop"  # close the connection before anything happens
    DROP_AFTER = "drop_after"  # create the run, then close without answering
    RATE_LIMITED = "429"
    UNKNOWN_ERROR = "500"
    UNAVAILABLE = "503"


COUNTED_AS: dict[Fault, str] = {
    Fault.DROP: "drop",
    Fault.DROP_AFTER: "drop",
    Fault.RATE_LIMITED: "429",
    Fault.UNKNOWN_ERROR: "5xx",
    Fault.UNAVAILABLE: "5xx",
}
"""The ``/_sandbox/stats`` fault counter each fault adds to."""


class FaultDraws:
    """One stream for API requests and one for media bodies, both from the seed."""

    def __init__(self, seed: int) -> None:
        self._api = random.Random(f"{seed}|faults")
        self._media = random.Random(f"{seed}|media")
        self._upload = random.Random(f"{seed}|upload")

    def api_fault(self, config: SandboxConfig, *, creates_run: bool) -> Fault:
        """One API request's fault; five draws each time, so one rate never shifts another."""
        drop, after, limited, failed, kind = (self._api.random() for _ in range(5))
        if drop < config.drop_rate:
            return Fault.DROP_AFTER if creates_run and after < 0.5 else Fault.DROP
        if limited < config.rate_429:
            return Fault.RATE_LIMITED
        if failed < config.error_5xx_rate:
            return Fault.UNKNOWN_ERROR if kind < 0.5 else Fault.UNAVAILABLE
        return Fault.NONE

    def upload_fault(self, config: SandboxConfig) -> bool:
        """Whether the upload host answers this upload 503."""
        return self._upload.random() < config.upload_5xx_rate

    def truncation(self, config: SandboxConfig) -> float | None:
        """The fraction of a media body to send before hanging up, or None to send it all."""
        cut, fraction = self._media.random(), self._media.uniform(0.1, 0.9)
        return fraction if cut < config.truncate_rate else None
