"""The shared API limits' rules, without a clock or a database (floraq.core.limits)."""

from __future__ import annotations

import pytest

from floraq.core.keys import api_key_fingerprint
from floraq.core.limits import (
    MIN_SYNC_INTERVAL,
    RECENT_429_WINDOW,
    ApiLimit,
    Learned,
    key_workspace,
    later_pause,
    recent_429s,
    reconcile,
    start_limit,
    starting,
    sync_interval,
)
from floraq.results import limit_json, limit_line


def test_two_pauses_merge_to_the_later_one() -> None:
    """A shorter pause recorded after a longer one never cuts it short."""
    assert later_pause(None, 105.0) == 105.0
    assert later_pause(130.0, 105.0) == 130.0
    assert later_pause(100.0, 105.0) == 105.0


def test_recent_429s_count_up_and_restart_after_a_quiet_spell() -> None:
    assert recent_429s(0, None, 1000.0) == 1
    assert recent_429s(3, 995.0, 1000.0) == 4  # within the window of the last pause
    assert recent_429s(3, 995.0, 1000.0, new=2) == 5  # two met between two syncs
    assert recent_429s(3, 1000.0 - RECENT_429_WINDOW - 1, 1000.0) == 1


@pytest.mark.parametrize(
    ("learned", "cap", "start"), [(None, 8, 8), (3, 8, 3), (12, 8, 8), (0, 8, 1), (1, 1, 1)]
)
def test_a_night_starts_at_the_learned_concurrency_capped(
    learned: int | None, cap: int, start: int
) -> None:
    assert start_limit(learned, cap) == start
    assert starting(learned, cap) == Learned(seen=learned, set_to=start)


def test_the_pause_left_is_read_on_the_ledgers_own_clock() -> None:
    """Whatever the worker's clock says: until minus the ledger's now, never negative."""
    row = ApiLimit("h", "key:x", paused_until=1012.5, concurrency=None, recent_429s=1,
                   updated_at=1000.0, now=1010.0)  # fmt: skip
    assert row.pause_left == 2.5
    assert ApiLimit("h", "w", 990.0, None, 1, 980.0, 1000.0).pause_left == 0.0
    assert ApiLimit("h", "w", None, 4, 0, 980.0, 1000.0).pause_left == 0.0


def test_the_workspace_stand_in_is_the_keys_fingerprint_never_the_key() -> None:
    key = "sk_live_secret"
    workspace = key_workspace(api_key_fingerprint(key))
    assert workspace == f"key:{api_key_fingerprint(key)}"
    assert key not in workspace


def test_reads_are_scaled_but_never_spin() -> None:
    assert sync_interval(1.0, 1.0) == 1.0
    assert sync_interval(1.0, 0.0001) == MIN_SYNC_INTERVAL
    assert sync_interval(5.0, 0.01) == MIN_SYNC_INTERVAL


def test_nothing_changed_nothing_written() -> None:
    state = Learned(seen=4, set_to=4, written_at=10.0)
    step = reconcile(state, local=4, shared=4, cap=8, now=11.0, write_every=5.0)
    assert (step.limit, step.write, step.learned) == (None, None, state)


def test_our_decrease_is_written_at_once() -> None:
    """A 429 here halved the limit: the others must hear of it now, not in 5 s."""
    state = Learned(seen=8, set_to=8, written_at=10.0)
    step = reconcile(state, local=4, shared=8, cap=8, now=10.5, write_every=5.0)
    assert (step.limit, step.write) == (None, 4)
    assert step.learned == Learned(seen=4, set_to=4, written_at=10.5)


def test_our_rise_is_written_at_most_every_interval_and_at_the_end() -> None:
    state = Learned(seen=4, set_to=4, written_at=10.0)
    early = reconcile(state, local=5, shared=4, cap=8, now=12.0, write_every=5.0)
    assert (early.limit, early.write, early.learned) == (None, None, state)
    due = reconcile(state, local=5, shared=4, cap=8, now=15.0, write_every=5.0)
    assert due.write == 5
    final = reconcile(state, local=5, shared=4, cap=8, now=12.0, write_every=5.0, final=True)
    assert final.write == 5


def test_the_first_value_is_written_without_waiting() -> None:
    """No row yet (or no concurrency in it): our first change is the first value."""
    step = reconcile(starting(None, 8), local=4, shared=None, cap=8, now=1.0, write_every=5.0)
    assert step.write == 4


def test_another_workers_change_is_taken_up_capped() -> None:
    state = Learned(seen=4, set_to=4, written_at=10.0)
    step = reconcile(state, local=4, shared=2, cap=8, now=11.0, write_every=5.0)
    assert (step.limit, step.write) == (2, None)
    assert step.learned == Learned(seen=2, set_to=2, written_at=10.0)
    above = reconcile(state, local=4, shared=12, cap=6, now=11.0, write_every=5.0)
    assert (above.limit, above.write) == (6, None)  # our cap holds; theirs is not overwritten


def test_our_lower_decrease_wins_over_another_workers_value() -> None:
    """Both moved since the last sync: a 429 here (4 -> 2) beats their rise to 5."""
    state = Learned(seen=4, set_to=4, written_at=10.0)
    step = reconcile(state, local=2, shared=5, cap=8, now=11.0, write_every=5.0)
    assert (step.limit, step.write) == (None, 2)
    assert step.learned == Learned(seen=2, set_to=2, written_at=11.0)


def test_our_rise_gives_way_to_another_workers_value() -> None:
    state = Learned(seen=4, set_to=4, written_at=10.0)
    step = reconcile(state, local=5, shared=3, cap=8, now=20.0, write_every=5.0)
    assert (step.limit, step.write) == (3, None)


def test_status_shows_the_learned_concurrency_and_a_pause_only_while_in_force() -> None:
    paused = ApiLimit("app.flora.ai", "key:ab12", 1_796_000_012.0, 2, 3, 1_796_000_000.0,
                      now=1_796_000_000.0)  # fmt: skip
    assert limit_line(paused) == (
        "API app.flora.ai, workspace key:ab12: learned concurrency 2;"
        " paused after a 429 until 2026-11-30T00:53:32Z (12 s left)"
    )
    assert limit_json(paused) == {
        "api_host": "app.flora.ai",
        "workspace": "key:ab12",
        "learned_concurrency": 2,
        "paused_until": "2026-11-30T00:53:32Z",
        "pause_seconds_left": 12.0,
        "recent_429s": 3,
        "updated_at": "2026-11-30T00:53:20Z",
    }
    over = ApiLimit(
        "h:1", "key:ab12", 1_796_000_012.0, None, 1, 1_796_000_000.0, now=1_796_000_100.0
    )
    assert limit_line(over) == "API h:1, workspace key:ab12: no concurrency learned yet"
    assert (limit_json(over)["paused_until"], limit_json(over)["pause_seconds_left"]) == (None, 0)
