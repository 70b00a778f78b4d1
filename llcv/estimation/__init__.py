"""Estimation over a run: the LLC of every checkpoint, resumable, crash-safe and shared by workers.

The public face. ``estimate_all`` (``run``) plans the jobs (``selection`` picks the checkpoints,
``scopes`` the refined ones), claims them (``claims``), hands them to an executor (``executors``:
this process, one process per device, or Ray) with what they share (``job_spec``), and writes a
record per job; ``calibrate_run`` (``run_calibration``) calibrates a run once, on a reference
checkpoint, for ``estimate_all`` to use at every checkpoint. The modules behind this face are
internal.
"""

from llcv.estimation.run import EstimateSummary, RunPlan, estimate_all, plan_run, results_folder
from llcv.estimation.run_calibration import RunCalibration, calibrate_run, check_calibrate_request

__all__ = [
    "EstimateSummary",
    "RunCalibration",
    "RunPlan",
    "calibrate_run",
    "check_calibrate_request",
    "estimate_all",
    "plan_run",
    "results_folder",
]
