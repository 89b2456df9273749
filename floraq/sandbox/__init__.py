"""A local, FLORA-compatible API server for tests, benchmarks and trying floraq for free.

    from floraq.sandbox import SandboxConfig, SandboxServer

    with SandboxServer(SandboxConfig(seed=7, time_scale=0.01)) as sandbox:
        sandbox.base_url, sandbox.api_key    # point a floraq client here
        sandbox.stats()                      # what the server saw
        sandbox.advance_clock(0.5)           # with frozen_clock=True, the only way time moves

Every knob is a field of ``SandboxConfig``; see ``floraq sandbox --help`` for the CLI.
"""

from floraq.sandbox.config import DEFAULT_API_KEY, Catalog, SandboxConfig, Technique, load_catalog
from floraq.sandbox.server import SandboxServer
from floraq.sandbox.state import FAILURES, ideal_makespan

__all__ = [
    "DEFAULT_API_KEY",
    "FAILURES",
    "Catalog",
    "SandboxConfig",
    "SandboxServer",
    "Technique",
    "ideal_makespan",
    "load_catalog",
]
