"""estimate-all's overhead per checkpoint, and its memory against the number of checkpoints.

Run: ``python -m benchmarks estimate_all_overhead [--draws N]``. Trains smallcnn on digits
with 8 checkpoints, then measures side by side:

- one checkpoint's sampling alone (``estimate_llc`` on prepared data, the floor);
- ``estimate_all`` over all 8 checkpoints: total / (8 x one), and the overhead per checkpoint
  (loading, initial loss, writing the record and summary) as a share of its sampling time;
- peak resident memory of ``estimate_all`` over 2 and over 8 checkpoints, each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from llcv import SamplerSettings, estimate_llc, list_checkpoints
from llcv.estimation import estimate_all
from llcv.sampling import SamplingData
from llcv.settings import EstimateSettings, load_settings
from llcv.targets import Target
from llcv.training import train

_PEAK_SCRIPT = """
import json, resource, sys
from pathlib import Path
from llcv import SamplerSettings
from llcv.estimation import estimate_all
from llcv.settings import EstimateSettings
settings = SamplerSettings.model_validate_json(sys.argv[3])
estimate_all(Path(sys.argv[1]), settings, EstimateSettings(results_dir=Path(sys.argv[2]), device="cpu"))
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def _peak_rss_mib(checkpoints: Path, results: Path, settings: SamplerSettings) -> float:
    output = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(checkpoints), str(results), settings.model_dump_json()],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1]) / 1024


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks estimate_all_overhead")
    parser.add_argument("--draws", type=int, default=200)
    options = parser.parse_args(argv)
    workspace = Path(tempfile.mkdtemp(prefix="llcv-bench-"))
    try:
        checkpoints = workspace / "checkpoints"
        train(load_settings(("data", "model", "train"), overrides={
            "data": {"dataset": "digits"}, "model": {"name": "smallcnn"},
            "train": {"epochs": 3, "batch_size": 64, "device": "cpu", "checkpoints_dir": checkpoints,
                      "log_checkpoints": 7, "checkpoint_every_epochs": 0},
        }))
        paths = list_checkpoints(checkpoints)[-8:]
        for extra in list_checkpoints(checkpoints)[:-8]:
            extra.unlink()
        settings = SamplerSettings(num_chains=4, num_draws=options.draws, batch_size=32, epsilon=1e-4, gamma=100.0)
        print(f"smallcnn on digits, {len(paths)} checkpoints, 4 chains x {options.draws} draws, batch 32, "
              f"{torch.get_num_threads()} threads")

        target = Target(paths[-1]).load()
        data = SamplingData(target.dataset, settings, torch.device("cpu"))
        estimate_llc(target.model, data, settings.model_copy(update={"num_draws": 2}), device="cpu")
        started = time.perf_counter()
        estimate_llc(target.model, data, settings, device="cpu")
        one = time.perf_counter() - started

        started = time.perf_counter()
        summary = estimate_all(checkpoints, settings, EstimateSettings(results_dir=workspace / "results", device="cpu"))
        total = time.perf_counter() - started
        per_checkpoint = total / len(paths)
        print(f"  one checkpoint's sampling alone   {one:7.2f} s")
        print(f"  estimate-all, {len(paths)} checkpoints      {total:7.2f} s  ({len(summary.computed)} computed)")
        print(f"  total / ({len(paths)} x one)              {total / (len(paths) * one):7.3f}x")
        print(f"  overhead per checkpoint           {(per_checkpoint - one):7.2f} s = {(per_checkpoint - one) / one:+.1%} of its sampling")

        two = workspace / "two"
        two.mkdir()
        for path in paths[:2]:
            shutil.copy(path, two / path.name)
        small = _peak_rss_mib(two, workspace / "peak2", settings.model_copy(update={"num_draws": 20}))
        large = _peak_rss_mib(checkpoints, workspace / "peak8", settings.model_copy(update={"num_draws": 20}))
        print(f"  peak memory, 2 checkpoints        {small:7.0f} MiB")
        print(f"  peak memory, {len(paths)} checkpoints        {large:7.0f} MiB  ({large - small:+.0f} MiB)")
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
