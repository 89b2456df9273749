"""One log line per HTTP attempt, on the ``floraq.requests`` logger; ``-v`` shows them.

The lines handed in are already free of the API key (the client scrubs them); this
module only routes them, so the CLI can turn them on without knowing the client.
"""

from __future__ import annotations

import logging
from typing import TextIO

REQUEST_LOGGER = "floraq.requests"


def log_request(line: str) -> None:
    """Hand one request line (already free of the key) to the ``floraq.requests`` logger."""
    logging.getLogger(REQUEST_LOGGER).info(line)


def show_requests(stream: TextIO) -> None:
    """Print every request line to ``stream`` as ``request: ...`` (once per process)."""
    logger = logging.getLogger(REQUEST_LOGGER)
    if logger.handlers:
        return
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("request: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
