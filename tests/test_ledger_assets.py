"""The assets table on both backends: contents remembered, steps recorded, starting over."""

from __future__ import annotations

from ledgers import NewLedger

from floraq.core.keys import asset_key
from floraq.core.local_files import AssetState

SHA = "ab" * 32
WS = "ws_1"


def test_a_content_is_remembered_once_and_moves_step_by_step(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    ledger.remember_files(WS, [(SHA, "/a/x.png", 10, "image/png")])
    ledger.remember_files(WS, [(SHA, "/b/y.png", 10, "image/png")])  # moved: path follows
    record = ledger.asset(SHA, WS)
    assert record is not None
    assert (record.state, record.source_path, record.attempt) == (AssetState.NEW, "/b/y.png", 1)
    assert record.idempotency_key == asset_key(sha256=SHA, workspace_id=WS, attempt=1)
    upload = {"url": "https://u/x", "form_fields": {"t": "1"}, "file_field": "file"}
    ledger.update_asset(SHA, WS, state=AssetState.RESERVED, asset_id="asset_1", upload=upload)
    record = ledger.asset(SHA, WS)
    assert record is not None and record.upload == upload and record.asset_id == "asset_1"
    ledger.update_asset(SHA, WS, state=AssetState.READY, url="https://cdn/x")
    assert set(ledger.assets_of(WS, [SHA, "cd" * 32])) == {SHA}
    assert ledger.asset_paths([SHA]) == {SHA: "/b/y.png"}
    assert ledger.asset(SHA, "ws_other") is None


def test_a_failed_content_or_a_reupload_starts_over_with_a_new_key(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    ledger.remember_files(WS, [(SHA, "/a/x.png", 10, "image/png")])
    ledger.update_asset(SHA, WS, state=AssetState.FAILED, asset_id="asset_1")
    ledger.remember_files(WS, [(SHA, "/a/x.png", 10, "image/png")])
    record = ledger.asset(SHA, WS)
    assert record is not None and (record.state, record.attempt, record.asset_id) == (
        AssetState.NEW,
        2,
        None,
    )
    assert record.idempotency_key == asset_key(sha256=SHA, workspace_id=WS, attempt=2)
    ledger.update_asset(SHA, WS, state=AssetState.READY, asset_id="asset_2")
    ledger.remember_files(WS, [(SHA, "/a/x.png", 10, "image/png")])
    ready = ledger.asset(SHA, WS)
    assert ready is not None and ready.state is AssetState.READY
    ledger.remember_files(WS, [(SHA, "/a/x.png", 10, "image/png")], fresh=True)
    again = ledger.asset(SHA, WS)
    assert again is not None and again.attempt == 3


def test_a_batch_remembers_its_workspace(new_ledger: NewLedger) -> None:
    ledger = new_ledger()
    ledger.save_batch(
        "b", manifest_path=None, output_dir="/o", concurrency=None, max_cost=None,
        retry_failed_runs=1,
    )  # fmt: skip
    ledger.set_batch_workspace("b", WS)
    batch = ledger.batch("b")
    assert batch is not None and batch.workspace_id == WS
