"""Sampling one estimate: SGLD chains around a checkpoint, the LLC they give, and its diagnostics.

The public face of the engine. Other packages import from here only; the modules behind it
are internal: ``estimate`` (the estimator and its temperature and burn-in), ``data`` (the
minibatches), ``chains`` (the SGLD steps and MALA), ``execution`` (batched or one at a time,
fp32 or bf16), ``precision``, ``langevin`` (the fused update and its seeded noise),
``batchnorm``, ``losses`` and ``result`` (the result and its summary of the traces).
"""

from llcv.sampling.chains import ChainState
from llcv.sampling.data import SamplingData
from llcv.sampling.estimate import (
    batch_nbeta,
    data_nbeta,
    estimate_llc,
    estimate_llc_states,
    nbeta_rule,
    resolve_burnin,
    resolve_nbeta,
    select_parameters,
    working_copy,
)
from llcv.sampling.losses import LossFunction, LossSpec, resolve_loss
from llcv.sampling.precision import Precision, PrecisionChoice
from llcv.sampling.result import BurnIn, InitialLoss, LLCDiagnostics, LLCResult, NbetaRule

__all__ = [
    "BurnIn",
    "ChainState",
    "InitialLoss",
    "LLCDiagnostics",
    "LLCResult",
    "LossFunction",
    "LossSpec",
    "NbetaRule",
    "Precision",
    "PrecisionChoice",
    "SamplingData",
    "batch_nbeta",
    "data_nbeta",
    "estimate_llc",
    "estimate_llc_states",
    "nbeta_rule",
    "resolve_burnin",
    "resolve_loss",
    "resolve_nbeta",
    "select_parameters",
    "working_copy",
]
