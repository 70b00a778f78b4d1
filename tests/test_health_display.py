"""How estimates' health verdicts show: hollow markers in `llcv plot`'s figure, one line from the
command, and the demo's paragraph, which reads only the healthy estimates and names the others."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
from matplotlib.collections import PathCollection
from typer.testing import CliRunner

from _helpers import fake_record, unwrapped
from llcv.cli import app
from llcv.demo import read_figure
from llcv.health import HealthFailure
from llcv.figures.plotting import UNHEALTHY_LABEL, llc_figure
from llcv.results import LLCRecord
from llcv.results import ResultsStore
from llcv.settings import SamplerSettings

DIGEST = "abcdef012345"
STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]
LLC = [1.0, 1.1, 1.3, 2.0, 4.0, 4.6, 4.3, 3.2, 3.0]
R_HAT = "the chains disagree: R-hat 1.422 > 1.1"
ESS = "too few effective samples: ESS 82 < 100"
MALA = "MALA acceptance 0.620 < 0.9: epsilon is too large for the curvature"
# A failure as results since llcv 0.12 record it: its brief form is not in its sentence.
DRIFT = HealthFailure("drift", "the LLC drifts: late draws differ from early ones by +4.0 standard errors (limit 3)", "|drift z| 4.0 > 3")


def _with_failures(record: dict, failures: list[HealthFailure]) -> dict:
    """``record`` as llcv 0.12 writes it: its result's failed checks in every form, beside their sentences."""
    sentences = [failure.sentence for failure in failures]
    result = {**record["result"], "health_reasons": sentences, "health_failures": [dataclasses.asdict(failure) for failure in failures]}
    return {**record, "health_reasons": sentences, "result": result}


def _record(folder: Path, step: int, llc: float | None, **kwargs) -> dict:
    return fake_record(folder / f"step_{step:08d}.pt", step, llc, settings_hash=DIGEST, **kwargs)


def mixed_records(folder: Path) -> list[dict]:
    """Healthy records, two judged unhealthy (steps 8 and 64: 8's failures recorded in every form,
    64's by their sentence only, as before llcv 0.12), one written before health verdicts (step 1),
    one of those with a diverged chain (step 32), and a failure (step 4)."""
    records = []
    for step, llc in zip(STEPS, LLC):
        if step == 4:
            records.append(_record(folder, step, None, status="failed", error="every chain diverged"))
        elif step == 8:
            records.append(_with_failures(_record(folder, step, llc, healthy=False), [DRIFT, HealthFailure.from_sentence(ESS)]))
        elif step == 64:
            records.append(_record(folder, step, llc, healthy=False, health_reasons=[MALA]))
        elif step == 32:
            records.append(_record(folder, step, llc, diverged_chains=1))
        elif step == 1:
            records.append(_record(folder, step, llc))
        else:
            records.append(_record(folder, step, llc, healthy=True))
    return records


def write_run(root: Path, records: list[dict]) -> Path:
    """Checkpoint files and records under ``root``; returns the results folder."""
    checkpoints, results = root / "checkpoints", root / "results"
    checkpoints.mkdir(parents=True, exist_ok=True)
    store = ResultsStore(results, DIGEST)
    store.write_settings(SamplerSettings(num_draws=12))
    for record in records:
        Path(record["checkpoint_path"]).write_bytes(b"x")
        store.write_record(record)
    store.rebuild_summary()
    return results


def hollow_points(axis) -> list[tuple[float, float]]:
    """Positions of the markers drawn without a fill."""
    points = []
    for collection in axis.collections:
        if isinstance(collection, PathCollection):
            faces = np.asarray(collection.get_facecolor())
            if len(faces) == 0 or (faces[:, 3] == 0).all():
                points += [(float(x), float(y)) for x, y in collection.get_offsets()]
    return sorted(points)


def filled_points(axis) -> list[tuple[float, float]]:
    """Positions of the filled circles the curves carry (their markevery points)."""
    points = []
    for line in axis.get_lines():
        if line.get_marker() == "o" and line.get_markevery() is not None:
            xs, ys = line.get_xdata(), line.get_ydata()
            points += [(float(xs[index]), float(ys[index])) for index in line.get_markevery()]
    return sorted(points)


def legend_texts(axis) -> list[str]:
    return [text.get_text() for text in axis.get_legend().get_texts()]


def estimate_health(record: dict) -> tuple[bool | None, list[str]]:
    return LLCRecord.coerce(record).health


def test_the_health_verdict_of_old_and_new_records():
    folder = Path("/nowhere")
    assert estimate_health(_with_failures(_record(folder, 8, 4.0, healthy=False), [DRIFT])) == (False, [DRIFT])
    # before llcv 0.12 only the sentences: the brief form is cut from them
    assert estimate_health(_record(folder, 8, 4.0, healthy=False, health_reasons=[R_HAT, MALA])) == (False, [
        HealthFailure(None, R_HAT, "R-hat 1.422 > 1.1"), HealthFailure(None, MALA, "MALA acceptance 0.620 < 0.9"),
    ])  # fmt: skip
    assert estimate_health(_record(folder, 8, 4.0, healthy=True)) == (True, [])
    assert estimate_health(_record(folder, 8, 4.0)) == (None, [])  # written before verdicts: not judged
    said = "1 of 2 chains diverged"
    assert estimate_health(_record(folder, 8, 4.0, diverged_chains=1)) == (False, [HealthFailure("diverged", said, said)])
    assert estimate_health(_record(folder, 8, None, status="failed", error="boom")) == (False, [HealthFailure(None, "boom", "boom")])


def test_unhealthy_estimates_are_hollow_on_the_curve_and_in_the_legend(tmp_path):
    records = mixed_records(tmp_path)
    figure = llc_figure({"run": records}, log_x=True)
    top = figure.axes[0]
    # hollow exactly at the judged-unhealthy steps and at the old record with a diverged chain
    assert hollow_points(top) == [(8.0, 4.0), (32.0, 4.3), (64.0, 3.2)]
    # every other estimate (healthy or not judged) is filled; the failure has no point
    assert filled_points(top) == [(0.0, 1.0), (1.0, 1.1), (2.0, 1.3), (16.0, 4.6), (128.0, 3.0)]
    # the line still runs through all eight estimates
    (curve,) = [line for line in top.get_lines() if line.get_label() == "run"]
    assert list(curve.get_xdata()) == [0, 1, 2, 8, 16, 32, 64, 128]
    assert legend_texts(top) == ["run", "failed (no estimate)", UNHEALTHY_LABEL]
    # no separate ring for divergence any more
    assert "some chains diverged" not in legend_texts(top)


def test_healthy_and_unjudged_runs_have_no_hollow_markers(tmp_path):
    records = [_record(tmp_path, step, llc, healthy=True if step % 2 else None) for step, llc in zip(STEPS, LLC)]
    top = llc_figure({"run": records}).axes[0]
    assert hollow_points(top) == []
    assert len(filled_points(top)) == len(STEPS)
    assert legend_texts(top) == ["run"]


def test_refined_panels_draw_unhealthy_scopes_hollow(tmp_path):
    records = [_record(tmp_path, step, llc, healthy=True) for step, llc in zip(STEPS, LLC)]
    for step, llc in zip(STEPS, LLC):
        block = _record(tmp_path, step, llc / 2, healthy=step != 16, health_reasons=[] if step != 16 else [ESS])
        records.append({**block, "scope": "fc", "scope_kind": "block", "scope_index": 0})
    figure = llc_figure({"run": records})
    top, blocks = figure.axes[0], figure.axes[1]
    assert hollow_points(top) == []
    assert hollow_points(blocks) == [(16.0, 2.3)]
    assert (16.0, 2.3) not in filled_points(blocks) and len(filled_points(blocks)) == len(STEPS) - 1
    assert legend_texts(blocks)[-1] == "unhealthy: hollow"


def test_plot_says_how_many_checkpoints_are_unhealthy(tmp_path, isolated_cli):
    results = write_run(tmp_path / "mixed", mixed_records(tmp_path / "mixed" / "checkpoints"))
    out = tmp_path / "mixed.png"
    outcome = CliRunner().invoke(app, ["plot", "--results-dir", str(results), "--out", str(out)], catch_exceptions=False)
    assert outcome.exit_code == 0, outcome.output
    assert out.read_bytes().startswith(b"\x89PNG")
    text = unwrapped(outcome.output)
    assert (
        "4 of 9 checkpoints are unhealthy (hollow markers; × where there is no estimate): step 4 (every chain diverged), "
        "step 8 (|drift z| 4.0 > 3), step 32 (1 of 2 chains diverged), step 64 (MALA acceptance 0.620 < 0.9); "
        "see health_reasons in summary.csv"
    ) in text
    # summary.csv lists every reason in full, whichever form the record has them in
    with open(next(results.glob("*/summary.csv"))) as handle:
        reasons = {row["step"]: row["health_reasons"] for row in csv.DictReader(handle)}
    assert reasons["8"] == f"{DRIFT.sentence}; {ESS}" and reasons["64"] == MALA
    # --json prints its document and nothing else
    as_json = CliRunner().invoke(app, ["plot", "--results-dir", str(results), "--out", str(out), "--json"], catch_exceptions=False)
    assert json.loads(as_json.stdout)["figure"] == str(out)
    assert "unhealthy" not in as_json.output


def test_plot_lists_at_most_five_and_says_nothing_when_all_are_healthy_or_unjudged(tmp_path, isolated_cli):
    folder = tmp_path / "bad" / "checkpoints"
    bad = write_run(tmp_path / "bad", [_record(folder, step, llc, healthy=False, health_reasons=[ESS]) for step, llc in zip(STEPS, LLC)])
    outcome = CliRunner().invoke(app, ["plot", "--results-dir", str(bad), "--out", str(tmp_path / "bad.png")], catch_exceptions=False)
    text = unwrapped(outcome.output)
    assert "9 of 9 checkpoints are unhealthy (hollow markers): step 0 (ESS 82 < 100), step 1 (ESS 82 < 100)" in text
    assert "step 8 (ESS 82 < 100), and 4 more; see health_reasons in summary.csv" in text and "step 16 (" not in text
    folder = tmp_path / "good" / "checkpoints"
    good = write_run(tmp_path / "good", [_record(folder, step, llc, healthy=step > 8 or None) for step, llc in zip(STEPS, LLC)])
    outcome = CliRunner().invoke(app, ["plot", "--results-dir", str(good), "--out", str(tmp_path / "good.png")], catch_exceptions=False)
    assert outcome.exit_code == 0 and "unhealthy" not in outcome.output and "wrote" in outcome.output


def test_the_paragraph_reads_only_healthy_estimates_and_names_the_others(tmp_path):
    text = read_figure(mixed_records(tmp_path))
    # the trend and the largest change skip steps 8 and 32 (unhealthy) and 4 (failed)
    assert text.startswith("The LLC went from 1.00 at step 0 to 3.00 at step 128")
    assert "between steps 2 and 16 (+3.30)" in text
    assert "Not read: step 8 (|drift z| 4.0 > 3), step 32 (1 of 2 chains diverged) and step 64 (MALA acceptance 0.620 < 0.9), " \
           "whose estimates are unhealthy; they are hollow in the figure." in text  # fmt: skip
    assert "No estimate at step 4 (every chain diverged)." in text
    assert "4.30" not in text and "3.20" not in text  # their values are not read


def test_the_paragraph_of_old_records_is_unchanged_in_kind(tmp_path):
    text = read_figure([_record(tmp_path, step, llc) for step, llc in zip(STEPS, LLC)])
    assert text.startswith("The LLC went from 1.00 at step 0 to 3.00 at step 128") and "peaked at 4.60 at step 16" in text
    assert "Not read" not in text and "unhealthy" not in text


def test_too_few_healthy_estimates_say_so_and_name_the_unhealthy_ones(tmp_path):
    everything = [_record(tmp_path, step, llc, healthy=False, health_reasons=[R_HAT]) for step, llc in zip(STEPS[:3], LLC)]
    text = read_figure(everything)
    assert text == (
        "Too few trustworthy estimates to read a trend: none of the 3 estimates is healthy. Not read: step 0 "
        "(R-hat 1.422 > 1.1), step 1 (R-hat 1.422 > 1.1) and step 2 (R-hat 1.422 > 1.1), whose estimates are "
        "unhealthy; they are hollow in the figure."
    )
    one_left = read_figure([*everything[:2], _record(tmp_path, 64, 3.2, healthy=True)])
    assert one_left.startswith("Too few trustworthy estimates to read a trend: only 1 of the 3 estimates is healthy.")
    assert "step 0 (R-hat 1.422 > 1.1) and step 1 (R-hat 1.422 > 1.1), whose estimates are unhealthy" in one_left
    assert read_figure(everything[:1]).startswith("Too few trustworthy estimates to read a trend: the only estimate is unhealthy.")
    assert read_figure(everything[:0]) == "Too few checkpoints were estimated to read a trend."
