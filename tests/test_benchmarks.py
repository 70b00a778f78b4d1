"""The benchmark suite's plumbing: discovery, the interleaved step timer, the record and figure.

The benchmarks themselves are timed runs (minutes); they are not part of the test suite.
"""

from __future__ import annotations

import json
import statistics

import torch

from benchmarks import __main__ as runner
from benchmarks import sampling_speed


def test_every_benchmark_is_discovered():
    assert set(runner.discover()) == {
        "early_checkpoint", "estimate_all_overhead", "fixed_cost", "paired_moves", "runs_beside", "sampling_speed", "settings_sensitivity",
        "standard_error", "train_throughput",
    }


def test_interleaved_timer_pairs_each_sgld_step_with_the_reference_step_after_it():
    plain_calls = []
    timer = sampling_speed._Interleaved(lambda: plain_calls.append(1), torch.device("cpu"))
    timer.start("chain", "Chain 1/1", 9)
    for _ in range(9):
        timer.advance("chain", 1)
    assert len(plain_calls) == 9  # one reference step after every SGLD step
    assert len(timer.sgld) == 8 and len(timer.plain) == 8  # the first SGLD step (setup) and its pair are left out
    paired, medians = timer.ratios()
    assert paired == statistics.median(s / p for s, p in zip(timer.sgld, timer.plain))
    assert medians == statistics.median(timer.sgld) / statistics.median(timer.plain)


def test_interval_brackets_the_median_paired_ratio_and_narrows_with_more_pairs():
    timer = sampling_speed._Interleaved(lambda: None, torch.device("cpu"))
    spread = [1.0 + 0.1 * ((index * 7) % 11 - 5) / 5 for index in range(400)]  # ratios 0.9-1.1, median 1.0
    timer.sgld, timer.plain = spread[:40], [1.0] * 40
    low, high = timer.interval()
    assert low <= timer.ratios()[0] <= high and 0.0 < high - low < 0.2
    timer.sgld, timer.plain = spread, [1.0] * 400
    assert timer.interval()[1] - timer.interval()[0] < high - low


def test_record_merges_cases_and_the_figure_is_drawn(tmp_path, monkeypatch):
    record, figure = tmp_path / "speed.json", tmp_path / "speed.png"
    row = {"case": "c", "label": "l", "llcv_seconds": 1.0, "reference_seconds": 2.0, "ratio": 0.5, "target": 0.6}
    record.write_text(json.dumps({"small": [row]}))
    monkeypatch.setitem(sampling_speed.CASES, "floor", lambda device, quick: [{**row, "target": None}])
    sampling_speed.main(["--only", "floor", "--device", "cpu", "--record", str(record), "--figure", str(figure)])
    assert set(json.loads(record.read_text())) == {"small", "floor"}
    assert figure.stat().st_size > 5000


def test_train_throughput_times_both_loops_on_generated_cifar10(tmp_path):
    from benchmarks import train_throughput
    from llcv.data import load_dataset

    folder = train_throughput.write_cifar10(tmp_path / "cifar10", num_train=42)
    info = load_dataset("cifar10", folder)[2]  # llcv's own loader reads the generated files
    assert (info.num_train, info.num_val) == (42, train_throughput.CIFAR_VAL_IMAGES)
    setup = train_throughput.Setup("smallcnn", "cifar10", folder, epochs=1, batch_size=16, num_workers=0, device="cpu")
    llcv, plain = train_throughput.run_llcv(setup), train_throughput.run_plain(setup)
    assert llcv.images == plain.images == 42  # one timed epoch each
    assert llcv.seconds > 0 and plain.seconds > 0
    assert llcv.checkpoint_seconds > 0  # the final checkpoint fell inside the timed span and was taken out


def test_a_row_shows_llcvs_llc_with_its_health_and_survives_an_estimate_without_one(capsys):
    from torch import nn
    from torch.utils.data import TensorDataset

    from llcv import SamplerSettings, estimate_llc

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, generator=generator), torch.randn(64, 1, generator=generator))
    settings = SamplerSettings(num_chains=2, num_draws=5, batch_size=32, epsilon=1e-3, gamma=10.0)
    result = estimate_llc(nn.Linear(3, 1), data, settings, loss="mse", device="cpu")
    assert result.healthy is False  # five draws per chain cannot reach the effective sample size asked for
    row = sampling_speed._row("case", "label", 1.0, 2.0, 1.0, result, 0.5)
    shown = capsys.readouterr().out
    assert f"LLC {result.llc_mean:.3f} (unhealthy: {'; '.join(failure.brief for failure in result.health_failures)})" in shown
    assert "devinterp's 0.500 (health not checked)" in shown
    assert (row["llc"], row["healthy"], row["health_reasons"]) == (result.llc_mean, False, result.health_reasons)
    sampling_speed._row("case", "label", 1.0, 2.0, 1.0, result.model_copy(update={"llc_mean": None}), 0.5)
    assert "LLC none (unhealthy: " in capsys.readouterr().out
