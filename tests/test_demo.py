"""`llcv demo --tiny`: the whole pipeline end to end, at CI size."""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from _helpers import unwrapped, use_steady_trials, without_whitespace
from llcv import demo
from llcv.cli import app
from test_report import check_page


def test_tiny_demo_runs_end_to_end_and_draws_its_figure(tmp_path, monkeypatch):
    trials = use_steady_trials(monkeypatch)  # the calibration's search runs; its trials' chains are stand-ins
    results = tmp_path / "demo"
    outcome = CliRunner().invoke(app, ["demo", "--tiny", "--results-dir", str(results), "--device", "cpu"])
    assert outcome.exit_code == 0, outcome.output
    figure = results / "llc.png"
    assert figure.read_bytes().startswith(b"\x89PNG")
    checkpoints = sorted((results / "checkpoints").glob("step_*.pt"))
    assert len(checkpoints) >= 4
    # calibrated once, on the last checkpoint, by what `estimate-all --calibrate` runs
    calibration = results / "llc_estimations" / "calibration" / checkpoints[-1].stem
    stored = json.loads((calibration / "calibration.json").read_text())
    assert len(trials.calls) >= len(stored["trials"]) > 0 and (calibration / "recommended.json").is_file()
    (folder,) = [path for path in (results / "llc_estimations").iterdir() if (path / "settings.json").is_file()]
    assert json.loads((folder / "settings.json").read_text())["calibration"]["reason"] == stored["reason"]
    records = [json.loads(path.read_text()) for path in folder.glob("step_*.json")]
    assert len(records) == len(checkpoints) and all(record["status"] == "done" for record in records)
    # on a CPU with two cores or more, two worker processes estimated the checkpoints
    workers = demo.CPU_WORKERS if (os.cpu_count() or 1) >= demo.CPU_WORKERS else 1
    assert len({record["worker"]["pid"] for record in records}) == workers
    assert {record["result"]["settings"]["epsilon"] for record in records} == {stored["recommended"]["epsilon"]}
    # The tiny demo's few draws usually leave every estimate unhealthy (ESS < 100), and then the
    # paragraph says it cannot read a trend instead of reading one (read_figure reads healthy points only).
    assert "Reading the figure" in outcome.stdout
    assert "The LLC went from" in outcome.stdout or "Too few trustworthy estimates to read a trend" in outcome.stdout
    # and where the settings came from, and how they hold
    reading = unwrapped(outcome.stdout.replace("│", ""))
    assert f"The settings came from llcv calibrate auto on {checkpoints[-1].name}: halving gamma moves the LLC by" in reading
    assert "none is settings-dependent" in reading
    # the report: named among the outputs, one row per checkpoint, the sweep included
    report = results / "report.html"
    assert str(report) in without_whitespace(outcome.stdout.replace("│", ""))
    page = check_page(report)
    assert [row[0] for row in page.rows["checkpoints"]] == [path.name for path in checkpoints]
    assert len(page.rows["calibration"]) == 3 + len(stored["trials"])  # the sensitivity, then the trials


def test_the_demo_estimates_two_checkpoints_at_a_time_on_a_cpu_with_two_cores(monkeypatch):
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    assert demo.estimate_workers("cpu") == ["cpu", "cpu"]
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 1)
    assert demo.estimate_workers("cpu") is None  # one core: this process, as before
