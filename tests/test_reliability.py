"""Issue 7: untrusted checkpoints, bad files, bad settings, numerical and disk faults, signals, workers.

Every case in docs/reliability.md names its test; the last test here checks that each named test
exists. Commands run through typer's CliRunner, or in a forked child (a real process that
receives real signals, without a second torch import) where a signal or ``kill -9`` is the point.
"""

from __future__ import annotations

import ast
import csv
import errno
import json
import multiprocessing
import os
import re
import signal
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from _helpers import FAST_FLAGS, REPO, copy_checkpoints, fake_record, fast_settings, unwrapped, without_whitespace
from llcv import SamplerSettings, estimate_llc
from llcv.calibration import SweepGrid, calibrate_sweep
from llcv.checkpoints import checkpoint_name, list_checkpoints, read_checkpoint, save_checkpoint
from llcv.cli import app
from llcv.estimation.run import estimate_all
from llcv.fileio import WriteError, atomic_write_text, write_temporary
from llcv.models import build_model
from llcv.figure_files import save_figure
from llcv.progress import Reporter
from llcv.results import ResultsStore, load_results, settings_hash
from llcv.settings import EstimateSettings

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("isolated_cli")


def _invoke(*args: str):
    """Run a command; a traceback or an exception other than the exit is always a failure."""
    result = runner.invoke(app, [str(arg) for arg in args])
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _no_temporaries(folder: Path) -> None:
    assert not [path.name for path in Path(folder).rglob("*.tmp")], "a temporary file was left behind"


@pytest.fixture(scope="module")
def final_checkpoint(trained_run) -> Path:
    _, result = trained_run
    return result.checkpoints[-1]


# --- 1. untrusted checkpoints -----------------------------------------------------------------


class _WritesMarker:
    """A pickle payload that, if a plain unpickler loaded it, would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _malicious_copy(source: Path, destination: Path, marker: Path) -> Path:
    """A real llcv checkpoint with one extra key whose unpickling would run code."""
    payload = read_checkpoint(source)
    payload["hook"] = _WritesMarker(marker)
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, destination)
    return destination


READERS = {
    "train-resume": lambda path: ["train", "--resume-from-checkpoint", path],
    "estimate": lambda path: ["estimate", "--checkpoint", path, "--device", "cpu"],
    "calibrate-sweep": lambda path: ["calibrate", "sweep", "--checkpoint", path, "--device", "cpu"],
    "calibrate-curve": lambda path: ["calibrate", "curve", "--checkpoint", path, "--device", "cpu"],
    "calibrate-chains": lambda path: ["calibrate", "chains", "--checkpoint", path, "--device", "cpu"],
}


def test_every_torch_load_in_llcv_is_weights_only_and_no_plain_unpickler_is_used():
    for path in sorted((REPO / "llcv").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            called = ast.unparse(node.func)
            if called.endswith("torch.load"):
                options = {keyword.arg: ast.unparse(keyword.value) for keyword in node.keywords}
                assert options.get("weights_only") == "True", f"{path.name}:{node.lineno}: torch.load without weights_only=True"
            assert called not in ("pickle.load", "pickle.loads", "torch.serialization.load"), f"{path.name}:{node.lineno}: {called}"


@pytest.mark.parametrize("command", READERS, ids=list(READERS))
def test_a_checkpoint_that_would_run_code_is_refused_by_every_command(command, final_checkpoint, tmp_path):
    marker = tmp_path / "marker"
    evil = _malicious_copy(final_checkpoint, tmp_path / "downloaded" / "step_00000016.pt", marker)
    result = _invoke(*READERS[command](evil))
    assert result.exit_code == 2, result.output
    assert without_whitespace(f"error: checkpoint {evil} was refused") in without_whitespace(result.output)
    assert "weights_only=True" in unwrapped(result.output) and "exec" in unwrapped(result.output)
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()


# --- 2. bad files in a checkpoints folder --------------------------------------------------------


def _llcv_payload(source: Path) -> dict:
    """A checkpoint's content without the markers save_checkpoint adds."""
    payload = read_checkpoint(source)
    for key in ("format", "format_version", "llcv_version", "created"):
        payload.pop(key)
    return payload


@pytest.fixture(scope="module")
def messy(trained_run, tmp_path_factory) -> dict:
    """Two good checkpoints among every kind of bad file; returns the folder, the marker and the expected errors."""
    _, result = trained_run
    root = tmp_path_factory.mktemp("messy")
    folder = copy_checkpoints(result.checkpoints_dir, root / "checkpoints", steps=[0, 16])
    good = folder / checkpoint_name(16)
    marker = root / "marker"
    (folder / checkpoint_name(1)).write_bytes(b"")
    (folder / checkpoint_name(2)).write_bytes(good.read_bytes()[:5000])
    ten_classes = _llcv_payload(good)
    ten_classes["model"] = {**ten_classes["model"], "num_classes": 10}
    ten_classes["state_dict"] = build_model("smallcnn", 10, 3, ten_classes["model"]["stem"]).state_dict()
    save_checkpoint(folder / checkpoint_name(3), ten_classes)
    missing = _llcv_payload(good)
    missing["state_dict"] = {key: value for key, value in missing["state_dict"].items() if key != "conv1.weight"}
    save_checkpoint(folder / checkpoint_name(5), missing)
    extra = _llcv_payload(good)
    extra["state_dict"] = {**extra["state_dict"], "head.extra": torch.zeros(2)}
    save_checkpoint(folder / checkpoint_name(7), extra)
    _malicious_copy(good, folder / checkpoint_name(8), marker)
    other = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(2 * 14 * 14, 4))
    torch.save(other.state_dict(), folder / "other_architecture.pth")
    (folder / "notes.txt").write_text("learning rate sweep, run 3\n")
    (folder / "loss.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    expected = {
        checkpoint_name(1): "is empty",
        checkpoint_name(2): "is not a readable PyTorch checkpoint (truncated or another kind of file)",
        checkpoint_name(3): "has 10 outputs but dataset 'synthetic' has 4 classes",
        checkpoint_name(5): "does not fit the model (SmallCNN): missing keys conv1.weight",
        checkpoint_name(7): "does not fit the model (SmallCNN): unexpected keys head.extra",
        checkpoint_name(8): "was refused: it holds Python objects beyond tensors",
        "other_architecture.pth": "does not fit the model (SmallCNN): missing keys",
    }
    return {"folder": folder, "marker": marker, "expected": expected, "good": [checkpoint_name(0), checkpoint_name(16)]}


def test_estimate_all_records_each_bad_file_as_failed_and_goes_on(messy, tmp_path):
    folder, expected = messy["folder"], messy["expected"]
    args = ["estimate-all", "--checkpoints-dir", folder, "--results-dir", tmp_path / "results", "--model", "smallcnn", *FAST_FLAGS]
    result = _invoke(*args)
    assert result.exit_code == 1, result.output
    output = unwrapped(result.output)
    assert f"2 of {2 + len(expected)} checkpoint(s) done (2 now, 0 before), {len(expected)} failed" in output
    for name, problem in expected.items():
        assert without_whitespace(f"failed {name}: checkpoint {folder / name} {problem}") in without_whitespace(result.output), name
    assert "notes.txt" not in output and "loss.png" not in output  # unrelated files are ignored, not failures
    assert not messy["marker"].exists(), "the payload ran"

    records = {record.checkpoint: record for record in load_results(tmp_path / "results")}
    assert set(records) == {*expected, *messy["good"]}
    for name in messy["good"]:
        assert records[name].status == "done" and records[name].result.llc_mean is not None
    for name, problem in expected.items():
        record = records[name]
        assert record.status == "failed" and record.result is None and problem in record.error
        assert "\n" not in record.error  # one line
    summary = list(csv.DictReader((tmp_path / "results" / settings_hash(fast_settings()) / "summary.csv").open()))
    assert sorted(row["status"] for row in summary) == ["done"] * 2 + ["failed"] * len(expected)

    again = _invoke(*args)  # a rerun skips the good ones and retries only the failures
    assert again.exit_code == 1
    assert f"(0 now, 2 before), {len(expected)} failed" in unwrapped(again.output)


BAD_FILES = ["step_00000001.pt", "step_00000002.pt", "step_00000003.pt", "step_00000005.pt", "step_00000007.pt",
             "step_00000008.pt", "other_architecture.pth", "notes.txt", "loss.png"]  # fmt: skip


@pytest.mark.parametrize("name", BAD_FILES)
def test_estimate_names_the_file_and_the_problem(messy, name):
    path = messy["folder"] / name
    problem = messy["expected"].get(name, "is not a readable PyTorch checkpoint")
    result = _invoke("estimate", "--checkpoint", path, "--model", "smallcnn", *FAST_FLAGS)
    assert result.exit_code == 2, result.output
    assert without_whitespace(f"error: checkpoint {path} {problem}") in without_whitespace(result.output)
    assert not messy["marker"].exists()


# --- 3. bad settings and paths -------------------------------------------------------------------


def _config(tmp: Path, text: str) -> Path:
    path = tmp / "experiment.toml"
    path.write_text(text)
    return path


BAD_SETTINGS = {
    # name: (command line given tmp, a file and a checkpoint; texts the message must hold)
    "epsilon-zero": (lambda tmp, file, ckpt: ["estimate", "--checkpoint", ckpt, "--epsilon", "0"], ["sampler.epsilon", "greater than 0"]),
    "epsilon-negative": (lambda tmp, file, ckpt: ["calibrate", "curve", "--checkpoint", ckpt, "--epsilon", "-1e-4"], ["sampler.epsilon"]),
    "epsilon-inf": (lambda tmp, file, ckpt: ["estimate-all", "--checkpoints-dir", tmp, "--epsilon", "inf"], ["sampler.epsilon", "finite"]),
    "num-chains-zero": (lambda tmp, file, ckpt: ["estimate-all", "--checkpoints-dir", tmp, "--num-chains", "0"], ["sampler.num_chains"]),
    "unknown-sampler": (lambda tmp, file, ckpt: ["calibrate", "chains", "--checkpoint", ckpt, "--sampler", "hmc"], ["sampler.sampler", "'hmc'"]),
    "shard-3-of-2": (lambda tmp, file, ckpt: ["estimate-all", "--checkpoints-dir", tmp, "--shard", "3/2"], ["estimate.shard", "'3/2'"]),
    "bad-device": (lambda tmp, file, ckpt: ["estimate", "--checkpoint", ckpt, "--device", "cuda:01"], ["cuda:01", "use auto, cpu, cuda, cuda:N or mps"]),
    "huge-grid": (lambda tmp, file, ckpt: ["calibrate", "sweep", "--checkpoint", ckpt, "--epsilons", "1e-6:1e-2:99999999"], ["--epsilons", "99999999"]),
    "estimate-all-results-dir-is-a-file": (
        lambda tmp, file, ckpt: ["estimate-all", "--checkpoints-dir", tmp, "--results-dir", file], ["--results-dir", "is a file"]),
    "estimate-all-results-dir-in-config-is-a-file": (
        lambda tmp, file, ckpt: ["estimate-all", "--checkpoints-dir", tmp, "--config", _config(tmp, f"[estimate]\nresults_dir = '{file}'\n")],
        ["estimate.results_dir", "is a file"]),
    "calibrate-results-dir-is-a-file": (
        lambda tmp, file, ckpt: ["calibrate", "sweep", "--checkpoint", ckpt, "--results-dir", file], ["--results-dir", "is a file"]),
    "calibrate-results-dir-in-config-inside-a-file": (
        lambda tmp, file, ckpt: ["calibrate", "curve", "--checkpoint", ckpt, "--config", _config(tmp, f"[calibrate]\nresults_dir = '{file}/cal'\n")],
        ["calibrate.results_dir", "{file} is a file"]),
    "train-checkpoints-dir-in-config-is-a-file": (
        lambda tmp, file, ckpt: ["train", "--dataset", "synthetic", "--config", _config(tmp, f"[train]\ncheckpoints_dir = '{file}'\n")],
        ["train.checkpoints_dir", "is a file"]),
    "plot-out-inside-a-file": (lambda tmp, file, ckpt: ["plot", "--results-dir", tmp, "--out", f"{file}/llc.png"], ["plot.out", "{file} is a file"]),
    "plot-out-is-a-folder": (
        lambda tmp, file, ckpt: ["plot", "--results-dir", tmp, "--config", _config(tmp, f"[plot]\nout = '{tmp}'\n")], ["plot.out", "is a folder"]),
    "config-unknown-key": (
        lambda tmp, file, ckpt: ["estimate", "--checkpoint", ckpt, "--config", _config(tmp, "[sampler]\nepsilonn = 1e-4\n")],
        ["sampler.epsilonn", "unknown setting"]),
    "config-wrong-type": (
        lambda tmp, file, ckpt: ["estimate-all", "--checkpoints-dir", tmp, "--config", _config(tmp, "[sampler]\nnum_chains = 'four'\n")],
        ["sampler.num_chains", "'four'"]),
    "config-unknown-section": (
        lambda tmp, file, ckpt: ["calibrate", "sweep", "--checkpoint", ckpt, "--config", _config(tmp, "[samplr]\nepsilon = 1e-4\n")],
        ["'samplr'", "sections are"]),
    "data-dir-missing-estimate": (
        lambda tmp, file, ckpt: ["estimate", "--checkpoint", ckpt, "--dataset", "cifar10", "--data-dir", tmp / "nowhere", "--device", "cpu"],
        ["CIFAR-10", "nowhere"]),
    "data-dir-missing-estimate-all": (
        lambda tmp, file, ckpt: ["estimate-all", "--checkpoints-dir", ckpt.parent, "--results-dir", tmp / "results", "--data-dir", tmp / "nowhere",
                                 "--device", "cpu"],
        ["data directory", "nowhere", "does not exist"]),
    "data-dir-missing-calibrate": (
        lambda tmp, file, ckpt: ["calibrate", "chains", "--checkpoint", ckpt, "--dataset", "folder", "--data-dir", tmp / "nowhere", "--device", "cpu"],
        ["nowhere", "does not exist"]),
    "unknown-stem-estimate": (
        lambda tmp, file, ckpt: ["estimate", "--checkpoint", ckpt, "--stem", "wide", "--device", "cpu"], ["stem 'wide': use cifar or imagenet"]),
    "unknown-stem-estimate-all": (
        lambda tmp, file, ckpt: ["estimate-all", "--checkpoints-dir", ckpt.parent, "--results-dir", tmp / "results", "--stem", "wide"],
        ["stem 'wide': use cifar or imagenet"]),
    "unknown-dataset-estimate-all": (
        lambda tmp, file, ckpt: ["estimate-all", "--checkpoints-dir", ckpt.parent, "--results-dir", tmp / "results", "--dataset", "imagenet21k"],
        ["unknown dataset 'imagenet21k'", "synthetic"]),
    "unknown-model-estimate-all": (
        lambda tmp, file, ckpt: ["estimate-all", "--checkpoints-dir", ckpt.parent, "--results-dir", tmp / "results", "--model", "vgg11"],
        ["unknown model 'vgg11'", "smallcnn"]),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_SETTINGS, ids=list(BAD_SETTINGS))
def test_bad_settings_and_paths_exit_2_with_one_readable_message(case, final_checkpoint, tmp_path):
    make_args, expected = BAD_SETTINGS[case]
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    result = _invoke(*make_args(tmp_path, a_file, final_checkpoint))
    assert result.exit_code == 2, result.output
    for text in expected:
        text = text.replace("{file}", str(a_file))
        assert without_whitespace(text) in without_whitespace(result.output), f"{text!r} not in {result.output!r}"
    written = {path.name for path in tmp_path.iterdir()} - {"a-file", "experiment.toml"}
    assert written == set(), f"a bad setting still wrote {written}"


# --- 4. numerical faults --------------------------------------------------------------------------


class _ChainWatcher(Reporter):
    """Tells the loss which chain is running (chains run one after another in sequential mode)."""

    chain: str | None = None

    def start(self, key, description, total):
        self.chain = key


def test_a_nan_or_inf_chain_is_contained_and_reported():
    watcher = _ChainWatcher()
    poison = {"chains-1": float("nan"), "chains-2": float("inf")}

    def loss(model, batch):
        return F.mse_loss(model(batch[0]), batch[1]) * poison.get(watcher.chain, 1.0)

    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 3, generator=generator), torch.randn(64, 1, generator=generator))
    settings = SamplerSettings(num_chains=3, num_draws=20, epsilon=1e-4, gamma=100.0, batch_size=64, chain_mode="sequential")
    result = estimate_llc(nn.Linear(3, 1), data, settings, loss=loss, device="cpu", reporter=watcher)
    healthy, nan_chain, inf_chain = result.llc_per_chain
    assert healthy is not None and nan_chain is None and inf_chain is None
    assert result.llc_mean == pytest.approx(healthy) and result.llc_std is None
    assert result.diagnostics.diverged_chains == 2
    assert any("2 of 3 chains diverged" in warning for warning in result.diagnostics.warnings)
    restored = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # stays standard JSON
    assert restored["llc_per_chain"][1:] == [None, None]


def test_estimate_all_records_a_checkpoint_whose_every_chain_diverges_as_failed(final_checkpoint, tmp_path):
    results = tmp_path / "results"
    args = ["estimate-all", "--checkpoints-dir", final_checkpoint.parent, "--results-dir", results, "--steps", "16", *FAST_FLAGS]
    result = _invoke(*args, "--epsilon", "10", "--gamma", "0")
    assert result.exit_code == 1, result.output
    assert "failed step_00000016.pt: every chain diverged" in unwrapped(result.output)
    (record,) = load_results(results)
    assert record.status == "failed" and record.error.startswith("every chain diverged")
    assert record.result.llc_mean is None and record.result.diagnostics.diverged_chains == 2
    (row,) = csv.DictReader((results / record.settings_hash / "summary.csv").open())
    assert row["status"] == "failed" and row["llc_mean"] == "" and row["diverged_chains"] == "2"


# --- 5a. a write that fails ----------------------------------------------------------------------


class DiskFault:
    """Makes llcv's atomic writes of the named files (or of any file in the named folders) fail as a
    full disk or a read-only filesystem does.

    ENOSPC: the temporary file is created, a little is written, then a write fails. EROFS: the
    temporary file cannot be created. Other files are written normally.
    """

    def __init__(self, monkeypatch, kind: str, names: set[str], folders: set[str] = frozenset()):
        self.kind, self.names, self.folders, self.hits = kind, set(names), set(folders), 0
        real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen
        filling: set[int] = set()

        def mkstemp(*args, prefix=None, dir=None, **kwargs):
            named = prefix and prefix[1:-1] in self.names  # atomic_write's prefix is ".{name}."
            if named or (dir is not None and Path(dir).name in self.folders):
                self.hits += 1
                if kind == "EROFS":
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS))
                descriptor, path = real_mkstemp(*args, prefix=prefix, dir=dir, **kwargs)
                filling.add(descriptor)
                return descriptor, path
            return real_mkstemp(*args, prefix=prefix, dir=dir, **kwargs)

        def fdopen(descriptor, *args, **kwargs):
            handle = real_fdopen(descriptor, *args, **kwargs)
            if descriptor in filling:
                filling.discard(descriptor)
                real_write, written = handle.write, [0]

                def write(data):
                    room = 64 - written[0]  # some bytes reach the temporary file, then the disk is full
                    if len(data) > room:
                        real_write(bytes(data[:room]))
                        written[0] = 64
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    written[0] += len(data)
                    return real_write(data)

                handle.write = write
            return handle

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        monkeypatch.setattr(os, "fdopen", fdopen)

    @property
    def reason(self) -> str:
        return os.strerror(errno.ENOSPC if self.kind == "ENOSPC" else errno.EROFS)


def _linear_sweep(sweep_file: Path, epsilons: list[float]):
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 2, generator=generator), torch.randn(32, 1, generator=generator))
    model = nn.Linear(2, 1)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    return calibrate_sweep(
        model, data, SweepGrid(epsilons, [100.0]), base=SamplerSettings(num_chains=1, num_draws=4, batch_size=32), loss="mse",
        device="cpu", sweep_file=sweep_file,
    )  # fmt: skip


def _write_target(kind: str, tmp: Path, version: int) -> Path:
    """Write version ``version`` of one kind of file llcv produces; returns its path."""
    if kind == "record":
        store = ResultsStore(tmp / "results", "abcdef012345")
        return store.write_record(fake_record(tmp / "step_00000001.pt", 1, float(version), settings_hash="abcdef012345"))
    if kind == "summary.csv":
        store = ResultsStore(tmp / "results", "abcdef012345")
        store.write_record(fake_record(tmp / f"step_{version:08d}.pt", version, 1.0, settings_hash="abcdef012345"))
        return store.rebuild_summary()
    if kind == "sweep.json":
        sweep_file = tmp / "calibration" / "sweep.json"
        _linear_sweep(sweep_file, [1e-5] if version == 1 else [1e-5, 1e-4])
        return sweep_file
    if kind == "figure":
        figure = Figure()
        figure.add_subplot().plot([0, 1], [0, version])
        return save_figure(figure, tmp / "figures" / "llc.png")
    if kind == "checkpoint":
        return save_checkpoint(tmp / "checkpoints" / checkpoint_name(1), {"step": 1, "state_dict": {"weight": torch.full((500,), float(version))}})
    raise AssertionError(kind)


@pytest.mark.parametrize("fault", ["ENOSPC", "EROFS"])
@pytest.mark.parametrize("kind", ["record", "summary.csv", "sweep.json", "figure", "checkpoint"])
def test_a_failed_write_leaves_the_previous_file_intact_and_says_so(kind, fault, tmp_path, monkeypatch):
    path = _write_target(kind, tmp_path, 1)
    before = path.read_bytes()
    disk = DiskFault(monkeypatch, fault, {path.name})
    with pytest.raises(WriteError) as raised:
        _write_target(kind, tmp_path, 2)
    assert disk.hits == 1
    assert str(raised.value) == f"could not write {path}: {disk.reason}; any previous version of it is intact"
    assert path.read_bytes() == before
    _no_temporaries(tmp_path)


def test_estimate_all_on_a_full_disk_stops_with_a_message_and_a_rerun_finishes(trained_run, tmp_path, monkeypatch):
    _, run = trained_run
    checkpoints = copy_checkpoints(run.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 16])
    results = tmp_path / "results"
    folder = results / settings_hash(fast_settings())
    args = ["estimate-all", "--checkpoints-dir", checkpoints, "--results-dir", results, *FAST_FLAGS]
    with monkeypatch.context() as patch:
        DiskFault(patch, "ENOSPC", {"step_00000016.json"})
        full = _invoke(*args)
    assert full.exit_code == 1, full.output
    message = f"error: could not write {folder / 'step_00000016.json'}: No space left on device; any previous version of it is intact"
    assert without_whitespace(message) in without_whitespace(full.output)
    assert json.loads((folder / "step_00000000.json").read_text())["status"] == "done"
    assert not (folder / "step_00000016.json").exists()
    assert not list((folder / ".claims").glob("*.claim"))  # released on the way out
    _no_temporaries(results)
    freed = _invoke(*args)
    assert freed.exit_code == 0, freed.output
    assert "2 of 2 checkpoint(s) done (1 now, 1 before)" in unwrapped(freed.output)


def test_a_claim_on_a_full_disk_is_a_message_not_a_traceback(final_checkpoint, tmp_path, monkeypatch):
    fault = DiskFault(monkeypatch, "ENOSPC", set(), folders={".claims"})  # every claim file: created, then nothing fits
    results = tmp_path / "results"
    result = _invoke("estimate-all", "--checkpoints-dir", final_checkpoint.parent, "--results-dir", results, "--steps", "16", *FAST_FLAGS)
    assert result.exit_code == 1, result.output
    assert "could not claim step_00000016" in unwrapped(result.output) and "No space left on device" in unwrapped(result.output)
    assert fault.hits
    _no_temporaries(results)


def test_train_on_a_full_disk_stops_with_a_message_and_keeps_earlier_checkpoints(tmp_path, monkeypatch):
    out = tmp_path / "checkpoints"
    DiskFault(monkeypatch, "ENOSPC", {checkpoint_name(2)})
    result = _invoke(
        "train", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "128", "--log-checkpoints", "3", "--device", "cpu", "--checkpoints-dir", out
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert without_whitespace(f"could not write {out / checkpoint_name(2)}: No space left on device") in without_whitespace(result.output)
    assert [path.name for path in list_checkpoints(out)] == [checkpoint_name(0), checkpoint_name(1)]
    for path in list_checkpoints(out):
        read_checkpoint(path)
    _no_temporaries(out)


def test_plot_on_a_read_only_filesystem_keeps_the_old_figure(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path / "results", "abcdef012345")
    store.write_settings(SamplerSettings())
    for step in (0, 1, 2):
        store.write_record(fake_record(tmp_path / f"step_{step:08d}.pt", step, 1.0 + step, settings_hash="abcdef012345"))
    out = tmp_path / "llc.svg"
    out.write_text("<svg>the old figure</svg>")
    DiskFault(monkeypatch, "EROFS", {"llc.svg"})
    result = _invoke("plot", "--results-dir", tmp_path / "results", "--out", out)
    assert result.exit_code == 1, result.output
    assert without_whitespace(f"error: could not write {out}: Read-only file system; any previous version of it is intact") in without_whitespace(result.output)
    assert out.read_text() == "<svg>the old figure</svg>"


# --- 5b. signals and kill -9 at any moment ------------------------------------------------------


def _cli_child(args: list[str], log: str) -> None:
    """The body of a forked `llcv` process: output to ``log``, exit code from the command."""
    import sys

    # As an llcv started from a terminal: Ctrl-C raises KeyboardInterrupt. A pytest launched as a
    # background job without job control inherits SIGINT ignored, and so would this child.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdout = sys.stderr = open(log, "w", buffering=1)
    app([str(arg) for arg in args], prog_name="llcv")


def _start(args: list, log: Path) -> multiprocessing.Process:
    # forked: a real process with its own pid and signal handling, without a second torch import
    process = multiprocessing.get_context("fork").Process(target=_cli_child, args=(args, str(log)))
    process.start()
    return process


def _wait_for(process: multiprocessing.Process, ready, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not process.is_alive():
            raise AssertionError(f"llcv exited early ({process.exitcode}): {log.read_text()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the process never got there")
        time.sleep(0.01)


def _stop(process: multiprocessing.Process, how: signal.Signals, expected: int, log: Path) -> None:
    """Send ``how``, wait for the process to end, and check that it exited with ``expected``."""
    state = _signal_state(process.pid)
    os.kill(process.pid, how)
    process.join(timeout=60)
    assert not process.is_alive(), "did not stop"
    assert process.exitcode == expected, f"exit code {process.exitcode}, expected {expected}; signals when sent: {state}; its output:\n{log.read_text()}"


def _signal_state(pid: int) -> str:
    """The process's blocked, ignored and caught signal masks, for a failure message."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return "unknown"
    return ", ".join(line.replace("\t", " ") for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


SIGNALS = [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)]
SIGNAL_IDS = ["ctrl-c", "sigterm", "kill-9"]


@pytest.mark.parametrize("how, code", SIGNALS, ids=SIGNAL_IDS)
def test_a_signal_during_training_leaves_only_complete_checkpoints(how, code, tmp_path):
    out, log = tmp_path / "checkpoints", tmp_path / "log"
    train = ["-q", "train", "--dataset", "synthetic", "--epochs", "400", "--batch-size", "64", "--device", "cpu", "--checkpoints-dir", out]
    process = _start(train, log)
    _wait_for(process, lambda: len(list(out.glob("step_*.pt"))) >= 3, log)
    _stop(process, how, code, log)
    if how != signal.SIGKILL:
        assert "stopped cleanly; rerun the same command to continue" in unwrapped(log.read_text())
        _no_temporaries(out)  # kill -9 may leave a hidden temporary, which nothing reads
    saved = list_checkpoints(out)
    steps = [read_checkpoint(path)["step"] for path in saved]  # every file llcv lists is complete
    assert steps == sorted(steps) and len(steps) >= 3
    if how == signal.SIGKILL:  # and the run resumes from the last one
        resumed = _invoke("-q", "train", "--resume-from-checkpoint", saved[-1], "--epochs", str(steps[-1] // 8 + 1))
        assert resumed.exit_code == 0, resumed.output
        assert read_checkpoint(list_checkpoints(out)[-1])["step"] == (steps[-1] // 8 + 1) * 8


@pytest.mark.parametrize("how, code", SIGNALS, ids=SIGNAL_IDS)
def test_a_signal_during_a_sweep_leaves_a_complete_sweep_json(how, code, final_checkpoint, tmp_path):
    results, log = tmp_path / "calibration", tmp_path / "log"
    sweep_file = results / "step_00000016" / "sweep.json"
    sweep = ["-q", "calibrate", "sweep", "--checkpoint", final_checkpoint, "--results-dir", results, "--epsilons", "1e-7:1e-4:100",
             "--gammas", "100", "--num-chains", "1", "--num-draws", "8", "--num-samples", "64", "--batch-size", "64", "--device", "cpu"]  # fmt: skip
    process = _start(sweep, log)
    _wait_for(process, sweep_file.exists, log)
    _stop(process, how, code, log)
    stored = json.loads(sweep_file.read_text())
    assert stored["format"] == "llcv-sweep" and stored["complete"] is False
    assert 1 <= len(stored["rows"]) < 100 and len(stored["traces"]) == len(stored["rows"])
    assert not (results / "step_00000016" / "recommended.json").exists()
    if how != signal.SIGKILL:
        _no_temporaries(results)


def test_ctrl_c_during_estimate_all_leaves_complete_records_and_exit_130(trained_run, tmp_path):
    _, run = trained_run
    checkpoints = copy_checkpoints(run.checkpoints_dir, tmp_path / "checkpoints")
    results, log = tmp_path / "results", tmp_path / "log"
    folder = results / settings_hash(fast_settings())
    process = _start(["estimate-all", "--checkpoints-dir", checkpoints, "--results-dir", results, *FAST_FLAGS], log)
    _wait_for(process, lambda: bool(list(folder.glob("step_*.json"))), log)
    _stop(process, signal.SIGINT, 130, log)
    output = unwrapped(log.read_text())
    assert "estimate-all stopped" in output and "interrupted: stopped cleanly" in output
    for path in folder.glob("*.json"):
        json.loads(path.read_text())
    assert not list((folder / ".claims").glob("*.claim"))
    _no_temporaries(results)


# --- 6. concurrency -----------------------------------------------------------------------------


def _estimate_worker(checkpoints: Path, results: Path) -> None:
    estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=results, device="cpu", claim_timeout_seconds=30))


def test_a_worker_killed_holding_a_claim_blocks_nothing_twice_and_its_claim_is_taken_over_after_the_timeout(trained_run, tmp_path):
    _, run = trained_run
    checkpoints = copy_checkpoints(run.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 1, 2, 5, 16])
    results = tmp_path / "results"
    folder = results / settings_hash(fast_settings())
    process = multiprocessing.get_context("fork").Process(target=_estimate_worker, args=(checkpoints, results))
    process.start()

    def holds_an_unfinished_claim() -> list[Path]:
        return [path for path in (folder / ".claims").glob("*.claim") if not (folder / f"{path.stem}.json").exists()]

    deadline = time.monotonic() + 120
    while True:  # freeze the worker until it is caught holding a claim on an unfinished checkpoint
        assert process.is_alive() and time.monotonic() < deadline, "the worker finished or never started"
        os.kill(process.pid, signal.SIGSTOP)
        if list(folder.glob("step_*.json")) and holds_an_unfinished_claim():
            break
        os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.join(timeout=30)
    (orphan,) = holds_an_unfinished_claim()
    for path in folder.glob("*.json"):
        json.loads(path.read_text())  # nothing half-written
    json.loads(orphan.read_text())
    list(csv.DictReader((folder / "summary.csv").open()))

    # as if the dead worker had run on another node, whose heartbeat is recent: its claim is left alone
    claim = json.loads(orphan.read_text())
    orphan.write_text(json.dumps({**claim, "host": "other-node.example", "heartbeat": time.time()}))
    second = estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=results, device="cpu", claim_timeout_seconds=30))
    name = f"{orphan.stem}.pt"
    assert second.elsewhere == [name] and name not in second.computed and second.ok
    assert not (folder / f"{orphan.stem}.json").exists()

    # once its heartbeat is older than the timeout, the next worker takes it over
    orphan.write_text(json.dumps({**claim, "host": "other-node.example", "heartbeat": time.time() - 31}))
    third = estimate_all(checkpoints, fast_settings(), EstimateSettings(results_dir=results, device="cpu", claim_timeout_seconds=30))
    assert third.computed == [name] and third.elsewhere == []
    records = load_results(results)
    assert sorted(record.checkpoint for record in records) == sorted(path.name for path in checkpoints.glob("*.pt"))
    assert all(record.status == "done" for record in records)
    assert not list((folder / ".claims").glob("*.claim"))


# --- the report ----------------------------------------------------------------------------------


def test_every_test_named_in_docs_reliability_exists():
    text = (REPO / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", text))
    assert len(named) >= 30, "docs/reliability.md should name the test of every case"
    defined: dict[str, set[str]] = {}
    for file, test in sorted(named):
        if file not in defined:
            tree = ast.parse((REPO / file).read_text())
            defined[file] = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert test in defined[file], f"docs/reliability.md names {file}::{test}, which does not exist"


def test_an_interrupt_at_any_point_of_an_atomic_write_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "summary.csv"
    target.write_text("the old table")

    def interrupted(*args):
        raise KeyboardInterrupt

    # after the temporary is complete, before it is renamed: the old file stays, the temporary goes
    monkeypatch.setattr("llcv.fileio.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "the new table")
    monkeypatch.undo()
    assert target.read_text() == "the old table" and sorted(path.name for path in tmp_path.iterdir()) == ["summary.csv"]

    # while writing: the temporary is recorded the moment it exists, and removed
    created: list = []
    with pytest.raises(KeyboardInterrupt):
        write_temporary(tmp_path, ".summary.csv.", lambda handle: interrupted(), created)
    assert len(created) == 1 and created[0].parent == tmp_path and not created[0].exists()
