"""llcv: the Local Learning Coefficient of vision models over training.

The public Python API; everything here is importable as ``from llcv import ...``.
"""

from llcv.version import __version__

from llcv.calibration import SweepGrid, SweepResult, calibrate_sweep, recommend_settings
from llcv.checkpoints import CheckpointInfo, list_checkpoints, load_checkpoint
from llcv.data import DatasetInfo, load_dataset
from llcv.errors import CheckpointError, DataError, LLCVError, SettingsError
from llcv.estimation import EstimateSummary, estimate_all
from llcv.sampling import LLCDiagnostics, LLCResult
from llcv.models import build_model, list_models, model_blocks, register_model
from llcv.results import LLCRecord
from llcv.results import load_results, results_dataframe, settings_hash
from llcv.sampling import estimate_llc
from llcv.sampling import SamplingData
from llcv.settings import DataSettings, EstimateSettings, ModelSettings, SamplerSettings, TrainSettings, load_settings
from llcv.targets import Target

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "DataError",
    "DataSettings",
    "EstimateSettings",
    "DatasetInfo",
    "EstimateSummary",
    "LLCDiagnostics",
    "LLCRecord",
    "LLCResult",
    "LLCVError",
    "ModelSettings",
    "SamplerSettings",
    "SamplingData",
    "SettingsError",
    "SweepGrid",
    "SweepResult",
    "Target",
    "TrainSettings",
    "__version__",
    "build_model",
    "calibrate_sweep",
    "estimate_all",
    "estimate_llc",
    "list_checkpoints",
    "list_models",
    "load_checkpoint",
    "load_dataset",
    "load_results",
    "load_settings",
    "model_blocks",
    "plot_llc",
    "recommend_settings",
    "register_model",
    "results_dataframe",
    "settings_hash",
]


def __getattr__(name: str):
    # Figures need matplotlib, which is slow to import; load it on first use only.
    if name == "plot_llc":
        from llcv.figures import plot_llc

        return plot_llc
    raise AttributeError(f"module 'llcv' has no attribute {name!r}")
