"""When to poll a run next: few requests per run, yet a finished run is seen within seconds.

This is the schedule from durations alone; the runner prefers ``core.poll_aim``'s
estimates (a progress window, the queue's speed, learned run times) once it has them.

FLORA asks for a poll every 2-5 s. Polling a 60 s run every 2 s costs 30 requests that
mostly say "running", so the schedule learns how long a technique usually takes and
sleeps through the part of the run that is almost surely not finished:

* Before anything is learned, polls ramp up: ``min_interval * growth**polls``, capped at
  ``max_interval`` (2, 3, 4.5, 5, 5 ... seconds), so a quick run is still seen quickly.
* Once a typical duration is known and the run is younger than it, the next poll waits
  until just before that moment.
* Past that moment the run is due but its exact end is unknown; polling every
  ``max_interval`` is then the rarest schedule that still sees it within ``max_interval``.
* A poll answer that says ``running`` with ``started_at`` and ``progress`` tells more than
  any duration statistic: ``earliest_remaining`` turns it into the soonest moment the run
  can end, and the next poll waits for exactly that. Progress only schedules polls; a run
  is finished only by its ``status``.
* A run still ``pending`` waits for a slot on the server. It cannot end sooner than the
  fastest runs take once it starts, so its polls back off until they are ``max_interval``
  plus a low estimate of the run time itself (from ``started_at``: without the wait)
  apart. That saves requests, and a run that starts just after a poll is still seen
  within about ``max_interval`` of its end.

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


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """The knobs of the schedule, in real seconds; ``jitter`` is a fraction (0.2 = ±20 %).

    ``fastest_slack``: the typical estimate stays within this of the fastest recent runs, so
    with a wide spread of durations the runs that end early are still seen within about
    ``max_interval``. ``predict_max``: the longest wait a progress prediction may ask for
    until this technique's progress has been seen to be linear enough (``prediction_trust``).
    ``target_latency``: how soon after its end a run should be seen; it sets how far past
    the fastest runs the first poll of a started run may be, and how far past a
    prediction's soonest end the next poll aims. ``pending_max``: the longest wait the
    queue estimate may ask for a run still ``pending``.
    """

    min_interval: float = 2.0
    max_interval: float = 5.0
    growth: float = 1.5
    jitter: float = 0.2
    fastest_slack: float = 4.0
    predict_max: float = 60.0
    target_latency: float = 2.0
    pending_max: float = 300.0

    def scaled(self, factor: float) -> PollPolicy:
        """The same schedule for a caller whose clock runs ``1/factor`` times real speed."""
        return PollPolicy(
            min_interval=self.min_interval * factor,
            max_interval=self.max_interval * factor,
            growth=self.growth,
            jitter=self.jitter,
            fastest_slack=self.fastest_slack * factor,
            predict_max=self.predict_max * factor,
            target_latency=self.target_latency * factor,
            pending_max=self.pending_max * factor,
        )


def next_poll_delay(
    policy: PollPolicy,
    *,
    polls: int,
    elapsed: float,
    typical: float | None,
    rand: float,
    pending_polls: int = 0,
    remaining: float | None = None,
    run_typical: float | None = None,
) -> float:
    """Seconds to wait before the next poll of one run.

    ``polls`` is how many polls this run has had, ``elapsed`` the seconds since it was
    submitted, ``typical`` what ``typical_duration`` said for its technique (None when
    unknown) and ``rand`` a uniform number in [0, 1) from the caller. ``pending_polls`` is
    how many answers in a row said ``pending`` (0 when the last one did not),
    ``remaining`` what ``earliest_remaining`` made of the last answer (None: no prediction),
    and ``run_typical`` what ``typical_duration`` says of the same technique's run times
    from ``started_at`` (without the wait for a slot that ``typical`` includes).
    """
    floor = policy.min_interval * (1 - policy.jitter)
    if remaining is not None:
        return min(policy.predict_max, max(floor, remaining))
    if pending_polls > 0:
        shortest = policy.max_interval if run_typical is None else run_typical
        ramp = policy.max_interval * policy.growth ** min(pending_polls - 1, 32)
        base = min(shortest + policy.max_interval, max(ramp, shortest))
        return max(floor, base * (1 - policy.jitter * rand))  # never past the cap
    if typical is not None and elapsed + policy.min_interval < typical:
        early = policy.jitter * policy.min_interval * (1 + rand)
        return max(floor, typical - elapsed - early)
    if typical is not None and polls > 0:
        base = policy.max_interval
    else:
        base = min(policy.max_interval, policy.min_interval * policy.growth ** min(polls, 32))
    jittered = base * (1 + policy.jitter * (2 * rand - 1))
    return min(policy.max_interval, max(floor, jittered))


def earliest_remaining(*, progress: float | None, running_for: float) -> float | None:
    """Seconds until the soonest end a ``running`` answer allows; None when it tells nothing.

    ``running_for`` is the seconds since the run's ``started_at``, on the caller's clock.
    Progress is taken as linear in time and possibly rounded down to a whole percent, so
    a run at ``p`` % after ``t`` s takes more than ``100 t / (p + 1)`` s in all.
    """
    if progress is None or not math.isfinite(progress) or not 0 <= progress < 100:
        return None
    if not math.isfinite(running_for) or running_for <= 0:
        return None
    total = running_for * 100.0 / (math.floor(progress) + 1)
    return max(0.0, total - running_for)


def typical_duration(samples: Sequence[float], policy: PollPolicy = PollPolicy()) -> float | None:
    """A low estimate of how long a technique's runs take, from recent completions (seconds).

    The 40th percentile, but never more than a few seconds past the fastest runs (5th
    percentile) as the policy's ``fastest_slack`` says; None until there are ``MIN_SAMPLES``
    usable samples. Pass durations measured from submission, like ``elapsed``, and only of
    runs that completed, in the policy's units.
    """
    usable = sorted(s for s in samples if math.isfinite(s) and s > 0)
    if len(usable) < MIN_SAMPLES:
        return None
    typical = quantile(usable, _TYPICAL_QUANTILE)
    return min(typical, quantile(usable, _FASTEST_QUANTILE) + policy.fastest_slack)


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks of an ascending sequence."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
