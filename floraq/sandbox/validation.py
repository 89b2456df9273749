"""Checks on request bodies and query strings, as ``(field, message)`` pairs.

The pairs become the ``fields`` of a 400 ``input_validation_error``; every problem is
reported at once, in the order a reader meets them in the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from floraq.sandbox.config import Technique

FieldError = tuple[str, str]

RUN_FIELDS = ("inputs", "mode", "callback_url", "idempotency_key")
INPUT_FIELDS = ("id", "type", "value")
MEDIA_TYPES = ("imageUrl", "videoUrl", "audioUrl", "documentUrl")
MAX_KEY_LENGTH = 255


def validate_run_body(body: Mapping[str, Any], technique: Technique) -> list[FieldError]:
    """Every way ``body`` fails to be a valid ``POST /techniques/{slug}/runs`` request."""
    errors = [(name, "Unrecognized field") for name in body if name not in RUN_FIELDS]
    if "inputs" not in body:
        errors.append(("inputs", "Required"))
    elif not isinstance(body["inputs"], list) or not body["inputs"]:
        errors.append(("inputs", "Must be a non-empty array"))
    else:
        errors += _validate_inputs(body["inputs"], technique)
    if "mode" not in body:
        errors.append(("mode", "Required"))
    elif body["mode"] != "async":
        errors.append(("mode", 'Must be "async"'))
    if "callback_url" in body and not _is_https_url(body["callback_url"]):
        errors.append(("callback_url", "Must be an https:// URL"))
    if "idempotency_key" in body and not is_valid_key(body["idempotency_key"]):
        errors.append(("idempotency_key", f"Must be a string of 1 to {MAX_KEY_LENGTH} characters"))
    return errors


def _validate_inputs(inputs: list[Any], technique: Technique) -> list[FieldError]:
    expected = {port.id: port for port in technique.inputs}
    errors: list[FieldError] = []
    seen: set[str] = set()
    for n, item in enumerate(inputs):
        where = f"inputs[{n}]"
        if not isinstance(item, dict):
            errors.append((where, "Must be an object with id, type and value"))
            continue
        errors += [(f"{where}.{k}", "Unrecognized field") for k in item if k not in INPUT_FIELDS]
        errors += [(f"{where}.{k}", "Required") for k in INPUT_FIELDS if k not in item]
        input_id, kind, value = item.get("id"), item.get("type"), item.get("value")
        port = None
        if "id" not in item:
            pass
        elif not isinstance(input_id, str):
            errors.append((f"{where}.id", "Must be a string"))
        elif input_id not in expected:
            names = ", ".join(expected)
            message = (
                f"Unknown input '{input_id}' for technique '{technique.slug}' (expected: {names})"
            )
            errors.append((f"{where}.id", message))
        elif input_id in seen:
            errors.append((f"{where}.id", f"Duplicate input '{input_id}'"))
        else:
            seen.add(input_id)
            port = expected[input_id]
        if port is not None and "type" in item and kind != port.type:
            errors.append((f"{where}.type", f"Must be '{port.type}' for input '{port.id}'"))
        if "value" not in item:
            continue
        if not isinstance(value, str):
            errors.append((f"{where}.value", "Must be a string"))
        elif port is not None and port.type in MEDIA_TYPES and not _is_https_url(value):
            errors.append((f"{where}.value", "Must be an https:// URL"))
    errors += [("inputs", f"Missing input '{p}'") for p in expected if p not in seen]
    return errors


def _is_https_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.netloc)


def is_valid_key(value: object) -> bool:
    """Whether ``value`` can be an idempotency key."""
    return isinstance(value, str) and 0 < len(value) <= MAX_KEY_LENGTH


def parse_limit(raw: str | None, *, default: int = 20) -> int | FieldError:
    """The ``limit`` query parameter (1 to 100), or the error to report."""
    if raw is None:
        return default
    if raw.strip().isdigit() and 1 <= int(raw) <= 100:
        return int(raw)
    return ("limit", "Must be an integer from 1 to 100")


def error_message(errors: list[FieldError]) -> str:
    """One line naming every problem, like the spec's ``prompt: Required``."""
    return "; ".join(f"{field}: {message}" for field, message in errors)
