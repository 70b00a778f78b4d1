"""`llcv calibrate sweep | curve | chains` through the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from llcv import SamplerSettings, calibration, estimate_llc, sampling
from llcv.cli import app
from llcv.health import trace_evidence

runner = CliRunner()
DEVICE = ["--device", "cpu"]


@pytest.fixture(scope="module")
def checkpoint(trained_run):
    _, result = trained_run
    return result.checkpoints[-1]


@pytest.fixture(scope="module")
def template():
    """A real LLCResult whose fields the fake estimate replaces."""
    data = TensorDataset(torch.randn(16, 2), torch.randn(16, 1))
    return estimate_llc(nn.Linear(2, 1), data, SamplerSettings(num_chains=1, num_draws=4), loss="mse", device="cpu")


class FakeEstimate:
    """Stands in for estimate_llc: records the settings, returns a steady LLC of 5 (no sampling).

    Epsilons at or above ``diverge_from`` diverge; MALA acceptance is ``mala``.
    """

    def __init__(self, template, *, mala: float = 0.95, diverge_from: float = 1.0, interrupt_at: int | None = None):
        self.template, self.mala, self.diverge_from, self.interrupt_at = template, mala, diverge_from, interrupt_at
        self.calls: list[SamplerSettings] = []

    def __call__(self, model, data, settings, loss="cross_entropy", device="auto", reporter=None):
        if self.interrupt_at is not None and len(self.calls) + 1 == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append(settings)
        chains, draws = settings.num_chains, settings.num_draws
        diverged = settings.epsilon >= self.diverge_from
        trace = 5.0 + 0.01 * np.random.default_rng(len(self.calls)).standard_normal((chains, draws))
        per_chain = [None if diverged else float(value) for value in trace.mean(axis=1)]
        nbeta = 10.0 if isinstance(settings.nbeta, str) else settings.nbeta  # a rule: 10 stands for what it resolves to
        burnin = sampling.resolve_burnin(settings)
        return self.template.model_copy(
            update={
                "llc_mean": None if diverged else float(trace.mean()),
                "llc_std": float(trace.mean(axis=1).std(ddof=1)) if chains > 1 and not diverged else None,
                "llc_per_chain": per_chain,
                "llc_trace": trace.tolist(),
                "loss_trace": (trace / nbeta).tolist(),
                "burnin_loss_trace": [[0.0] * burnin.steps for _ in range(chains)],
                "burnin_steps": burnin.steps,
                "burnin_rule": burnin.rule,
                "init_loss": 0.0,
                "nbeta": nbeta,
                "nbeta_rule": sampling.nbeta_rule(settings.nbeta),
                "mala_acceptance": None if diverged else self.mala,
                "mala_acceptance_per_chain": [None if diverged else self.mala] * chains,
                "diagnostics": self.template.diagnostics.model_copy(
                    update={
                        "r_hat": 1.0 if chains > 1 else None, "ess": float(chains * draws), "diverged_chains": chains if diverged else 0,
                        **trace_evidence(trace, np.full(chains, not diverged)),
                    }
                ),
                "settings": settings.model_dump(mode="json"),
            }
        )


@pytest.fixture
def fake(template, monkeypatch):
    def install(**options) -> FakeEstimate:
        estimate = FakeEstimate(template, **options)
        monkeypatch.setattr(sampling, "estimate_llc", estimate)
        return estimate

    return install


def test_sweep_end_to_end_and_the_recommendation_feeds_estimate(checkpoint, tmp_path):
    config = tmp_path / "experiment.toml"
    # Short chains on a minibatch: loosened thresholds let a healthy pair qualify.
    config.write_text(
        "[sampler]\nbatch_size = 64\nnum_samples = 128\n\n"
        "[calibrate]\ntarget_acceptance = 0.2\nmax_negative_fraction = 0.5\nmax_drift_z = 100.0\nmax_r_hat = 3.0\n"
    )
    outcome = runner.invoke(
        app,
        ["calibrate", "sweep", "--checkpoint", str(checkpoint), "--config", str(config), "--epsilons", "1e-5:1e-4:2",
         "--gammas", "10000", "--num-chains", "2", "--num-draws", "10", "--results-dir", str(tmp_path / "cal"), *DEVICE],
    )
    assert outcome.exit_code == 0, outcome.output
    out = tmp_path / "cal" / checkpoint.stem
    assert sorted(path.name for path in out.iterdir()) == [
        "recommended.json", "sweep.csv", "sweep.json", "sweep_heatmap.png", "sweep_traces.png"
    ]
    assert "★" in outcome.stdout and "epsilon" in outcome.stdout
    sweep = json.loads((out / "sweep.json").read_text())
    assert [row["epsilon"] for row in sweep["rows"]] == [1e-5, 1e-4] and sweep["complete"] is True
    recommended = json.loads((out / "recommended.json").read_text())
    assert set(recommended) == {"epsilon", "gamma", "nbeta", "sampler", "num_burnin_steps"} and recommended == sweep["recommended"]
    # no --num-burnin-steps: each row burned in until its chains relaxed, and the pick keeps its own
    assert recommended["num_burnin_steps"] == calibration.row_burnin_steps(recommended["epsilon"], 10000.0, 10)
    assert "burn-in 2/(epsilon*gamma) where at most 40" in " ".join(outcome.stdout.split())

    estimate = runner.invoke(
        app, ["estimate", "--checkpoint", str(checkpoint), "--from-calibration", str(out / "recommended.json"),
              "--num-chains", "1", "--num-draws", "4", "--batch-size", "32", "--json", *DEVICE],
    )
    assert estimate.exit_code == 0, estimate.output
    settings = json.loads(estimate.stdout)["settings"]
    assert {key: settings[key] for key in recommended} == recommended


def test_sweep_grid_flags_and_default_nbeta(checkpoint, tmp_path, fake):
    estimate = fake()
    outcome = runner.invoke(
        app,
        ["calibrate", "sweep", "--checkpoint", str(checkpoint), "--epsilons", "1e-3:1e-1:3", "--gammas", "1000,10000",
         "--nbetas", "2,20", "--num-chains", "3", "--num-draws", "8", "--num-burnin-steps", "2",
         "--results-dir", str(tmp_path), "--format", "svg", *DEVICE],
    )
    assert outcome.exit_code == 0, outcome.output
    assert len(estimate.calls) == 12
    assert sorted({(s.epsilon, s.gamma, s.nbeta) for s in estimate.calls}) == sorted(
        (e, g, b) for e in (1e-3, 1e-2, 1e-1) for g in (1000.0, 10000.0) for b in (2.0, 20.0)
    )
    assert {(s.num_chains, s.num_draws, s.num_burnin_steps, s.mala) for s in estimate.calls} == {(3, 8, 2, True)}
    assert (tmp_path / checkpoint.stem / "sweep_heatmap.svg").exists()
    recommended = json.loads((tmp_path / checkpoint.stem / "recommended.json").read_text())
    # 2 burn-in steps relax every row (2 / (epsilon * gamma) <= 2); the flat fake LLC is a plateau
    assert recommended["epsilon"] == 1e-1 and recommended["sampler"] == "sgld" and recommended["num_burnin_steps"] == 2


def test_without_a_burn_in_flag_each_row_burns_in_for_its_own_relaxation(checkpoint, tmp_path, fake):
    estimate = fake()
    outcome = runner.invoke(
        app,
        ["calibrate", "sweep", "--checkpoint", str(checkpoint), "--epsilons", "1e-6,1e-3", "--gammas", "0,10,1000",
         "--num-draws", "8", "--results-dir", str(tmp_path), *DEVICE],
    )
    assert outcome.exit_code == 0, outcome.output
    burnin = {(s.epsilon, s.gamma): s.num_burnin_steps for s in estimate.calls}
    # 2 / (epsilon * gamma) steps where that is at most 4 x 8 draws, else none: those rows cannot
    # qualify (at gamma 0 nothing pulls the chains back)
    assert burnin == {(1e-6, 0.0): 0, (1e-3, 0.0): 0, (1e-6, 10.0): 0, (1e-3, 10.0): 0, (1e-6, 1000.0): 0, (1e-3, 1000.0): 2}
    rows = json.loads((tmp_path / checkpoint.stem / "sweep.json").read_text())["rows"]
    assert [row["num_burnin_steps"] for row in rows] == [0, 0, 0, 0, 0, 2]
    assert [row["qualifies"] for row in rows] == [False] * 5 + [True]


def test_sweep_with_nothing_qualifying_exits_1_and_leaves_no_recommendation(checkpoint, tmp_path, fake):
    fake(mala=0.5)
    out = tmp_path / checkpoint.stem
    out.mkdir()
    (out / "recommended.json").write_text("{}")  # from an earlier sweep
    outcome = runner.invoke(
        app,
        ["calibrate", "sweep", "--checkpoint", str(checkpoint), "--epsilons", "1e-5,1e-4,10", "--gammas", "100000",
         "--num-draws", "8", "--results-dir", str(tmp_path), *DEVICE],
    )
    assert outcome.exit_code == 1, outcome.output
    message = " ".join(outcome.output.split())
    assert "'mala_acceptance < 0.9' failed most (2 of 3 combinations)" in message
    assert "smaller epsilons" in message and "no recommended.json written" in message
    assert not (out / "recommended.json").exists()
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["recommended"] is None and [row["reason"] for row in sweep["rows"]][-1] == "diverged"
    assert [row["failed_check"] for row in sweep["rows"]] == ["mala_acceptance", "mala_acceptance", "diverged"]
    assert outcome.output.count("MALA < 0.9") == 2  # the table's verdicts, abbreviated
    assert (out / "sweep_heatmap.png").exists()
    header, *lines = (out / "sweep.csv").read_text().splitlines()
    assert header.endswith(",qualifies,reason,failed_check") and lines[-1].endswith(",False,diverged,diverged")


@pytest.mark.parametrize(
    ("flag", "value"), [("--epsilons", "1e-6:1e-2"), ("--gammas", "a,b"), ("--nbetas", "0"), ("--epsilons", "-1e-3")]
)
def test_bad_grid_exits_2_naming_the_flag(checkpoint, tmp_path, flag, value, fake):
    estimate = fake()
    outcome = runner.invoke(app, ["calibrate", "sweep", "--checkpoint", str(checkpoint), flag, value, "--results-dir", str(tmp_path)])
    assert outcome.exit_code == 2
    assert f"{flag}:" in " ".join(outcome.output.split()) and "Traceback" not in outcome.output
    assert estimate.calls == []


def test_interrupted_sweep_exits_130_and_a_rerun_finishes_the_rest(checkpoint, tmp_path, fake):
    command = ["calibrate", "sweep", "--checkpoint", str(checkpoint), "--epsilons", "1e-6:1e-3:4", "--gammas", "1000000",
               "--num-draws", "8", "--results-dir", str(tmp_path), *DEVICE]
    first = fake(interrupt_at=3)
    outcome = runner.invoke(app, command)
    assert outcome.exit_code == 130, outcome.output
    assert len(json.loads((tmp_path / checkpoint.stem / "sweep.json").read_text())["rows"]) == 2
    second = fake()
    outcome = runner.invoke(app, command)
    assert outcome.exit_code == 0, outcome.output
    assert [s.epsilon for s in second.calls] == [1e-4, 1e-3]
    assert [s.epsilon for s in first.calls] == [1e-6, 1e-5]


def _calibration_files(tmp_path):
    config = tmp_path / "experiment.toml"
    config.write_text(
        "[sampler]\nepsilon = 1.0\ngamma = 2.0\nnbeta = 3.0\nsampler = \"sgld\"\nnum_draws = 9\nbatch_size = 17\nseed = 5\n"
    )
    recommended = tmp_path / "recommended.json"
    recommended.write_text(json.dumps({"epsilon": 2e-4, "gamma": 50.0, "nbeta": 10.0, "sampler": "rmsprop_sgld"}))
    return config, recommended


@pytest.mark.parametrize("command", ["curve", "chains"])
def test_from_calibration_sets_only_its_fields_and_flags_override_it(checkpoint, tmp_path, fake, command):
    estimate = fake()
    config, recommended = _calibration_files(tmp_path)
    outcome = runner.invoke(
        app,
        ["calibrate", command, "--checkpoint", str(checkpoint), "--config", str(config), "--from-calibration", str(recommended),
         "--gamma", "7", "--results-dir", str(tmp_path / "cal"), *DEVICE],
    )
    assert outcome.exit_code == 0, outcome.output
    (settings,) = estimate.calls
    # The four calibrated fields, except gamma where the flag wins.
    assert (settings.epsilon, settings.gamma, settings.nbeta, settings.sampler) == (2e-4, 7.0, 10.0, "rmsprop_sgld")
    # Everything else still comes from the config file.
    assert (settings.num_draws, settings.batch_size, settings.seed) == (9, 17, 5)
    assert settings.num_chains == (1 if command == "curve" else 5)


def test_chains_count_follows_config_then_flag(checkpoint, tmp_path, fake):
    estimate = fake()
    config = tmp_path / "experiment.toml"
    config.write_text("[sampler]\nnum_chains = 3\nnum_draws = 6\n")
    base = ["calibrate", "chains", "--checkpoint", str(checkpoint), "--results-dir", str(tmp_path), *DEVICE]
    assert runner.invoke(app, [*base, "--config", str(config)]).exit_code == 0
    assert runner.invoke(app, [*base, "--config", str(config), "--num-chains", "2"]).exit_code == 0
    assert [s.num_chains for s in estimate.calls] == [3, 2]


def test_curve_prints_a_verdict_and_writes_json_and_figure(checkpoint, tmp_path, fake):
    fake()
    outcome = runner.invoke(
        app,
        ["calibrate", "curve", "--checkpoint", str(checkpoint), "--epsilon", "1e-4", "--gamma", "100", "--num-draws", "40",
         "--num-burnin-steps", "5", "--results-dir", str(tmp_path), "--format", "pdf", *DEVICE],
    )
    assert outcome.exit_code == 0, outcome.output
    assert "stable" in outcome.stdout and "robust standard deviations" in " ".join(outcome.stdout.split())
    out = tmp_path / checkpoint.stem
    curve = json.loads((out / "curve.json").read_text())
    assert curve["verdict"] == "stable" and len(curve["llc"]) == 40 and len(curve["burnin_llc"]) == 5
    assert curve["settings"]["epsilon"] == 1e-4 and curve["checkpoint"] == str(checkpoint)
    assert (out / "curve.pdf").exists()


def test_curve_of_a_diverging_setting_exits_1(checkpoint, tmp_path, fake):
    fake()
    outcome = runner.invoke(
        app, ["calibrate", "curve", "--checkpoint", str(checkpoint), "--epsilon", "10", "--num-draws", "8", "--results-dir", str(tmp_path), *DEVICE]
    )
    assert outcome.exit_code == 1 and "diverged" in outcome.stdout


def test_chains_prints_the_summary_and_writes_json_and_figure(checkpoint, tmp_path, fake):
    fake()
    outcome = runner.invoke(
        app,
        ["calibrate", "chains", "--checkpoint", str(checkpoint), "--epsilon", "1e-4", "--gamma", "100", "--num-draws", "12",
         "--results-dir", str(tmp_path), *DEVICE],
    )
    assert outcome.exit_code == 0, outcome.output
    for label in ("LLC", "R-hat", "ESS", "MALA acceptance"):
        assert label in outcome.stdout
    chains = json.loads((tmp_path / checkpoint.stem / "chains.json").read_text())
    assert len(chains["running_llc"]) == 5 and len(chains["running_mean"]) == 12
    assert chains["result"]["settings"]["num_chains"] == 5
    assert (tmp_path / checkpoint.stem / "chains.png").exists()


@pytest.mark.parametrize("command", ["sweep", "curve", "chains"])
def test_help_ends_with_an_example(command):
    outcome = runner.invoke(app, ["calibrate", command, "--help"])
    assert outcome.exit_code == 0
    assert "Example: llcv calibrate " + command in " ".join(outcome.stdout.split())
