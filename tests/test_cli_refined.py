"""Refined LLCs from the command line: --per-layer, --per-class, --params and --classes reach the library; plot draws them."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from _helpers import FAST_FLAGS, copy_checkpoints, fast_settings, unwrapped
from llcv.cli import app
from llcv.estimation.run import EstimateSummary
from llcv.results import load_results, settings_hash
from llcv.settings import SamplerSettings

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def checkpoints(trained_run, tmp_path) -> Path:
    _, result = trained_run
    return copy_checkpoints(result.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 5, 16])


@pytest.fixture
def received(monkeypatch, tmp_path) -> dict:
    """Stands in for estimate_all and keeps what it was called with."""
    calls: dict = {}

    def fake_estimate_all(checkpoints_dir, sampler, options, **kwargs):
        calls.update(settings=sampler, per_layer=options.per_layer, per_class=options.per_class, **kwargs)
        return EstimateSummary(settings_hash="abc", folder=Path(options.results_dir) / "abc", selected=["a"], computed=["a"])

    monkeypatch.setattr("llcv.estimation.estimate_all", fake_estimate_all)
    return calls


def test_per_layer_and_per_class_reach_estimate_all_without_moving_the_hash(received, tmp_path):
    result = _invoke("estimate-all", "--checkpoints-dir", str(tmp_path), "--per-layer", "--per-class", "--classes", "0, 3", *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert received["per_layer"] is True and received["per_class"] is True
    settings = received["settings"]
    assert settings.classes == [0, 3] and settings.params is None  # with --per-class, estimate_all refines these classes
    # ... and the whole model keeps all the data: the hash is that of the settings without classes
    assert f"settings {settings_hash(settings.model_copy(update={'classes': None}))}" in unwrapped(result.output)

    result = _invoke("estimate-all", "--checkpoints-dir", str(tmp_path), "--per-class", *FAST_FLAGS)
    assert result.exit_code == 0 and received["per_class"] is True and received["per_layer"] is False


def test_params_and_classes_restrict_every_estimate_of_a_plain_run(received, tmp_path):
    result = _invoke("estimate-all", "--checkpoints-dir", str(tmp_path), "--params", "layer3.*", "--params", "fc.*", "--classes", "7", *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert received["settings"].params == ["layer3.*", "fc.*"] and received["settings"].classes == [7]
    assert received["per_layer"] is False and received["per_class"] is False
    assert settings_hash(received["settings"]) != settings_hash(fast_settings())  # FAST_FLAGS without them


def test_per_layer_with_params_exits_2_before_any_work(checkpoints, tmp_path):
    result = _invoke("estimate-all", "--checkpoints-dir", str(checkpoints), "--results-dir", str(tmp_path / "out"), "--per-layer", "--params", "fc1.*", *FAST_FLAGS)
    assert result.exit_code == 2 and "params" in unwrapped(result.output)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["sweep", "curve", "chains"])
def test_calibrate_commands_take_params_and_classes(checkpoints, monkeypatch, command):
    from llcv import calibration

    seen = []

    def fake(model, data, *args, **kwargs):
        seen.append(kwargs.get("base") or args[0])
        raise typer.Exit(0)

    monkeypatch.setattr(calibration, f"calibrate_{command}", fake)
    flags = ["--params", "conv2.*", "--params", "fc2.*", "--classes", "1,2", "--device", "cpu"]
    result = _invoke("calibrate", command, "--checkpoint", str(checkpoints / "step_00000016.pt"), *flags)
    assert result.exit_code == 0, result.output
    assert seen[0].params == ["conv2.*", "fc2.*"] and seen[0].classes == [1, 2]


def test_per_class_then_plot_draws_the_class_curves(checkpoints, tmp_path):
    results = tmp_path / "results"
    result = _invoke("estimate-all", "--checkpoints-dir", str(checkpoints), "--results-dir", str(results), "--per-class", "--classes", "1,2", *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert "9 of 9 estimate(s) over 3 scopes (model, class=1, class=2) done" in unwrapped(result.output)
    assert sorted({record.scope for record in load_results(results)}) == ["class=1", "class=2", "model"]

    out = tmp_path / "classes.png"
    result = _invoke("plot", "--results-dir", str(results), "--out", str(out), "--per-parameter")
    assert result.exit_code == 0, result.output
    assert "refined scopes class=1, class=2" in unwrapped(result.output) and out.stat().st_size > 0


def test_classes_name_the_refined_classes_only_with_per_class(tmp_path):
    """llcv.estimation.scopes.class_refinement, which estimate_all and results_folder run the settings through."""
    from llcv.estimation.run import results_folder
    from llcv.estimation.scopes import class_refinement
    from llcv.settings import load_settings

    restricted = SamplerSettings(classes=[0, 3])
    assert class_refinement(restricted, False) == (restricted, False)
    assert class_refinement(restricted, True) == (SamplerSettings(), [0, 3])
    assert class_refinement(SamplerSettings(), True) == (SamplerSettings(), True)

    overrides = {"sampler": {"classes": [0, 3]}, "estimate": {"per_class": True, "results_dir": tmp_path}}
    bundle = load_settings(("sampler", "estimate"), overrides=overrides)
    assert results_folder(bundle.sampler, bundle.estimate) == tmp_path / settings_hash(SamplerSettings())
    assert results_folder(bundle.sampler) == Path("results/llc_estimations") / settings_hash(bundle.sampler)  # no per_class
