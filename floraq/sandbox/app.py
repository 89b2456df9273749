"""The sandbox's HTTP face: the FLORA API, the media host, and the inspection endpoints.

Two ASGI apps share one ``SandboxState`` on one event loop:

- ``front_door.ApiFrontDoor``: request ids, counts, faults and auth, then the routes of
  ``api_directory`` (workspaces, projects, models, techniques), ``api_runs`` (create
  and poll runs, idempotency) and ``inspection`` (``/_sandbox/*``, no auth or faults);
- ``media_host.MediaHost``: the third-party CDN, public signed URLs, no auth.

``responses`` holds what both answer with (error envelope, request ids, hang-ups).
"""

from __future__ import annotations

from starlette.types import ASGIApp

from floraq.sandbox.front_door import ApiFrontDoor
from floraq.sandbox.media_host import MediaHost
from floraq.sandbox.responses import API_PREFIX
from floraq.sandbox.state import SandboxState

__all__ = ["API_PREFIX", "ApiFrontDoor", "MediaHost", "create_apps"]


def create_apps(state: SandboxState) -> tuple[ASGIApp, ASGIApp]:
    """The API app and the media app, both over ``state``."""
    return ApiFrontDoor(state), MediaHost(state)
