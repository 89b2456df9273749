"""Where the next poll of one run should land, from what its answers and the past runs say.

``core.polling.next_poll_delay`` is the schedule when nothing better is known. With more
known, a run needs about two polls: one soon after it starts (its ``progress`` then says
when it ends) and one just after that end. This module turns what is known into that:

* ``first_look``: how long after its start a run is first worth polling, from the run
  times learned for its technique (``completed_at - started_at``): late enough that its
  progress says much, early enough that a quick run is still seen within
  ``target_latency``.
* ``progress_window`` and ``aim_running``: a ``running`` answer with ``started_at`` and
  ``progress`` bounds the end (progress read as linear in time, possibly rounded down);
  the next poll aims at the soonest end plus ``target_latency``, or at the latest end if
  that is sooner. The contract does not say progress is linear, so until a technique's
  predictions have been checked against real ends (``prediction_trust``) a wait is capped
  at ``predict_max``; a technique whose runs end sooner than predicted gets shorter waits.
* ``queue_start`` and ``aim_pending``: a ``pending`` run waits in the server's queue
  behind the runs sent before it. The starts seen of runs that waited say how fast the
  queue moves, so it starts about when the queue reaches its place (a low estimate is
  used), and its first poll waits for that plus ``first_look``. A run that starts sooner
  is seen late, never lost: the estimate only schedules polls.
* ``start_by_completions``: the exact form of that estimate when our runs fill the
  server's slots: each completion starts the next run in the queue, so a waiting run
  starts at the completion its place calls for, and needs no poll until then.

Every time is in the caller's seconds; nothing here reads a clock.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from floraq.core.polling import MIN_SAMPLES, PollPolicy, quantile

_TRUST_QUANTILE = 0.1
_LOOK_QUANTILE = 0.4
_TRUST_FLOOR = 0.05


def first_look(run_times: Sequence[float], policy: PollPolicy) -> float | None:
    """Seconds after its start to poll a run first; None until run times are learned.

    The 40th percentile of recent run times, but at most ``target_latency`` past the
    fastest a run is likely to take, so even the runs that end first are seen within about
    ``target_latency``; the later the look, the more its progress says. The fastest likely
    is the fastest seen less the mean gap between samples (``n`` samples of a spread leave
    about 1/n of it below their minimum; a low percentile would sit higher still).
    """
    usable = sorted(s for s in run_times if math.isfinite(s) and s > 0)
    if len(usable) < MIN_SAMPLES:
        return None
    typical = quantile(usable, _LOOK_QUANTILE)
    fastest = max(0.0, usable[0] - (usable[-1] - usable[0]) / (len(usable) - 1))
    return min(typical, fastest + policy.target_latency)


def progress_window(*, progress: float | None, running_for: float) -> tuple[float, float] | None:
    """(soonest, latest) seconds from now a ``running`` answer allows for the end, or None.

    Progress ``p`` after ``t`` s, linear and rounded down, puts the whole run between
    ``100 t / (p + 1)`` and ``100 t / p`` s; below 1 % the latest end is unbounded (inf).
    """
    if progress is None or not math.isfinite(progress) or not 0 <= progress < 100:
        return None
    if not math.isfinite(running_for) or running_for <= 0:
        return None
    whole = math.floor(progress)
    soonest = max(0.0, running_for * 100.0 / (whole + 1) - running_for)
    latest = math.inf if whole == 0 else max(0.0, running_for * 100.0 / whole - running_for)
    return soonest, latest


def aim_running(policy: PollPolicy, *, soonest: float, latest: float, trust: float | None) -> float:
    """Seconds to wait before polling a run whose progress bounded its end.

    A poll at ``soonest + target_latency`` sees within ``target_latency`` a run that ended
    by then; one at ``latest`` sees it ended for sure (if progress is linear): whichever
    comes first. ``trust`` is ``prediction_trust`` of the technique: it shrinks the
    soonest end (None: not yet known, so the wait is capped at ``predict_max``).
    """
    floor = policy.min_interval * (1 - policy.jitter)
    aim = min(soonest + policy.target_latency, latest)
    if trust is None:
        return min(policy.predict_max, max(floor, aim))
    return max(floor, min(soonest * trust + policy.target_latency, latest))


def prediction_trust(ratios: Sequence[float]) -> float | None:
    """How much of a predicted wait to sleep, from how past predictions came out.

    Each ratio is a finished run's real remaining time over the soonest remaining time its
    first ``running`` answer predicted: at least 1 when progress is linear. The 10th
    percentile, between 0.05 and 1; None until ``MIN_SAMPLES`` usable ratios. Below 1,
    runs end sooner than their progress says, and waits shrink. Never above 1: a ratio
    above 1 is mostly the rounding of an early answer's progress (a run at 2 % may be
    nearly at 3 %), and stretching waits by it would see the other runs late.
    """
    usable = sorted(r for r in ratios if math.isfinite(r) and r >= 0)
    if len(usable) < MIN_SAMPLES:
        return None
    return min(1.0, max(_TRUST_FLOOR, quantile(usable, _TRUST_QUANTILE)))


def completion_rate(completed_at: Sequence[float]) -> float | None:
    """Runs completed per second over these recent completion times (seconds); None if unknown."""
    usable = sorted(t for t in completed_at if math.isfinite(t))
    if len(usable) < MIN_SAMPLES or usable[-1] <= usable[0]:
        return None
    return (len(usable) - 1) / (usable[-1] - usable[0])


def queue_start(
    *, position: int, starts: Sequence[tuple[int, float]], not_before: float | None = None
) -> tuple[float, float] | None:
    """When the run sent ``position``-th is likely to start, and how unsure that is (seconds).

    ``starts`` are (send position, start time) of recent runs that waited for a slot. The
    server serves its queue first come first served, so the positions it reaches grow
    with time at the rate slots free up: from the latest start seen, the run ``k`` places
    behind it starts about ``k / rate`` later, give or take ``sqrt(k) / rate``. None when
    fewer than ``MIN_SAMPLES`` starts are known or they do not look first come first served.
    ``not_before`` is when the run last said `pending`: if the queue should have reached it
    by then (the send order is not exactly the server's), it starts about half a slot later.
    """
    usable = sorted((t, i) for i, t in starts if math.isfinite(t))
    if len(usable) < MIN_SAMPLES:
        return None
    (t0, i0), (t1, i1) = usable[0], usable[-1]
    if t1 <= t0 or i1 <= i0:
        return None
    rate = (i1 - i0) / (t1 - t0)
    k = max(0, position - i1)
    start = t1 + k / rate
    if not_before is not None and start <= not_before:
        return not_before + 0.5 / rate, 0.5 / rate
    return start, math.sqrt(k) / rate


def head_start(*, now: float, ahead: int, rate: float | None) -> tuple[float, float] | None:
    """``queue_start`` before any start has been seen: from how fast runs complete.

    Every completion frees a slot for the first run waiting, so a run with ``ahead``
    runs known to be waiting before it starts about ``ahead / rate`` from now, give or
    take ``sqrt(ahead) / rate``. None when the rate is not known.
    """
    if rate is None or not math.isfinite(rate) or rate <= 0 or ahead < 0:
        return None
    return now + ahead / rate, math.sqrt(ahead) / rate


def plan_pending(
    policy: PollPolicy, *, now: float, start: float, spread: float, look: float | None
) -> tuple[float, bool]:
    """(seconds to wait, whether to poll then) for a run waiting in the queue.

    The poll should come ``first_look`` after the run starts. While the start is less sure
    than half of that, the run only wakes half-way to think again (no request: the starts
    other runs report by then make the estimate surer); then it polls at the likely start,
    less the uncertainty, plus ``first_look``. No wait passes ``pending_max``, in case the
    server's queue is not what the starts seen suggest.
    """
    floor = policy.min_interval * (1 - policy.jitter)
    after = policy.max_interval if look is None else look
    poll_at = start - spread + after
    wait = min(policy.pending_max, max(floor, poll_at - now))
    if spread > after / 2 and poll_at - now > 2 * floor:
        return min(policy.pending_max, max(floor, (poll_at - now) / 2)), False
    return wait, True


def start_by_completions(*, ahead: int, since: float, freed: Sequence[float]) -> float | None:
    """When a waiting run starts, from the completions seen; None until enough are seen.

    On a first-come, first-served server whose slots our runs fill, each completion starts
    the run at the head of the queue. A run with ``ahead`` runs (itself included) to start
    after the moment ``since`` starts at the ``ahead``-th completion after it (``freed``:
    completion times, sorted; same clock as ``since``). ``ahead`` <= 0: by ``since``.
    """
    if ahead <= 0:
        return since
    first = bisect.bisect_right(freed, since)
    at = first + ahead - 1
    return freed[at] if at < len(freed) else None
