"""llcv's sampler against devinterp 1.3 at the same settings, and against the floor of a training step.

Run: ``python -m benchmarks sampling_speed [--quick] [--device cpu|cuda] [--only small|resnet|defaults|floor]
[--record FILE.json] [--figure FILE.png]``. Every comparison is measured side by side in this
one run, on the same model, data, settings and device, and printed as a ratio (llcv time /
reference time; below 1 means llcv is faster). ``--record`` keeps the rows of each case in a
JSON file, so cases run one at a time add up to one figure.

1. ResNet18 (CIFAR stem) on digits at 32x32, batch 64, 4 chains x 50 draws: llcv fp32, bf16 and
   auto vs devinterp's estimate_learning_coeff_with_summary (fp32), with the LLC means; auto's
   target is 1.05x the faster precision.
   ``defaults``: the same model with llcv's default settings (batch 256, precision auto,
   BatchNorm normalising each batch by its own statistics) vs devinterp fp32 at 2 chains x 40
   and 4 chains x 200 draws, each llcv estimate timed as a new run's first (its precision trial
   included); then one chain's default step against devinterp's step, alternating on one batch
   of 256, whose paired ratio the machine's drift between whole runs does not move.
2. Reduced-rank regression 5-3-5, 1,000 samples full batch, 3 chains x 2,000 draws: the same ratio.
3. One SGLD step vs one plain SGD training step on the same batch and precision (the floor),
   and vs one step of devinterp's chain loop (BatchNorm in train mode, as devinterp samples),
   the two kinds of step alternating.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from llcv import SamplerSettings, build_model, estimate_llc, load_dataset
from llcv.sampling import execution
from llcv.devices import resolve_device
from llcv.fileio import atomic_write_json
from llcv.known_models import rrr_case
from llcv.sampling import LLCResult
from llcv.progress import Reporter
from llcv.results import ran_in
from llcv.reference import devinterp_estimate, devinterp_sgld_kwargs
from llcv.sampling import SamplingData


def _llcv_llc(model, dataset, settings: SamplerSettings, loss, device) -> tuple[float, LLCResult]:
    data = SamplingData(dataset, settings, device)
    # a warm-up with the same chains, so the timed estimate reuses the execution plan (batched or not,
    # auto's precision trial) as every checkpoint after a run's first does; fixed_cost times the first
    estimate_llc(model, data, settings.model_copy(update={"num_draws": 2}), loss=loss, device=device)
    started = time.perf_counter()
    result = estimate_llc(model, data, settings, loss=loss, device=device)
    return time.perf_counter() - started, result


def _llc_with_health(result: LLCResult) -> str:
    """llcv's LLC as a row shows it: these are timing runs, so the number is only read with its health."""
    value = "none" if result.llc_mean is None else f"{result.llc_mean:.3f}"
    if result.healthy is False:
        return f"{value} (unhealthy: {'; '.join(failure.brief for failure in result.health_failures)})"
    return f"{value} (healthy)"


def _row(case: str, label: str, ours: float, theirs: float, target: float | None, result: LLCResult, their_llc: float) -> dict:
    print(
        f"  {label:<44} llcv {ours:7.2f} s  devinterp {theirs:7.2f} s  ratio {ours / theirs:5.2f}x   "
        f"LLC {_llc_with_health(result)} vs devinterp's {their_llc:.3f} (health not checked)"
    )
    return {
        "case": case, "label": label, "llcv_seconds": ours, "reference_seconds": theirs, "ratio": ours / theirs, "target": target,
        "llc": result.llc_mean, "healthy": result.healthy, "health_reasons": result.health_reasons,
    }  # fmt: skip


def resnet_case(device: torch.device, quick: bool) -> list[dict]:
    train, _, info = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("resnet18", info.num_classes, info.in_channels, "cifar").to(device)
    draws = 10 if quick else 50
    # Both measure the initial loss on the same amount of data: devinterp's default, one
    # minibatch per chain, is what llcv's init_loss_samples is set to here.
    base = SamplerSettings(
        epsilon=1e-5, gamma=1000.0, num_chains=4, num_draws=draws, batch_size=64, mala=False,
        init_loss_samples=4 * 64, precision="fp32",
    )
    ce = lambda module, batch: nn.functional.cross_entropy(module(batch[0].to(device)), batch[1].to(device))  # noqa: E731
    print(f"ResNet18 (CIFAR stem), digits 32x32, batch 64, 4 chains x {draws} draws, {device}:")
    # devinterp samples in train mode; compare like with like, and show llcv's default (batch statistics) too.
    ours_train, result = _llcv_llc(model, train, base.model_copy(update={"bn_mode": "train"}), "cross_entropy", device)
    reference = devinterp_estimate(model, train, base, ce, device)
    theirs, their_llc = reference.seconds, reference.llc_mean
    case = "ResNet18 vs devinterp"
    rows = [_row(case, f"bn train mode, fp32 ({result.chain_execution})", ours_train, theirs, 1.0, result, their_llc)]
    for precision in ("fp32", "bf16"):
        for mala in (False, True):
            settings = base.model_copy(update={"precision": precision, "mala": mala})
            seconds, result = _llcv_llc(model, train, settings, "cross_entropy", device)
            label = f"bn batch, {precision}, mala {'on' if mala else 'off'} ({result.chain_execution})"
            rows.append(_row(case, label, seconds, theirs, 1.0 if precision == "fp32" else 0.6, result, their_llc))
    faster = min(row["llcv_seconds"] for row in rows if "mala off" in row["label"] and "bn batch" in row["label"])
    seconds, result = _llcv_llc(model, train, base.model_copy(update={"precision": "auto"}), "cross_entropy", device)
    # auto's target: within 5% of the faster precision, i.e. its time / devinterp's at most 1.05x the faster one's
    rows.append(_row(case, f"bn batch, auto -> {result.precision}, mala off", seconds, theirs, 1.05 * faster / theirs, result, their_llc))
    print(f"  auto chose {result.precision} ({result.precision_choice['reason']}): {seconds / faster:.2f}x the faster precision's time")
    return rows


def defaults_case(device: torch.device, quick: bool, sizes: list[tuple[int, int]] | None = None) -> list[dict]:
    """llcv with its default settings against devinterp's fp32, including everything an estimate
    does once (the precision trial of a new run, the initial loss, and BatchNorm statistics where
    ``bn_mode`` recomputes them; the default, batch statistics, recomputes none), and their steps
    paired (``defaults_step_row``)."""
    train, _, info = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("resnet18", info.num_classes, info.in_channels, "cifar").to(device)
    ce = lambda module, batch: nn.functional.cross_entropy(module(batch[0].to(device)), batch[1].to(device))  # noqa: E731
    rows = []
    for chains, draws in sizes or ([(2, 8)] if quick else [(2, 40), (4, 200)]):
        settings = SamplerSettings(epsilon=1e-5, gamma=1000.0, num_chains=chains, num_draws=draws)
        print(f"ResNet18 (CIFAR stem), digits 32x32, default settings (batch {settings.batch_size}), {chains} chains x {draws} draws, {device}:")
        reference = devinterp_estimate(model, train, settings, ce, device)  # first, so it warms fp32's kernels for both
        theirs, their_llc = reference.seconds, reference.llc_mean
        execution._PLANS.clear()  # a new run: llcv decides its execution again, inside the timing
        started = time.perf_counter()
        result = estimate_llc(model, train, settings, device=device)
        ours = time.perf_counter() - started
        label = f"{chains} chains x {draws} draws, defaults ({ran_in(result.precision, result.precision_choice)}, {result.chain_execution})"
        print(f"  precision: {result.precision_choice['reason']}")
        rows.append(_row("defaults vs devinterp fp32", label, ours, theirs, 1.0, result, their_llc))
    rows.append(defaults_step_row(model, train, device, steps=8 if quick else 20))
    return rows


def small_model_case(device: torch.device, quick: bool) -> list[dict]:
    case = rrr_case(M=5, H=3, N=5, r=1, num_samples=1000)
    draws = 400 if quick else 2000
    settings = SamplerSettings(
        epsilon=case.epsilon, gamma=case.gamma, nbeta=case.nbeta, num_chains=3, num_draws=draws, batch_size=1000, mala=False
    )
    mse = lambda module, batch: nn.functional.mse_loss(module(batch[0].to(device)), batch[1].to(device))  # noqa: E731
    print(f"Reduced-rank regression 5-3-5, 1,000 samples full batch, 3 chains x {draws} draws, {device} (true LLC {case.true_llc}):")
    ours, result = _llcv_llc(case.model.to(device), case.dataset, settings, "mse", device)
    reference = devinterp_estimate(case.model, case.dataset, settings, mse, device, init_loss=result.init_loss)
    theirs, their_llc = reference.seconds, reference.llc_mean
    name = "reduced-rank regression vs devinterp"
    rows = [_row(name, f"mala off ({result.chain_execution})", ours, theirs, 0.2, result, their_llc)]
    ours, result = _llcv_llc(case.model, case.dataset, settings.model_copy(update={"mala": True}), "mse", device)
    rows.append(_row(name, f"mala on ({result.chain_execution})", ours, theirs, 0.2, result, their_llc))
    return rows


class _Interleaved(Reporter):
    """Runs one reference step after every SGLD step (from the sampling loop's progress hook) and
    times both, so each pair sees the same machine: on a shared CPU the speed drifts by +-8%
    over seconds, which swamped ratios from separate runs and still moved blocks of 10 steps
    by +-4%. The first SGLD step, which includes the setup, is not counted."""

    def __init__(self, reference_step, device: torch.device):
        self.reference_step = reference_step
        self.device = device
        self.sgld: list[float] = []
        self.plain: list[float] = []

    def start(self, key: str, description: str, total: int | None) -> None:
        self.last = None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def advance(self, key: str, amount: int = 1, **fields: object) -> None:
        started = self._now()
        self.reference_step()
        finished = self._now()
        if self.last is not None:
            self.sgld.append(started - self.last)
            self.plain.append(finished - started)
        self.last = finished

    def ratios(self) -> tuple[float, float]:
        """(median over pairs of SGLD step / reference step, median / median)."""
        return statistics.median(self._pairs()), statistics.median(self.sgld) / statistics.median(self.plain)

    def interval(self, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
        """A 95% bootstrap interval for the median paired ratio: how far the machine's noise
        leaves the ratio uncertain, so a target is judged against the interval, not one number."""
        pairs = self._pairs()
        generator = random.Random(seed)
        medians = sorted(statistics.median(generator.choices(pairs, k=len(pairs))) for _ in range(resamples))
        return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]

    def _pairs(self) -> list[float]:
        return [sgld / plain for sgld, plain in zip(self.sgld, self.plain)]


def _plain_sgd_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, precision: str):
    """One plain training step (eval mode, SGD) on a fixed batch: the floor of an SGLD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    autocast = dict(device_type=images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(**autocast):
            loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()

    return step


def _devinterp_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: SamplerSettings, num_samples: int):
    """One step of devinterp 1.3's chain loop (sample_single_chain): train mode, its SGMCMC.sgld, at
    the nbeta llcv's chains use on ``num_samples`` samples."""
    from devinterp.optim.sgmcmc import SGMCMC

    chain = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = SGMCMC.sgld(chain.parameters(), **devinterp_sgld_kwargs(settings, num_samples))

    def step() -> None:
        chain.train()
        nn.functional.cross_entropy(chain(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()

    return step


def floor_case(device: torch.device, quick: bool) -> list[dict]:
    """One chain's SGLD step vs a plain SGD training step, and vs devinterp's step, one after the other."""
    train, _, info = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("resnet18", info.num_classes, info.in_channels, "cifar").to(device)
    steps = 40 if quick else 100
    print(
        f"One step, ResNet18 (CIFAR stem), batch 64, {device}: llcv's SGLD step / a reference step, "
        f"{steps} steps each, alternating (median of the paired ratios with its 95% bootstrap interval; median / median)"
    )
    batch = next(iter(DataLoader(train, batch_size=64)))
    images, labels = batch[0].to(device), batch[1].to(device)
    settings = SamplerSettings(epsilon=1e-6, gamma=1000.0, num_chains=1, batch_size=64, num_draws=steps, init_loss_samples=64)
    data = SamplingData(train, settings, device)
    plain = build_model("resnet18", info.num_classes, info.in_channels, "cifar").to(device).eval()
    channels_last = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    images_channels_last = images.contiguous(memory_format=torch.channels_last)
    comparisons = [
        # (label, llcv settings, reference, reference step, target)
        ("fp32, mala off", {}, "plain SGD step", _plain_sgd_step(plain, images, labels, "fp32"), 1.05),
        ("fp32, mala on", {"mala": True}, "plain SGD step", _plain_sgd_step(plain, images, labels, "fp32"), 1.1),
        ("bf16, mala off", {"precision": "bf16"}, "plain SGD step",
         _plain_sgd_step(channels_last, images_channels_last, labels, "bf16"), None),
        ("bf16, mala on", {"precision": "bf16", "mala": True}, "plain SGD step",
         _plain_sgd_step(channels_last, images_channels_last, labels, "bf16"), None),
        ("fp32, bn train mode, mala off", {"bn_mode": "train"}, "devinterp step",
         _devinterp_step(plain, images, labels, settings, data.num_samples), 1.0),
    ]
    rows = []
    for label, update, reference, reference_step, target in comparisons:
        chain_settings = settings.model_copy(update={"mala": False, **update})
        rows.append(_interleaved_row(model, data, chain_settings, device, label, reference, reference_step, target))
    return rows


def _interleaved_row(
    model: nn.Module, data: SamplingData, settings: SamplerSettings, device: torch.device,
    label: str, reference: str, reference_step, target: float | None,
) -> dict:  # fmt: skip
    """llcv's steps at ``settings``, each followed by ``reference_step``: their paired ratio, after a
    warm-up estimate (so the execution plan, auto's precision trial included, is not timed)."""
    warm_up = estimate_llc(model, data, settings.model_copy(update={"num_draws": 3}), device=device)
    ran = ran_in(warm_up.precision, warm_up.precision_choice)
    timer = _Interleaved(reference_step, device)
    estimate_llc(model, data, settings, device=device, reporter=timer)
    paired, medians = timer.ratios()
    low, high = timer.interval()
    ours, theirs = statistics.median(timer.sgld), statistics.median(timer.plain)
    print(
        f"  {label:<30} llcv {ours * 1e3:7.1f} ms ({ran})  {reference} {theirs * 1e3:7.1f} ms  "
        f"ratio {paired:5.3f}x [95%: {low:5.3f}-{high:5.3f}] (medians {medians:5.3f}x)"
    )
    return {"case": f"ResNet18 step vs {reference}", "label": label, "llcv_seconds": ours, "ran_in": ran,
            "reference_seconds": theirs, "ratio": paired, "interval": [low, high], "target": target}  # fmt: skip


def defaults_step_row(model: nn.Module, dataset, device: torch.device, steps: int) -> dict:
    """One chain's step at llcv's default settings against devinterp's step, alternating on one
    batch of the defaults' size. Sequential runs of a whole estimate move with the machine's
    drift (10-30% over minutes on a shared machine); paired steps do not."""
    settings = SamplerSettings(epsilon=1e-5, gamma=1000.0, num_chains=1, num_draws=steps)
    images, labels = next(iter(DataLoader(dataset, batch_size=settings.batch_size)))
    data = SamplingData(dataset, settings, device)
    devinterp_step = _devinterp_step(model, images.to(device), labels.to(device), settings, data.num_samples)
    return _interleaved_row(model, data, settings, device, f"defaults, batch {settings.batch_size}", "devinterp step", devinterp_step, 1.0)


# The cases by --only name, in the order they run and are drawn.
CASES = {"small": small_model_case, "resnet": resnet_case, "defaults": defaults_case, "floor": floor_case}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sampling_speed")
    parser.add_argument("--quick", action="store_true", help="fewer draws, for a smoke run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", choices=tuple(CASES), default=None)
    parser.add_argument("--record", type=Path, help="JSON file of rows by case; this run's cases replace theirs")
    parser.add_argument("--figure", type=Path, help="draw the ratios (of --record, else of this run) into this image")
    options = parser.parse_args(argv)
    device = resolve_device(options.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    measured = {name: case(device, options.quick) for name, case in CASES.items() if options.only in (None, name)}
    recorded = measured
    if options.record is not None:
        recorded = json.loads(options.record.read_text()) if options.record.exists() else {}
        recorded.update(measured)
        atomic_write_json(options.record, recorded)
    if options.figure is not None:
        _draw(recorded, options.figure)
        print(f"figure: {options.figure}")


def _draw(recorded: dict[str, list[dict]], path: Path) -> None:
    """Horizontal bars of llcv / reference time per row, with each row's target as a red tick and,
    where measured, its 95% interval as a black line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for name in CASES for row in recorded.get(name, [])]
    figure, axes = plt.subplots(figsize=(8, 0.38 * len(rows) + 1.2))
    positions = list(range(len(rows)))[::-1]
    axes.barh(positions, [row["ratio"] for row in rows], color="#4C72B0")
    for position, row in zip(positions, rows):
        if "interval" in row:  # the floor rows' 95% interval over step pairs
            axes.plot(row["interval"], [position, position], color="black", linewidth=1.5)
    for position, row in zip(positions, rows):
        right = max([row["ratio"], *row.get("interval", [])])
        axes.text(right + 0.01, position, f"{row['ratio']:.2f}x", va="center", fontsize=8)
        if row["target"] is not None:
            axes.plot([row["target"]] * 2, [position - 0.4, position + 0.4], color="#C44E52", linewidth=2)
    axes.set_yticks(positions, [f"{row['case']}: {row['label']}" for row in rows], fontsize=8)
    axes.axvline(1.0, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("llcv time / reference time (red: target; black: 95% interval)")
    axes.set_title("llcv sampler speed (benchmarks/sampling_speed.py)", fontsize=10, loc="right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
