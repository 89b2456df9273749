"""The sandbox's clock: real time, or time that stands still until someone moves it.

Everything the sandbox times (run timelines, idempotency windows, the charged-cost
delay, URL expiry, ``created_at``) reads this clock, so a test that freezes it and
advances it by hand gets the same answers on a fast machine and on a loaded one.
The wall clock moves with it: an advance of 5 s is 5 s on both.
"""

from __future__ import annotations

from collections.abc import Callable


class SandboxClock:
    """The injected monotonic and wall clocks, plus a shift and an optional freeze."""

    def __init__(self, monotonic: Callable[[], float], wall: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._offset = 0.0
        self._frozen_at: float | None = None

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None

    def now(self) -> float:
        """Monotonic seconds: the real clock plus every advance, or where it was frozen."""
        if self._frozen_at is not None:
            return self._frozen_at
        return self._monotonic() + self._offset

    def wall(self) -> float:
        """Epoch seconds, shifted exactly as far as ``now`` is from the real clock."""
        if self._frozen_at is None:
            return self._wall() + self._offset
        return self._wall() + (self._frozen_at - self._monotonic())

    def set_frozen(self, frozen: bool) -> None:
        """Stop time where it is, or let it run on from there (it never jumps back)."""
        if frozen and self._frozen_at is None:
            self._frozen_at = self.now()
        elif not frozen and self._frozen_at is not None:
            self._offset = self._frozen_at - self._monotonic()
            self._frozen_at = None

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (ValueError if negative: time never goes back)."""
        if not seconds >= 0:
            raise ValueError("advance: must be a number of seconds >= 0")
        if self._frozen_at is not None:
            self._frozen_at += seconds
        else:
            self._offset += seconds
