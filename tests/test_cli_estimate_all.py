"""Tests for `llcv estimate-all`: flags reach the library, kill -9 and SIGTERM lose nothing, failures exit 1."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _helpers import FAST_FLAGS, copy_checkpoints, fast_settings, llcv_command, subprocess_env, unwrapped
from llcv.cli import app
from llcv.estimation.run import EstimateSummary
from llcv.results import settings_hash

runner = CliRunner()


@pytest.fixture
def checkpoints(trained_run, tmp_path) -> Path:
    _, result = trained_run
    return copy_checkpoints(result.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 1, 2, 5, 16])


def _invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


# --- the command line reaches the library


def test_flags_and_config_reach_estimate_all(monkeypatch, tmp_path):
    received = {}

    def fake_estimate_all(checkpoints_dir, sampler, options, **kwargs):
        received.update(checkpoints_dir=checkpoints_dir, settings=sampler, options=options, **kwargs)
        return EstimateSummary(settings_hash="abc", folder=Path(options.results_dir) / "abc", selected=["a"], computed=["a"])

    monkeypatch.setattr("llcv.estimation.estimate_all", fake_estimate_all)
    config = tmp_path / "experiment.toml"
    config.write_text("[sampler]\nnum_draws = 77\ngamma = 5.0\n[estimate]\nclaim_timeout_seconds = 30\ndevice = 'cpu'\n")
    result = _invoke(
        "estimate-all", "--checkpoints-dir", str(tmp_path), "--results-dir", str(tmp_path / "out"), "--config", str(config),
        "--gamma", "50", "--steps", "0, 100,1000", "--shard", "1/4", "--force", "--dataset", "digits",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = received["settings"]
    assert (settings.num_draws, settings.gamma) == (77, 50.0)
    options = received["options"]
    assert options.steps == [0, 100, 1000] and options.shard == "1/4" and options.force is True
    assert options.device == "cpu" and options.claim_timeout_seconds == 30 and options.executor == "local"
    assert options.results_dir == tmp_path / "out" and received["target"].dataset == "digits"
    assert f"settings {settings_hash(settings)}" in unwrapped(result.output)
    assert "1 of 1 checkpoint(s) done" in unwrapped(result.output)


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--shard", "4/4"], "estimate.shard"), (["--steps", "1,x"], "estimate.steps"),
     (["--executor", "dask"], "estimate.executor"), (["--every-nth", "2", "--steps", "1"], "only one")],
)  # fmt: skip
def test_bad_flags_exit_2_naming_the_setting(checkpoints, tmp_path, flags, message):
    result = _invoke("estimate-all", "--checkpoints-dir", str(checkpoints), "--results-dir", str(tmp_path / "r"), *flags)
    assert result.exit_code == 2
    assert message in unwrapped(result.output) and "Traceback" not in unwrapped(result.output)


def test_a_missing_checkpoints_dir_exits_2(tmp_path):
    result = _invoke("estimate-all", "--checkpoints-dir", str(tmp_path / "absent"), "--results-dir", str(tmp_path / "r"))
    assert result.exit_code == 2 and "does not exist" in unwrapped(result.output)


def test_a_corrupt_checkpoint_is_reported_and_exits_1(checkpoints, tmp_path):
    (checkpoints / "step_00000003.pt").write_bytes(b"\x00" * 100)
    for path in list(checkpoints.glob("*.pt"))[:3]:
        if path.name != "step_00000003.pt":
            path.unlink()
    result = _invoke("estimate-all", "--checkpoints-dir", str(checkpoints), "--results-dir", str(tmp_path / "r"), *FAST_FLAGS)
    assert result.exit_code == 1
    assert "1 failed" in unwrapped(result.output) and "step_00000003.pt" in unwrapped(result.output)
    assert "a rerun retries the failed checkpoints" in unwrapped(result.output)
    records = [json.loads(path.read_text()) for path in (tmp_path / "r").glob("*/step_*.json")]
    assert sorted(record["status"] for record in records) == ["done", "done", "done", "failed"]


# --- stopped at any moment


def _start(checkpoints: Path, results: Path) -> subprocess.Popen:
    command = llcv_command("estimate-all", "--checkpoints-dir", str(checkpoints), "--results-dir", str(results), *FAST_FLAGS)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())


def _wait_for_first_record(process: subprocess.Popen, folder: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not list(folder.glob("step_*.json")):
        if process.poll() is not None:
            raise AssertionError(f"estimate-all exited early ({process.returncode}): {process.communicate()[1]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no result file appeared")
        time.sleep(0.02)


def test_resume_after_kill_9_loses_nothing_and_redoes_nothing(checkpoints, tmp_path):
    results = tmp_path / "results"
    folder = results / settings_hash(fast_settings())
    process = _start(checkpoints, results)
    _wait_for_first_record(process, folder)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL

    every_json = [path for path in folder.glob("*.json")]
    for path in every_json:
        json.loads(path.read_text())  # no half-written file
    finished = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in folder.glob("step_*.json")}
    total = len(list(checkpoints.glob("*.pt")))
    assert 1 <= len(finished) < total, "the kill should land mid-run"

    result = _invoke("estimate-all", "--checkpoints-dir", str(checkpoints), "--results-dir", str(results), *FAST_FLAGS)
    assert result.exit_code == 0, result.output
    assert f"{total} of {total} checkpoint(s) done ({total - len(finished)} now, {len(finished)} before)" in unwrapped(result.output)
    assert "0 in progress elsewhere" in unwrapped(result.output)  # the dead worker's claim was taken over at once
    for name, (mtime, content) in finished.items():
        assert ((folder / name).stat().st_mtime_ns, (folder / name).read_bytes()) == (mtime, content)
    assert len(list(folder.glob("step_*.json"))) == total
    assert not list((folder / ".claims").glob("*.claim"))


def test_sigterm_stops_cleanly_with_a_summary_and_exit_143(checkpoints, tmp_path):
    results = tmp_path / "results"
    folder = results / settings_hash(fast_settings())
    process = _start(checkpoints, results)
    _wait_for_first_record(process, folder)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "estimate-all stopped" in unwrapped(stdout) and "left to do (rerun the same command)" in unwrapped(stdout)
    assert "terminated (SIGTERM)" in unwrapped(stderr)
    assert not list((folder / ".claims").glob("*.claim"))
