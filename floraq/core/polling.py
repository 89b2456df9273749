"""When to poll a run next: few requests per run, yet a finished run is seen within seconds.

FLORA asks for a poll every 2-5 s. Polling a 60 s run every 2 s costs 30 requests that
mostly say "running", so the schedule learns how long a technique usually takes and
sleeps through the part of the run that is almost surely not finished:

* Before anything is learned, polls ramp up: ``min_interval * growth**polls``, capped at
  ``max_interval`` (2, 3, 4.5, 5, 5 ... seconds), so a quick run is still seen quickly.
* Once a typical duration is known and the run is younger than it, the next poll waits
  until just before that moment.
* Past that moment the run is due but its exact end is unknown; polling every
  ``max_interval`` is then the rarest schedule that still sees it within ``max_interval``.

``typical_duration`` is a deliberately low estimate (see there) because a run that ends
before its first poll waits for that poll: the estimate bounds that wait.

Every delay is in real seconds (a caller running faster than real time scales them), and
the randomness for jitter comes from the caller, so the schedule is a pure function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_SAMPLES = 3
_TYPICAL_QUANTILE = 0.4
_FASTEST_QUANTILE = 0.05
# Seconds: the typical estimate stays within this of the fastest recent runs, so with a wide
# spread of durations the runs that end early are still seen within about max_interval.
_FASTEST_SLACK = 4.0


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """The knobs of the schedule, in real seconds; ``jitter`` is a fraction (0.2 = ±20 %)."""

    min_interval: float = 2.0
    max_interval: float = 5.0
    growth: float = 1.5
    jitter: float = 0.2


def next_poll_delay(
    policy: PollPolicy, *, polls: int, elapsed: float, typical: float | None, rand: float
) -> float:
    """Seconds to wait before the next poll of one run.

    ``polls`` is how many polls this run has had, ``elapsed`` the seconds since it was
    submitted, ``typical`` what ``typical_duration`` said for its technique (None when
    unknown) and ``rand`` a uniform number in [0, 1) from the caller.
    """
    floor = policy.min_interval * (1 - policy.jitter)
    if typical is not None and elapsed + policy.min_interval < typical:
        early = policy.jitter * policy.min_interval * (1 + rand)
        return max(floor, typical - elapsed - early)
    if typical is not None and polls > 0:
        base = policy.max_interval
    else:
        base = min(policy.max_interval, policy.min_interval * policy.growth**polls)
    jittered = base * (1 + policy.jitter * (2 * rand - 1))
    return min(policy.max_interval, max(floor, jittered))


def typical_duration(samples: Sequence[float]) -> float | None:
    """A low estimate of how long a technique's runs take, from recent completions (seconds).

    The 40th percentile, but never more than a few seconds past the fastest runs (5th
    percentile); None until there are ``MIN_SAMPLES`` usable samples. Pass durations measured
    from submission, like ``elapsed``, and only of runs that completed.
    """
    usable = sorted(s for s in samples if math.isfinite(s) and s > 0)
    if len(usable) < MIN_SAMPLES:
        return None
    typical = _quantile(usable, _TYPICAL_QUANTILE)
    return min(typical, _quantile(usable, _FASTEST_QUANTILE) + _FASTEST_SLACK)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks of an ascending sequence."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
