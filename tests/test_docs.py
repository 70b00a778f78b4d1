"""The docs stay true: README/quickstart commands run, docs/cli.md matches the app, every --help has an example.

The documented commands are extracted, not copied: every `llcv` line of a shell code block
(continuation lines joined) and every inline `llcv ...` span that is an invocation (see
``_is_invocation``) in README.md and docs/quickstart.md. They run in order, in-process, in one
temporary working folder holding a copy of configs/ and a tiny CIFAR-10, each reduced by the
explicit table below so the whole walk takes seconds. `make` targets are left out: the suite
itself runs under `make test`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from _helpers import copy_checkpoints, use_steady_trials
from conftest import write_cifar10
from llcv.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS_WITH_COMMANDS = ["README.md", "docs/quickstart.md"]

# The reduction of each command: flags appended to the documented ones (Click keeps the last
# value of a repeated option, so these override the document's own). A command path missing
# here fails the test: add its reduction when the docs start showing it.
REDUCED_FLAGS: dict[tuple[str, ...], list[str]] = {
    # One epoch of the tiny CIFAR-10 (40 images), step 0 and the final step; smallcnn instead
    # of the config's resnet18 so that the later sampling takes a second, not a minute.
    ("train",): ["--epochs", "1", "--log-checkpoints", "2", "--model", "smallcnn", "--num-workers", "0",
                 "--batch-size", "16", "--device", "cpu"],
    # One grid point, one chain of 5 draws, full batches.
    ("calibrate", "sweep"): ["--epsilons", "1e-6", "--gammas", "1000", "--num-chains", "1", "--num-draws", "5",
                             "--num-burnin-steps", "2", "--num-samples", "40", "--batch-size", "40", "--device", "cpu"],
    ("calibrate", "curve"): ["--num-draws", "5", "--num-burnin-steps", "2", "--num-samples", "40", "--batch-size", "40",
                             "--device", "cpu"],
    ("calibrate", "chains"): ["--num-chains", "2", "--num-draws", "5", "--num-burnin-steps", "2", "--num-samples", "40",
                              "--batch-size", "40", "--device", "cpu"],
    ("estimate",): ["--num-chains", "2", "--num-draws", "5", "--num-burnin-steps", "2", "--num-samples", "40",
                    "--batch-size", "40", "--device", "cpu"],
    ("estimate-all",): ["--num-chains", "2", "--num-draws", "5", "--num-burnin-steps", "2", "--num-samples", "40",
                        "--batch-size", "40", "--device", "cpu"],
    # and the trials' chains are stand-ins, see _helpers.use_steady_trials
    ("calibrate", "auto"): ["--budget-steps", "4000", "--num-samples", "40", "--batch-size", "40", "--device", "cpu"],
    ("plot",): [],
    ("demo",): ["--tiny", "--device", "cpu"],
    # and `known_cases` is patched to one small regression case, see _one_known_case
    ("selftest",): ["--device", "cpu"],
}
# `estimate-all --calibrate`: the calibration sets the burn-in, so the reduction gives none.
REDUCED_CALIBRATED = ["--num-chains", "2", "--num-draws", "5", "--budget-steps", "4000", "--num-samples", "40", "--batch-size", "40",
                      "--device", "cpu"]  # fmt: skip
# A sweep this small may find no qualifying pair (exit 1, no recommended.json): later commands
# then run without their `--from-calibration FILE`.
MAY_EXIT_1 = {("calibrate", "sweep")}
# Placeholders the prose uses for a value of the reader's choosing.
PLACEHOLDERS = {"DIR": "results/demo-elsewhere"}
# Inline spans that are a bare command name are invocations only for these commands, which
# the docs tell the reader to run as they are; `llcv train` in the command table names a command.
BARE_INVOCATIONS = {("demo",), ("selftest",)}

CHECKPOINT_NAME = re.compile(r"step_\d{8}")
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`(llcv [^`\n]+)`")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}


def _command_path(argv: list[str]) -> tuple[str, ...]:
    return tuple(argv[:2]) if argv[:1] == ["calibrate"] else tuple(argv[:1])


def _is_invocation(argv: list[str]) -> bool:
    """A span with arguments is an invocation; a bare name only for BARE_INVOCATIONS."""
    return len(argv) > len(_command_path(argv)) or _command_path(argv) in BARE_INVOCATIONS


def documented_commands(document: Path) -> list[list[str]]:
    """The `llcv` commands of a Markdown file in reading order, as argv lists without `llcv`."""
    text = document.read_text(encoding="utf-8")
    found: list[tuple[int, list[str]]] = []
    fences = list(FENCE.finditer(text))
    for fence in fences:
        if fence.group(1) not in SHELL_LANGUAGES:
            continue
        logical = fence.group(2).replace("\\\n", " ")
        for offset, line in enumerate(logical.splitlines()):
            line = line.strip().removeprefix("$ ")
            if line.startswith("llcv "):
                found.append((fence.start() + offset, shlex.split(line, comments=True)[1:]))
    outside = [(0, len(text))]
    for fence in fences:
        start, _ = outside.pop()
        outside += [(start, fence.start()), (fence.end(), len(text))]
    for start, end in outside:
        for span in INLINE.finditer(text, start, end):
            argv = shlex.split(span.group(1))[1:]
            if _is_invocation(argv):
                found.append((span.start(), argv))
    return [argv for _, argv in sorted(found, key=lambda item: item[0])]


def _all_documented_commands() -> list[tuple[str, list[str]]]:
    seen, commands = set(), []
    for name in DOCS_WITH_COMMANDS:
        for argv in documented_commands(REPO / name):
            if tuple(argv) not in seen:
                seen.add(tuple(argv))
                commands.append((name, argv))
    return commands


def _option(argv: list[str], flag: str, default: str | None = None) -> str | None:
    """The last value of ``flag`` in argv (Click's rule for a repeated option)."""
    value = default
    for index, token in enumerate(argv):
        if token == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif token.startswith(flag + "="):
            value = token.split("=", 1)[1]
    return value


def _without_option(argv: list[str], flag: str) -> list[str]:
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == flag:
            skip = True
        elif not token.startswith(flag + "="):
            kept.append(token)
    return kept


@dataclasses.dataclass
class _Walk:
    """What earlier commands left for later ones."""

    final_checkpoint: str | None = None  # stem of the last checkpoint the latest train wrote
    calibration_failed: bool = False


def _reduce(argv: list[str], walk: _Walk) -> list[str]:
    path = _command_path(argv)
    assert path in REDUCED_FLAGS, f"`llcv {' '.join(argv)}` is documented but tests/test_docs.py has no reduction for {path}"
    reduced = [PLACEHOLDERS.get(token, token) for token in argv]
    if any(CHECKPOINT_NAME.search(token) for token in reduced):
        assert walk.final_checkpoint, f"`llcv {' '.join(argv)}` names a checkpoint before any documented train wrote one"
        reduced = [CHECKPOINT_NAME.sub(walk.final_checkpoint, token) for token in reduced]
    if walk.calibration_failed:
        reduced = _without_option(reduced, "--from-calibration")
    return reduced + (REDUCED_CALIBRATED if path == ("estimate-all",) and "--calibrate" in reduced else REDUCED_FLAGS[path])


def _check_outputs(argv: list[str], exit_code: int, output: str, walk: _Walk) -> None:
    """The files each command promises, and what later commands need from them."""
    path = _command_path(argv)
    if path == ("train",):
        checkpoints = sorted(Path(_option(argv, "--checkpoints-dir", "checkpoints")).glob("step_*.pt"))
        assert [c.name for c in checkpoints][:1] == ["step_00000000.pt"] and len(checkpoints) >= 2, checkpoints
        walk.final_checkpoint = checkpoints[-1].stem
    elif path[0] == "calibrate":
        folder = Path(_option(argv, "--results-dir", "results/calibration")) / Path(_option(argv, "--checkpoint")).stem
        produced = {"auto": "calibration.json", "sweep": "sweep.json", "curve": "curve.json", "chains": "chains.json"}[path[1]]
        assert (folder / produced).is_file(), f"no {produced} in {folder}"
        if path == ("calibrate", "sweep"):
            assert (folder / "recommended.json").is_file() == (exit_code == 0)
            walk.calibration_failed = exit_code == 1
    elif path == ("estimate-all",):
        checkpoints = sorted(Path(_option(argv, "--checkpoints-dir")).glob("step_*.pt"))
        results = Path(_option(argv, "--results-dir", "results/llc_estimations"))
        (folder,) = [p for p in results.iterdir() if (p / "settings.json").is_file()]
        assert (folder / "summary.csv").is_file()
        assert sorted(p.name for p in folder.glob("step_*.json")) == [c.stem + ".json" for c in checkpoints]
        if "--calibrate" in argv:  # calibrated on the run's last checkpoint, and the settings say so
            assert (results / "calibration" / checkpoints[-1].stem / "recommended.json").is_file()
            assert "calibration" in json.loads((folder / "settings.json").read_text())
    elif path == ("plot",):
        figure = Path(_option(argv, "--out", "results/llc_plots/llc.png"))
        assert figure.read_bytes().startswith(b"\x89PNG"), figure
    elif path == ("demo",):
        assert (Path(_option(argv, "--results-dir", "results/demo")) / "llc.png").is_file()
    elif path == ("selftest",):
        assert "regression-d10" in output


def _one_known_case(quick: bool = False):
    """One regression case that passes at full-size tolerance in a quarter of a second."""
    from llcv.known_models import regression_case

    return [dataclasses.replace(regression_case(d=10), num_chains=4, num_draws=300, num_burnin_steps=100)]


def test_the_docs_show_the_commands_this_test_expects():
    paths = {_command_path(argv) for _, argv in _all_documented_commands()}
    # If this fails because the docs changed, the walk below still covers whatever they show now;
    # update the set so that a command silently dropping out of extraction is noticed.
    assert {("train",), ("calibrate", "sweep"), ("estimate-all",), ("plot",), ("demo",), ("selftest",)} <= paths


def test_every_documented_command_runs_in_reduced_form(tmp_path, monkeypatch):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    write_cifar10(tmp_path / "data" / "cifar10-python")  # where configs/cifar10-*.toml look
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("llcv.selftest.known_cases", _one_known_case)
    use_steady_trials(monkeypatch)  # calibrate auto's search runs (estimate-all --calibrate, demo); its trials' chains are stand-ins
    runner, walk = CliRunner(), _Walk()
    for document, argv in _all_documented_commands():
        reduced = _reduce(argv, walk)
        outcome = runner.invoke(app, reduced)
        allowed = {0, 1} if _command_path(argv) in MAY_EXIT_1 else {0}
        shown = f"{document}: llcv {shlex.join(argv)}\nran as: llcv {shlex.join(reduced)}\n{outcome.output}"
        assert outcome.exit_code in allowed, shown
        _check_outputs(reduced, outcome.exit_code, outcome.output, walk)


def _command_paths(group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in getattr(group, "commands", {}).items():
        paths += _command_paths(command, prefix + (name,))
    return paths


@pytest.mark.parametrize("path", _command_paths(typer.main.get_command(app)), ids=lambda path: " ".join(path) or "llcv")
def test_every_help_has_an_example(path):
    outcome = CliRunner().invoke(app, [*path, "--help"])
    assert outcome.exit_code == 0, outcome.output
    assert "Example" in outcome.output


def test_cli_md_matches_the_app(tmp_path):
    generated = tmp_path / "cli.md"
    command = [sys.executable, "-m", "typer", "llcv.cli", "utils", "docs", "--name", "llcv", "--output", str(generated)]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    assert generated.read_text() == (REPO / "docs" / "cli.md").read_text(), (
        "docs/cli.md is out of date with llcv/cli.py: run `make docs` and commit docs/cli.md"
    )


# --json (docs/conventions.md): on every command whose output is data, stdout is one JSON
# document and nothing else. train and demo write files and prose, not data.
DATA_COMMANDS = {("estimate",), ("estimate-all",), ("calibrate", "auto"), ("calibrate", "sweep"), ("calibrate", "curve"),
                 ("calibrate", "chains"), ("plot",), ("selftest",)}


def test_exactly_the_data_commands_have_json():
    root = typer.main.get_command(app)
    with_json = set()
    for path in _command_paths(root):
        command = root
        for name in path:
            command = command.commands[name]
        if any("--json" in getattr(param, "opts", ()) for param in command.params):
            with_json.add(path)
    assert with_json == DATA_COMMANDS


def test_json_output_is_only_json(trained_run, tmp_path, monkeypatch):
    _, run = trained_run
    checkpoints = copy_checkpoints(run.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 8, 16])
    final = str(checkpoints / "step_00000016.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("llcv.selftest.known_cases", _one_known_case)
    use_steady_trials(monkeypatch)
    sample = ["--num-draws", "5", "--num-burnin-steps", "2", "--num-samples", "64", "--batch-size", "64", "--device", "cpu"]
    one_point = ["--epsilon", "1e-5", "--gamma", "1000"]
    commands = {
        ("estimate",): ["estimate", "--checkpoint", final, *one_point, "--num-chains", "2", *sample],
        ("estimate-all",): ["estimate-all", "--checkpoints-dir", str(checkpoints), *one_point, "--num-chains", "2", *sample],
        ("plot",): ["plot", "--out", "llc.png"],
        ("calibrate", "auto"): ["calibrate", "auto", "--checkpoint", final, "--budget-steps", "4000", "--num-samples", "64",
                                "--batch-size", "32", "--device", "cpu"],
        ("calibrate", "sweep"): ["calibrate", "sweep", "--checkpoint", final, "--epsilons", "1e-5", "--gammas", "1000",
                                 "--num-chains", "1", *sample],
        ("calibrate", "curve"): ["calibrate", "curve", "--checkpoint", final, *one_point, *sample],
        ("calibrate", "chains"): ["calibrate", "chains", "--checkpoint", final, *one_point, "--num-chains", "2", *sample],
        ("selftest",): ["selftest", "--device", "cpu"],
    }
    expected_key = {("estimate",): "llc_mean", ("estimate-all",): "computed", ("plot",): "figure", ("calibrate", "auto"): "trials",
                    ("calibrate", "sweep"): "rows", ("calibrate", "curve"): "verdict", ("calibrate", "chains"): "running_mean"}
    assert set(commands) == DATA_COMMANDS
    for path, argv in commands.items():
        outcome = CliRunner().invoke(app, [*argv, "--json"])
        allowed = {0, 1} if path in MAY_EXIT_1 else {0}
        assert outcome.exit_code in allowed, f"llcv {shlex.join(argv)} --json\n{outcome.output}"
        payload = json.loads(outcome.stdout)  # fails unless stdout is exactly one JSON document
        if path == ("selftest",):
            assert payload["cases"][0]["name"] == "regression-d10" and payload["families"][0]["family"] == "regression"
        else:
            assert expected_key[path] in payload, (path, sorted(payload))
    plotted = json.loads(CliRunner().invoke(app, ["plot", "--out", "llc.png", "--json"]).stdout)
    (run_summary,) = plotted["runs"].values()
    assert run_summary["num_records"] == 3 and isinstance(run_summary["transitions"], list)


def test_verbose_shows_the_resolved_settings_of_every_command(tmp_path, monkeypatch):
    """`llcv -v COMMAND` prints the resolved settings before any work (docs/conventions.md).

    Each command is stopped right after that point: a missing input, or its library entry
    patched to fail, so nothing is trained or sampled.
    """
    from llcv.errors import LLCVError

    def stop(*args, **kwargs):
        raise LLCVError("stopped by the test")

    for entry in ("llcv.training.train", "llcv.selftest.run_selftest", "llcv.demo.run_demo"):
        monkeypatch.setattr(entry, stop)
    monkeypatch.chdir(tmp_path)
    missing = ["--checkpoint", "missing.pt"]
    commands = {
        ("train",): ["train"], ("estimate",): ["estimate", *missing], ("estimate-all",): ["estimate-all", "--checkpoints-dir", "missing"],
        ("calibrate", "auto"): ["calibrate", "auto", *missing],
        ("calibrate", "sweep"): ["calibrate", "sweep", *missing], ("calibrate", "curve"): ["calibrate", "curve", *missing],
        ("calibrate", "chains"): ["calibrate", "chains", *missing], ("plot",): ["plot"], ("report",): ["report"], ("selftest",): ["selftest"], ("demo",): ["demo"],
    }  # fmt: skip
    root = typer.main.get_command(app)
    assert set(commands) == {path for path in _command_paths(root) if path and path != ("calibrate",)}
    for argv in commands.values():
        outcome = CliRunner().invoke(app, ["-v", *argv])
        assert outcome.exit_code in (1, 2) and "resolved settings" in outcome.stderr, (argv, outcome.output)
