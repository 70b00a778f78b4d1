"""Tests for llcv.figures.runs: one run type read from a results folder, and the same verdicts in the plot and the report."""

from __future__ import annotations

import html
import shutil
from pathlib import Path

import numpy as np
from matplotlib.collections import PathCollection
from typer.testing import CliRunner

from _helpers import fake_record, unwrapped, write_fake_run
from llcv.cli import app
from llcv.figures import write_report
from llcv.results import ResultsStore, find_transitions
from llcv.figures.runs import llc_figure_of, plot_runs, read_run
from llcv.settings import PlotSettings, SamplerSettings

FIXTURES = Path(__file__).parent / "fixtures"
DIGEST = "abcdef012345"
STEPS = [0, 1, 2, 4, 8, 16, 32, 64]
LLC = [1.0, 1.1, 1.3, None, 4.0, 4.6, 4.3, 3.2]  # step 4 failed
R_HAT = "the chains disagree: R-hat 1.422 > 1.1"


def mixed_records(path: Path, index: int, step: int, llc: float) -> list[dict]:
    """Healthy whole-model records except: step 1 written before health verdicts (not judged),
    step 8 judged unhealthy, step 32 before verdicts with a diverged chain; a block at every step,
    unhealthy at step 16."""
    if step == 1:
        whole = fake_record(path, step, llc, settings_hash=DIGEST)
    elif step == 32:
        whole = fake_record(path, step, llc, settings_hash=DIGEST, diverged_chains=1)
    else:
        whole = fake_record(path, step, llc, settings_hash=DIGEST, healthy=step != 8, health_reasons=[R_HAT] if step == 8 else [])
    block = fake_record(path, step, llc / 2, settings_hash=DIGEST, healthy=step != 16, health_reasons=[R_HAT] if step == 16 else [])
    return [whole, {**block, "scope": "fc", "scope_kind": "block", "scope_index": 0}]


def mixed_run(root: Path, estimated: int | None = None) -> Path:
    return write_fake_run(root, STEPS, LLC, mixed_records, estimated=estimated)


def hollow_points(axis) -> list[float]:
    """The x of every marker drawn without a fill (the figure's unhealthy estimates)."""
    xs = []
    for collection in axis.collections:
        faces = np.asarray(collection.get_facecolor())
        if isinstance(collection, PathCollection) and (len(faces) == 0 or (faces[:, 3] == 0).all()):
            xs += [float(x) for x, _ in collection.get_offsets()]
    return sorted(xs)


def test_a_run_holds_its_settings_folder_records_missing_checkpoints_and_transitions(tmp_path):
    results = mixed_run(tmp_path, estimated=7)
    other = ResultsStore(results, "bbbbbbbbbbbb")
    other.write_settings(SamplerSettings(num_draws=24))
    other.write_record(fake_record(tmp_path / "checkpoints" / "step_00000000.pt", 0, 1.0, settings_hash="bbbbbbbbbbbb"))

    run = read_run(results, "mine", settings_hash="abc")
    assert (run.label, run.settings_hash, run.asked, run.other_hashes) == ("mine", DIGEST, True, ("bbbbbbbbbbbb",))
    assert run.folder == results / DIGEST and run.settings["sampler"]["num_draws"] == 12
    assert [record.step for record in run.whole] == [0, 1, 2, 4, 8, 16, 32]
    assert len(run.records) == 7 + 6 and run.refined_scopes == ["fc"]  # the failed step 4 has no block record
    assert [record.step for record in run.failed] == [4]
    assert run.missing == ["step_00000064.pt"]
    assert run.transitions == find_transitions(run.records) and run.transitions

    newest = read_run(results, "mine")  # the settings written last
    assert (newest.settings_hash, newest.asked, newest.other_hashes) == ("bbbbbbbbbbbb", False, (DIGEST,))


def test_unhealthy_is_each_whole_model_records_own_verdict_failures_included(tmp_path):
    run = read_run(mixed_run(tmp_path), "run")
    unhealthy = {record.step: [failure.sentence for failure in record.health[1]] for record in run.unhealthy}
    # step 1 carries no verdict and is read; the block unhealthy at step 16 is not the whole model
    assert unhealthy == {4: ["every chain diverged"], 8: [R_HAT], 32: ["1 of 2 chains diverged"]}


def test_the_plot_its_figure_and_the_report_name_the_same_estimates_not_to_read(tmp_path, isolated_cli):
    results = mixed_run(tmp_path)
    plotted = plot_runs([results], PlotSettings(out=tmp_path / "llc.png"))
    reported = write_report([results], tmp_path / "report.html")
    assert [record.step for record in plotted.runs[0].unhealthy] == [record.step for record in reported.runs[0].unhealthy] == [4, 8, 32]
    # hollow in the figure: the unhealthy ones with an estimate (the failed step 4 is a cross)
    figure = llc_figure_of(plotted.runs, PlotSettings(), mark_transitions=False)
    assert hollow_points(figure.axes[0]) == [8.0, 32.0]
    assert hollow_points(figure.axes[1]) == [16.0]  # the block's own verdict, in its panel

    named = "step 4 (every chain diverged), step 8 (R-hat 1.422 > 1.1), step 32 (1 of 2 chains diverged)"
    plot_text = unwrapped(CliRunner().invoke(app, ["plot", "--results-dir", str(results), "--out", str(tmp_path / "p.png")]).output)
    assert f"3 of 8 checkpoints are unhealthy (hollow markers; × where there is no estimate): {named};" in plot_text
    assert f"Not to be read at face value: {html.escape(named)}." in " ".join(reported.path.read_text().split())
    report_text = unwrapped(CliRunner().invoke(app, ["report", "--results-dir", str(results), "--out", str(tmp_path / "r.html")]).output)
    assert "8 checkpoint(s) with settings abcdef012345, 3 unhealthy or failed, none missing" in report_text


def test_transitions_are_marked_only_when_asked(tmp_path):
    runs = [read_run(mixed_run(tmp_path), "run")]
    assert runs[0].transitions

    def legend(figure) -> list[str]:
        return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]

    assert "candidate transition" in legend(llc_figure_of(runs, PlotSettings(), mark_transitions=True))
    assert "candidate transition" not in legend(llc_figure_of(runs, PlotSettings(), mark_transitions=False))


def test_old_result_folders_load_plot_and_report(tmp_path, isolated_cli):
    unreadable = "checkpoint /llcv-fixture/checkpoints/step_00000003.pt is not a readable PyTorch checkpoint"
    # before llcv 0.4 only a diverged chain judges an estimate; llcv 0.5 recorded every check
    for name, unhealthy in (("results_pre04", {3: unreadable, 8: "1 of 2 chains diverged"}),
                            ("results_v05", {0: "the chains disagree: R-hat 1.693 > 1.1", 3: unreadable,
                                             8: "the chains disagree: R-hat 1.144 > 1.1"})):  # fmt: skip
        results = Path(shutil.copytree(FIXTURES / name, tmp_path / name))
        run = read_run(results, name)
        assert [record.step for record in run.whole] == [0, 3, 8] and run.missing is None  # the checkpoints are not here
        assert {record.step: record.health[1][0].sentence[: len(unhealthy[record.step])] for record in run.unhealthy} == unhealthy
        assert plot_runs([results], PlotSettings(out=tmp_path / f"{name}.png")).path.is_file()
        page = write_report([results], tmp_path / f"{name}.html")
        assert page.runs[0].settings_hash == run.settings_hash and "Not to be read at face value" in page.path.read_text()
