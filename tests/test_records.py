"""Tests for llcv.results.records.LLCRecord: the same files as before the typed view, old and newer files, bad files.

The fixtures under tests/fixtures/ were written by llcv 0.5.0 before ``LLCRecord`` existed:

* ``records/*.json``: ``make_record`` / ``failure_record`` output for the inputs rebuilt below;
* ``results_v05/``: a real ``estimate_all`` folder (whole model and ``class=1``, one corrupt
  checkpoint) with its summary.csv;
* ``results_pre04/``: the same records as written before llcv 0.4 (docs/formats.md): no health
  verdict, no ``scope_kind``/``scope_index``/``model``, no BatchNorm, precision or MCSE fields,
  one record without ``scope``, step 8 with a diverged chain; its summary.csv was written by the
  store before ``LLCRecord``.
"""

from __future__ import annotations

import csv
import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llcv import LLCRecord
from llcv.checkpoints import CheckpointInfo, ModelSpec
from llcv.cli import app
from llcv.estimation.run import EstimateJob, JobSpec, failure_record, make_record
from llcv.health import HealthFailure
from llcv.figures.plotting import UNHEALTHY_LABEL, llc_figure, plot_llc
from llcv.results.records import RECORD_FORMAT_VERSION, RecordError, RecordResult
from llcv.figures import read_figure
from llcv.results import ResultsStore, find_transitions, load_results, results_dataframe, settings_hash
from llcv.estimation.scopes import Scope
from llcv.settings import SamplerSettings

FIXTURES = Path(__file__).parent / "fixtures"
DIGEST = "edff78b7dd92"
CHECKPOINT = Path("/llcv-fixture/checkpoints/step_00000008.pt")


def _copy(name: str, tmp_path: Path) -> Path:
    """A fixture results folder copied to ``tmp_path`` (tests never write into the fixtures)."""
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _fixed_provenance(monkeypatch) -> None:
    from llcv.estimation import run as estimation

    monkeypatch.setattr(estimation, "_now", lambda: "2024-05-01T12:00:00.000000+00:00")
    monkeypatch.setattr(estimation.socket, "gethostname", lambda: "fixture-host")
    monkeypatch.setattr(estimation.os, "getpid", lambda: 4242)


# --- writing: the same JSON as before the typed view


def test_make_record_writes_the_same_file_as_before(monkeypatch, tmp_path):
    _fixed_provenance(monkeypatch)
    done = json.loads((FIXTURES / "records" / "done.json").read_text())
    klass = json.loads((FIXTURES / "records" / "class.json").read_text())
    spec = JobSpec(settings=SamplerSettings(**done["result"]["settings"]), settings_hash=DIGEST)
    info = CheckpointInfo(
        path=str(CHECKPOINT), format="llcv", step=8, epoch=1.0, metrics=done["metrics"],
        model=ModelSpec(name="smallcnn", num_classes=4, in_channels=3, stem="cifar", version=1),
    )  # fmt: skip
    stamp = done["fingerprint"]
    records = {
        "done": make_record(EstimateJob(CHECKPOINT), spec, status="done", checkpoint_fingerprint=stamp, info=info,
                            result=done["result"], elapsed_seconds=0.5),
        "class": make_record(EstimateJob(CHECKPOINT, Scope("class=1", "class", 1, classes=(1,))), spec, status="done",
                             checkpoint_fingerprint=stamp, info=info, result=klass["result"], elapsed_seconds=0.25),
        "failed": failure_record(EstimateJob(CHECKPOINT.with_name("step_00000003.pt")), spec,
                                 "the worker on cuda:1 died: killed by SIGKILL (out of memory?)", 12.5),
        "diverged": make_record(EstimateJob(CHECKPOINT), spec, status="failed", checkpoint_fingerprint=stamp, info=info,
                                result={**done["result"], "llc_mean": None, "llc_std": None},
                                error="every chain diverged: x", elapsed_seconds=1.5),
    }  # fmt: skip
    store = ResultsStore(tmp_path, DIGEST)
    for name, record in records.items():
        assert isinstance(record, LLCRecord)
        path = store.write_record(record)
        assert path.read_text() == (FIXTURES / "records" / f"{name}.json").read_text(), name  # byte for byte
        path.unlink()
    assert records["done"].is_done and records["done"].healthy is False and records["done"].kind == "model"
    died = "the worker on cuda:1 died: killed by SIGKILL (out of memory?)"
    assert records["failed"].health == (False, [HealthFailure(None, died, died)])  # its error, whole, in every form
    assert records["diverged"].is_failed and records["diverged"].result.diagnostics.r_hat is not None


def test_records_round_trip_and_pickle():
    for path in sorted((FIXTURES / "records").glob("*.json")):
        payload = json.loads(path.read_text())
        record = LLCRecord.read(path)
        assert record.to_dict() == payload
        assert LLCRecord.from_dict(record.to_dict()) == record
        again = pickle.loads(pickle.dumps(record))  # how device workers and Ray tasks return records
        assert again == record and again.to_dict() == payload


# --- reading: files of this llcv, of older ones, and of newer ones


def assert_rebuilt_summary_is_the_old_one(results: Path) -> None:
    """summary.csv rebuilt from old records has the cells the old store wrote, and an empty
    ``llc_se`` column (new in llcv 0.9)."""
    path = results / DIGEST / "summary.csv"
    expected = list(csv.DictReader(path.open()))
    path.unlink()
    ResultsStore(results, DIGEST).rebuild_summary()
    rebuilt = list(csv.DictReader(path.open()))
    assert [row.pop("llc_se") for row in rebuilt] == [""] * len(expected)
    assert rebuilt == expected


def test_a_folder_written_before_the_typed_view_loads_summarises_and_plots(tmp_path):
    results = _copy("results_v05", tmp_path)
    assert_rebuilt_summary_is_the_old_one(results)
    records = load_results(results)
    assert [(record.step, record.scope) for record in records] == [
        (0, "model"), (0, "class=1"), (3, "model"), (3, "class=1"), (8, "model"), (8, "class=1"),
    ]  # fmt: skip
    for record in records:  # each file reads back to the same JSON
        assert record.to_dict() == json.loads(ResultsStore(results, DIGEST).record_path(record.checkpoint, record.scope).read_text())
    whole = records[-2]
    assert whole.model.name == "smallcnn" and whole.result.precision_choice.precision == "fp32"
    assert whole.metrics.val_acc == pytest.approx(0.6640625) and whole.result.batchnorm_statistics == "none"
    assert list(results_dataframe(records)["scope_kind"]) == ["model", "class", "model", "class", "model", "class"]
    figure = llc_figure({"run": records})
    assert len(figure.axes) == 4  # whole model, the class panel, loss and accuracy (twin)
    assert plot_llc(records, tmp_path / "llc.png").is_file()


def test_records_from_before_llcv_0_4_load_summarise_and_plot(tmp_path):
    results = _copy("results_pre04", tmp_path)
    folder = results / DIGEST
    assert_rebuilt_summary_is_the_old_one(results)
    first, failed, last = load_results(results)
    # what such records lack reads as unknown, and stays absent on disk
    assert (first.scope, first.scope_kind, first.kind, first.scope_index, first.model) == ("model", None, "model", None, None)
    assert first.healthy is None and first.health_reasons is None and first.result.healthy is None
    assert first.result.precision is None and first.result.precision_choice is None and first.result.batchnorm_statistics is None
    assert first.result.diagnostics.llc_mcse is None and first.result.ran_in is None
    assert first.health == (None, [])  # not judged
    said = "1 of 2 chains diverged"
    assert last.health == (False, [HealthFailure("diverged", said, said)])  # the one check old records carry
    assert failed.is_failed and failed.health[0] is False and failed.llc_mean is None
    for record, name in zip((first, failed, last), ("step_00000000.json", "step_00000003.json", "step_00000008.json")):
        on_disk = json.loads((folder / name).read_text())
        assert record.to_dict() == on_disk
        ResultsStore(results, DIGEST).write_record(record)
        assert json.loads((folder / name).read_text()) == on_disk  # written back without new fields
    assert "scope" not in json.loads((folder / "step_00000000.json").read_text())
    figure = llc_figure({"run": [first, failed, last]})
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["run", "failed (no estimate)", UNHEALTHY_LABEL]
    assert read_figure([first, failed, last]).startswith("Too few trustworthy estimates to read a trend: only 1 of the 2")
    assert find_transitions([first, failed, last]) == []
    outcome = CliRunner().invoke(app, ["plot", "--results-dir", str(results), "--out", str(tmp_path / "old.png")])
    assert outcome.exit_code == 0, outcome.output
    assert (tmp_path / "old.png").is_file()


def test_an_old_folder_whose_settings_leave_nbeta_unset_keeps_its_name_and_its_meaning(tmp_path):
    results = _copy("results_v05", tmp_path)
    stored = json.loads((results / DIGEST / "settings.json").read_text())
    assert stored["sampler"]["nbeta"] is None  # llcv 0.5 wrote the default batch rule as null
    settings = SamplerSettings(**stored["sampler"])
    assert settings.nbeta == "batch" and settings_hash(settings) == DIGEST
    records = load_results(results)
    done = [record for record in records if record.result is not None]
    whole = [record for record in done if record.is_whole_model]  # a class scope's nbeta is the number it ran at
    assert whole and all(SamplerSettings(**record.sampler_settings).nbeta == "batch" for record in whole)
    assert all(record.result.nbeta_rule is None and record.result.burnin_rule is None for record in done)  # not recorded then
    frame = results_dataframe(records)
    assert frame["nbeta"].notna().any() and frame["nbeta_rule"].isna().all() and frame["burnin_steps"].isna().all()


def test_records_carry_how_nbeta_and_the_burn_in_were_chosen(tmp_path):
    payload = json.loads((FIXTURES / "records" / "done.json").read_text())
    payload["result"].update(nbeta_rule="data", burnin_steps=200, burnin_rule="auto")
    store = ResultsStore(tmp_path, DIGEST)
    store.write_settings(SamplerSettings(**payload["result"]["settings"]))
    store.write_record(payload)
    (record,) = load_results(store.folder)
    assert (record.result.nbeta_rule, record.result.burnin_steps, record.result.burnin_rule) == ("data", 200, "auto")
    assert record.to_dict() == payload
    assert results_dataframe([record]).loc[0, ["nbeta_rule", "burnin_steps", "burnin_rule"]].tolist() == ["data", 200, "auto"]
    with pytest.raises(RecordError, match="result.nbeta_rule"):
        LLCRecord.from_dict({**payload, "result": {**payload["result"], "nbeta_rule": "wbic"}})


def test_fields_from_a_newer_llcv_are_kept(tmp_path):
    payload = json.loads((FIXTURES / "records" / "done.json").read_text())
    payload["future_field"] = {"anything": [1, 2]}
    payload["result"]["diagnostics"]["new_check"] = 0.5
    payload["worker"]["gpu_name"] = "H200"
    store = ResultsStore(tmp_path, DIGEST)
    store.write_settings(SamplerSettings(**payload["result"]["settings"]))
    path = store.record_path(payload["checkpoint"])
    path.write_text(json.dumps(payload))
    (record,) = load_results(store.folder)
    assert record.future_field == {"anything": [1, 2]} and record.worker.gpu_name == "H200"
    assert record.to_dict() == payload
    store.write_record(record)
    assert json.loads(path.read_text()) == payload


# --- files that are not records: one clear warning, never a traceback


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda payload: payload["result"].update(llc_mean="high"), "result.llc_mean: Input should be a valid number"),
        (lambda payload: payload.update(status="running"), "status: Input should be 'done' or 'failed'"),
        (lambda payload: payload.pop("checkpoint"), "checkpoint is missing"),
        (lambda payload: payload.update(format_version=RECORD_FORMAT_VERSION + 1),
         f"written by a newer llcv (record format_version {RECORD_FORMAT_VERSION + 1}; this llcv reads up to {RECORD_FORMAT_VERSION})"),
        (lambda payload: payload.update(format="llcv-sweep"), "not an llcv result record (its format is 'llcv-sweep'"),
    ],
)  # fmt: skip
def test_a_bad_record_is_skipped_with_one_message_naming_the_file_and_the_problem(tmp_path, caplog, change, problem):
    results = _copy("results_v05", tmp_path)
    folder = results / DIGEST
    payload = json.loads((folder / "step_00000008.json").read_text())
    change(payload)
    (folder / "step_00000008.json").write_text(json.dumps(payload))
    with caplog.at_level(logging.WARNING, logger="llcv"):
        records = load_results(results)
        ResultsStore(results, DIGEST).rebuild_summary()
    assert len(records) == 5 and all(record.checkpoint != "step_00000008.pt" or record.scope != "model" for record in records)
    (message,) = [entry.getMessage() for entry in caplog.records]
    assert str(folder / "step_00000008.json") in message and problem in message and "\n" not in message
    with pytest.raises(RecordError, match="step_00000008.json"):
        LLCRecord.read(folder / "step_00000008.json")
    # the command line says the same and goes on
    outcome = CliRunner().invoke(app, ["plot", "--results-dir", str(results), "--out", str(tmp_path / "p.png")])
    assert outcome.exit_code == 0 and "Traceback" not in outcome.output, outcome.output


def test_a_record_that_is_not_json_is_named(tmp_path, caplog):
    results = _copy("results_v05", tmp_path)
    (results / DIGEST / "step_00000008.json").write_text('{"format": "llcv-llc-record", "status": ')
    with caplog.at_level(logging.WARNING, logger="llcv"):
        assert len(load_results(results)) == 5
    (message,) = [entry.getMessage() for entry in caplog.records]
    assert "step_00000008.json: not valid JSON" in message


def test_a_future_format_version_is_refused_and_bad_dicts_are_not_written(tmp_path):
    payload = json.loads((FIXTURES / "records" / "failed.json").read_text())
    with pytest.raises(RecordError, match="newer llcv .*upgrade llcv"):
        LLCRecord.from_dict({**payload, "format_version": 2})
    with pytest.raises(ValueError, match="newer llcv"):
        LLCRecord.model_validate({**payload, "format_version": 2})
    with pytest.raises(RecordError, match="not a valid llcv result record: step"):
        ResultsStore(tmp_path, DIGEST).write_record({**payload, "step": "three"})
    assert not (tmp_path / DIGEST).exists()


def test_properties_readers_use():
    done = LLCRecord.read(FIXTURES / "records" / "done.json")
    assert done.llc_mean == done.result.llc_mean and done.llc_std == done.result.llc_std and done.has_estimate
    assert done.where == "step 8" and done.position("step") == 8 and done.position("epoch") == 1.0
    assert done.num_parameters == 38180 and done.sampler_settings["num_draws"] == 4
    assert done.precision_choice == {**done.result.precision_choice.to_dict(), "reused": True}
    assert done.is_unhealthy and done.health == (False, [HealthFailure.from_sentence(reason) for reason in done.health_reasons])
    block = done.model_copy(update={"scope": "layer3", "scope_kind": None, "scope_index": None})
    assert block.kind == "block" and block.scope_order() == (1, 3, "layer3")
    assert done.training_order() < block.training_order()
    built = LLCRecord(status="failed", checkpoint="x.pt", error="boom")
    assert built.to_dict() == {"format": "llcv-llc-record", "format_version": 1, "status": "failed", "checkpoint": "x.pt", "error": "boom"}
    assert RecordResult().diagnostics.warnings == [] and RecordResult().ran_in is None
    channels_last = RecordResult(precision="fp32", precision_choice={"precision": "fp32", "reason": "auto: x", "channels_last": True})
    assert channels_last.ran_in == "fp32, channels-last" and done.result.ran_in == done.result.precision  # no layout recorded
