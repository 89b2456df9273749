"""Creating and polling runs: validation, billing, the status machine, failures."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from sandbox_fixtures import *  # noqa: F403
from sandbox_fixtures import IMAGE, auth, portrait, poster, wait_done

from floraq.sandbox import SandboxServer

RUNS = "/techniques/portrait-enhancer/runs"


def fields_of(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "input_validation_error"
    return list(error["fields"])


def test_create_and_poll_as_in_the_curl_examples(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """POST answers the documented pending shape; polling reaches the completed shape."""
    created = api.post(RUNS, json=portrait())
    assert created.status_code == 200
    body = created.json()
    assert set(body) == {"run_id", "created_at", "status", "progress", "poll_url"}
    assert (body["status"], body["progress"]) == ("pending", 0)
    assert body["poll_url"] == f"{shared_sandbox.base_url}{RUNS}/{body['run_id']}"
    done = wait_done(api, body["poll_url"])
    assert done["status"] == "completed" and done["progress"] == 100
    assert done["created_at"] == body["created_at"] <= done["started_at"] <= done["completed_at"]
    assert done["charged_cost"] == 0.05
    assert [(o["output_id"], o["type"]) for o in done["outputs"]] == [("output_image", "imageUrl")]


def test_run_ids_are_prefixed_by_default(api: httpx.Client) -> None:
    """Run ids look like the spec's `run_…`."""
    assert re.fullmatch(r"run_[a-z0-9]{20}", api.post(RUNS, json=portrait()).json()["run_id"])


def test_opaque_run_ids_look_like_the_page_example(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """run_id_style=opaque gives 20-character ids like the page's `j57abc…`."""
    shared_sandbox.configure(run_id_style="opaque")
    run_id = api.post(RUNS, json=portrait()).json()["run_id"]
    assert re.fullmatch(r"j57[a-z0-9]{17}", run_id)
    assert api.get(f"{RUNS}/{run_id}").status_code == 200


def test_created_status_and_poll_url_are_knobs(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """create_status=201 and omit_poll_url change the create answer, and polls omit it too."""
    shared_sandbox.configure(create_status=201, omit_poll_url=True)
    created = api.post(RUNS, json=portrait())
    assert created.status_code == 201
    assert "poll_url" not in created.json()
    assert "poll_url" not in api.get(f"{RUNS}/{created.json()['run_id']}").json()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"mode": "async"}, [("inputs", "Required")]),
        ({"inputs": [], "mode": "async"}, [("inputs", "Must be a non-empty array")]),
        (portrait() | {"mode": "sync"}, [("mode", 'Must be "async"')]),
        ({"inputs": portrait()["inputs"]}, [("mode", "Required")]),
        (portrait() | {"priority": 1}, [("priority", "Unrecognized field")]),
        (portrait("http://example.com/a.jpg"), [("inputs[0].value", "Must be an https:// URL")]),
        (portrait(42), [("inputs[0].value", "Must be a string")]),  # type: ignore[arg-type]
        (
            {"inputs": [{"id": "input_image", "type": "text", "value": IMAGE}], "mode": "async"},
            [("inputs[0].type", "Must be 'imageUrl' for input 'input_image'")],
        ),
        (
            {"inputs": [{"id": "input_image", "value": IMAGE}], "mode": "async"},
            [("inputs[0].type", "Required")],
        ),
        (
            {"inputs": [{"id": "photo", "type": "imageUrl", "value": IMAGE}], "mode": "async"},
            [
                (
                    "inputs[0].id",
                    "Unknown input 'photo' for technique 'portrait-enhancer'"
                    " (expected: input_image)",
                ),
                ("inputs", "Missing input 'input_image'"),
            ],
        ),
        (
            {"inputs": portrait()["inputs"] * 2, "mode": "async"},
            [("inputs[1].id", "Duplicate input 'input_image'")],
        ),
        (
            portrait(idempotency_key=""),
            [("idempotency_key", "Must be a string of 1 to 255 characters")],
        ),
    ],
)
def test_bad_run_bodies_name_every_bad_field(
    api: httpx.Client, body: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    """Each malformed body is a 400 input_validation_error listing exactly its problems."""
    response = api.post(RUNS, json=body)
    assert fields_of(response) == [{"field": f, "message": m} for f, m in expected]
    assert response.json()["error"]["message"] == "; ".join(f"{f}: {m}" for f, m in expected)


def test_missing_second_input_is_named(api: httpx.Client) -> None:
    """product-shot without its `style` input names the missing input."""
    body = portrait()
    response = api.post("/techniques/product-shot/runs", json=body)
    assert fields_of(response) == [{"field": "inputs", "message": "Missing input 'style'"}]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "Malformed JSON in request body."),
        (b"", "Malformed JSON in request body."),
        (b"[1, 2]", "Request body must be a JSON object."),
        (b'"inputs"', "Request body must be a JSON object."),
    ],
)
def test_body_that_is_not_a_json_object_is_invalid_json(
    api: httpx.Client, content: bytes, message: str
) -> None:
    """Unparseable or non-object bodies: 400 invalid_json, never a 500."""
    response = api.post(RUNS, content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "invalid_json", "message": message}}


def test_create_for_unknown_technique_is_not_found(api: httpx.Client) -> None:
    """POST to an unknown slug: 404 not_found, and no run."""
    response = api.post("/techniques/nope/runs", json=portrait())
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_key_without_run_permission_is_forbidden(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """A valid read-only key can list techniques but gets 403 forbidden on POST runs."""
    shared_sandbox.configure(
        api_keys=["sk_test_sandbox", "sk_test_ro"], read_only_keys=["sk_test_ro"]
    )
    headers = auth("sk_test_ro")
    assert api.get("/techniques", headers=headers).status_code == 200
    response = api.post(RUNS, json=portrait(), headers=headers)
    assert response.status_code == 403
    assert response.json()["error"] == {
        "code": "forbidden",
        "message": "This API key cannot create runs.",
    }
    assert shared_sandbox.stats()["runs_created"] == 0


def test_low_balance_is_insufficient_credits(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """A balance below run_cost: 402 insufficient_credits; the run before it was charged."""
    shared_sandbox.configure(balance=0.07)
    assert api.post(RUNS, json=portrait()).status_code == 200
    response = api.post(RUNS, json=portrait("https://example.com/2.jpg"))
    assert response.status_code == 402
    assert response.json()["error"] == {
        "code": "insufficient_credits",
        "message": "Insufficient credits.",
    }
    stats = shared_sandbox.stats()
    assert (stats["runs_created"], stats["charged_total"], stats["balance"]) == (1, 0.05, 0.02)


def test_failed_run_is_refunded(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """A failed run shows charged_cost 0 and gives its reserved cost back to the balance."""
    shared_sandbox.configure(balance=1.0, duration=[200, 200])
    created = api.post(RUNS, json=portrait("https://example.com/a.jpg?[[fail:model_timeout]]"))
    assert shared_sandbox.stats()["balance"] == 0.95
    failed = wait_done(api, created.json()["poll_url"])
    assert (failed["status"], failed["progress"], failed["charged_cost"]) == ("failed", 100, 0)
    assert failed["error_code"] == "model_timeout"
    assert "outputs" not in failed
    assert shared_sandbox.stats()["balance"] == 1.0


@pytest.mark.parametrize(
    ("trigger", "code", "message"),
    [
        ("safety_blocked", "safety_blocked", "The model refused the request on safety grounds."),
        ("GENERATION_TIMEOUT", "GENERATION_TIMEOUT", "Generation did not finish in time."),
        ("GPU_PROVIDER_ERROR", "GPU_PROVIDER_ERROR", "The GPU provider returned an error."),
        ("moderation", "PROVIDER_ERROR", "Request refused by content moderation policy"),
        ("SOMETHING_NEW", "SOMETHING_NEW", "Injected failure: SOMETHING_NEW"),
    ],
)
def test_fail_trigger_in_a_text_input_fails_the_run(
    api: httpx.Client, trigger: str, code: str, message: str
) -> None:
    """`[[fail:CODE]]` in a text input fails the run with that code and its message."""
    created = api.post("/techniques/poster-maker/runs", json=poster(f"a cat [[fail:{trigger}]]"))
    failed = wait_done(api, created.json()["poll_url"])
    assert (failed["status"], failed["error_code"], failed["error_message"]) == (
        "failed",
        code,
        message,
    )


def test_failure_rate_draws_codes_from_both_taxonomies(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """failure_rate=1 fails every run, with docs and live codes in the mix."""
    shared_sandbox.configure(failure_rate=1.0, duration=[0, 0])
    urls = [api.post(RUNS, json=portrait(f"{IMAGE}?n={n}")).json()["poll_url"] for n in range(40)]
    codes = {wait_done(api, url)["error_code"] for url in urls}
    assert {"model_timeout", "safety_blocked", "internal_error"} & codes
    assert {"GENERATION_FAILED", "GPU_PROVIDER_ERROR", "PROVIDER_ERROR"} & codes


def test_charged_cost_appears_after_a_delay(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """With charged_cost_delay, a run first shows completed without charged_cost."""
    shared_sandbox.configure(charged_cost_delay=0.3, duration=[0, 0], frozen_clock=True)
    poll_url = api.post(RUNS, json=portrait()).json()["poll_url"]
    first = wait_done(api, poll_url)
    assert first["status"] == "completed" and "charged_cost" not in first
    shared_sandbox.advance_clock(0.31)
    assert api.get(poll_url).json()["charged_cost"] == 0.05


def test_poll_of_unknown_run_is_not_found(api: httpx.Client) -> None:
    """An unknown run id: 404 not_found with a run message."""
    response = api.get(f"{RUNS}/run_doesnotexist")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Run not found."}}


def test_poll_under_another_technique_is_not_found(api: httpx.Client) -> None:
    """A real run id polled under a different technique's slug: 404."""
    run_id = api.post(RUNS, json=portrait()).json()["run_id"]
    response = api.get(f"/techniques/poster-maker/runs/{run_id}")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


def test_progress_rises_while_running(shared_sandbox: SandboxServer, api: httpx.Client) -> None:
    """A 0.3 s run reports running with progress strictly between 0 and 100 mid-way."""
    shared_sandbox.configure(duration=[300, 300], frozen_clock=True)  # 0.15 s on any machine
    poll_url = api.post(RUNS, json=portrait()).json()["poll_url"]
    shared_sandbox.advance_clock(0.15)
    mid = api.get(poll_url).json()
    assert mid["status"] == "running" and 0 < mid["progress"] < 100
    assert "completed_at" not in mid and "outputs" not in mid and "charged_cost" not in mid
    shared_sandbox.advance_clock(0.16)
    assert api.get(poll_url).json()["status"] == "completed"


def test_runs_beyond_capacity_wait_pending(
    shared_sandbox: SandboxServer, api: httpx.Client
) -> None:
    """With capacity 1, a second run stays pending (no started_at) while the first runs."""
    shared_sandbox.configure(capacity=1, duration=[300, 300])
    first = api.post(RUNS, json=portrait()).json()
    second = api.post(RUNS, json=portrait(f"{IMAGE}?2")).json()
    assert api.get(first["poll_url"]).json()["status"] == "running"
    waiting = api.get(second["poll_url"]).json()
    assert (waiting["status"], waiting["progress"]) == ("pending", 0)
    assert "started_at" not in waiting
