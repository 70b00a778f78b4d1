"""Tests for `llcv plot` and llcv.figures.plotting.plot_llc: full, partial and overlaid runs, transitions, formats."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from _helpers import copy_checkpoints, fake_record, fast_settings, unwrapped, write_fake_run
from llcv.cli import app
from llcv.estimation.run import estimate_all
from llcv.figures.plotting import UNHEALTHY_LABEL, llc_figure, plot_llc
from llcv.results import find_transitions, load_results
from llcv.settings import EstimateSettings

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]
LLC = [1.0, 1.1, 1.3, None, 4.0, 4.6, 4.3, 3.2, 3.0]  # step 4 failed


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def fake_run(root: Path, *, estimated: int | None = None, scale: float = 1.0, digest: str = "abcdef012345") -> Path:
    """Checkpoint files for STEPS and records for the first ``estimated`` of them; returns the results dir."""

    def records(path: Path, index: int, step: int, llc: float) -> list[dict]:
        return [fake_record(path, step, llc * scale, settings_hash=digest, diverged_chains=1 if step == 32 else 0)]

    return write_fake_run(root, STEPS, LLC, records, estimated=estimated, digest=digest)


def test_plot_from_estimate_all_results(trained_run, tmp_path):
    _, result = trained_run
    checkpoints = copy_checkpoints(result.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 2, 5, 16])
    estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=tmp_path / "results", device="cpu"))
    out = tmp_path / "figures" / "llc.png"
    outcome = _invoke("plot", "--results-dir", str(tmp_path / "results"), "--out", str(out), "--log-x")
    assert outcome.exit_code == 0, outcome.output
    assert out.read_bytes().startswith(PNG_SIGNATURE) and out.stat().st_size > 10_000
    text = unwrapped(outcome.output)
    assert "4 result(s) with settings" in text and "the most recent" in text and "missing" not in text


def test_plot_of_partial_results_says_how_many_are_missing(tmp_path):
    results = fake_run(tmp_path, estimated=5)
    out = tmp_path / "partial.png"
    outcome = _invoke("plot", "--results-dir", str(results), "--out", str(out))
    assert outcome.exit_code == 0, outcome.output
    assert "partial results, 4 checkpoint(s) still missing" in unwrapped(outcome.output)
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_two_runs_overlay_with_labels_in_the_format_of_the_suffix(tmp_path):
    first = fake_run(tmp_path / "seed0")
    second = fake_run(tmp_path / "seed1", scale=1.4)
    out = tmp_path / "seeds.svg"
    outcome = _invoke(
        "plot", "--results-dir", str(first), "--label", "seed 0", "--results-dir", str(second), "--label", "seed 1",
        "--out", str(out), "--x", "epoch",
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "seed 0" in svg and "seed 1" in svg
    pdf = tmp_path / "seeds.pdf"
    assert _invoke("plot", "--results-dir", str(first), "--results-dir", str(second), "--out", str(pdf)).exit_code == 0
    assert pdf.read_bytes().startswith(b"%PDF")


def test_mark_transitions_lists_them(tmp_path):
    results = fake_run(tmp_path)
    outcome = _invoke("plot", "--results-dir", str(results), "--out", str(tmp_path / "t.png"), "--mark-transitions", "--log-x")
    assert outcome.exit_code == 0, outcome.output
    text = unwrapped(outcome.output)
    assert "candidate transitions" in text and "step 16 (epoch 1.6, step_00000016.pt): LLC 4.6" in text and "LLC peak" in text


def test_settings_chooses_a_hash_and_bad_requests_exit_2(tmp_path):
    results = fake_run(tmp_path, digest="aaaaaaaaaaaa")
    fake_run(tmp_path, digest="bbbbbbbbbbbb", estimated=3)
    out = tmp_path / "a.png"
    outcome = _invoke("plot", "--results-dir", str(results), "--out", str(out), "--settings", "aaaa")
    assert outcome.exit_code == 0 and "settings aaaaaaaaaaaa (as asked)" in unwrapped(outcome.output)
    default = _invoke("plot", "--results-dir", str(results), "--out", str(out))
    assert "settings bbbbbbbbbbbb (the most recent; --settings picks one of aaaaaaaaaaaa)" in unwrapped(default.output)
    for args, message in [
        (["--settings", "cccc"], "has no settings 'cccc'"),
        (["--out", str(tmp_path / "a.jpg")], ".png, .pdf, .svg"),
        (["--label", "a", "--label", "b"], "2 --label for 1 --results-dir"),
    ]:
        bad = _invoke("plot", "--results-dir", str(results), *(["--out", str(out)] if "--out" not in args else []), *args)
        assert bad.exit_code == 2 and message in unwrapped(bad.output), bad.output
    missing = _invoke("plot", "--results-dir", str(tmp_path / "nothing"), "--out", str(out))
    assert missing.exit_code == 2 and "does not exist" in unwrapped(missing.output)


def test_the_title_says_how_the_temperature_was_chosen(tmp_path):
    records = load_results(fake_run(tmp_path))
    for rule, shown in (("data", "nβ=11.5 (n/ln n),"), ("batch", "nβ=11.5 (batch/ln batch),"), ("set", "nβ=11.5,")):
        ruled = [record.model_copy(update={"result": record.result.model_copy(update={"nbeta_rule": rule})}) if record.result else record
                 for record in records]  # fmt: skip
        assert shown in llc_figure({"run": ruled})._suptitle.get_text()


def test_the_figure_marks_failures_divergence_and_transitions(tmp_path):
    records = load_results(fake_run(tmp_path))
    runs = {"run": records}
    figure = llc_figure(runs, log_x=True, transitions={"run": find_transitions(records)}, missing={"run": 2})
    top = figure.axes[0]
    legend = [text.get_text() for text in top.get_legend().get_texts()]
    # step 32's record predates health verdicts, but one of its chains diverged: hollow, like any unhealthy estimate
    assert legend == ["run", "failed (no estimate)", UNHEALTHY_LABEL, "candidate transition"]
    assert "partial results: 2 checkpoint(s) not estimated yet" in figure._suptitle.get_text()
    assert "settings abcdef012345" in figure._suptitle.get_text()
    assert "nβ=11.5," in figure._suptitle.get_text()  # records before llcv 0.10 do not say how it was chosen
    assert figure.axes[1].get_xscale() == "symlog"
    # the API accepts one run's records or several runs with labels
    assert plot_llc(records, tmp_path / "one.png").is_file()
    assert plot_llc([records, records], tmp_path / "two.png", labels=["a", "b"]).is_file()
    with pytest.raises(Exception, match="labels"):
        plot_llc([records, records], tmp_path / "bad.png", labels=["a"])


def test_plot_reads_the_results_dir_of_the_config_unless_the_flag_names_one(tmp_path):
    """Precedence (docs/conventions.md): --results-dir, then [estimate] results_dir of --config, then the default."""
    results = fake_run(tmp_path / "configured")
    config = tmp_path / "experiment.toml"
    config.write_text(f"[estimate]\nresults_dir = {str(results)!r}\n[plot]\nlog_x = true\n")
    out = tmp_path / "configured.png"
    outcome = _invoke("plot", "--config", str(config), "--out", str(out))
    assert outcome.exit_code == 0, outcome.output
    assert "9 result(s) with settings abcdef012345" in unwrapped(outcome.output) and out.is_file()

    flagged = fake_run(tmp_path / "flagged", estimated=3, digest="bbbbbbbbbbbb")
    outcome = _invoke("plot", "--config", str(config), "--results-dir", str(flagged), "--out", str(out))
    assert outcome.exit_code == 0, outcome.output
    assert "3 result(s) with settings bbbbbbbbbbbb" in unwrapped(outcome.output)

    missing = tmp_path / "missing.toml"
    missing.write_text(f"[estimate]\nresults_dir = {str(tmp_path / 'nothing')!r}\n")
    outcome = _invoke("plot", "--config", str(missing), "--out", str(out))
    assert outcome.exit_code == 2 and "does not exist" in unwrapped(outcome.output)


# `calibrate auto`'s figures (llcv.calibration.auto_files draws them with these).


def _trial(epsilon: float, gamma: float, llc: float | None, *, status: str = "ok", batch_size: int = 64) -> dict:
    return {
        "epsilon": epsilon, "gamma": gamma, "batch_size": batch_size, "steps": 400, "burnin": None if llc is None else 40,
        "llc": llc, "se": None if llc is None else 0.1, "ess": 200.0, "r_hat": 1.01, "drift_z": 0.3, "status": status,
        "from_checkpoint": True, "chain_steps": 1600, "seconds": 2.0, "trace": [] if llc is None else [llc] * 100,
    }  # fmt: skip


def test_the_trials_figure_marks_gammas_the_doubled_batch_the_pick_and_unhealthy_trials():
    from matplotlib.colors import to_rgba

    from llcv.calibration.figures import plot_calibration_trials

    trials = [
        _trial(1e-3, 10.0, 5.0), _trial(5e-4, 10.0, 5.1), _trial(1e-3, 5.0, 5.3), _trial(1e-3, 2.5, -1.0, status="escaped"),
        _trial(2e-3, 10.0, None, status="diverged"), _trial(1e-3, 10.0, 5.2, batch_size=128),
    ]  # fmt: skip
    figure = plot_calibration_trials(trials, "calibrate auto of step_16.pt", pick=0)
    (axis,) = figure.axes
    assert axis.get_xscale() == "log" and axis.get_ylabel() == "LLC ± 2 standard errors"
    assert len(axis.containers) == 5  # an error bar per trial with an LLC; the diverged one is a cross at the foot
    labels = [text.get_text() for text in axis.get_legend().get_texts()]
    assert labels == ["gamma 2.5", "gamma 5", "gamma 10", "batch 128 (not 64)", "unhealthy: hollow, status beside it", "the pick"]
    marks = {container.lines[0].get_marker(): container.lines[0] for container in axis.containers}
    assert set(marks) == {"o", "s"}  # the doubled batch is a square
    hollow = [container.lines[0] for container in axis.containers if to_rgba(container.lines[0].get_markerfacecolor()) == to_rgba("white")]
    assert [line.get_ydata()[0] for line in hollow] == [-1.0]  # the escaped trial
    assert {text.get_text() for text in axis.texts} == {"escaped", "diverged"}
    assert "step_16.pt" in figure.get_suptitle()


def test_the_traces_figure_has_a_panel_per_trial_with_its_burn_in():
    from llcv.calibration.figures import plot_calibration_traces

    figure = plot_calibration_traces([_trial(1e-3, 10.0, 5.0), _trial(5e-4, 10.0, 5.1), _trial(2e-3, 10.0, None, status="diverged")], "t", pick=1)
    shown = [axis for axis in figure.axes if axis.get_visible()]
    assert len(shown) == 3 and shown[1].get_title().startswith("★ #2")
    assert len(shown[0].patches) == 1 and not shown[2].patches  # the burn-in shaded where one settled
    assert shown[0].lines[0].get_xdata()[-1] == pytest.approx(398.0)  # block means placed over the trial's 400 steps
    empty = plot_calibration_traces([], "t")
    assert [text.get_text() for axis in empty.axes for text in axis.texts] == ["no trial ran"]
