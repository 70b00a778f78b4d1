"""Tests for `llcv report` and llcv.figures.report: one self-contained, escaped HTML page per run or comparison."""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _helpers import copy_checkpoints, fake_record, fast_settings, unwrapped, use_steady_trials, write_fake_run
from llcv import LLCRecord
from llcv.calibration import SweepGrid, calibrate_sweep, output_dir, save_sweep
from llcv.cli import app
from llcv.estimation.run import estimate_all
from llcv.figures import write_report
from llcv.results import ResultsStore
from llcv.estimation.run_calibration import calibrate_run
from llcv.settings import EstimateSettings, SamplerSettings
from llcv.targets import Target

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 5 * 1024 * 1024
STEPS = [0, 1, 2, 4, 8, 16]
LLC = [1.0, 1.3, 2.0, None, 3.5, 3.0]  # step 4 failed
UNHEALTHY_STEP = 8
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Page(HTMLParser):
    """The page as a strict reader sees it: every element closed in order, every reference, each section's table rows."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.doctype, self.errors, self.stack = None, [], []
        self.references: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.images: list[str] = []
        self.rows: dict[str | None, list[list[str]]] = {}  # section id -> rows of data cells
        self.section_ids: list[str] = []
        self._section, self._row, self._cell = None, None, None
        self.feed(html)
        self.close()

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        for name in ("src", "href", "srcset", "action", "data", "poster", "background"):
            if name in attributes:
                self.references.append((tag, name, attributes[name] or ""))
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        if tag == "section":
            self._section = attributes.get("id")
            self.section_ids.append(self._section)
        elif tag == "tr":
            self._row = []
        elif tag == "td":
            self._cell = []
        if tag not in VOID_ELEMENTS:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID_ELEMENTS:
            self.errors.append(f"<{tag}/> is not a void element")
        self.handle_starttag(tag, attrs)
        if tag not in VOID_ELEMENTS:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID_ELEMENTS:
            self.errors.append(f"</{tag}> closes a void element")
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> while {self.stack[-3:]} are open")
            return
        self.stack.pop()
        if tag == "td" and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr":
            if self._row:  # header rows hold only <th>
                self.rows.setdefault(self._section, []).append(self._row)
            self._row = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def check_page(path: Path) -> Page:
    """What every report must be: small, valid HTML, self-contained, every figure an embedded PNG."""
    assert path.stat().st_size < MAX_BYTES
    html = path.read_text(encoding="utf-8")
    page = Page(html)
    assert page.doctype and page.doctype.lower() == "doctype html"
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    assert [ref for ref in page.references if not ref[2].startswith(("data:image/png;base64,", "#"))] == []
    for marker in ("http://", "https://", "<script", "<link", "@import", "<iframe"):
        assert marker not in html.lower(), marker
    assert page.images
    for source in page.images:
        assert base64.b64decode(source.removeprefix("data:image/png;base64,"), validate=True).startswith(PNG_SIGNATURE)
    return page


def _trace(llc: float, seed: int, chains: int = 2, draws: int = 12) -> list[list[float]]:
    return (llc + 0.2 * np.random.default_rng(seed).standard_normal((chains, draws))).tolist()


def fake_run(
    root: Path, *, estimated: int | None = None, digest: str = "abcdef012345", refined: bool = False, scale: float = 1.0
) -> Path:
    """Checkpoint files for STEPS and records with traces for the first ``estimated``; returns the results dir.

    Step 4 failed, step 8 is unhealthy; ``refined`` adds two blocks and a class at steps 8 and 16.
    """

    def records(path: Path, index: int, step: int, llc: float) -> list[dict]:
        unhealthy = step == UNHEALTHY_STEP
        record = fake_record(
            path, step, llc * scale, settings_hash=digest, healthy=not unhealthy,
            health_reasons=["the chains disagree: R-hat 1.42 > 1.1"] if unhealthy else [],
        )  # fmt: skip
        record["result"]["llc_trace"] = _trace(llc * scale, seed=index)
        record["result"]["versions"] = {"llcv": "0.4.0", "torch": "2.5.0", "devinterp": "1.3.2", "python": "3.11", "git_commit": "abc1234"}
        written = [record]
        if refined and step >= 8:
            for scope, kind, order in (("layer1", "block", 0), ("layer2", "block", 1), ("class=3", "class", 3)):
                part = fake_record(path, step, llc * 0.4 + order, settings_hash=digest, healthy=True)
                written.append({**part, "scope": scope, "scope_kind": kind, "scope_index": order})
        return written

    return write_fake_run(root, STEPS, LLC, records, estimated=estimated, digest=digest)


def write_sweep(checkpoint: Path, calibration_root: Path) -> Path:
    """A real `calibrate sweep` folder for ``checkpoint``: two step sizes, short chains."""
    target = Target(checkpoint).load()
    sweep = calibrate_sweep(
        target.model, target.dataset, SweepGrid([1e-5, 1e-4], [1000.0]), base=fast_settings(), device="cpu", checkpoint=checkpoint.name,
    )  # fmt: skip
    folder = output_dir(calibration_root, checkpoint)
    save_sweep(sweep, folder)
    return folder


def test_report_of_real_estimates_and_calibration(trained_run, tmp_path):
    _, run = trained_run
    checkpoints = copy_checkpoints(run.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 2, 5, 16])
    estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=tmp_path / "llc_estimations", device="cpu"))
    sweep = write_sweep(checkpoints / "step_00000016.pt", tmp_path / "calibration")  # beside the results: found by default

    result = write_report([tmp_path / "llc_estimations"], tmp_path / "report.html")

    assert result.path == tmp_path / "report.html" and result.sweeps == [sweep]
    page = check_page(result.path)
    assert [row[0] for row in page.rows["checkpoints"]] == [f"step_{step:08d}.pt" for step in (0, 2, 5, 16)]
    standard_errors = {path.stem: LLCRecord.read(path).llc_se for path in (tmp_path / "llc_estimations").glob("*/step_*.json")}
    assert {row[0][:-3]: row[4] for row in page.rows["checkpoints"]} == {name: format(se, ".2g") for name, se in standard_errors.items()}
    # the LLC figure, the sweep's heatmap and traces, one trace thumbnail per checkpoint
    assert len(page.images) == 1 + 2 + 4
    assert len(page.rows["calibration"]) == 2  # one row per (epsilon, gamma) with the rule's verdict
    verdicts = [row[-1] for row in page.rows["calibration"]]
    assert all(verdict == "★ recommended" or verdict == "qualifies" or verdict.startswith("✗") for verdict in verdicts)
    html = result.path.read_text()
    assert "smallcnn" in html and "synthetic" in html  # read from the run's last checkpoint
    assert ("Recommended:" in html) == any(verdict == "★ recommended" for verdict in verdicts)
    assert {"run", "figure", "checkpoints", "calibration", "traces", "provenance"} <= set(page.section_ids)
    assert "not estimated yet" not in html
    records = [json.loads(path.read_text()) for path in (tmp_path / "llc_estimations").glob("*/step_*.json")]
    ran_in = {record["result"]["precision"] for record in records}
    assert ran_in <= {"fp32", "bf16"} and all(precision in html for precision in ran_in)  # what the chains ran in (provenance)
    assert "2 chains × 12 draws after 0 burn-in steps" in html  # the sampler settings
    nbeta = format(128 / math.log(128), ".4g")  # fast_settings' default temperature: n / ln n of its 128 samples
    assert f"nβ = {nbeta} (n/ln n)" in html and f"{nbeta} (n/ln n)</dd>" in html  # the run's line, and its provenance
    assert "0 (set)</dd>" in html  # the burn-in each estimate ran, and how it was chosen


def test_the_report_shows_an_automatic_calibration_and_where_the_settings_came_from(trained_run, tmp_path, monkeypatch):
    _, run = trained_run
    use_steady_trials(monkeypatch, level=lambda settings: 5.0 if settings.batch_size == 64 else 7.0)  # the batch moves the LLC
    results = fake_run(tmp_path)
    calibrated = calibrate_run(run.checkpoints_dir, SamplerSettings(batch_size=64, num_samples=256), EstimateSettings(results_dir=results))
    ResultsStore(results, "abcdef012345").write_settings(SamplerSettings(num_draws=12), calibration=calibrated.settings_entry())

    result = write_report([results], tmp_path / "report.html")  # the calibration inside the results dir is found by default

    assert result.autos == [results / "calibration" / "step_00000016"] and result.sweeps == []
    page = check_page(result.path)
    assert len(page.images) == 1 + 2 + 5  # the LLC figure, the trials and their traces, a thumbnail per estimate
    sensitivity, trials = page.rows["calibration"][:3], page.rows["calibration"][3:]
    assert [row[0] for row in sensitivity] == ["halving gamma", "halving epsilon", "doubling the batch"]
    assert [row[-1] for row in sensitivity] == ["holds", "holds", "settings-dependent"] and sensitivity[2][1] == "64 → 128"
    assert len(trials) == len(calibrated.calibration.trials) and [row[-1] for row in trials].count("★ recommended") == 1
    html = " ".join(result.path.read_text().split())
    assert 'chosen by <code>llcv calibrate auto</code> on <span class="mono">step_00000016.pt</span> (<strong>settings-dependent: batch_size</strong>)' in html
    assert "<dt>settings chosen by</dt>" in html and "<dt>settings-dependent</dt><dd><strong>batch_size</strong></dd>" in html
    # the run may set its own draws (the demo does): the calibration is credited with what it chose
    assert "seed 0; ε, γ and the burn-in chosen by <code>llcv calibrate auto</code>" in html
    assert "The settings came from llcv calibrate auto on step_00000016.pt: halving gamma moves the LLC by" in html  # the reading
    assert "doubling the batch by +40% ± 0.1%; settings-dependent: batch_size" in html
    # a move that is a lower bound (its pair had not relaxed) reads as one in the table
    store = results / "calibration" / "step_00000016" / "calibration.json"
    stored = json.loads(store.read_text())
    stored["sensitivity"][2]["at_least"] = True
    store.write_text(json.dumps(stored))
    bound = check_page(write_report([results], tmp_path / "bound.html").path)
    assert "the changed trial had not relaxed" in bound.rows["calibration"][2][-1]  # beside its verdict
    assert bound.rows["calibration"][2][4].startswith("at least +2") and bound.rows["calibration"][2][5] == "at least +40% ± 0.1%"


def test_the_run_says_how_its_temperature_and_burn_in_were_chosen(tmp_path):
    from llcv.results import RecordResult
    from llcv.figures.report import _burnin_words

    automatic = RecordResult(burnin_steps=200, burnin_rule="auto")
    assert _burnin_words("auto", [automatic, automatic]) == "200 burn-in steps (automatic, 2 / (ε γ))"
    capped = RecordResult(burnin_steps=800, burnin_rule="auto-capped")
    assert _burnin_words("auto", [capped]) == "800 burn-in steps (automatic, 2 / (ε γ), cut short by its cap)"
    assert _burnin_words(100, [RecordResult(burnin_steps=100, burnin_rule="set")]) == "100 burn-in steps"
    # a folder from before llcv 0.10: nbeta null in its settings.json is the batch rule it ran
    results = fake_run(tmp_path)
    settings_file = next(results.glob("*/settings.json"))
    stored = json.loads(settings_file.read_text())
    stored["sampler"].update(nbeta=None, num_burnin_steps=0)
    settings_file.write_text(json.dumps(stored))
    html = " ".join(write_report([results], tmp_path / "old.html").path.read_text().split())
    assert "nβ = 11.5 (batch/ln batch)" in html and "draws after 0 burn-in steps" in html


def test_partial_results_name_what_is_missing(tmp_path):
    results = fake_run(tmp_path, estimated=3)
    result = write_report([results], tmp_path / "partial.html")
    page = check_page(result.path)
    assert [row[0] for row in page.rows["checkpoints"]] == ["step_00000000.pt", "step_00000001.pt", "step_00000002.pt"]
    assert result.runs[0].missing == ["step_00000004.pt", "step_00000008.pt", "step_00000016.pt"]
    text = " ".join(result.path.read_text().split())
    assert "3 checkpoints not estimated yet: <span class=\"mono\">step_00000004.pt, step_00000008.pt, step_00000016.pt</span>" in text


def test_health_failures_and_refined_scopes_are_shown(tmp_path):
    result = write_report([fake_run(tmp_path, refined=True)], tmp_path / "report.html")
    page = check_page(result.path)
    rows = {row[0]: row for row in page.rows["checkpoints"]}
    assert len(rows) == len(STEPS)
    assert rows["step_00000008.pt"][-2] == "unhealthy the chains disagree: R-hat 1.42 > 1.1"
    assert rows["step_00000004.pt"][-2] == "failed every chain diverged"
    assert rows["step_00000016.pt"][-2] == "healthy"
    html = result.path.read_text()
    assert '<tr class="unhealthy">' in html and '<tr class="failed">' in html
    assert [row[0] for row in page.rows["refined"]] == ["layer1", "layer2", "class=3"]
    assert "failed" in page.section_ids and "every chain diverged" in html
    assert len(page.images) == 1 + 5  # the figure, and a thumbnail per estimate with traces (not the failed one)
    assert "calibration" not in page.section_ids and result.sweeps == []  # no calibration folder: left out


def test_a_sweep_written_before_failed_check_still_renders(tmp_path):
    """A sweep.json of llcv 0.10: its rows record the rule they failed as text only (no ``failed_check``)."""
    common = dict(nbeta=10.0, num_burnin_steps=200, llc_std=0.1, llc_mcse=0.1, llc_se=0.1, llc_final=5.0, diverged=False,
                  negative_fraction=0.0, negative_chains=0.0, trace_drift=0.01, drift_z=0.5, ess=100.0)  # fmt: skip
    rows = [
        {**common, "epsilon": 1e-5, "gamma": 1000.0, "mala_acceptance": 0.95, "llc_mean": 5.0, "r_hat": 1.3, "qualifies": False, "reason": "r_hat > 1.1"},
        {**common, "epsilon": 1e-4, "gamma": 1000.0, "mala_acceptance": 0.5, "llc_mean": 5.2, "r_hat": 1.0, "qualifies": False,
         "reason": "mala_acceptance < 0.9"},
    ]  # fmt: skip
    sweep = {"format": "llcv-sweep", "format_version": 4, "complete": True, "checkpoint": "step_00000016.pt", "fingerprint": {},
             "rule": {"target_acceptance": 0.9, "max_negative_fraction": 0.0, "max_drift_z": 3.0, "max_r_hat": 1.1},
             "rows": rows, "traces": [[5.0, 5.0], [5.2, 5.2]], "recommended": None, "reason": "no combination qualifies"}  # fmt: skip
    folder = tmp_path / "calibration" / "step_00000016"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps(sweep))
    result = write_report([fake_run(tmp_path)], tmp_path / "report.html")
    assert result.sweeps == [folder]
    page = check_page(result.path)
    assert [row[-1] for row in page.rows["calibration"]] == ["✗ r_hat > 1.1", "✗ mala_acceptance < 0.9"]
    assert len(page.images) == 1 + 2 + 5  # the figure, the sweep's heatmap and traces, the thumbnails


def test_two_runs_side_by_side(tmp_path):
    first, second = fake_run(tmp_path / "seed0"), fake_run(tmp_path / "seed1", scale=1.4, digest="bbbbbbbbbbbb")
    result = write_report([first, second], tmp_path / "seeds.html", labels=["seed 0", "seed 1"])
    page = check_page(result.path)
    assert [run.label for run in result.runs] == ["seed 0", "seed 1"]
    assert [row[0] for row in page.rows["run"]] == ["seed 0", "seed 1"]  # the comparison table
    assert [row[1] for row in page.rows["run"]] == ["abcdef012345", "bbbbbbbbbbbb"]
    assert [row[-2:] for row in page.rows["run"]] == [["1 ± 0.1 at step 0", "3 ± 0.1 at step 16"], ["1.4 ± 0.1 at step 0", "4.2 ± 0.1 at step 16"]]
    assert len(page.rows["checkpoints"]) == 2 * len(STEPS)
    assert len(page.images) == 1 + 2 * 5
    html = result.path.read_text()
    assert 'id="run-1-checkpoints"' in html and 'id="run-2-checkpoints"' in html


def test_the_comparison_table_marks_an_unhealthy_first_or_last_estimate(tmp_path):
    first, second = fake_run(tmp_path / "seed0"), fake_run(tmp_path / "seed1", estimated=5, digest="bbbbbbbbbbbb")
    page = check_page(write_report([first, second], tmp_path / "seeds.html").path)
    assert page.rows["run"][0][-1] == "3 ± 0.1 at step 16"
    assert page.rows["run"][1][-1] == f"3.5 ± 0.1 at step {UNHEALTHY_STEP} unhealthy"  # steps 16 and up not estimated yet


def test_strings_from_files_are_escaped(tmp_path):
    results = fake_run(tmp_path, estimated=2)
    store = ResultsStore(results, "abcdef012345")
    evil = fake_record(tmp_path / "checkpoints" / "x.pt", 3, None, settings_hash="abcdef012345", status="failed",
                       error="<img src=x onerror=alert(2)> broke")  # fmt: skip
    evil["checkpoint"] = "<script>alert(1)</script>.pt"
    (store.folder / "evil.json").write_text(json.dumps(evil))
    result = write_report([results], tmp_path / "report.html", labels=["<b>run</b>"])
    page = check_page(result.path)
    html = result.path.read_text()
    assert "<script>" not in html and "<b>run</b>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.pt" in html and "&lt;img src=x onerror=alert(2)&gt; broke" in html
    assert "<script>alert(1)</script>.pt" in [row[0] for row in page.rows["checkpoints"]]  # shown as text


def test_cli_writes_the_report_and_bad_input_exits_2(tmp_path):
    results = fake_run(tmp_path)
    out = tmp_path / "pages" / "report.html"
    outcome = runner.invoke(app, ["report", "--results-dir", str(results), "--out", str(out)], catch_exceptions=False)
    assert outcome.exit_code == 0, outcome.output
    text = unwrapped(outcome.output)
    assert "6 checkpoint(s) with settings abcdef012345, 2 unhealthy or failed, none missing" in text and "wrote" in text
    check_page(out)
    for args, message in [
        (["--results-dir", str(tmp_path / "nothing")], "does not exist"),
        (["--results-dir", str(results), "--settings", "cccc"], "has no settings 'cccc'"),
        (["--results-dir", str(results), "--out", str(tmp_path / "report.png")], "ending in .html"),
        (["--results-dir", str(results), "--label", "a", "--label", "b"], "2 --label for 1 --results-dir"),
        (["--results-dir", str(results), "--calibration", str(tmp_path / "checkpoints")], "holds no sweep.json or calibration.json"),
    ]:
        bad = runner.invoke(app, ["report", *args, *([] if "--out" in args else ["--out", str(out)])])
        assert bad.exit_code == 2, bad.output
        assert message in unwrapped(bad.output) and "Traceback" not in bad.output


def _browser() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


@pytest.mark.skipif(_browser() is None, reason="chromium is not installed (apt-get install chromium): the report is not rendered in a real browser here")
def test_a_real_browser_renders_the_report(tmp_path):
    from PIL import Image

    page = write_report([fake_run(tmp_path, refined=True)], tmp_path / "report.html").path
    screenshot = tmp_path / "report.png"
    command = [_browser(), "--headless", "--disable-gpu", "--hide-scrollbars", f"--screenshot={screenshot}", "--window-size=1280,2400"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--no-sandbox")  # chromium refuses to run as root inside its sandbox
    completed = subprocess.run([*command, page.as_uri()], capture_output=True, text=True, timeout=180)
    assert screenshot.is_file(), completed.stderr[-2000:]
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 2400)
    colors = image.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 100  # text, badges and figures, not a blank page
    pixels = np.asarray(image)
    assert (pixels.min(axis=2) < 200).mean() > 0.02  # a real share of the page is drawn on
    assert (pixels[:300].min(axis=2) < 100).any()  # the heading is there, at the top
