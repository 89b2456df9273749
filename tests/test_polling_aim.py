"""Where the next poll lands (core.poll_aim): progress windows, queue estimates, trust."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from floraq.core.poll_aim import (
    aim_running,
    completion_rate,
    first_look,
    head_start,
    plan_pending,
    prediction_trust,
    progress_window,
    queue_start,
)
from floraq.core.polling import PollPolicy

POLICY = PollPolicy()
FLOOR = POLICY.min_interval * (1 - POLICY.jitter)


@pytest.mark.parametrize(
    ("progress", "running_for", "window"),
    [
        (None, 10.0, None),  # no progress: nothing known
        (100.0, 10.0, None),  # 100 says nothing of the status
        (math.nan, 10.0, None),
        (-5.0, 10.0, None),
        (10.0, 0.0, None),  # started_at not yet past on our clock
        (0.0, 1.0, (99.0, math.inf)),  # below 1 %: no latest end
        (10.0, 6.0, (100 * 6 / 11 - 6, 54.0)),  # 10 % after 6 s: 54.5-60 s in all
        (10.9, 6.0, (100 * 6 / 11 - 6, 54.0)),  # a fraction counts as the percent below
        (50.0, 30.0, (100 * 30 / 51 - 30, 30.0)),
        (99.0, 99.0, (0.0, 1.0)),
    ],
)
def test_progress_window_table(
    progress: float | None, running_for: float, window: tuple[float, float] | None
) -> None:
    """A running answer bounds the end from both sides, reading progress as linear."""
    got = progress_window(progress=progress, running_for=running_for)
    if window is None:
        assert got is None
    else:
        assert got == pytest.approx(window)


@pytest.mark.parametrize(
    ("soonest", "latest", "trust", "delay"),
    [
        (20.0, 25.0, None, 22.0),  # soonest + the 2 s target latency
        (20.0, 21.0, None, 21.0),  # the latest end comes first: wait for it
        (0.0, 0.5, None, FLOOR),  # never below the floor
        (500.0, math.inf, None, 60.0),  # not yet trusted: capped at predict_max
        (500.0, math.inf, 1.0, 502.0),  # trusted: the whole wait
        (20.0, 25.0, 0.5, 12.0),  # runs end sooner than predicted: shrink the soonest end
        (20.0, 21.0, 0.5, 12.0),  # ... the latest end stays a bound
    ],
)
def test_aim_running_table(
    soonest: float, latest: float, trust: float | None, delay: float
) -> None:
    """The next poll aims just past the soonest end, never past the latest."""
    got = aim_running(POLICY, soonest=soonest, latest=latest, trust=trust)
    assert got == pytest.approx(delay)


@pytest.mark.parametrize(
    ("ratios", "trust"),
    [
        ([], None),
        ([1.0, 1.1], None),  # fewer than three
        ([math.nan, -1.0, 1.0, 1.0], None),  # unusable ratios do not count
        ([1.0, 1.02, 1.05, 1.01], 1.0),  # linear progress: the whole wait
        ([0.5, 0.6, 0.7, 0.8, 0.9, 1.0], pytest.approx(0.55)),
        ([0.0, 0.0, 0.0], 0.05),  # floor
        ([5.0, 6.0, 7.0], 1.0),  # never stretched: runs ending late are polled again
    ],
)
def test_prediction_trust_table(ratios: list[float], trust: object) -> None:
    """The 10th percentile of real over predicted remaining time, within [0.05, 1]."""
    assert prediction_trust(ratios) == trust


@pytest.mark.parametrize(
    ("samples", "look"),
    [
        ([], None),
        ([4.0, 5.0], None),
        ([10.0, 11.0, 12.0, 13.0, 14.0, 15.0], 11.0),  # 40th pct 12; fastest likely 9, + 2 s
        ([3.0, 6.0, 9.0, 12.0], 2.0),  # far apart: the fastest likely is 0 s
        ([20.0, 21.0, 22.0, 30.0, 40.0], 17.0),  # likely fastest 15 + 2 s, under the 40th pct
        ([30.0, 30.0, 30.0], 30.0),
    ],
)
def test_first_look_table(samples: list[float], look: float | None) -> None:
    """The first poll after a start: the 40th percentile, at most the likely fastest + 2 s."""
    got = first_look(samples, POLICY)
    assert got == (None if look is None else pytest.approx(look))


@pytest.mark.parametrize(
    ("times", "rate"),
    [([], None), ([1.0, 2.0], None), ([5.0, 5.0, 5.0], None), ([3.0, 1.0, 2.0, 5.0], 0.75)],
)
def test_completion_rate_table(times: list[float], rate: float | None) -> None:
    assert completion_rate(times) == rate


@pytest.mark.parametrize(
    ("position", "starts", "expected"),
    [
        (50, [(10, 100.0), (11, 101.0)], None),  # too few starts seen
        (50, [(10, 100.0), (20, 100.0), (30, 100.0)], None),  # no time passed
        (50, [(30, 100.0), (20, 101.0), (10, 102.0)], None),  # not first come first served
        (50, [(10, 100.0), (20, 105.0), (30, 110.0)], (120.0, math.sqrt(20) / 2)),  # 2/s
        (25, [(10, 100.0), (20, 105.0), (30, 110.0)], (110.0, 0.0)),  # should have started
        (31, [(30, 110.0), (10, 100.0), (20, 105.0)], (110.5, 0.5)),  # order does not matter
    ],
)
def test_queue_start_table(
    position: int, starts: list[tuple[int, float]], expected: tuple[float, float] | None
) -> None:
    """The queue moves as fast as the starts seen say; a run starts when it reaches it."""
    got = queue_start(position=position, starts=starts)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


STARTS = [(10, 100.0), (20, 105.0), (30, 110.0)]  # the queue moves 2 places a second


@pytest.mark.parametrize(
    ("position", "not_before", "expected"),
    [
        (50, 112.0, (120.0, math.sqrt(20) / 2)),  # said pending before its turn: no news
        (25, 112.0, (112.25, 0.25)),  # still pending after its turn: half a slot later
        (31, 110.5, (110.75, 0.25)),  # pending just when it was due
    ],
)
def test_queue_start_after_a_pending_answer(
    position: int, not_before: float, expected: tuple[float, float]
) -> None:
    """A run that said `pending` started after that answer, whatever the send order says."""
    got = queue_start(position=position, starts=STARTS, not_before=not_before)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("ahead", "rate", "expected"),
    [
        (0, 2.0, (100.0, 0.0)),  # first in line: any moment now
        (8, 2.0, (104.0, math.sqrt(8) / 2)),
        (8, None, None),  # nothing has completed yet
        (8, 0.0, None),
        (-1, 2.0, None),
    ],
)
def test_head_start_table(
    ahead: int, rate: float | None, expected: tuple[float, float] | None
) -> None:
    """Before any start is seen, the queue moves as fast as runs complete."""
    got = head_start(now=100.0, ahead=ahead, rate=rate)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("start", "spread", "look", "plan"),
    [
        (130.0, 1.0, 5.0, (130.0 - 1.0 + 5.0 - 100.0, True)),  # sure enough: poll
        (130.0, 4.0, 5.0, ((130.0 - 4.0 + 5.0 - 100.0) / 2, False)),  # unsure: wake half-way
        (101.0, 4.0, 5.0, (2.0, True)),  # unsure but nearly due: poll
        (96.0, 4.0, 5.0, (FLOOR, True)),  # overdue: poll at the floor
        (100.0, 0.0, None, (POLICY.max_interval, True)),  # no run times: max_interval after
        (10_000.0, 0.0, 5.0, (POLICY.pending_max, True)),  # capped at pending_max
        (10_000.0, 500.0, 5.0, (POLICY.pending_max, False)),  # a wake is capped too
    ],
)
def test_plan_pending_table(
    start: float, spread: float, look: float | None, plan: tuple[float, bool]
) -> None:
    """A queued run polls once, ``first_look`` after its likely start; wakes first if unsure."""
    wait, poll = plan_pending(POLICY, now=100.0, start=start, spread=spread, look=look)
    assert (wait, poll) == (pytest.approx(plan[0]), plan[1])


@pytest.mark.parametrize(
    ("low", "high", "most_polls"), [(3, 12, 1.85), (5, 60, 2.25), (60, 600, 3.3)]
)
def test_started_runs_take_about_two_polls(low: float, high: float, most_polls: float) -> None:
    """Linear, floored progress: a first look after the start, then one or two aimed polls.

    p95 detection within the 2 s target for every spread the bench runs, the first look
    made from 50 learned run times. Long runs need a third poll: a whole percent of a
    10 min run is 6 s, so the first answer leaves the end uncertain by more than 2 s.
    """
    rng = random.Random(1)
    look = first_look([rng.uniform(low, high) for _ in range(50)], POLICY)
    assert look is not None
    polls_per_run, latencies = [], []
    for _ in range(400):
        duration, now, polls = rng.uniform(low, high), look, 1
        while now < duration:
            progress = math.floor(100 * now / duration)
            window = progress_window(progress=progress, running_for=now)
            assert window is not None
            now += aim_running(POLICY, soonest=window[0], latest=window[1], trust=1.0)
            polls += 1
        polls_per_run.append(polls)
        latencies.append(now - duration)
    assert statistics.mean(polls_per_run) <= most_polls
    assert statistics.quantiles(latencies, n=20)[-1] <= POLICY.target_latency
