"""The poll schedule: few polls per run, a finished run seen within max_interval."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from floraq.core.polling import PollPolicy, next_poll_delay, typical_duration

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
