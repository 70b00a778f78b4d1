"""Tests for llcv.results: the settings hash, record names, fingerprints, the store, reading results back."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import time
from pathlib import Path

import pytest

from _helpers import fake_record
from llcv.errors import SettingsError
from llcv.results import LLCRecord
from llcv.results.store import (
    SUMMARY_COLUMNS,
    ResultsStore,
    canonical_json,
    checkpoint_stem,
    choose_settings,
    find_transitions,
    fingerprint,
    hashed_settings,
    is_done,
    list_settings,
    load_results,
    missing_checkpoints,
    record_stem,
    results_dataframe,
    settings_hash,
)
from llcv.settings import SamplerSettings

# --- the settings hash


# What the defaults hash: the fields whose default changed, against HASH_BASELINE (bn_mode and
# mala since llcv 0.6, the temperature and the burn-in since llcv 0.10).
CHANGED_DEFAULTS = {"bn_mode": "batch", "mala": False, "nbeta": "data", "num_burnin_steps": "auto"}
# Settings hashes of folders written before llcv 0.10, computed by the llcv of then: with nbeta
# unset (the batch rule) and no burn-in, they must still name the same folders.
LEGACY_HASHES = [
    ({}, "2dfe2806f52b"),  # that llcv's defaults
    ({"epsilon": 1e-3, "gamma": 10.0, "num_draws": 50, "batch_size": 64, "num_samples": 512, "seed": 3}, "bf52e5715322"),
    ({"nbeta": 12.5, "num_burnin_steps": 100}, "c42a09469ebe"),
    ({"num_chains": 2, "num_draws": 12, "batch_size": 64, "num_samples": 128, "bn_mode": "eval", "bn_stats": "checkpoint"}, "e7674815ea3a"),
]


def test_hash_leaves_out_fields_at_their_default():
    assert hashed_settings(SamplerSettings()) == CHANGED_DEFAULTS
    assert settings_hash(SamplerSettings()) == hashlib.sha256(canonical_json(CHANGED_DEFAULTS).encode()).hexdigest()[:12]
    # giving a default value explicitly is the same settings
    assert settings_hash(SamplerSettings(gamma=100.0, num_chains=4)) == settings_hash(SamplerSettings())


def test_hash_is_twelve_hex_digits_and_changes_with_result_changing_fields():
    base = settings_hash(SamplerSettings(num_draws=50))
    assert len(base) == 12 and int(base, 16) >= 0
    assert settings_hash(SamplerSettings(num_draws=51)) != base
    assert settings_hash(SamplerSettings(num_draws=50, epsilon=1e-3)) != base
    assert settings_hash(SamplerSettings(num_draws=50, seed=1)) != base
    assert hashed_settings(SamplerSettings(num_draws=50, epsilon=1e-3)) == {"num_draws": 50, "epsilon": 1e-3, **CHANGED_DEFAULTS}


def test_hash_is_canonical_json_of_the_hashed_fields():
    settings = SamplerSettings(num_draws=50, epsilon=1e-3, gamma=10)
    hashed = {"epsilon": 0.001, "gamma": 10.0, "num_draws": 50, **CHANGED_DEFAULTS}
    expected = hashlib.sha256(canonical_json(hashed).encode()).hexdigest()[:12]
    assert settings_hash(settings) == expected
    assert canonical_json({"b": 1, "a": 2}) == '{"a":2,"b":1}'


def test_settings_from_before_a_default_changed_keep_their_hash():
    """A folder hashed before bn_stats and the MALA default existed holds results computed with the
    checkpoint's statistics and MALA on: those settings, spelled out now, must name the same folder."""
    old_temperature = {"nbeta": "batch", "num_burnin_steps": 0}
    before = SamplerSettings(num_draws=50, bn_mode="eval", bn_stats="checkpoint", mala=True, **old_temperature)
    assert hashed_settings(before) == {"num_draws": 50}
    # the defaults of llcv 0.4 and 0.5, eval mode with recomputed statistics, keep theirs too
    assert hashed_settings(SamplerSettings(num_draws=50, bn_mode="eval", **old_temperature)) == {
        "num_draws": 50, "bn_stats": "recompute", "bn_samples": 4096, "mala": False,
    }


@pytest.mark.parametrize(("fields", "digest"), LEGACY_HASHES)
def test_settings_from_before_the_data_temperature_keep_their_folder(fields, digest):
    # as their settings.json holds them: every field, nbeta null and the burn-in 0 unless set
    written = {**SamplerSettings().model_dump(mode="json"), "nbeta": None, "num_burnin_steps": 0, **fields}
    assert settings_hash(SamplerSettings.model_validate(written)) == digest


def test_the_data_temperature_and_the_automatic_burn_in_get_folders_of_their_own():
    legacy = SamplerSettings(nbeta="batch", num_burnin_steps=0)
    assert settings_hash(legacy) == LEGACY_HASHES[0][1]
    assert len({settings_hash(legacy), settings_hash(legacy.model_copy(update={"nbeta": "data"})),
                settings_hash(legacy.model_copy(update={"num_burnin_steps": "auto"})), settings_hash(SamplerSettings())}) == 4  # fmt: skip


def test_a_non_default_loss_changes_the_hash():
    def my_loss(model, batch):
        return model(batch[0]).sum()

    assert settings_hash(SamplerSettings(), "cross_entropy") == settings_hash(SamplerSettings())
    assert settings_hash(SamplerSettings(), "mse") != settings_hash(SamplerSettings())
    assert hashed_settings(SamplerSettings(), my_loss)["loss"].endswith("my_loss")


# --- names and fingerprints


@pytest.mark.parametrize(
    ("name", "stem"),
    [("step_00000100.pt", "step_00000100"), ("checkpoint_epoch_39_val_200.pth.tar", "checkpoint_epoch_39_val_200"),
     ("model.pth", "model"), ("last.ckpt", "last")],
)  # fmt: skip
def test_checkpoint_stem_strips_the_checkpoint_suffix(name, stem):
    assert checkpoint_stem(name) == stem


def test_record_names_carry_the_scope_except_for_the_whole_model():
    assert record_stem("step_00000100.pt") == "step_00000100"
    assert record_stem("step_00000100.pt", "layer3") == "step_00000100__layer3"
    assert record_stem("step_00000100.pt", "class=7") == "step_00000100__class=7"
    for bad in ("", "a/b", "x__y", "../up"):
        with pytest.raises(SettingsError):
            record_stem("step_00000100.pt", bad)


def test_fingerprint_changes_with_the_content_and_the_time(tmp_path):
    path = tmp_path / "step_00000001.pt"
    path.write_bytes(b"a" * 3_000_000)
    first = fingerprint(path)
    assert set(first) == {"size", "mtime_ns", "ends_sha256"} and first["size"] == 3_000_000
    assert fingerprint(path) == first
    with open(path, "r+b") as handle:  # same size, a different last byte
        handle.seek(2_999_999)
        handle.write(b"b")
    os.utime(path, ns=(first["mtime_ns"], first["mtime_ns"]))
    assert fingerprint(path)["ends_sha256"] != first["ends_sha256"]
    os.utime(path, ns=(first["mtime_ns"] + 10**9, first["mtime_ns"] + 10**9))
    assert fingerprint(path)["mtime_ns"] != first["mtime_ns"]


def test_is_done_needs_status_done_and_the_same_fingerprint():
    stamp = {"size": 1, "mtime_ns": 2, "ends_sha256": "x"}
    assert is_done(LLCRecord(status="done", checkpoint="a.pt", fingerprint=stamp), dict(stamp))
    assert not is_done(LLCRecord(status="failed", checkpoint="a.pt", fingerprint=stamp), stamp)
    assert not is_done(LLCRecord(status="done", checkpoint="a.pt", fingerprint=stamp), {**stamp, "size": 3})
    assert not is_done(LLCRecord(status="done", checkpoint="a.pt"), stamp)
    assert not is_done(None, stamp)


# --- the store


def _store_with(tmp_path: Path, steps_llc: dict[int, float | None], digest: str = "aaaaaaaaaaaa") -> ResultsStore:
    store = ResultsStore(tmp_path / "results", digest)
    store.write_settings(SamplerSettings(num_draws=12))
    for step, llc in steps_llc.items():
        status = "done" if llc is not None else "failed"
        store.write_record(
            fake_record(tmp_path / "ck" / f"step_{step:08d}.pt", step, llc, settings_hash=digest, status=status,
                        error=None if llc is not None else "boom")  # fmt: skip
        )
    return store


def test_records_come_back_in_training_order_and_the_summary_has_the_issue_columns(tmp_path):
    store = _store_with(tmp_path, {100: 3.0, 2: 1.0, 30: None})
    assert [record.step for record in store.records()] == [2, 30, 100]
    store.rebuild_summary()
    with open(store.folder / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == SUMMARY_COLUMNS
    assert [row["step"] for row in rows] == ["2", "30", "100"]
    assert rows[1]["status"] == "failed" and rows[1]["error"] == "boom" and rows[1]["llc_mean"] == ""
    assert rows[0]["scope"] == "model" and float(rows[0]["llc_mean"]) == 1.0


def test_summary_follows_changed_and_removed_records(tmp_path):
    store = _store_with(tmp_path, {1: 1.0, 2: 2.0})
    store.rebuild_summary()
    store.record_path("step_00000002.pt").unlink()
    record = store.read_record("step_00000001.pt")
    record.result.llc_mean = 5.0
    time.sleep(0.01)
    store.write_record(record)
    rows = store.summary_rows()
    assert [(row["step"], row["llc_mean"]) for row in rows] == [(1, 5.0)]


def test_unreadable_record_files_are_skipped(tmp_path, caplog):
    store = _store_with(tmp_path, {1: 1.0})
    (store.folder / "step_00000009.json").write_text("{not json")
    (store.folder / ".step_00000010.json.abc.tmp").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="llcv"):
        assert [record.step for record in store.records()] == [1]
        store.rebuild_summary()  # warned once per file, not again at every rebuild
    (message,) = [record.getMessage() for record in caplog.records]
    assert "step_00000009.json: not valid JSON" in message and "\n" not in message


def test_settings_json_names_the_hash_and_the_full_settings(tmp_path):
    store = _store_with(tmp_path, {})
    payload = store.read_settings()
    assert payload["settings_hash"] == "aaaaaaaaaaaa"
    assert payload["sampler"]["num_draws"] == 12 and payload["hashed"] == {"num_draws": 12, **CHANGED_DEFAULTS}


# --- reading results back


def test_load_results_uses_the_most_recent_settings_unless_told(tmp_path):
    old = _store_with(tmp_path, {1: 1.0}, digest="111111111111")
    time.sleep(0.02)
    _store_with(tmp_path, {1: 2.0, 2: 3.0}, digest="222222222222")
    assert [entry.settings_hash for entry in list_settings(tmp_path / "results")] == ["222222222222", "111111111111"]
    assert [record.llc_mean for record in load_results(tmp_path / "results")] == [2.0, 3.0]
    assert [record.result.llc_mean for record in load_results(tmp_path / "results", "1111")] == [1.0]
    # a settings-hash folder itself works too
    assert len(load_results(old.folder)) == 1
    with pytest.raises(SettingsError, match="111111111111"):
        choose_settings(tmp_path / "results", "999")


def test_load_results_errors_name_the_folder(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_results(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SettingsError, match="no LLC results"):
        load_results(tmp_path / "empty")


def test_results_dataframe_has_one_row_per_record(tmp_path):
    store = _store_with(tmp_path, {1: 1.0, 5: None})
    frame = results_dataframe(store.records())
    assert list(frame["step"]) == [1, 5]
    assert list(frame["status"]) == ["done", "failed"]
    assert {"llc_mean", "val_acc", "settings_hash", "num_threads"} <= set(frame.columns)


def test_missing_checkpoints_lists_those_without_a_record(tmp_path):
    checkpoints = tmp_path / "ck"
    checkpoints.mkdir()
    for step in (1, 2, 5):
        (checkpoints / f"step_{step:08d}.pt").write_bytes(b"x")
    store = _store_with(tmp_path, {1: 1.0, 2: None})
    assert missing_checkpoints(store.records()) == ["step_00000005.pt"]
    for path in checkpoints.iterdir():
        path.unlink()
    checkpoints.rmdir()
    assert missing_checkpoints(store.records()) is None


def test_transitions_are_where_the_log_slope_turns_or_peaks():
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128]
    llc = [1, 1.1, 1.3, 2.0, 4.0, 4.6, 4.3, 3.2, 3.0]  # rises fastest into step 8, peaks at 16
    records = [fake_record(Path(f"/x/step_{s:08d}.pt"), s, value, settings_hash="h") for s, value in zip(steps, llc)]
    found = {(transition.step, transition.kind) for transition in find_transitions(records)}
    assert (16, "LLC peak") in found
    assert (8, "fastest rise") in found
    assert all(transition.step != 0 for transition in find_transitions(records))
    assert find_transitions(records[:3]) == []
