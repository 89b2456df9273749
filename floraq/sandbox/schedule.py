"""Where runs wait: ``capacity`` slots, first come first served, and the ideal schedule."""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class Slots:
    """``capacity`` run slots; a new run starts when the earliest one frees up (FIFO)."""

    def __init__(self, capacity: int) -> None:
        self._free_at = [0.0] * capacity

    def place(self, now: float, duration: float) -> tuple[float, float]:
        """Book the next free slot for ``duration`` seconds; returns (started, ended)."""
        started = max(now, heapq.heappop(self._free_at))
        ended = started + duration
        heapq.heappush(self._free_at, ended)
        return started, ended

    def resize(self, capacity: int) -> None:
        """Keep the busiest slots that still fit; new slots are free at once."""
        busy = sorted(self._free_at, reverse=True)[:capacity]
        self._free_at = busy + [0.0] * (capacity - len(busy))
        heapq.heapify(self._free_at)


def ideal_makespan(durations: Iterable[float], capacity: int) -> float:
    """How long runs of these durations take on ``capacity`` slots if all are sent at once."""
    slots = [0.0] * capacity
    for duration in durations:
        heapq.heappush(slots, heapq.heappop(slots) + duration)
    return max(slots)
