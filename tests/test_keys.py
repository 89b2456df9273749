"""Idempotency keys are a contract: these exact values must never change silently."""

from __future__ import annotations

import hashlib
import json

import pytest

from floraq.core.keys import KEY_VERSION, canonical_json, idempotency_key, inputs_digest, row_key

PORTRAIT = {"input_image": "https://storage.googleapis.com/demo/a.jpg"}
UNICODE = {"prompt": 'Café "naïve" 東京 🎨'}


@pytest.mark.parametrize(
    ("batch", "technique", "inputs", "attempt", "key"),
    [
        (
            "example",
            "portrait-enhancer",
            PORTRAIT,
            1,
            "fq1_d30baa317efa34d95bb8afb7f6e48ce277a02333bd7a70fd",
        ),
        (
            "example",
            "portrait-enhancer",
            PORTRAIT,
            2,
            "fq1_e20c52ac37c0c1c062b723f7a9882886c6d7ddb60a879786",
        ),
        ("b", "poster-maker", UNICODE, 1, "fq1_4480ed849b4e331ee889730376f8b9f8455678b33ef67c26"),
        (
            "b",
            "product-shot",
            {"style": "", "input_image": "https://x"},
            1,
            "fq1_819b5109462e557a21fb785895ae7aa8f2afc499ecabba0a",
        ),
        ("b", "t", {}, 1, "fq1_ac35efac6c37ee46301b90b80a53b4afb42a4566f9db3a8a"),
    ],
)
def test_golden_keys(
    batch: str, technique: str, inputs: dict[str, str], attempt: int, key: str
) -> None:
    """Pinned keys: a refactor that changes any of them would pay for old batches again."""
    assert idempotency_key(batch=batch, technique=technique, inputs=inputs, attempt=attempt) == key


def test_key_follows_the_documented_formula() -> None:
    """The module docstring's formula, written out independently, gives the same key."""
    payload = {"attempt": 3, "batch": "b", "inputs": UNICODE, "technique": "poster-maker"}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = "fq1_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:48]
    assert (
        idempotency_key(batch="b", technique="poster-maker", inputs=UNICODE, attempt=3) == expected
    )
    assert expected.startswith(f"{KEY_VERSION}_") and len(expected) == 52


def test_input_order_does_not_change_the_key() -> None:
    """Two rows with the same inputs in another order are the same row."""
    one = idempotency_key(batch="b", technique="t", inputs={"a": "1", "b": "2"}, attempt=1)
    two = idempotency_key(batch="b", technique="t", inputs={"b": "2", "a": "1"}, attempt=1)
    assert one == two


def test_attempt_must_start_at_one() -> None:
    """Attempt 0 is a bug in the caller, not a key."""
    with pytest.raises(ValueError, match="attempt must be 1 or more, got 0"):
        idempotency_key(batch="b", technique="t", inputs={}, attempt=0)


def test_canonical_json_is_sorted_compact_utf8() -> None:
    """Sorted keys at every depth, no whitespace, non-ASCII kept as is, quotes escaped."""
    value = {"b": 1, "a": ["é", '"q"'], "c": {"z": None, "y": True}}
    assert canonical_json(value) == '{"a":["é","\\"q\\""],"b":1,"c":{"y":true,"z":null}}'


def test_canonical_json_refuses_nan() -> None:
    """NaN has no JSON form, so it cannot be part of a key."""
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_row_key_and_digest() -> None:
    """The folder name is the first 12 hex chars of the full inputs digest."""
    digest = inputs_digest(UNICODE)
    assert digest == "18aca97e052a6619cb5c3d214a8ddee62b76aee875c8147977a74f13ceda84e2"
    assert row_key(UNICODE) == "18aca97e052a"
    assert inputs_digest({"prompt": UNICODE["prompt"] + " "}) != digest
