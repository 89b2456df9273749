"""Technique definitions, and rows checked against them before anything is sent."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from floraq.core.manifest import Row
from floraq.core.problems import Problem
from floraq.core.technique import Technique, TechniqueIO
from floraq.core.validation import check_row, is_supported_host, run_inputs

PRODUCT_SHOT: dict[str, Any] = {
    "technique_id": "tech_product-shot",
    "name": "Product Shot",
    "description": "Studio shots",
    "run_cost": 0.08,
    "inputs": [
        {"id": "input_image", "name": "Input Image", "type": "imageUrl", "description": "x"},
        {"id": "style", "name": "Style", "type": "text"},
    ],
    "outputs": [{"id": "output_image", "name": "Output Image", "type": "imageUrl"}],
    "new_field": {"ignored": True},
}
TECHNIQUE = Technique.from_api("product-shot", PRODUCT_SHOT)
WHERE = "jobs.yaml: job 1 (product-shot), row 3"
GOOD_URL = "https://storage.googleapis.com/demo/a.jpg"


def row(values: dict[str, str], *, key: str | None = None) -> Row:
    return Row(
        job=1,
        technique="product-shot",
        number=3,
        csv_line=None,
        key=key,
        values=values,
        location=WHERE,
    )


def test_from_api_reads_the_documented_shape() -> None:
    """Unknown fields are ignored; inputs keep their order and types."""
    expected = Technique(
        slug="product-shot",
        technique_id="tech_product-shot",
        name="Product Shot",
        run_cost=Decimal("0.08"),
        inputs=(
            TechniqueIO("input_image", "Input Image", "imageUrl"),
            TechniqueIO("style", "Style", "text"),
        ),
        outputs=(TechniqueIO("output_image", "Output Image", "imageUrl"),),
    )
    assert expected == TECHNIQUE


def test_to_api_round_trips() -> None:
    """What the ledger caches reads back into an equal Technique, unknown types included."""
    meshes = {"id": "m", "name": "Mesh", "type": "meshUrl"}
    odd = Technique.from_api("x", {**PRODUCT_SHOT, "technique_id": "j57abc", "inputs": [meshes]})
    assert Technique.from_api("x", odd.to_api()) == odd
    assert odd.inputs[0].type == "meshUrl" and odd.inputs[0].is_media


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run_cost": None}, "'run_cost' must be a number, got nothing (missing or null)"),
        ({"run_cost": "0.05"}, "'run_cost' must be a number, got a string"),
        ({"run_cost": True}, "'run_cost' must be a number, got a boolean"),
        ({"run_cost": -1}, "'run_cost' must be a finite number >= 0, got -1"),
        ({"technique_id": 7}, "'technique_id' must be a string, got a number"),
        ({"inputs": {}}, "'inputs' must be a list, got an object"),
        ({"inputs": ["x"]}, "inputs[0] must be an object, got a string"),
        (
            {"outputs": [{"id": "o", "name": "O"}]},
            "outputs[0]: 'type' must be a string, got nothing (missing or null)",
        ),
        (
            {"inputs": [{"id": "a", "name": "A", "type": "text"}] * 2},
            "inputs[1]: duplicate id 'a'",
        ),
    ],
)
def test_from_api_names_the_bad_field(change: dict[str, Any], message: str) -> None:
    """A definition we cannot use fails with a message naming the field."""
    with pytest.raises(ValueError) as caught:
        Technique.from_api("product-shot", {**PRODUCT_SHOT, **change})
    assert str(caught.value) == f"technique 'product-shot': {message}"


def test_a_good_row_has_no_problems() -> None:
    """A row with every input, well formed, on a documented host."""
    assert check_row(row({"input_image": GOOD_URL, "style": "studio"}), TECHNIQUE) == []


def test_missing_input() -> None:
    """Every technique input must be given."""
    assert check_row(row({"style": "studio"}), TECHNIQUE) == [
        Problem(f"{WHERE}, field 'input_image'", "missing input 'input_image' (imageUrl)")
    ]


@pytest.mark.parametrize(
    ("input_id", "message"),
    [
        ("input_imag", "unknown input 'input_imag'; did you mean 'input_image'?"),
        ("zzz", "unknown input 'zzz'; this technique takes 'input_image', 'style'"),
    ],
)
def test_unknown_input(input_id: str, message: str) -> None:
    """An input the technique does not take is an error, with the closest id if any."""
    values = {"input_image": GOOD_URL, "style": "a", input_id: "x"}
    assert check_row(row(values), TECHNIQUE) == [Problem(f"{WHERE}, field '{input_id}'", message)]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("style", "  ", "is empty; give a value"),
        ("input_image", "", "is empty; give a URL"),
        ("input_image", "http://a.io/x.jpg", "'http://a.io/x.jpg' is an http:// URL; use https://"),
        (
            "input_image",
            "ftp://a.io/x.jpg",
            "'ftp://a.io/x.jpg' is not an https:// URL; use https://",
        ),
        ("input_image", "https:///a.jpg", "'https:///a.jpg' has no host; use https://host/path"),
        ("input_image", "https://[::1/a.jpg", "'https://[::1/a.jpg' is not a valid URL"),
        (
            "input_image",
            "https://ik.imagekit.io/a b.jpg",
            "URL 'https://ik.imagekit.io/a b.jpg' contains whitespace; percent-encode it (%20)",
        ),
    ],
)
def test_bad_values(field: str, value: str, message: str) -> None:
    """Each kind of bad value is reported at its field, with how to fix it."""
    values = {"input_image": GOOD_URL, "style": "studio", field: value}
    assert check_row(row(values), TECHNIQUE) == [Problem(f"{WHERE}, field '{field}'", message)]


def test_all_problems_of_a_row_at_once() -> None:
    """Missing, unknown and malformed inputs are reported together, sorted."""
    problems = check_row(row({"input_image": "http://x/a.jpg", "colour": "red"}), TECHNIQUE)
    assert [p.location.rsplit(", ", 1)[1] for p in problems] == [
        "field 'colour'",
        "field 'input_image'",
        "field 'style'",
    ]


def test_non_string_value_is_an_error() -> None:
    """A number in YAML is reported per row, with every other problem, not sent."""
    problems = check_row(row({"input_image": GOOD_URL, "style": 3}), TECHNIQUE)  # type: ignore[dict-item]
    assert problems == [
        Problem(WHERE + ", field 'style'", "must be a string; quote it (got int 3)")
    ]


def test_unlisted_host_is_only_a_warning() -> None:
    """FLORA decides; we warn that it may refuse."""
    problems = check_row(row({"input_image": "https://example.com/a.jpg", "style": "a"}), TECHNIQUE)
    assert problems == [
        Problem(
            WHERE + ", field 'input_image'",
            "host 'example.com' is not a documented FLORA input host (FLORA media, Google Cloud "
            "Storage, Amazon S3, ImageKit); FLORA may refuse it",
            severity="warning",
        )
    ]


@pytest.mark.parametrize("key", ["a/b", "../x", ".hidden", "", "x" * 101, "é"])
def test_unsafe_row_key(key: str) -> None:
    """A CSV key must be usable as one folder name."""
    values = {"input_image": GOOD_URL, "style": "a"}
    assert check_row(row(values, key=key), TECHNIQUE) == [
        Problem(
            WHERE + ", key",
            f"key {key!r} cannot name an output folder: use letters, digits, '.', '_' and '-' "
            "only, starting with a letter or digit, at most 100 characters",
        )
    ]


@pytest.mark.parametrize(
    ("host", "supported"),
    [
        ("media.flora.ai", True),
        ("cdn.media.flora.ai", True),
        ("flora.ai.evil.com", False),
        ("storage.googleapis.com", True),
        ("my-bucket.storage.googleapis.com", True),
        ("storage.cloud.google.com", True),
        ("googleapis.com", False),
        ("bucket.s3.amazonaws.com", True),
        ("bucket.s3.eu-west-1.amazonaws.com", True),
        ("s3.us-east-1.amazonaws.com", True),
        ("bucket.s3-us-west-2.amazonaws.com", True),
        ("ec2-1-2-3-4.compute-1.amazonaws.com", False),
        ("ik.imagekit.io", True),
        ("acme.imagekit.io", True),
        ("IK.ImageKit.io.", True),
        ("example.com", False),
    ],
)
def test_supported_hosts(host: str, supported: bool) -> None:
    """The documented host families, and look-alikes that are not them."""
    assert is_supported_host(host) is supported


def test_run_inputs_follow_the_technique_order() -> None:
    """The POST body's inputs: technique order, types added, nothing extra."""
    values = {"style": "studio", "input_image": GOOD_URL, "extra": "x"}
    assert run_inputs(values, TECHNIQUE) == [
        {"id": "input_image", "type": "imageUrl", "value": GOOD_URL},
        {"id": "style", "type": "text", "value": "studio"},
    ]


def test_run_inputs_refuses_a_missing_value() -> None:
    """Building a request for an unchecked row is a bug, caught before sending."""
    with pytest.raises(ValueError, match="no value for input style of 'product-shot'"):
        run_inputs({"input_image": GOOD_URL}, TECHNIQUE)


_URL_SHAPES = [
    "https://storage.googleapis.com/b/a.jpg",
    "HTTPS://Media.FLORA.ai/x.png?sig=1#top",
    "https://example.com",
    "https://example.com.",
    "https://s3.amazonaws.com/a b.jpg",
    "https://user:pw@storage.googleapis.com/a.jpg",
    "https://storage.googleapis.com:443/a.jpg",
    "https://storage.googleapis.com:99999/a.jpg",
    "https://[::1]/a.jpg",
    "https://[bad/a.jpg",
    "http://storage.googleapis.com/a.jpg",
    "ftp://storage.googleapis.com/a.jpg",
    "photos/a.jpg",
    "https:///a.jpg",
    "https://ex\u00e4mple.com/a.jpg",
    "https://ik.imagekit.io/a\u00a0b.jpg",
    "https://ik.imagekit.io/?q=1",
    "https://a..b/#",
    "https://-/x",
]


@pytest.mark.parametrize("url", _URL_SHAPES)
def test_the_plain_url_fast_path_says_what_the_parser_says(url: str) -> None:
    """The one-regex path for common URLs gives exactly the full check's problems."""
    from floraq.core.validation import _check_url, _parsed_url_problems

    assert _check_url("here", url) == _parsed_url_problems("here", url)


def test_row_keys_match_the_documented_formulas() -> None:
    """The one-encoding digest and key equal the canonical formulas, byte for byte."""
    import random

    from floraq.core.keys import (
        canonical_json,
        idempotency_key,
        inputs_digest,
        inputs_json,
        row_keys,
    )

    pick = random.Random(14)
    alphabet = 'ab"\\\u00e9\u2028\x01\n\U0001f600 /:'
    for _ in range(500):
        inputs = {
            "".join(pick.choice(alphabet) for _ in range(pick.randint(0, 6))): "".join(
                pick.choice(alphabet) for _ in range(pick.randint(0, 9))
            )
            for _ in range(pick.randint(0, 4))
        }
        keys = row_keys(batch='b"\u00e9', technique="t", inputs=inputs)
        assert keys.inputs_json == inputs_json(inputs) == canonical_json(inputs)
        assert keys.inputs_digest == inputs_digest(inputs)
        assert keys.idempotency_key == idempotency_key(
            batch='b"\u00e9', technique="t", inputs=inputs, attempt=1
        )
    mixed = row_keys(batch="b", technique="t", inputs={"n": 3})  # type: ignore[dict-item]
    assert mixed.inputs_digest == inputs_digest({"n": 3})  # type: ignore[dict-item]
    assert inputs_json({"n": 3}) == canonical_json({"n": 3})


@pytest.mark.parametrize("value", ["photos/a.jpg", "/data/a.jpg", "file:///data/a.jpg"])
def test_a_local_file_is_left_to_the_check_on_disk(value: str) -> None:
    """A path or file:// URL is a local file (issue 11): floraq.local_inputs checks it.

    (It used to be refused as "not a URL; local files are not supported yet".)
    """
    values = {"input_image": value, "style": "studio"}
    assert check_row(row(values), TECHNIQUE) == []
