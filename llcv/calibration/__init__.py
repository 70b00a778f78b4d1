"""Calibration: choose SGLD settings (epsilon, gamma, nbeta) by a stated rule, and show why.

Three steps, as researchers do them by hand (docs/calibration.md):

1. ``calibrate_sweep`` (``sweep``) runs a short estimate for every (epsilon, gamma, nbeta) of a
   grid and summarises each as one row; ``apply_rule`` (``rule``) marks which rows qualify and
   recommends one.
2. ``calibrate_curve`` (``curves``) runs one chain for the chosen settings and judges its
   LLC-over-draws curve: stable, peaks or drift.
3. ``calibrate_chains`` (``curves``) runs several chains and reports their agreement.

``calibrate_auto`` (``auto``) needs no grid: it runs trial estimates (``trials``) and decides
epsilon, gamma and the burn-in by how the estimate responds to them, within a budget, and
reports the pick's sensitivity; ``recommend_settings`` returns just its settings. Library functions here return results and write files
only where asked (``sweep_file`` and the ``save_*`` functions); the terminal belongs to ``llcv.cli``.
"""

from llcv.calibration.curves import (
    CHAINS_DEFAULT_NUM_CHAINS,
    ChainsResult,
    CurveResult,
    calibrate_chains,
    calibrate_curve,
    chains_from_result,
    curve_from_result,
    save_chains,
    save_curve,
)
from llcv.calibration.auto import TRIAL_CHAINS, calibrate_auto, recommend_settings
from llcv.calibration.auto_store import payload_dict
from llcv.calibration.outcome import SETTINGS_DEPENDENT, AutoCalibration, Budget, Sensitivity
from llcv.calibration.auto_files import (
    AUTO_SOURCE,
    CALIBRATION_FILE,
    KNOB_CHANGES,
    KNOB_NAMES,
    RECOMMENDED_FILE,
    auto_budget,
    calibrate_and_save,
    figure_title,
    percent_words,
    read_auto,
    relative_move_words,
    sensitivity_sentence,
    sensitivity_verdict,
    spent_words,
)
from llcv.calibration.curvature import top_hessian_eigenvalue
from llcv.calibration.figures import (
    plot_calibration_traces,
    plot_calibration_trials,
    plot_chains,
    plot_curve,
    plot_sweep_heatmap,
    plot_sweep_traces,
)
from llcv.calibration.trials import Trial, TrialStatus, trace_array
from llcv.calibration.rule import RULE_FIELDS, apply_rule, recommended_row, rule_thresholds
from llcv.calibration.sweep import (
    ROW_FIELDS,
    SWEEP_FORMAT,
    SweepGrid,
    SweepResult,
    calibrate_sweep,
    output_dir,
    parse_grid,
    row_burnin_steps,
    save_sweep,
    sweep_base,
    sweep_row,
)

__all__ = [
    "AutoCalibration", "Budget", "Sensitivity", "Trial", "TrialStatus", "calibrate_auto", "SETTINGS_DEPENDENT", "TRIAL_CHAINS", "payload_dict",
    "AUTO_SOURCE", "CALIBRATION_FILE", "KNOB_CHANGES", "KNOB_NAMES", "RECOMMENDED_FILE", "auto_budget", "calibrate_and_save",
    "figure_title", "percent_words", "read_auto", "relative_move_words", "sensitivity_sentence", "sensitivity_verdict", "spent_words",
    "CHAINS_DEFAULT_NUM_CHAINS", "ROW_FIELDS", "RULE_FIELDS", "SWEEP_FORMAT", "ChainsResult", "CurveResult", "SweepGrid", "SweepResult",
    "apply_rule", "calibrate_chains", "calibrate_curve", "calibrate_sweep", "chains_from_result", "curve_from_result",
    "output_dir", "parse_grid", "recommend_settings", "recommended_row", "row_burnin_steps", "rule_thresholds", "save_chains", "save_curve",
    "save_sweep", "sweep_base", "sweep_row", "top_hessian_eigenvalue", "plot_calibration_traces", "plot_calibration_trials",
    "plot_chains", "plot_curve", "plot_sweep_heatmap", "plot_sweep_traces", "trace_array",
]  # fmt: skip
