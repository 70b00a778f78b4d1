"""`llcv demo --tiny`: the whole pipeline end to end, at CI size."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from _helpers import without_whitespace
from llcv.cli import app
from test_report import check_page


def test_tiny_demo_runs_end_to_end_and_draws_its_figure(tmp_path):
    results = tmp_path / "demo"
    outcome = CliRunner().invoke(app, ["demo", "--tiny", "--results-dir", str(results), "--device", "cpu"])
    assert outcome.exit_code == 0, outcome.output
    figure = results / "llc.png"
    assert figure.read_bytes().startswith(b"\x89PNG")
    checkpoints = sorted((results / "checkpoints").glob("step_*.pt"))
    assert len(checkpoints) >= 4
    sweep = json.loads((results / "calibration" / checkpoints[-1].stem / "sweep.json").read_text())
    assert len(sweep["rows"]) == 2
    (folder,) = (results / "llc_estimations").iterdir()
    records = [json.loads(path.read_text()) for path in folder.glob("step_*.json")]
    assert len(records) == len(checkpoints) and all(record["status"] == "done" for record in records)
    # The tiny demo's few draws usually leave every estimate unhealthy (ESS < 100), and then the
    # paragraph says it cannot read a trend instead of reading one (read_figure reads healthy points only).
    assert "Reading the figure" in outcome.stdout
    assert "The LLC went from" in outcome.stdout or "Too few trustworthy estimates to read a trend" in outcome.stdout
    # the report: named among the outputs, one row per checkpoint, the sweep included
    report = results / "report.html"
    assert str(report) in without_whitespace(outcome.stdout.replace("│", ""))
    page = check_page(report)
    assert [row[0] for row in page.rows["checkpoints"]] == [path.name for path in checkpoints]
    assert len(page.rows["calibration"]) == 2
