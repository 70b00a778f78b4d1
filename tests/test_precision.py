"""precision="auto": fp32 or bf16, and fp32's layout, by measurement on the run's own model, chosen once and recorded."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from _helpers import copy_checkpoints, fast_settings
from llcv import SamplerSettings, estimate_llc
from llcv.sampling import execution, precision
from llcv.estimation.run import estimate_all
from llcv.models import build_model
from llcv.sampling.precision import PrecisionChoice, choose_precision, native_bf16
from llcv.results import settings_hash
from llcv.settings import EstimateSettings

from tests.test_sampling import regression


class FakeClock:
    """Time that passes only when a fake pass runs, so timing tests do not depend on the machine's load."""

    def __init__(self, monkeypatch):
        self.now = 0.0
        monkeypatch.setattr(precision, "perf_counter", lambda: self.now)

    def passes(self, seconds: dict[str, float], calls: list[str]):
        def build(precision_name: str, channels_last: bool):
            name = precision.FP32_CHANNELS_LAST if channels_last and precision_name == "fp32" else precision_name

            def run() -> None:
                calls.append(name)
                self.now += seconds[name]

            return run

        return build


@pytest.mark.parametrize("asked", ["fp32", "bf16"])
def test_an_explicit_precision_is_kept_without_timing(asked, monkeypatch):
    calls: list[str] = []
    choice = choose_precision(asked, torch.device("cpu"), FakeClock(monkeypatch).passes({"fp32": 0.0, "bf16": 0.0}, calls))
    assert choice == PrecisionChoice(asked, "asked for")
    assert calls == []


def test_auto_without_native_bf16_is_fp32_without_timing(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    calls: list[str] = []
    choice = choose_precision("auto", torch.device("cpu"), FakeClock(monkeypatch).passes({"fp32": 0.0, "bf16": 0.0}, calls))
    assert choice.precision == "fp32" and choice.seconds_per_pass is None
    assert "no native bf16" in choice.reason
    assert calls == []


@pytest.mark.parametrize(
    "seconds, expected",
    [({"fp32": 0.012, "bf16": 0.006}, "bf16"), ({"fp32": 0.006, "bf16": 0.012}, "fp32"), ({"fp32": 0.010, "bf16": 0.0085}, "fp32")],
)
def test_auto_picks_bf16_only_when_it_is_clearly_faster(monkeypatch, seconds, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    calls: list[str] = []
    choice = choose_precision("auto", torch.device("cpu"), FakeClock(monkeypatch).passes(seconds, calls))
    assert choice.precision == expected
    assert set(calls) == {"fp32", "bf16"}
    assert choice.seconds_per_pass["fp32"] == pytest.approx(seconds["fp32"], rel=0.5)
    assert choice.seconds_per_pass["bf16"] == pytest.approx(seconds["bf16"], rel=0.5)
    assert f"{choice.seconds_per_pass['bf16'] / choice.seconds_per_pass['fp32']:.2f}x" in choice.reason


def test_tiny_passes_are_repeated_until_measurable_and_close_calls_get_more_rounds(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    clock, calls = FakeClock(monkeypatch), []
    choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 0.0, "bf16": 0.0}, calls))
    # one warm-up each, then every round repeats a pass that takes no time up to the cap
    assert calls.count("fp32") == 1 + precision.MAX_ROUNDS * precision.MAX_REPEATS
    calls.clear()
    choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 0.012, "bf16": 0.0095}, calls))
    assert calls.count("bf16") == 1 + precision.MAX_ROUNDS * 3  # near the 0.8x threshold: every round, 3 x 9.5 ms >= 20 ms
    calls.clear()
    choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 0.012, "bf16": 0.0125}, calls))
    assert calls.count("bf16") == 1 + 2  # bf16 no faster at all is clear after one round, however close the two are
    calls.clear()
    choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 0.05, "bf16": 0.025}, calls))
    assert calls == ["bf16", "fp32", "bf16", "fp32"]  # a clear difference: one warm-up and one round each
    calls.clear()
    choice = choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 4.0, "bf16": 1.5}, calls))
    # long and clear: one run each, after the process's warm-up run
    assert calls == ["bf16", "bf16", "fp32"] and choice.seconds_per_pass == pytest.approx({"fp32": 4.0, "bf16": 1.5})
    calls.clear()
    choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 1.0, "bf16": 0.9}, calls))
    assert calls == ["bf16", "bf16", "fp32", "bf16", "fp32"]  # long but near the threshold: one clean round after the first runs
    calls.clear()
    choice = choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 1.0, "bf16": 1.25}, calls))
    assert calls == ["bf16", "bf16", "fp32"] and choice.precision == "fp32"  # a Xeon without AMX: bf16 plainly slower, no rounds


CL = precision.FP32_CHANNELS_LAST


@pytest.mark.parametrize("channels_last_seconds, expected", [(0.7, True), (0.97, False), (1.2, False)])
def test_auto_times_fp32_in_both_layouts_where_the_layout_can_matter(monkeypatch, channels_last_seconds, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    calls: list[str] = []
    seconds = {"fp32": 1.0, CL: channels_last_seconds}
    choice = choose_precision("auto", torch.device("cpu"), FakeClock(monkeypatch).passes(seconds, calls), layouts=True)
    assert set(calls) == {"fp32", CL}  # no bf16 pass where there is no native bf16
    assert choice.precision == "fp32" and choice.channels_last is expected
    assert choice.seconds_per_pass == pytest.approx(seconds)
    assert f"fp32 channels-last took {channels_last_seconds:.2f}x the default layout's time" in choice.reason


@pytest.mark.parametrize(
    "seconds, expected",
    [
        ({"fp32": 1.0, CL: 0.7, "bf16": 0.6}, ("fp32", True)),  # bf16 0.6x the contiguous fp32, but 0.86x the channels-last one
        ({"fp32": 1.0, CL: 0.7, "bf16": 0.5}, ("bf16", True)),
        ({"fp32": 1.0, CL: 0.97, "bf16": 0.75}, ("bf16", True)),  # fp32 stays contiguous, and bf16 beats it
        ({"fp32": 1.0, CL: 0.97, "bf16": 0.9}, ("fp32", False)),
    ],
)
def test_bf16_must_beat_fp32_in_its_faster_layout(monkeypatch, seconds, expected):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    calls: list[str] = []
    choice = choose_precision("auto", torch.device("cpu"), FakeClock(monkeypatch).passes(seconds, calls), layouts=True)
    assert (choice.precision, choice.channels_last) == expected
    fp32 = seconds[CL] if seconds[CL] < precision.CHANNELS_LAST_MAX_TIME_RATIO * seconds["fp32"] else seconds["fp32"]
    assert f"bf16 took {seconds['bf16'] / fp32:.2f}x fp32's time" in choice.reason


def test_a_layout_near_its_threshold_gets_more_rounds_and_a_clear_one_none_at_all(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    clock, calls = FakeClock(monkeypatch), []
    choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 0.012, CL: 0.0105}, calls), layouts=True)
    assert calls.count(CL) == 1 + precision.MAX_ROUNDS * 2  # 0.875x, near 0.95x: every round, 2 x 10.5 ms >= 20 ms
    calls.clear()
    choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 5.5, CL: 3.8}, calls), layouts=True)
    assert calls == ["fp32", "fp32", CL]  # long passes, 0.69x: clear, one run each after the warm-up
    calls.clear()
    choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 5.5, CL: 4.6}, calls), layouts=True)
    assert calls == ["fp32", "fp32", CL, "fp32", CL]  # 0.84x: one clean round after the first runs


def test_rounds_time_again_only_the_passes_whose_times_could_change_the_choice(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    clock, calls = FakeClock(monkeypatch), []
    # a Xeon without AMX: bf16 plainly slower than fp32 in either layout, the layouts 0.84x apart
    choice = choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 5.5, CL: 4.6, "bf16": 7.0}, calls), layouts=True)
    assert calls == ["bf16", "bf16", "fp32", CL, "fp32", CL] and (choice.precision, choice.channels_last) == ("fp32", True)
    calls.clear()
    # a Xeon with AMX: bf16 plainly faster than fp32 in either layout, whose verdict no longer matters
    choice = choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 6.0, CL: 4.9, "bf16": 1.9}, calls), layouts=True)
    assert calls == ["bf16", "bf16", "fp32", CL] and choice.precision == "bf16"
    calls.clear()
    # bf16 near its threshold against channels-last fp32, the layouts clearly apart: those two only
    choose_precision("auto", torch.device("cpu"), clock.passes({"fp32": 6.0, CL: 4.0, "bf16": 3.3}, calls), layouts=True)
    assert calls == ["bf16", "bf16", "fp32", CL, "bf16", CL]


def test_the_trials_first_run_warms_the_process_up_and_is_not_the_measurement(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    clock, calls = FakeClock(monkeypatch), []
    build = clock.passes({"fp32": 5.0, CL: 3.0}, calls)

    def slow_first_run(precision_name: str, channels_last: bool):
        run = build(precision_name, channels_last)

        def first_run_slower() -> None:
            if not calls:
                clock.now += 2.0  # threads starting, kernels chosen
            run()

        return first_run_slower

    choice = choose_precision("auto", torch.device("cpu"), slow_first_run, layouts=True)
    assert choice.seconds_per_pass == {"fp32": 5.0, CL: 3.0}


@pytest.mark.parametrize("asked, channels_last", [("fp32", False), ("bf16", True)])
def test_an_explicit_precision_has_its_fixed_layout(monkeypatch, asked, channels_last):
    calls: list[str] = []
    choice = choose_precision(asked, torch.device("cpu"), FakeClock(monkeypatch).passes({}, calls), layouts=True)
    assert choice == PrecisionChoice(asked, "asked for", channels_last=channels_last) and calls == []


@pytest.mark.parametrize(
    "recorded, channels_last",
    [
        ({"precision": "fp32", "reason": "auto: x", "channels_last": True}, True),
        ({"precision": "fp32", "reason": "auto: x"}, False),  # before llcv 0.8: the precision's layout
        ({"precision": "bf16", "reason": "auto: x"}, True),
    ],
)
def test_a_kept_choice_keeps_its_layout(recorded, channels_last):
    kept = PrecisionChoice.kept_from(recorded)
    assert kept.channels_last is channels_last and kept.reused and precision.KEPT in kept.reason


def test_a_kept_choice_is_channels_last_only_where_the_chains_can_run_so():
    """A bf16 run from before llcv 0.8 implies channels-last; batched chains (or a model without
    convolutions) record what they ran in, the default layout."""
    model, data = regression()
    settings = SamplerSettings(num_chains=2, num_draws=3, epsilon=1e-3, gamma=10.0, batch_size=32, precision="auto")
    kept = PrecisionChoice.kept_from({"precision": "bf16", "reason": "auto: x"})
    for _ in range(2):  # deciding the execution, then from the process's cache
        result = estimate_llc(model, data, settings, loss="mse", device="cpu", precision=kept)
        assert result.precision == "bf16" and result.precision_choice["channels_last"] is False


def one_chain_cnn():
    model, data = small_cnn()
    return model, data, SamplerSettings(num_chains=1, num_draws=6, epsilon=1e-4, gamma=100.0, batch_size=32)


def test_a_layout_auto_measured_faster_is_the_one_the_chains_run_in(monkeypatch):
    """A single chain runs one at a time, so auto times the layouts; the chains and the initial loss
    follow the verdict, exactly as they follow a run's kept choice. The initial loss changes in its
    last bits only; the chain changes (its noise is drawn in the weights' memory order: another
    draw from the same sampler)."""
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    monkeypatch.setattr(precision, "time_passes", lambda passes, device, clear: {"fp32": 2.0, CL: 1.0})
    model, data, settings = one_chain_cnn()
    auto = estimate_llc(model, data, settings, device="cpu")
    assert auto.precision == "fp32" and auto.precision_choice["channels_last"] is True
    kept = {"precision": "fp32", "reason": "auto: x"}
    channels_last = estimate_llc(model, data, settings, device="cpu", precision=PrecisionChoice.kept_from({**kept, "channels_last": True}))
    contiguous = estimate_llc(model, data, settings, device="cpu", precision=PrecisionChoice.kept_from(kept))
    assert auto.llc_trace == channels_last.llc_trace and auto.init_loss == channels_last.init_loss
    assert auto.init_loss == pytest.approx(contiguous.init_loss, rel=1e-5) and auto.llc_trace != contiguous.llc_trace


def test_the_initial_loss_runs_in_the_chains_layout():
    from llcv.sampling import resolve_loss
    from llcv.sampling.estimate import _initial_loss
    from llcv.sampling import SamplingData

    model, data, settings = one_chain_cnn()
    prepared = SamplingData(data, settings, torch.device("cpu"))
    default = _initial_loss(model, prepared, resolve_loss("cross_entropy"), settings, "fp32")
    # with one input channel both layouts are the same strides; the others tell them apart
    convolutions = [parameter for parameter in model.parameters() if parameter.dim() == 4 and parameter.shape[1] > 1]
    assert convolutions
    assert not any(weight.is_contiguous(memory_format=torch.channels_last) for weight in convolutions)
    channels_last = _initial_loss(model, prepared, resolve_loss("cross_entropy"), settings, "fp32", channels_last=True)
    assert all(weight.is_contiguous(memory_format=torch.channels_last) for weight in convolutions)
    assert channels_last.value == pytest.approx(default.value, rel=1e-5)
    assert channels_last.batch_spread == pytest.approx(default.batch_spread, abs=1e-6 * default.value)


def test_channels_last_chains_estimate_what_the_default_layout_does_within_sampling_error(trained_run, monkeypatch):
    """The layout changes the order of summation and of the noise, not what is estimated."""
    from llcv.targets import Target

    monkeypatch.setattr(precision, "time_passes", lambda passes, device, undecided: {"fp32": 2.0, CL: 1.0, "bf16": 4.0})
    _, run = trained_run
    target = Target(run.checkpoints[-1]).load()
    settings = SamplerSettings(
        num_chains=4, num_draws=80, num_burnin_steps=20, batch_size=64, epsilon=1e-3, gamma=100.0, chain_mode="sequential"
    )
    channels_last = estimate_llc(target.model, target.dataset, settings, device="cpu")
    default = estimate_llc(target.model, target.dataset, settings.model_copy(update={"precision": "fp32"}), device="cpu")
    assert channels_last.precision_choice["channels_last"] and not default.precision_choice.get("channels_last")
    combined_error = math.sqrt(channels_last.llc_std**2 / 4 + default.llc_std**2 / 4)
    assert channels_last.init_loss == pytest.approx(default.init_loss, rel=1e-5)
    assert abs(channels_last.llc_mean - default.llc_mean) < 4 * combined_error + 0.1 * abs(default.llc_mean)


def test_native_bf16_answers_for_every_device_kind():
    assert isinstance(native_bf16(torch.device("cpu")), bool)
    assert native_bf16(torch.device("mps")) is False


def small_cnn():
    torch.manual_seed(0)
    model = build_model("smallcnn", 10, 1, "cifar")
    images = torch.randn(64, 1, 16, 16)
    return model, torch.utils.data.TensorDataset(images, torch.randint(0, 10, (64,)))


def test_auto_that_measures_bf16_faster_samples_exactly_as_bf16_does(monkeypatch):
    """The BatchNorm statistics, the initial loss and every chain step follow the choice."""
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    monkeypatch.setattr(precision, "time_passes", lambda passes, device, clear: {"fp32": 2.0, "bf16": 1.0})
    model, data = small_cnn()
    settings = SamplerSettings(num_chains=2, num_draws=6, epsilon=1e-4, gamma=100.0, batch_size=32)
    auto = estimate_llc(model, data, settings, device="cpu")
    assert auto.precision == "bf16"
    assert auto.precision_choice["seconds_per_pass"] == {"fp32": 2.0, "bf16": 1.0}
    assert auto.settings["precision"] == "auto"
    bf16 = estimate_llc(model, data, settings.model_copy(update={"precision": "bf16"}), device="cpu")
    fp32 = estimate_llc(model, data, settings.model_copy(update={"precision": "fp32"}), device="cpu")
    assert bf16.precision_choice["reason"] == "asked for"
    assert auto.init_loss == bf16.init_loss and auto.llc_trace == bf16.llc_trace
    assert auto.init_loss != fp32.init_loss


def test_auto_decides_once_per_architecture_and_keeps_the_settings_hash(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    timings = []

    def timed(passes, device, clear):
        timings.append(sorted(passes))
        return {"fp32": 1.0, "bf16": 2.0}

    monkeypatch.setattr(precision, "time_passes", timed)
    model, data = regression()
    settings = SamplerSettings(num_chains=2, num_draws=5, epsilon=1e-3, gamma=10.0, batch_size=32)
    first = estimate_llc(model, data, settings, loss="mse", device="cpu")
    nn.init.normal_(model.weight)  # the next checkpoint of the run: other weights, same architecture
    second = estimate_llc(model, data, settings, loss="mse", device="cpu")
    assert timings == [["bf16", "fp32"]]
    assert (first.precision, second.precision) == ("fp32", "fp32")
    assert first.precision_choice["reused"] is False and second.precision_choice["reused"] is True
    assert second.precision_choice["seconds_per_pass"] == first.precision_choice["seconds_per_pass"]
    assert settings_hash(SamplerSettings(**first.settings)) == settings_hash(SamplerSettings(**second.settings))
    other_batch = estimate_llc(model, data, settings.model_copy(update={"batch_size": 16}), loss="mse", device="cpu")
    assert len(timings) == 2 and other_batch.precision_choice["reused"] is False


def test_auto_falls_back_to_fp32_when_bf16_cannot_run(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)

    def fails(passes, device, clear):
        raise RuntimeError("no bf16 kernel for this layer")

    monkeypatch.setattr(precision, "time_passes", fails)
    model, data = regression()
    result = estimate_llc(model, data, SamplerSettings(num_chains=1, num_draws=5, batch_size=32), loss="mse", device="cpu")
    assert result.precision == "fp32"
    assert "a trial pass failed" in result.precision_choice["reason"]


# --- one precision per run --------------------------------------------------------------------


def favour(monkeypatch, faster: str, calls: list | None = None):
    """Make auto's timing find ``faster`` clearly faster (and count the timings)."""
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    slower = {"fp32": "bf16", "bf16": "fp32"}[faster]

    def timed(passes, device, clear):
        if calls is not None:
            calls.append(1)
        return {faster: 1.0, slower: 3.0}

    monkeypatch.setattr(precision, "time_passes", timed)


def run_records(results: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(results.glob("*/step_*.json"))]


def test_a_resumed_run_keeps_the_precision_its_first_estimates_chose(trained_run, tmp_path, monkeypatch):
    """A later process (here: a cleared cache, and timing that now favours the other precision)
    does not time again: it samples in what the run's records say."""
    _, run = trained_run
    checkpoints = copy_checkpoints(run.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 5, 16])
    settings = fast_settings(precision="auto")
    favour(monkeypatch, "bf16")
    estimate_all(checkpoints, settings, EstimateSettings(results_dir=tmp_path / "results", device="cpu", steps=[0, 5]))
    first = run_records(tmp_path / "results")
    assert [record["result"]["precision"] for record in first] == ["bf16", "bf16"]

    execution._PLANS.clear()  # a new process
    calls: list = []
    favour(monkeypatch, "fp32", calls)
    estimate_all(checkpoints, settings, EstimateSettings(results_dir=tmp_path / "results", device="cpu"))
    records = {record["checkpoint"]: record["result"] for record in run_records(tmp_path / "results")}
    assert calls == []
    assert records["step_00000016.pt"]["precision"] == "bf16"
    assert "kept from this run's earlier estimates" in records["step_00000016.pt"]["precision_choice"]["reason"]
    assert records["step_00000016.pt"]["precision_choice"]["seconds_per_pass"] == {"fp32": 3.0, "bf16": 1.0}


def test_device_workers_sample_in_the_precision_the_first_checkpoint_chose(trained_run, tmp_path):
    """The first checkpoint runs alone; every later one, on either worker, gets its choice."""
    _, run = trained_run
    checkpoints = copy_checkpoints(run.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 5, 16])
    estimate_all(checkpoints, fast_settings(precision="auto"), EstimateSettings(results_dir=tmp_path / "results", devices=["cpu", "cpu"]))
    records = sorted(run_records(tmp_path / "results"), key=lambda record: record["finished"])
    choices = [record["result"]["precision_choice"] for record in records]
    first, later = choices[0], choices[1:]
    assert len(later) == 2 and not first["reused"]
    assert all(choice["reused"] and choice["precision"] == first["precision"] for choice in later)
    assert all(choice["seconds_per_pass"] == first["seconds_per_pass"] for choice in later)  # timed once, not per worker
    assert all(precision.KEPT in choice["reason"] for choice in later)
