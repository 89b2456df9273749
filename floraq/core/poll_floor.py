"""The fewest polls per run a detection target allows: the floor a schedule is judged by.

Until a run's first answer, every run of a technique looks alike (the create answer says
only ``pending``), so the first poll comes at one time ``s`` after the start for all of
them. A run that ended more than ``target`` before ``s`` is seen late; for the p-th
percentile of detection to stay within ``target``, at most ``1 - p`` of the runs may end
before ``s - target``: ``s <= q(1 - p) + target``. Only the runs over by ``s`` finish in one
poll; each other run needs at least one more. So no client can average fewer than
``2 - F(q(1 - p) + target)`` polls per run (``any_client``), however well it reads the
answers after the first.

``whole_percent`` is the same first poll followed by floraq's aimed schedule as it can be
at best: progress in whole percents, floored (as the sandbox gives it), the start known
exactly, and each next poll at the soonest end the answer allows plus ``target`` (or its
latest end, if sooner), so no run after the first poll is seen late. A whole percent of a
long run is more than ``target``, so long runs often take a third poll.

Every time is in one unit (seconds of the workload); nothing here reads a clock.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

LATE_SHARE = 0.05  # the share of runs a p95 target lets be seen late


@dataclass(frozen=True, slots=True)
class Floor:
    """The floor of polls per run for one run-time distribution and detection target."""

    first_poll: float  # seconds after its start every run is first polled
    one_poll: float  # the share of runs over by then
    any_client: float  # polls per run no schedule can beat
    whole_percent: float  # polls per run with whole-percent progress, aimed at best


def uniform_run_times(low: float, high: float, n: int = 2000) -> list[float]:
    """``n`` evenly spaced quantiles of run times uniform over ``[low, high]``."""
    return [low + (high - low) * (i + 0.5) / n for i in range(n)]


def polls_floor(run_times: Sequence[float], target: float, late: float = LATE_SHARE) -> Floor:
    """The floor for runs taking ``run_times`` (a sample or a quantile grid of them).

    ``target`` is the detection latency most runs must be seen within; ``late`` the share
    of runs allowed to be seen later (0.05 for a p95 target).
    """
    ordered = sorted(t for t in run_times if math.isfinite(t) and t > 0)
    if not ordered or target <= 0 or not 0 <= late < 1:
        raise ValueError("polls_floor needs run times > 0, a target > 0 and 0 <= late < 1")
    allowed = math.floor(late * len(ordered))  # runs that may end before s - target
    first = ordered[allowed] + target if allowed < len(ordered) else math.inf
    one = sum(1 for t in ordered if t <= first) / len(ordered)
    aimed = statistics.fmean(polls_aimed(t, first, target)[0] for t in ordered)
    return Floor(first_poll=first, one_poll=one, any_client=2.0 - one, whole_percent=aimed)


def polls_aimed(duration: float, first: float, target: float) -> tuple[int, float]:
    """(polls, seconds it is seen after its end) for one run of ``duration``: the first
    poll at ``first``, then each aimed at the end its latest answer allows."""
    now, polls = first, 1
    while now < duration:
        whole = min(99, math.floor(100.0 * now / duration))
        soonest = now * 100.0 / (whole + 1)
        latest = math.inf if whole == 0 else now * 100.0 / whole
        now = max(now + 1e-9, min(soonest + target, latest))
        polls += 1
    return polls, now - duration
