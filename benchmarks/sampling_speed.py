"""llcv's sampler against devinterp 1.3 at the same settings, and against the floor of a training step.

Run: ``python -m benchmarks sampling_speed [--quick] [--device cpu|cuda]``. Every comparison is
measured side by side in this one run, on the same model, data, settings and device, and
printed as a ratio (llcv time / reference time; below 1 means llcv is faster).

1. ResNet18 (CIFAR stem) on digits at 32x32, batch 64, 4 chains x 50 draws: llcv fp32 and bf16
   vs devinterp's estimate_learning_coeff_with_summary (fp32), with the LLC means.
2. Reduced-rank regression 5-3-5, 1,000 samples full batch, 3 chains x 2,000 draws: the same ratio.
3. One SGLD step vs one plain SGD training step on the same batch and precision (the floor),
   timed in alternating blocks.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch
from torch import nn
from torch.utils.data import DataLoader

from llcv import SamplerSettings, build_model, estimate_llc, load_dataset
from llcv.devices import resolve_device
from llcv.known_models import rrr_case
from llcv.progress import Reporter
from llcv.sampling import SamplingData


def _devinterp_llc(model, dataset, settings: SamplerSettings, loss, device, init_loss: float | None) -> tuple[float, float]:
    """devinterp's estimate with the same settings; returns (seconds, llc mean).

    With ``init_loss=None`` devinterp measures it itself, on ``num_chains`` minibatches.
    """
    from devinterp.optim.sgmcmc import SGMCMC
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary

    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = estimate_learning_coeff_with_summary(
            model,
            loader,
            evaluate=loss,
            sampling_method=SGMCMC.sgld,
            optimizer_kwargs=dict(lr=settings.epsilon, localization=settings.gamma, nbeta=settings.nbeta),
            num_chains=settings.num_chains,
            num_draws=settings.num_draws,
            num_burnin_steps=settings.num_burnin_steps,
            init_loss=init_loss,
            seed=settings.seed,
            device=device,
            verbose=False,
        )
    return time.perf_counter() - started, float(summary["llc/mean"])


def _llcv_llc(model, dataset, settings: SamplerSettings, loss, device) -> tuple[float, float, object]:
    data = SamplingData(dataset, settings, device)
    estimate_llc(model, data, settings.model_copy(update={"num_draws": 2, "num_chains": min(2, settings.num_chains)}), loss=loss, device=device)
    started = time.perf_counter()
    result = estimate_llc(model, data, settings, loss=loss, device=device)
    return time.perf_counter() - started, result.llc_mean, result


def _row(label: str, ours: float, theirs: float, our_llc, their_llc) -> None:
    print(f"  {label:<44} llcv {ours:7.2f} s  devinterp {theirs:7.2f} s  ratio {ours / theirs:5.2f}x   LLC {our_llc:8.3f} vs {their_llc:8.3f}")


def resnet_case(device: torch.device, quick: bool) -> None:
    train, _, info = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("resnet18", info.num_classes, info.in_channels, "cifar").to(device)
    draws = 10 if quick else 50
    # Both measure the initial loss on the same amount of data: devinterp's default, one
    # minibatch per chain, is what llcv's init_loss_samples is set to here.
    base = SamplerSettings(
        epsilon=1e-5, gamma=1000.0, nbeta=64 / math.log(64), num_chains=4, num_draws=draws, batch_size=64, mala=False,
        init_loss_samples=4 * 64,
    )
    ce = lambda module, batch: nn.functional.cross_entropy(module(batch[0].to(device)), batch[1].to(device))  # noqa: E731
    print(f"ResNet18 (CIFAR stem), digits 32x32, batch 64, 4 chains x {draws} draws, {device}:")
    # devinterp samples in train mode; compare like with like, and show llcv's default (eval) too.
    ours_train, our_llc, result = _llcv_llc(model, train, base.model_copy(update={"bn_mode": "train"}), "cross_entropy", device)
    theirs, their_llc = _devinterp_llc(model, train, base, ce, device, None)
    _row(f"bn train mode, fp32 ({result.chain_execution})", ours_train, theirs, our_llc, their_llc)
    for precision in ("fp32", "bf16"):
        for mala in (False, True):
            settings = base.model_copy(update={"precision": precision, "mala": mala})
            seconds, llc, result = _llcv_llc(model, train, settings, "cross_entropy", device)
            _row(f"bn eval, {precision}, mala {'on' if mala else 'off'} ({result.chain_execution})", seconds, theirs, llc, their_llc)


def small_model_case(device: torch.device, quick: bool) -> None:
    case = rrr_case(M=5, H=3, N=5, r=1, num_samples=1000)
    draws = 400 if quick else 2000
    settings = SamplerSettings(
        epsilon=case.epsilon, gamma=case.gamma, nbeta=case.nbeta, num_chains=3, num_draws=draws, batch_size=1000, mala=False
    )
    mse = lambda module, batch: nn.functional.mse_loss(module(batch[0].to(device)), batch[1].to(device))  # noqa: E731
    print(f"Reduced-rank regression 5-3-5, 1,000 samples full batch, 3 chains x {draws} draws, {device} (true LLC {case.true_llc}):")
    ours, our_llc, result = _llcv_llc(case.model.to(device), case.dataset, settings, "mse", device)
    theirs, their_llc = _devinterp_llc(case.model, case.dataset, settings, mse, device, result.init_loss)
    _row(f"mala off ({result.chain_execution})", ours, theirs, our_llc, their_llc)
    ours, our_llc, result = _llcv_llc(case.model, case.dataset, settings.model_copy(update={"mala": True}), "mse", device)
    _row(f"mala on ({result.chain_execution})", ours, theirs, our_llc, their_llc)


class _Interleaved(Reporter):
    """Runs blocks of plain training steps between blocks of SGLD steps (from the sampling loop's
    progress hook) and times every step, so both see the same machine: on a shared CPU the
    speed drifts by +-8% over seconds, which swamped ratios from separate runs. The first plain
    step of a block shares the CPU with the noise the sampler draws ahead, and the next SGLD step
    finds that noise ready, so neither is counted."""

    def __init__(self, plain_step, device: torch.device, block: int = 10):
        self.plain_step = plain_step
        self.device = device
        self.block = block
        self.sgld: list[float] = []
        self.plain: list[float] = []

    def start(self, key: str, description: str, total: int | None) -> None:
        self.last, self.steps = None, 0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def advance(self, key: str, amount: int = 1, **fields: object) -> None:
        now = self._now()
        if self.last is not None:  # None: the first step (with setup), or the first after a plain block
            self.sgld.append(now - self.last)
        self.steps += 1
        if self.steps % self.block:
            self.last = now
            return
        for index in range(self.block):
            started = self._now()
            self.plain_step()
            if index:
                self.plain.append(self._now() - started)
        self.last = None

    def ratios(self) -> tuple[float, float]:
        """(median SGLD step / median plain step, mean / mean)."""
        return statistics.median(self.sgld) / statistics.median(self.plain), statistics.mean(self.sgld) / statistics.mean(self.plain)


def floor_case(device: torch.device, quick: bool) -> None:
    """One chain's SGLD step vs a plain SGD training step, in alternating blocks."""
    train, _, info = load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("resnet18", info.num_classes, info.in_channels, "cifar").to(device)
    steps = 40 if quick else 100
    print(
        f"One step, ResNet18 (CIFAR stem), batch 64, eval mode, {device}: SGLD step / plain SGD step, "
        f"{steps} steps each in alternating blocks of 10 (median / median; mean / mean)"
    )
    for precision in ("fp32", "bf16"):
        batch = next(iter(DataLoader(train, batch_size=64)))
        images, labels = batch[0].to(device), batch[1].to(device)
        if precision == "bf16" and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        plain = build_model("resnet18", info.num_classes, info.in_channels, "cifar").to(device).eval()
        if precision == "bf16":
            plain = plain.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(plain.parameters(), lr=1e-6)

        def plain_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = nn.functional.cross_entropy(plain(images), labels)
            loss.backward()
            optimizer.step()

        settings = SamplerSettings(
            epsilon=1e-6, gamma=1000.0, num_chains=1, batch_size=64, precision=precision, num_draws=steps, init_loss_samples=64
        )
        data = SamplingData(train, settings, device)
        for mala in (False, True):
            estimate_llc(model, data, settings.model_copy(update={"num_draws": 3, "mala": mala}), device=device)
            timer = _Interleaved(plain_step, device)
            estimate_llc(model, data, settings.model_copy(update={"mala": mala}), device=device, reporter=timer)
            median, total = timer.ratios()
            print(
                f"  {precision}, mala {'on ' if mala else 'off'}: SGLD {statistics.median(timer.sgld) * 1e3:7.1f} ms  "
                f"SGD {statistics.median(timer.plain) * 1e3:7.1f} ms  ratio {median:5.3f}x (means {total:5.3f}x)"
            )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sampling_speed")
    parser.add_argument("--quick", action="store_true", help="fewer draws, for a smoke run")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", choices=("resnet", "small", "floor"), default=None)
    options = parser.parse_args(argv)
    device = resolve_device(options.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    cases = {"small": small_model_case, "resnet": resnet_case, "floor": floor_case}
    for name, case in cases.items():
        if options.only in (None, name):
            case(device, options.quick)
