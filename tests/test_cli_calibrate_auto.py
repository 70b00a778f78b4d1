"""`llcv calibrate auto` and `llcv estimate-all --calibrate` through the command line.

The trials' sampling is replaced by steady chains (``_helpers.use_steady_trials``), so the
search's own logic runs in well under a second on the shared tiny run; the estimates that
follow a calibration sample for real, briefly.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import pytest
from filelock import FileLock
from typer.testing import CliRunner

from _helpers import copy_checkpoints, unwrapped, use_steady_trials
from llcv.calibration.auto_files import TRIAL_FIELDS, calibrate_and_save
from llcv.cli import app
from llcv.progress import Reporter
from llcv.estimation.run_calibration import LOCK_FILE, calibrate_run, reference_checkpoint
from llcv.settings import AUTO_CALIBRATION_ANNOTATIONS, AUTO_CALIBRATION_FIELDS, EstimateSettings, SamplerSettings

runner = CliRunner()
# Batches of 64 from 256 samples: the doubled batch of the sensitivity check fits the data.
BASE = ["--batch-size", "64", "--num-samples", "256", "--device", "cpu"]
FILES = ["calibration.json", "calibration_traces.png", "calibration_trials.png", "recommended.json", "trials.csv"]


@pytest.fixture(scope="module")
def checkpoint(trained_run):
    _, result = trained_run
    return result.checkpoints[-1]


def _auto(checkpoint: Path, results: Path, *extra: str):
    return runner.invoke(app, ["calibrate", "auto", "--checkpoint", str(checkpoint), "--results-dir", str(results), *BASE, *extra])


def test_calibrate_auto_writes_its_files_and_its_recommendation_feeds_estimate(checkpoint, tmp_path, monkeypatch):
    use_steady_trials(monkeypatch)
    outcome = _auto(checkpoint, tmp_path, "--budget-steps", "5000")
    assert outcome.exit_code == 0, outcome.output
    out = tmp_path / checkpoint.stem
    assert sorted(path.name for path in out.iterdir()) == FILES
    stored = json.loads((out / "calibration.json").read_text())
    assert stored["format"] == "llcv-calibrate-auto" and stored["complete"] is True and stored["pick"] is not None
    with open(out / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == TRIAL_FIELDS and [row["llc"] for row in rows] == [str(trial["llc"]) for trial in stored["trials"]]
    assert {row["batch_size"] for row in rows} == {"64", "128"}  # the sensitivity check doubled the batch
    recommended = json.loads((out / "recommended.json").read_text())
    assert list(recommended) == [*AUTO_CALIBRATION_FIELDS, *AUTO_CALIBRATION_ANNOTATIONS]
    assert recommended["source"] == "calibrate auto" and recommended["nbeta"] == "data" and recommended["batch_size"] == 64
    assert [entry["knob"] for entry in recommended["sensitivity"]] == ["gamma", "epsilon", "batch_size"]
    assert recommended["settings_dependent"] == [] and recommended["checkpoint"] == str(checkpoint)
    text = unwrapped(outcome.stdout)
    assert "★ pick" in text and "…" not in outcome.stdout  # the tables fit 80 columns
    assert text.count("holds") == 3 and "settings-dependent" in text  # three verdicts, and the criterion in the title
    spent = stored["spent"]
    assert f"spent: {spent['trials']} trials, {spent['chain_steps']:,} steps (chains x steps)" in text and "of a budget of 5,000 steps" in text
    assert f"recommended: epsilon={recommended['epsilon']:g}" in unwrapped(outcome.stderr)

    estimate = runner.invoke(
        app, ["estimate", "--checkpoint", str(checkpoint), "--from-calibration", str(out / "recommended.json"),
              "--num-chains", "1", "--num-draws", "4", "--json", "--device", "cpu"],
    )  # fmt: skip
    assert estimate.exit_code == 0, estimate.output
    settings = json.loads(estimate.stdout)["settings"]
    decided = ("epsilon", "gamma", "nbeta", "sampler", "num_burnin_steps", "batch_size")
    assert {key: settings[key] for key in decided} == {key: recommended[key] for key in decided}
    assert (settings["num_chains"], settings["num_draws"]) == (1, 4)  # flags beat the calibration


def test_a_second_run_resumes_and_runs_no_new_trial(checkpoint, tmp_path, monkeypatch):
    trials = use_steady_trials(monkeypatch)
    assert _auto(checkpoint, tmp_path, "--budget-steps", "5000").exit_code == 0
    sampled = len(trials.calls)
    first = json.loads((tmp_path / checkpoint.stem / "calibration.json").read_text())
    outcome = _auto(checkpoint, tmp_path, "--budget-steps", "5000")
    assert outcome.exit_code == 0, outcome.output
    assert len(trials.calls) == sampled  # every trial reused
    second = json.loads((tmp_path / checkpoint.stem / "calibration.json").read_text())
    assert second["trials"] == first["trials"] and second["recommended"] == first["recommended"]


def test_a_knob_that_moves_the_llc_is_flagged_settings_dependent(checkpoint, tmp_path, monkeypatch):
    use_steady_trials(monkeypatch, level=lambda settings: 5.0 if settings.batch_size == 64 else 7.0)
    outcome = _auto(checkpoint, tmp_path, "--budget-steps", "5000")
    assert outcome.exit_code == 0, outcome.output
    recommended = json.loads((tmp_path / checkpoint.stem / "recommended.json").read_text())
    assert recommended["settings_dependent"] == ["batch_size"]
    row = next(line for line in outcome.stdout.splitlines() if line.lstrip().startswith("batch"))
    assert "64 → 128" in row and "+40%" in row and row.rstrip().endswith("settings-dependent")


def test_no_usable_settings_exits_1_with_its_trials_and_no_recommendation(checkpoint, tmp_path, monkeypatch):
    use_steady_trials(monkeypatch, level=lambda settings: -5.0)  # every chain settles below the checkpoint's loss
    out = tmp_path / checkpoint.stem
    out.mkdir()
    (out / "recommended.json").write_text("{}")  # from an earlier calibration
    outcome = _auto(checkpoint, tmp_path, "--budget-steps", "1200")
    assert outcome.exit_code == 1, outcome.output
    assert sorted(path.name for path in out.iterdir()) == [name for name in FILES if name != "recommended.json"]
    assert json.loads((out / "calibration.json").read_text())["recommended"] is None
    text = unwrapped(outcome.output)
    assert "error: calibrate auto found no usable settings" in text and "no recommended.json written" in text
    assert "escaped" in text  # the trials' table says why


def test_json_prints_the_stored_calibration_and_nothing_else(checkpoint, tmp_path, monkeypatch):
    use_steady_trials(monkeypatch)
    outcome = _auto(checkpoint, tmp_path, "--budget-steps", "5000", "--json")
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout) == json.loads((tmp_path / checkpoint.stem / "calibration.json").read_text())


def test_the_budget_comes_from_the_config_and_its_flags(checkpoint, tmp_path, monkeypatch):
    received = {}

    def fake(directory, loaded, loss="cross_entropy", device="auto", **kwargs):
        received.update(kwargs, directory=directory, device=device)
        raise KeyboardInterrupt  # stop here: the settings are what this test reads

    monkeypatch.setattr("llcv.calibration.calibrate_and_save", fake)
    config = tmp_path / "experiment.toml"
    config.write_text("[sampler]\nseed = 3\n\n[calibrate]\nbudget_steps = 9000\nbudget_seconds = 60\n")
    outcome = _auto(checkpoint, tmp_path, "--config", str(config), "--budget-seconds", "30", "--nbeta", "batch", "--format", "svg")
    assert outcome.exit_code == 130, outcome.output
    assert (received["budget"].chain_steps, received["budget"].seconds) == (9000, 30.0)
    assert (received["base"].seed, received["base"].nbeta, received["base"].batch_size) == (3, "batch", 64)
    assert received["figure_format"] == "svg" and received["directory"] == tmp_path / checkpoint.stem
    assert runner.invoke(app, ["calibrate", "auto", "--checkpoint", str(checkpoint), "--epsilon", "1e-4"]).exit_code == 2  # the search decides


def test_help_ends_with_an_example():
    outcome = runner.invoke(app, ["calibrate", "auto", "--help"])
    assert outcome.exit_code == 0 and "Example: llcv calibrate auto" in unwrapped(outcome.stdout)


# --- estimate-all --calibrate


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    _, result = trained_run
    return copy_checkpoints(result.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 16])


def _estimate_all(run: Path, results: Path, *extra: str):
    short = ["--num-chains", "2", "--num-draws", "8", "--budget-steps", "5000"]  # short estimates: flags beat the calibration
    return runner.invoke(app, ["estimate-all", "--checkpoints-dir", str(run), "--results-dir", str(results), "--calibrate", *BASE, *short, *extra])


def test_estimate_all_calibrates_once_records_it_and_a_rerun_estimates_nothing(run, tmp_path, monkeypatch):
    trials = use_steady_trials(monkeypatch)
    results = tmp_path / "results"
    outcome = _estimate_all(run, results)
    assert outcome.exit_code == 0, outcome.output
    calibration = results / "calibration" / "step_00000016"  # the run's last checkpoint
    recommended = json.loads((calibration / "recommended.json").read_text())
    (folder,) = [path for path in results.iterdir() if (path / "settings.json").is_file()]
    assert sorted(path.name for path in folder.glob("step_*.json")) == ["step_00000000.json", "step_00000016.json"]
    settings = json.loads((folder / "settings.json").read_text())
    sampler = settings["sampler"]
    assert {key: sampler[key] for key in ("epsilon", "gamma", "num_burnin_steps")} == {
        key: recommended[key] for key in ("epsilon", "gamma", "num_burnin_steps")
    }
    entry = settings["calibration"]
    assert entry["source"] == "calibrate auto" and Path(entry["checkpoint"]).name == "step_00000016.pt"
    assert Path(entry["recommended"]) == (calibration / "recommended.json").resolve()
    assert entry["sensitivity"] == recommended["sensitivity"] and entry["settings_dependent"] == []
    assert "none is settings-dependent" in unwrapped(outcome.output)

    sampled = len(trials.calls)
    rerun = _estimate_all(run, results, "--json")
    assert rerun.exit_code == 0, rerun.output
    summary = json.loads(rerun.stdout)
    assert summary["computed"] == [] and sorted(summary["already_done"]) == ["step_00000000.pt", "step_00000016.pt"]
    assert summary["folder"] == str(folder) and len(trials.calls) == sampled  # the same settings, no new trial


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--calibrate-on", "7"], "--calibrate-on 7: no checkpoint at step(s) 7; the steps present are 0, 16"),
        (["--calibrate-on", "elsewhere.pt"], "--calibrate-on elsewhere.pt: no such checkpoint file"),
        (["--epsilon", "1e-3"], "sets epsilon, gamma and the burn-in by calibrating the run; drop --epsilon, or drop --calibrate"),
        (["--num-burnin-steps", "10", "--gamma", "3"], "drop --gamma, --num-burnin-steps, or drop --calibrate"),
        (["--from-calibration", "recommended.json"], "drop --from-calibration, or drop --calibrate"),
    ],
    ids=["unknown-step", "unknown-file", "epsilon", "gamma-and-burn-in", "from-calibration"],
)
def test_contradictions_and_unknown_reference_checkpoints_exit_2_before_any_trial(run, tmp_path, monkeypatch, extra, message):
    trials = use_steady_trials(monkeypatch)
    outcome = _estimate_all(run, tmp_path / "results", *extra)
    assert outcome.exit_code == 2, outcome.output
    assert message in unwrapped(outcome.output) and "Traceback" not in outcome.output
    assert trials.calls == [] and not (tmp_path / "results").exists()


def test_the_reference_checkpoint_is_the_last_or_named_by_step_or_file(run):
    assert reference_checkpoint(run).name == "step_00000016.pt"
    assert reference_checkpoint(run, 0).name == "step_00000000.pt"
    assert reference_checkpoint(run, "step_00000000.pt") == run / "step_00000000.pt"  # a name in the run's folder
    assert reference_checkpoint(run, run / "step_00000000.pt") == run / "step_00000000.pt"


class _Notes(Reporter):
    def __init__(self):
        self.notes: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)


def test_a_worker_that_finds_the_calibration_locked_waits_and_reuses_it(run, tmp_path, monkeypatch):
    """Shards started together: one calibrates while the others wait on the folder's lock, then reuse its store."""
    trials = use_steady_trials(monkeypatch)
    options = EstimateSettings(results_dir=tmp_path / "results", device="cpu")
    base = SamplerSettings(batch_size=64, num_samples=256)
    folder = tmp_path / "results" / "calibration" / "step_00000016"
    folder.mkdir(parents=True)
    held = threading.Event()

    def hold() -> None:  # another worker, calibrating for half a second
        with FileLock(folder / LOCK_FILE):
            held.set()
            time.sleep(0.5)

    worker = threading.Thread(target=hold)
    worker.start()
    held.wait()
    started, notes = time.perf_counter(), _Notes()
    first = calibrate_run(run, base, options, reporter=notes)
    worker.join()
    assert time.perf_counter() - started >= 0.4 and any("waiting to reuse its calibration" in note for note in notes.notes)
    sampled = len(trials.calls)
    second = calibrate_run(run, base, options)
    assert len(trials.calls) == sampled and second.settings == first.settings and second.directory == folder


def test_a_calibration_that_finds_nothing_stops_the_run_with_its_reason(run, tmp_path, monkeypatch):
    use_steady_trials(monkeypatch, level=lambda settings: -5.0)
    outcome = _estimate_all(run, tmp_path / "results", "--budget-steps", "1200")
    assert outcome.exit_code == 1, outcome.output
    text = unwrapped(outcome.output)
    assert "calibrating on step_00000016.pt found no usable settings" in text and "its trials and figures are in" in text
    assert not list((tmp_path / "results").glob("*/settings.json"))  # nothing estimated with settings not found


def test_calibrate_and_save_returns_a_failed_search_with_its_reason(checkpoint, tmp_path, monkeypatch):
    from llcv.calibration.outcome import Budget
    from llcv.targets import Target

    use_steady_trials(monkeypatch, level=lambda settings: -5.0)
    target = Target(checkpoint).load()
    result = calibrate_and_save(
        tmp_path, target, device="cpu", base=SamplerSettings(batch_size=64, num_samples=256),
        budget=Budget(chain_steps=800),
    )  # fmt: skip
    assert result.recommended is None and result.reason and result.trials
    assert result.checkpoint == str(checkpoint)
    assert {trial.status for trial in result.trials} == {"escaped"}
    assert json.loads((tmp_path / "calibration.json").read_text())["reason"] == result.reason and not (tmp_path / "recommended.json").exists()
