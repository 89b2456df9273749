"""Hostile or broken answers: server text reaches no terminal, log or ledger as it came.

These are edges no honest server shows (the sandbox never sends an escape sequence), so
they are checked on the parsing functions with hand-made responses.
"""

from __future__ import annotations

import json

import httpx
import pytest

from floraq import console
from floraq.api import RunInfo
from floraq.core.manifest import Row
from floraq.core.technique import Technique
from floraq.core.text import one_line
from floraq.core.validation import check_row
from floraq.errors import ApiError

HOSTILE = "boom\x1b[2J\x1b]0;pwned\x07\r\nfloraq: error: forged line\u202etxt.exe"


def test_one_line_removes_controls_breaks_and_bidi_overrides() -> None:
    """Escape sequences, CR/LF and a right-to-left override all become single spaces."""
    assert one_line(HOSTILE) == "boom [2J ]0;pwned floraq: error: forged line txt.exe"


def test_one_line_cuts_a_flood_and_says_how_much() -> None:
    """A 40 KB message is cut to the limit, with the number of characters left out."""
    assert one_line("x" * 40_000, limit=100) == "x" * 100 + "… (39,900 more characters)"


def test_an_error_envelope_is_stored_and_shown_on_one_line() -> None:
    """Code, message, field problems and request id lose every control character."""
    body = {
        "error": {
            "code": "bad\x1b[0m_input",
            "message": HOSTILE,
            "fields": [{"field": "inputs\n[0]", "message": "no\x00pe"}] * 80,
        }
    }
    response = httpx.Response(400, content=json.dumps(body), headers={"request-id": "r\r\n1"})
    error = ApiError.from_response(response)
    assert isinstance(error, ApiError)
    assert (error.code, error.request_id) == ("bad [0m_input", "r 1")
    assert "\n" not in error.message and "\x1b" not in error.message
    assert error.fields[0] == {"field": "inputs [0]", "message": "no pe"}
    assert len(error.fields) == 50


def test_a_failed_runs_error_text_is_one_line() -> None:
    """A run's error_code and error_message are cleaned before the ledger sees them."""
    body = {"run_id": "r1", "status": "failed", "error_code": "x\ny", "error_message": HOSTILE}
    info = RunInfo.from_response(httpx.Response(200, json=body))
    assert info.error_code == "x y"
    assert info.error_message == one_line(HOSTILE)


def test_two_outputs_with_one_id_and_one_without_are_all_kept() -> None:
    """A repeated output_id gets a suffix and a missing one its position: nothing collapses."""
    outputs = [
        {"output_id": "image", "type": "imageUrl", "url": "https://cdn.test/1"},
        {"output_id": "image", "type": "imageUrl", "url": "https://cdn.test/2"},
        {"type": "imageUrl", "url": "https://cdn.test/3"},
        {"output_id": "image", "type": "imageUrl", "url": "https://cdn.test/4"},
    ]
    body = {"run_id": "r1", "status": "completed", "outputs": outputs}
    info = RunInfo.from_response(httpx.Response(200, json=body))
    assert [o.output_id for o in info.outputs] == ["image", "image.2", "output_3", "image.3"]
    assert [o.url for o in info.outputs] == [o["url"] for o in outputs]


def test_a_technique_with_thousands_of_inputs_gives_a_short_error() -> None:
    """An unknown input lists ten of the technique's inputs, then how many more."""
    slots = [{"id": f"in_{n}", "name": f"In {n}", "type": "text"} for n in range(5000)]
    technique = Technique.from_api(
        "wide",
        {"technique_id": "t", "name": "Wide", "run_cost": 0.1, "inputs": slots, "outputs": []},
    )
    row = Row(
        job=1,
        technique="wide",
        number=1,
        csv_line=None,
        key=None,
        values={"zzz": "a"},
        location="jobs.yaml: job 1, row 1",
    )
    unknown = [p for p in check_row(row, technique) if "unknown input" in p.message]
    assert unknown[0].message.endswith("'in_8', 'in_9' and 4,990 more")
    assert len(unknown[0].message) < 200


def test_a_technique_id_with_control_characters_is_refused_and_a_name_cleaned() -> None:
    """Ids go back to the API as sent, so a hostile one is an error; names are cleaned."""
    base = {"technique_id": "t", "run_cost": 0.1, "outputs": []}
    named = Technique.from_api("s", {**base, "name": "Na\x1bme\n", "inputs": []})
    assert named.name == "Na me"
    with pytest.raises(ValueError, match=r"'id' contains control characters"):
        Technique.from_api(
            "s", {**base, "name": "n", "inputs": [{"id": "a\x1b", "name": "A", "type": "text"}]}
        )


def test_an_error_line_is_always_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever an error carries, the CLI prints exactly one line for it."""
    console.error_line(HOSTILE)
    printed = capsys.readouterr().err
    assert printed.count("\n") == 1 and "\x1b" not in printed and "\r" not in printed


@pytest.mark.parametrize("charged", [-0.05, "NaN", "Infinity", "0.05x", True, [0.05], {"usd": 1}])
def test_a_charge_that_is_not_an_amount_is_unsettled_never_a_credit(charged: object) -> None:
    """A negative, non-finite or non-numeric charged_cost reads as 'not reported yet'."""
    body = {"run_id": "r1", "status": "completed", "outputs": [], "charged_cost": charged}
    assert RunInfo.from_response(httpx.Response(200, json=body)).charged_cost is None


def test_a_charge_in_json_is_read_exactly() -> None:
    """0.1 in the JSON is Decimal('0.1'), not the float nearest to it."""
    body = b'{"run_id": "r1", "status": "completed", "charged_cost": 0.1}'
    info = RunInfo.from_response(httpx.Response(200, content=body))
    assert str(info.charged_cost) == "0.100000"
