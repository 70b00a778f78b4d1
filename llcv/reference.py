"""devinterp 1.3, the reference implementation llcv is checked against.

llcv runs devinterp 1.3's SGLD update (fused, ``llcv.sampling.langevin``) but never imports devinterp to
estimate. This module runs devinterp's own ``estimate_learning_coeff_with_summary`` at llcv's
settings, for ``llcv selftest --against devinterp`` and the benchmarks, so a user can put both
side by side on their machine. devinterp is the optional extra ``llcv[reference]``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from llcv.errors import SettingsError
from llcv.sampling import resolve_burnin, resolve_nbeta
from llcv.settings import SamplerSettings


@dataclass(frozen=True)
class ReferenceEstimate:
    """devinterp's estimate: the mean over chains, its standard error, and the time it took."""

    llc_mean: float
    standard_error: float | None
    seconds: float


def devinterp_sgld_kwargs(settings: SamplerSettings, num_samples: int) -> dict[str, float]:
    """devinterp's names for llcv's SGLD settings: epsilon is its ``lr``, gamma its ``localization``,
    and nbeta the number llcv's ``settings.nbeta`` resolves to for chains drawing from ``num_samples``
    samples (``llcv.sampling.resolve_nbeta``), so both sample the same posterior."""
    nbeta = resolve_nbeta(settings.nbeta, num_samples, settings.batch_size)
    return dict(lr=settings.epsilon, localization=settings.gamma, nbeta=nbeta)


def devinterp_estimate(
    model: nn.Module,
    dataset: Dataset,
    settings: SamplerSettings,
    evaluate: Callable[[nn.Module, object], torch.Tensor],
    device: torch.device | str = "cpu",
    init_loss: float | None = None,
) -> ReferenceEstimate:
    """devinterp 1.3's SGLD estimate of ``model``'s LLC at llcv's ``settings``.

    The data is shuffled in minibatches of ``settings.batch_size`` with a seeded generator.
    devinterp samples with the model in the mode it is given in (llcv's default is eval mode).
    nbeta and the burn-in are the numbers llcv's estimate resolves ``settings`` to on the same
    data (``llcv.sampling.resolve_nbeta``, ``resolve_burnin``).

    Args:
        evaluate: ``(model, batch) -> loss``, devinterp's ``evaluate``.
        init_loss: the loss at the checkpoint; None lets devinterp measure it on ``num_chains`` minibatches.

    Raises:
        SettingsError: devinterp 1.3 is not installed.
    """
    try:
        from devinterp.optim.sgmcmc import SGMCMC
        from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    except ImportError:
        raise SettingsError("comparing with devinterp needs devinterp 1.3: pip install 'llcv[reference]'") from None
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, generator=torch.Generator().manual_seed(settings.seed))
    sampled = min(settings.num_samples or len(dataset), len(dataset))  # as many as llcv's estimate samples from
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # devinterp warns about seeded runs and cycling small loaders
        summary = estimate_learning_coeff_with_summary(
            model,
            loader,
            evaluate=evaluate,
            sampling_method=SGMCMC.rmsprop_sgld if settings.sampler == "rmsprop_sgld" else SGMCMC.sgld,
            optimizer_kwargs=devinterp_sgld_kwargs(settings, sampled),
            num_chains=settings.num_chains,
            num_draws=settings.num_draws,
            num_burnin_steps=resolve_burnin(settings).steps,
            num_steps_bw_draws=settings.num_steps_bw_draws,
            init_loss=init_loss,
            seed=settings.seed,
            device=device,
            verbose=False,
        )
    seconds = time.perf_counter() - started
    per_chain = np.asarray([float(summary[f"llc-chain/{chain}"]) for chain in range(settings.num_chains)])
    error = float(per_chain.std(ddof=1) / math.sqrt(len(per_chain))) if len(per_chain) > 1 else None
    return ReferenceEstimate(float(per_chain.mean()), error, seconds)
