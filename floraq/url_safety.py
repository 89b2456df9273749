"""Which URLs floraq may talk to, and how a URL is shown in a message.

Shared by the API client (the base URL, poll URLs) and the downloader (output URLs on
third-party hosts): plain HTTP only ever goes to this machine, and a URL in a message or
a log never carries its userinfo or query, either of which may hold a secret.
"""

from __future__ import annotations

import ipaddress

import httpx


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: the only hosts plain HTTP may reach."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_is_safe(url: str | httpx.URL) -> bool:
    """https:// anywhere, http:// only to a loopback host; nothing else."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL:
        return False
    if not parsed.host:
        return False
    if parsed.scheme == "https":
        return True
    return parsed.scheme == "http" and is_loopback_host(parsed.host)


def is_plain_loopback(url: str | httpx.URL) -> bool:
    """An http:// URL on this machine: the only API whose outputs may be plain http:// too."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme == "http" and is_loopback_host(parsed.host)


def redact_url(url: str | httpx.URL) -> str:
    """A URL fit for a message: no userinfo, no query (either may hold a secret)."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid URL>"
    return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and port: the key is only ever sent to the base URL's origin."""
    return (url.scheme, url.host.lower(), url.port)
