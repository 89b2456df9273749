"""Run one coroutine to its end, turning Ctrl-C or SIGTERM into a clean ``Interrupted``.

The signal cancels the task, so every ``finally`` and ``async with`` below it runs (the
ledger commits what it knows, the HTTP clients close) before the process says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine, Iterator
from types import FrameType
from typing import Any, TypeVar

from floraq.errors import Interrupted

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RESUME = (
    "interrupted: everything known so far is saved in the ledger; run `floraq resume` to continue"
)


def run_interruptibly(coro: Coroutine[Any, Any, T], *, message: str = RESUME) -> T:
    """Run ``coro``; on SIGINT/SIGTERM cancel it and raise Interrupted(``message``).

    The message says what to run next: `resume` once rows are in the ledger, the same
    command again when the signal came before anything was queued.
    """

    async def main() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopped: list[int] = []

        def stop(signum: int) -> None:
            stopped.append(signum)
            task.cancel()

        for signum in SIGNALS:
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await coro
        except asyncio.CancelledError:
            if stopped:
                raise Interrupted(message) from None
            raise
        finally:
            for signum in SIGNALS:
                loop.remove_signal_handler(signum)

    return asyncio.run(main())


@contextlib.contextmanager
def interrupted_as(message: str) -> Iterator[None]:
    """Outside the event loop: SIGINT or SIGTERM raises Interrupted(``message``).

    For the synchronous steps before a batch runs (reading and checking the manifest,
    queueing its rows), where the default SIGTERM would end the process without a word.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(message)

    previous = {signum: signal.signal(signum, stop) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
