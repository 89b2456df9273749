"""The floor of polls per run (core.poll_floor): what a 2 s p95 target allows, and no less."""

from __future__ import annotations

import math

import pytest

from floraq.core.poll_floor import polls_aimed, polls_floor, uniform_run_times


@pytest.mark.parametrize(
    ("low", "high", "any_client", "whole_percent"),
    [
        (3.0, 12.0, 1.7275, 1.7275),  # q05 3.45 s: first poll 5.45 s sees 27 % done
        (5.0, 60.0, 1.9135, 1.9795),
        (60.0, 600.0, 1.946, 2.9595),  # a whole percent of a long run is > 2 s
    ],
)
def test_uniform_floors(low: float, high: float, any_client: float, whole_percent: float) -> None:
    """2 - F(q05 + 2 s) for any client; whole-percent progress costs long runs a third poll."""
    floor = polls_floor(uniform_run_times(low, high), 2.0)
    q05 = low + 0.05 * (high - low)
    assert floor.first_poll == pytest.approx(q05 + 2.0, abs=(high - low) / 1000)
    assert floor.one_poll == pytest.approx((q05 + 2.0 - low) / (high - low), abs=1e-3)
    assert floor.any_client == pytest.approx(any_client, abs=1e-4)
    assert floor.whole_percent == pytest.approx(whole_percent, abs=1e-4)
    assert floor.whole_percent >= floor.any_client


def test_no_late_share_means_the_first_poll_at_the_fastest_plus_target() -> None:
    """With every run to be seen within the target, the first poll waits for none."""
    floor = polls_floor([10.0, 20.0, 30.0, 40.0], 2.0, late=0.0)
    assert floor.first_poll == 12.0
    assert floor.one_poll == 0.25
    assert floor.any_client == 1.75


def test_a_run_aimed_at_is_seen_within_the_target() -> None:
    """After the first poll, each poll lands at most ``target`` after the end."""
    for duration in (7.3, 33.3, 99.9, 577.0):
        polls, late = polls_aimed(duration, first=5.0, target=2.0)
        assert polls >= 2
        assert 0 <= late <= 2.0
    assert polls_aimed(4.0, first=5.0, target=2.0) == (1, 1.0)


@pytest.mark.parametrize("bad", [[], [0.0, -1.0], [math.nan]])
def test_nothing_to_go_on_is_refused(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="polls_floor needs"):
        polls_floor(bad, 2.0)
