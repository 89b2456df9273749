"""The shared poll budget: how many polls per second a whole batch may spend, and on whom.

Each run's schedule (``core.polling``, ``core.poll_aim``) says when *it* should be polled;
a thousand runs each asking every few seconds would still flood a workspace's rate limit.
So every poll takes a token from one bucket that refills at ``budget_rate`` per second,
and when polls queue up for tokens the run most likely to have finished goes first
(``PollRank``, then the one due longest). The rate follows the batch: about
``polls_per_run`` polls for every run the server completes per second, never below a floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum


class PollRank(IntEnum):
    """Who gets the next token first: the lower, the likelier the run has finished."""

    DUE = 0  # its progress said it has ended by now
    RUNNING = 1  # running (or just sent): its end is not predicted
    PENDING = 2  # waiting for a slot on the server


@dataclass(frozen=True, slots=True)
class Bucket:
    """A token bucket: ``tokens`` (at most ``burst``) at time ``at``, refilled at ``rate``/s."""

    rate: float
    burst: float
    tokens: float
    at: float

    def refilled(self, now: float) -> Bucket:
        """The bucket at ``now`` (a clock that went back adds nothing; rate inf: always full)."""
        elapsed = max(0.0, now - self.at)
        gained = math.inf if math.isinf(self.rate) else elapsed * self.rate
        return replace(self, tokens=min(self.burst, self.tokens + gained), at=max(now, self.at))

    def take(self, now: float) -> tuple[Bucket, float]:
        """Take a token: (the bucket after, 0.0); or, when empty, (unchanged, seconds to wait)."""
        full = self.refilled(now)
        if full.tokens >= 1.0:
            return replace(full, tokens=full.tokens - 1.0), 0.0
        if self.rate <= 0:
            return full, math.inf
        return full, (1.0 - full.tokens) / self.rate

    def with_rate(self, rate: float, now: float) -> Bucket:
        """The same bucket refilling at a new rate from ``now``."""
        return replace(self.refilled(now), rate=rate)


def budget_rate(floor: float, completions_per_s: float | None, polls_per_run: float = 3.0) -> float:
    """Polls per second the batch may spend: ``polls_per_run`` per completed run, or ``floor``."""
    if completions_per_s is None or not math.isfinite(completions_per_s):
        return floor
    return max(floor, polls_per_run * completions_per_s)


def rank(*, pending: bool, predicted: bool) -> PollRank:
    """The rank of a poll: pending runs last, runs whose predicted end has come first."""
    if pending:
        return PollRank.PENDING
    return PollRank.DUE if predicted else PollRank.RUNNING
