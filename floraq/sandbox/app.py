"""The sandbox's HTTP face: the FLORA API, the media host, and the inspection endpoints.

Two ASGI apps share one ``SandboxState`` on one event loop:

- ``front_door.ApiFrontDoor``: request ids, counts, faults and auth, then the routes of
  ``api_directory`` (workspaces, projects, models, techniques), ``api_runs`` (create
  and poll runs, idempotency) and ``inspection`` (``/_sandbox/*``, no auth or faults);
- ``media_host.MediaHost``: the third-party CDN, public signed URLs, no auth;
- ``upload_host.UploadHost``: the third-party upload endpoint of assets, no auth.

``responses`` holds what both answer with (error envelope, request ids, hang-ups).
"""

from __future__ import annotations

from starlette.types import ASGIApp

from floraq.sandbox.front_door import ApiFrontDoor
from floraq.sandbox.media_host import MediaHost
from floraq.sandbox.responses import API_PREFIX
from floraq.sandbox.state import SandboxState
from floraq.sandbox.upload_host import UploadHost

__all__ = ["API_PREFIX", "ApiFrontDoor", "MediaHost", "UploadHost", "create_apps"]


def create_apps(state: SandboxState) -> tuple[ASGIApp, ASGIApp, ASGIApp]:
    """The API app, the media app and the upload app, all over ``state``."""
    return ApiFrontDoor(state), MediaHost(state), UploadHost(state)
