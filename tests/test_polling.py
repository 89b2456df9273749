"""The poll schedule: few polls per run, a finished run seen within max_interval."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from floraq.core.polling import (
    PollPolicy,
    earliest_remaining,
    next_poll_delay,
    typical_duration,
)

POLICY = PollPolicy()
MIDDLE = 0.5  # rand value that applies no jitter


@pytest.mark.parametrize(
    ("polls", "elapsed", "typical", "rand", "delay"),
    [
        (0, 0.0, None, MIDDLE, 2.0),  # nothing learned: ramp 2, 3, 4.5, 5, 5
        (1, 2.0, None, MIDDLE, 3.0),
        (2, 5.0, None, MIDDLE, 4.5),
        (3, 9.5, None, MIDDLE, 5.0),
        (9, 40.0, None, MIDDLE, 5.0),
        (0, 0.0, None, 0.0, 1.6),  # jitter -20 %
        (2, 5.0, None, 0.0, 3.6),
        (2, 5.0, None, 0.99, 5.0),  # +20 % would pass max_interval: capped
        (0, 0.0, 30.0, MIDDLE, 29.4),  # sleep until just before the typical duration
        (0, 0.0, 30.0, 0.0, 29.6),
        (0, 12.0, 30.0, MIDDLE, 17.4),  # submitted earlier (e.g. after a resume)
        (4, 10.0, 40.0, MIDDLE, 29.4),  # learned while this run was already being polled
        (0, 29.0, 30.0, MIDDLE, 2.0),  # nearly due: first poll at min_interval
        (1, 29.4, 30.0, MIDDLE, 5.0),  # due: poll as rarely as latency allows
        (1, 29.4, 30.0, 0.0, 4.0),
        (0, 0.0, 1.0, MIDDLE, 2.0),  # a very fast technique still waits min_interval
    ],
)
def test_delay_table(
    polls: int, elapsed: float, typical: float | None, rand: float, delay: float
) -> None:
    """Each situation gets the documented delay."""
    got = next_poll_delay(POLICY, polls=polls, elapsed=elapsed, typical=typical, rand=rand)
    assert got == pytest.approx(delay)


def test_delays_stay_within_bounds() -> None:
    """Never below min_interval*(1-jitter); above max_interval only to wait for the typical time."""
    floor = POLICY.min_interval * (1 - POLICY.jitter)
    for polls in range(6):
        for elapsed in (0.0, 1.0, 9.0, 29.0, 31.0, 120.0):
            for typical in (None, 0.5, 10.0, 30.0, 60.0):
                for rand in (0.0, 0.3, 0.999):
                    delay = next_poll_delay(
                        POLICY, polls=polls, elapsed=elapsed, typical=typical, rand=rand
                    )
                    assert delay >= floor
                    if delay > POLICY.max_interval:
                        assert typical is not None and elapsed + delay < typical


@pytest.mark.parametrize(
    ("samples", "typical"),
    [
        ([], None),
        ([12.0, 14.0], None),
        ([math.nan, -1.0, 0.0, 10.0, 11.0], None),  # unusable samples do not count
        ([30.0, 30.0, 30.0], 30.0),
        ([20.0, 10.0, 30.0], 15.0),  # 40th pct is 18, but at most 4 s past the fastest (11)
        ([10.0, 11.0, 12.0, 13.0, 14.0, 15.0], 12.0),
        ([5.0, 50.0, 51.0, 52.0, 53.0, 54.0, 300.0], 22.5),  # a fast outlier pulls it down
    ],
)
def test_typical_duration(samples: list[float], typical: float | None) -> None:
    """A low estimate from recent completions, None until there are three."""
    assert typical_duration(samples) == (None if typical is None else pytest.approx(typical))


@pytest.mark.parametrize(
    ("low", "high", "most_polls"),
    [(5, 12, 2.0), (5, 20, 2.5), (8, 20, 2.5), (10, 30, 3.0), (15, 40, 3.5), (30, 60, 3.5)],
)
def test_learned_schedule_is_frugal_and_prompt(low: float, high: float, most_polls: float) -> None:
    """Once durations are learned: few polls per run, and p95 detection within 5 s."""
    rng = random.Random(7)
    typical = typical_duration([rng.uniform(low, high) for _ in range(50)])
    polls_per_run, latencies = [], []
    for _ in range(300):
        duration, now, polls = rng.uniform(low, high), 0.0, 0
        while now < duration:
            now += next_poll_delay(
                POLICY, polls=polls, elapsed=now, typical=typical, rand=rng.random()
            )
            polls += 1
        polls_per_run.append(polls)
        latencies.append(now - duration)
    assert statistics.mean(polls_per_run) <= most_polls
    assert statistics.quantiles(latencies, n=20)[-1] <= 5.0


def test_scaled_policy_scales_every_duration() -> None:
    """A faster clock shrinks every wait, the fastest-runs slack included, not the ratios."""
    scaled = PollPolicy().scaled(0.01)
    assert scaled == PollPolicy(
        min_interval=0.02,
        max_interval=0.05,
        growth=1.5,
        jitter=0.2,
        fastest_slack=0.04,
        predict_max=0.6,
        target_latency=0.02,
        pending_max=3.0,
    )


def test_typical_duration_uses_the_policy_slack() -> None:
    """Under a time scale the cap is fastest + scaled slack, not fastest + 4 real seconds."""
    samples = [0.05 + 0.55 * i / 99 for i in range(100)]  # 5-60 s runs at scale 0.01
    assert typical_duration(samples) == pytest.approx(0.27)  # the 40th percentile
    scaled = typical_duration(samples, PollPolicy().scaled(0.01))
    assert scaled == pytest.approx(0.0775 + 0.04)  # 5th percentile + 0.04


@pytest.mark.parametrize(
    ("progress", "running_for", "remaining"),
    [
        (None, 10.0, None),  # no progress: no prediction
        (100.0, 10.0, None),  # 100 says nothing about the status: never predict from it
        (-1.0, 10.0, None),
        (math.nan, 10.0, None),
        (50.0, 0.0, None),  # started_at not yet past on our clock
        (50.0, -3.0, None),
        (0.0, 0.5, 49.5),  # below 1 %: the run takes more than 50 s in all
        (9.0, 4.0, 36.0),  # 9 % after 4 s: more than 40 s in all
        (9.7, 4.0, 36.0),  # fractions count like the whole percent below
        (49.0, 25.0, 25.0),
        (99.0, 60.0, 0.0),  # nearly done: poll at the floor
    ],
)
def test_earliest_remaining_table(
    progress: float | None, running_for: float, remaining: float | None
) -> None:
    """Progress that may be rounded down gives the soonest end, and only while below 100."""
    got = earliest_remaining(progress=progress, running_for=running_for)
    assert got == (None if remaining is None else pytest.approx(remaining))


@pytest.mark.parametrize(
    ("pending_polls", "remaining", "typical", "run_typical", "rand", "delay"),
    [
        (0, 20.0, 30.0, None, MIDDLE, 20.0),  # a prediction wins over the statistics
        (0, 0.0, 30.0, None, MIDDLE, 1.6),  # predicted end now: the floor, no faster
        (0, 500.0, None, None, MIDDLE, 60.0),  # capped at predict_max
        (1, None, 30.0, None, 0.0, 5.0),  # pending, nothing learned: 5, 7.5, cap 10
        (2, None, 30.0, None, 0.0, 7.5),
        (3, None, 30.0, None, 0.0, 10.0),
        (1, None, 30.0, 12.0, 0.0, 12.0),  # cannot end before the quick runs take
        (5, None, 30.0, 12.0, 0.0, 17.0),  # backs off to run_typical + max_interval
        (5, None, 30.0, 12.0, 0.5, 15.3),  # jitter only shortens a pending wait
        (1, None, None, 0.5, MIDDLE, 4.5),  # a fast technique: max_interval, minus jitter
    ],
)
def test_progress_and_pending_table(
    pending_polls: int,
    remaining: float | None,
    typical: float | None,
    run_typical: float | None,
    rand: float,
    delay: float,
) -> None:
    """A progress prediction sets the next poll; a pending run backs off, bounded."""
    got = next_poll_delay(
        POLICY,
        polls=3,
        elapsed=40.0,
        typical=typical,
        rand=rand,
        pending_polls=pending_polls,
        remaining=remaining,
        run_typical=run_typical,
    )
    assert got == pytest.approx(delay)


def test_progress_schedule_is_frugal_and_prompt() -> None:
    """Runs of 5-60 s with a linear, floored progress: at most 3 polls, p95 latency <= 5 s."""
    rng = random.Random(11)
    typical = typical_duration([rng.uniform(5, 60) for _ in range(50)])
    polls_per_run, latencies = [], []
    for _ in range(300):
        duration, now, polls, remaining = rng.uniform(5, 60), 0.0, 0, None
        while now < duration:
            now += next_poll_delay(
                POLICY,
                polls=polls,
                elapsed=now,
                typical=typical,
                rand=rng.random(),
                remaining=remaining,
            )
            polls += 1
            progress = math.floor(100 * now / duration)
            remaining = earliest_remaining(progress=progress, running_for=now)
        polls_per_run.append(polls)
        latencies.append(now - duration)
    assert statistics.mean(polls_per_run) <= 3.0
    assert statistics.quantiles(latencies, n=20)[-1] <= 5.0
