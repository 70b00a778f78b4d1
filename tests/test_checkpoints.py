"""Tests for llcv.checkpoints: the llcv format, foreign formats, safe loading, atomic saves, order."""

from __future__ import annotations

import errno
import io
import os
import shutil
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import llcv
from llcv import fileio
from llcv.checkpoints import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointInfo,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from llcv.errors import CheckpointError, LLCVError
from llcv.models import build_model

from conftest import SHARED_RUN_STEPS

DOCUMENTED_KEYS = {
    "format", "format_version", "step", "epoch", "model", "dataset", "state_dict", "optimizer",
    "scheduler", "rng", "metrics", "settings", "llcv_version", "created",
}  # fmt: skip
RESEARCH_NAME = "checkpoint_2024-03-16-01h24_epoch_39_val_200.pth.tar"


def _assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def _resnet18_state(stem: str, num_classes: int = 10) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("resnet18", num_classes, 3, stem).state_dict()


# The llcv format, on every checkpoint of a real run


def test_every_checkpoint_opens_with_weights_only_and_has_every_documented_key(trained_run):
    settings, result = trained_run
    assert [int(path.stem.split("_")[1]) for path in result.checkpoints] == SHARED_RUN_STEPS
    for path in result.checkpoints:
        payload = torch.load(path, weights_only=True)
        assert set(payload) == DOCUMENTED_KEYS, path.name
        assert payload["format"] == FORMAT == "llcv-checkpoint"
        assert payload["format_version"] == FORMAT_VERSION
        assert path.name == checkpoint_name(payload["step"])
        assert payload["epoch"] == payload["step"] / 8  # 8 steps per epoch
        assert payload["model"] == {
            "name": "smallcnn", "num_classes": 4, "in_channels": 3, "stem": "cifar", "version": 1,
            "arguments": {}, "library_version": None, "factory": None,
        }  # fmt: skip
        assert payload["dataset"] == {"name": "synthetic", "data_dir": None, "seed": 0, "image_size": None}
        assert set(payload["metrics"]) == {"train_loss", "val_loss", "val_acc"}
        assert (payload["metrics"]["train_loss"] is None) == (payload["step"] == 0)
        assert 0.0 <= payload["metrics"]["val_acc"] <= 1.0
        assert payload["settings"] == settings.to_json_dict()
        assert set(payload["rng"]) == {"torch"} and payload["rng"]["torch"].dtype == torch.uint8
        assert {"state", "param_groups"} <= set(payload["optimizer"])
        assert "last_epoch" in payload["scheduler"]
        assert payload["llcv_version"] == llcv.__version__
        assert datetime.fromisoformat(payload["created"]).utcoffset().total_seconds() == 0


def test_load_checkpoint_rebuilds_the_model_from_the_file_alone(trained_run):
    _, result = trained_run
    images = torch.randn(2, 3, 16, 16)
    for path in (result.checkpoints[0], result.checkpoints[-1]):
        model, info = llcv.load_checkpoint(path)
        assert isinstance(info, CheckpointInfo)
        assert (info.format, info.step, info.path) == ("llcv", int(path.stem[5:]), str(path))
        assert info.model.name == "smallcnn" and info.dataset.name == "synthetic"
        stored = torch.load(path, weights_only=True)
        _assert_same_weights(model.state_dict(), stored["state_dict"])
        reference = build_model("smallcnn", 4, 3)
        reference.load_state_dict(stored["state_dict"])
        model.eval(), reference.eval()
        with torch.no_grad():
            assert torch.equal(model(images), reference(images))
    first, _ = llcv.load_checkpoint(result.checkpoints[0])
    last, _ = llcv.load_checkpoint(result.checkpoints[-1])
    assert not torch.equal(first.fc2.weight, last.fc2.weight)  # training changed the weights


def test_save_load_round_trip_is_exact_and_loads_into_a_given_model(tmp_path):
    torch.manual_seed(1)
    model = build_model("resnet18", 10, 3, "cifar")
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 8, 8))  # moves BatchNorm running statistics off their defaults
    payload = {
        "step": 5, "epoch": 0.5, "model": {"name": "resnet18", "num_classes": 10, "in_channels": 3, "stem": "cifar"},
        "dataset": {"name": "cifar10", "data_dir": "data/cifar10-python", "seed": 0}, "state_dict": model.state_dict(),
        "metrics": {"train_loss": 1.0, "val_loss": 2.0, "val_acc": 0.5},
    }  # fmt: skip
    path = save_checkpoint(tmp_path / checkpoint_name(5), payload)
    loaded, info = load_checkpoint(path)
    _assert_same_weights(loaded.state_dict(), model.state_dict())
    assert info.step == 5 and info.metrics == payload["metrics"] and info.model.stem == "cifar"
    target = build_model("resnet18", 10, 3, "cifar")
    same, _ = load_checkpoint(path, target)
    assert same is target
    _assert_same_weights(target.state_dict(), model.state_dict())


def test_saved_files_get_the_usual_permissions(tmp_path):
    path = save_checkpoint(tmp_path / "step_00000000.pt", {"step": 0})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only 0o600


def test_a_newer_format_version_asks_for_an_upgrade(tmp_path):
    path = tmp_path / "step_00000001.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1, "step": 1, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=f"{path}.*upgrade llcv"):
        load_checkpoint(path)


def test_llcv_checkpoint_with_broken_metadata_is_named(tmp_path):
    path = tmp_path / "step_00000001.pt"
    torch.save({"format": FORMAT, "format_version": 1, "state_dict": {}}, path)  # no step, no model
    with pytest.raises(CheckpointError, match=f"{path}.*malformed llcv metadata"):
        load_checkpoint(path)


# Foreign checkpoints


@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "module._orig_mod."])
def test_plain_state_dicts_load_with_wrapper_prefixes_stripped(tmp_path, prefix):
    state = _resnet18_state("cifar")
    path = tmp_path / "model.pth"
    torch.save({prefix + key: value for key, value in state.items()}, path)
    model, info = load_checkpoint(path, model_name="resnet18")
    assert info.format == "state_dict" and info.step is None
    assert info.model.model_dump() == {
        "name": "resnet18", "num_classes": 10, "in_channels": 3, "stem": "cifar", "version": None,
        "arguments": {}, "library_version": None, "factory": None,
    }  # fmt: skip
    _assert_same_weights(model.state_dict(), state)


@pytest.mark.parametrize("stem, kernel", [("cifar", 3), ("imagenet", 7)])
def test_stem_and_class_count_are_inferred_from_the_weights(tmp_path, stem, kernel):
    path = tmp_path / "weights.pt"
    torch.save(_resnet18_state(stem, num_classes=1000), path)
    model, info = load_checkpoint(path, model_name="resnet18")
    assert info.model.stem == stem and info.model.num_classes == 1000
    assert model.conv1.kernel_size == (kernel, kernel)


def _research_checkpoint(path: Path, state: dict, best_acc1) -> Path:
    torch.save(
        {"epoch": 39, "arch": "resnet18", "state_dict": {"module." + key: value for key, value in state.items()},
         "best_acc1": best_acc1, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}},
        path,
    )  # fmt: skip
    return path


def _as_if_pickled_by_numpy_1(path: Path) -> None:
    """Rewrite a torch zip file so its numpy scalars name numpy.core, as files from before numpy 2 do."""
    with zipfile.ZipFile(path) as source:
        members = [(info.filename, source.read(info.filename)) for info in source.infolist()]
    assert any(b"cnumpy._core.multiarray\nscalar\n" in data for name, data in members if name.endswith("data.pkl"))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for name, data in members:
            if name.endswith("data.pkl"):
                data = data.replace(b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n")
            target.writestr(name, data)


@pytest.mark.parametrize("numpy_major", [1, 2])
def test_research_checkpoint_with_a_numpy_scalar_loads(tmp_path, numpy_major):
    state = _resnet18_state("cifar")
    path = _research_checkpoint(tmp_path / RESEARCH_NAME, state, np.float64(71.25))
    if numpy_major == 1:
        _as_if_pickled_by_numpy_1(path)
    assert read_checkpoint(path)["best_acc1"] == 71.25
    model, info = load_checkpoint(path, model_name="resnet18")
    assert info.format == "research" and info.epoch == 39.0 and info.step is None
    assert info.model.stem == "cifar" and info.model.num_classes == 10
    _assert_same_weights(model.state_dict(), state)


def test_research_epoch_may_be_a_numpy_integer_or_come_from_the_name(tmp_path):
    state = {"weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(2, 4)}
    with_numpy_epoch = tmp_path / "a.pth.tar"
    torch.save({"state_dict": state, "epoch": np.int64(12)}, with_numpy_epoch)
    from_name = tmp_path / RESEARCH_NAME
    torch.save({"state_dict": state}, from_name)
    model = nn.Module()
    model.weight = nn.Parameter(torch.ones(4, 3, 3, 3))
    model.fc = nn.Linear(4, 2, bias=False)
    assert load_checkpoint(with_numpy_epoch, model)[1].epoch == 12.0
    assert load_checkpoint(from_name, model)[1].epoch == 39.0


def test_foreign_checkpoint_without_a_model_asks_for_one(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(_resnet18_state("cifar"), path)
    with pytest.raises(CheckpointError, match=f"{path}.*--model"):
        load_checkpoint(path)


def test_other_architecture_is_refused_naming_the_file(tmp_path, trained_run):
    _, result = trained_run
    with pytest.raises(CheckpointError, match=f"{result.checkpoints[-1]} does not fit the model") as raised:
        load_checkpoint(result.checkpoints[-1], build_model("resnet18", 4, 3, "cifar"))
    assert "missing keys" in str(raised.value) and "unexpected keys" in str(raised.value)
    foreign = tmp_path / "weights.pt"
    torch.save(_resnet18_state("cifar"), foreign)
    with pytest.raises(CheckpointError, match=f"{foreign} does not fit"):
        load_checkpoint(foreign, model_name="resnet34")


def test_other_class_count_is_refused_naming_the_file(tmp_path, trained_run):
    _, result = trained_run
    with pytest.raises(CheckpointError, match=f"{result.checkpoints[-1]}.*shape mismatches.*fc2.weight"):
        load_checkpoint(result.checkpoints[-1], build_model("smallcnn", 10, 3))
    foreign = tmp_path / "weights.pt"
    torch.save(_resnet18_state("cifar", num_classes=10), foreign)
    with pytest.raises(CheckpointError, match=f"{foreign}.*shape mismatches.*fc.weight"):
        load_checkpoint(foreign, model_name="resnet18", num_classes=100)


# Files that are not checkpoints, or not safe


def test_empty_truncated_and_other_files_are_refused(tmp_path, trained_run):
    _, result = trained_run
    cases = {
        "empty.pt": b"",
        "truncated.pt": result.checkpoints[-1].read_bytes()[:5000],
        "text.pt": b"hello\n",
        "zeros.pt": bytes(4096),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_non_dict_and_unrecognised_dicts_are_refused(tmp_path):
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(CheckpointError, match=f"{tensor} holds a Tensor, expected a dict"):
        load_checkpoint(tensor, model_name="smallcnn")
    metrics_only = tmp_path / "metrics.pt"
    torch.save({"loss": 1.0}, metrics_only)
    with pytest.raises(CheckpointError, match=f"{metrics_only} is neither"):
        load_checkpoint(metrics_only, model_name="smallcnn")


class _WritesMarker:
    """A pickle payload that, if a plain unpickler loaded it, would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / RESEARCH_NAME
    torch.save({"state_dict": _resnet18_state("cifar"), "epoch": 39, "hook": _WritesMarker(marker)}, path)
    with pytest.raises(CheckpointError, match=f"{path} was refused.*weights_only.*exec"):
        load_checkpoint(path, model_name="resnet18")
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


# Atomic saves


def _payload() -> dict:
    return {"step": 1, "state_dict": {"weight": torch.arange(50_000, dtype=torch.float32)}}


@pytest.fixture
def previous_checkpoint(tmp_path) -> tuple[Path, bytes]:
    path = save_checkpoint(tmp_path / "ckpts" / checkpoint_name(1), {"step": 1, "state_dict": {"weight": torch.ones(3)}})
    return path, path.read_bytes()


def _assert_untouched(path: Path, content: bytes, error: LLCVError) -> None:
    assert str(path) in str(error)
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temporary or partial file left
    assert path.read_bytes() == content
    assert torch.equal(read_checkpoint(path)["state_dict"]["weight"], torch.ones(3))


def test_disk_full_midway_leaves_the_previous_file_intact(previous_checkpoint, monkeypatch):
    path, content = previous_checkpoint
    real_fdopen = os.fdopen
    written = []

    def fdopen_that_fills_up(descriptor, mode):
        handle = real_fdopen(descriptor, mode)
        real_write = handle.write

        def write(data):
            if sum(written) > 1000:  # let some bytes reach the temporary file first
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written.append(len(data))
            return real_write(data)

        handle.write = write
        return handle

    monkeypatch.setattr(fileio.os, "fdopen", fdopen_that_fills_up)
    with pytest.raises(fileio.WriteError, match="No space left on device") as raised:
        save_checkpoint(path, _payload())
    assert sum(written) > 1000
    _assert_untouched(path, content, raised.value)


def test_torch_save_failing_midway_leaves_the_previous_file_intact(previous_checkpoint, monkeypatch):
    path, content = previous_checkpoint
    real_save = torch.save

    def save_then_fail(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(fileio.WriteError) as raised:
        save_checkpoint(path, _payload())
    _assert_untouched(path, content, raised.value)


def test_read_only_filesystem_at_rename_leaves_the_previous_file_intact(previous_checkpoint, monkeypatch):
    path, content = previous_checkpoint

    def replace(source, target):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(fileio.WriteError, match="Read-only file system") as raised:
        save_checkpoint(path, _payload())
    _assert_untouched(path, content, raised.value)


def test_an_interrupt_during_the_write_leaves_no_partial_file(previous_checkpoint, monkeypatch):
    path, content = previous_checkpoint
    real_save = torch.save

    def save_then_interrupt(obj, handle, *args, **kwargs):
        real_save({"partial": torch.zeros(1000)}, handle)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _payload())
    assert sorted(os.listdir(path.parent)) == [path.name]
    assert path.read_bytes() == content


# Training order


def test_list_checkpoints_orders_by_step_then_epoch_and_ignores_other_files(tmp_path):
    for step in (100, 3, 20, 0):
        torch.save({}, tmp_path / checkpoint_name(step))
    for epoch in (100, 9, 39):
        torch.save({}, tmp_path / f"checkpoint_2024-03-16-01h24_epoch_{epoch}_val_200.pth.tar")
    torch.save({}, tmp_path / "final.ckpt")
    for unrelated in ("notes.txt", "loss.png", "args.yaml", ".step_00000005.pt.abc.tmp", ".hidden.pt"):
        (tmp_path / unrelated).write_text("x")
    (tmp_path / "step_00000007.pt").mkdir()  # a folder, not a checkpoint
    names = [path.name for path in list_checkpoints(tmp_path)]
    assert names == [
        "step_00000000.pt", "step_00000003.pt", "step_00000020.pt", "step_00000100.pt",
        "checkpoint_2024-03-16-01h24_epoch_9_val_200.pth.tar",
        "checkpoint_2024-03-16-01h24_epoch_39_val_200.pth.tar",
        "checkpoint_2024-03-16-01h24_epoch_100_val_200.pth.tar",
        "final.ckpt",
    ]  # fmt: skip


def test_list_checkpoints_of_a_run_is_its_schedule(trained_run, tmp_path):
    _, result = trained_run
    copy = shutil.copytree(result.checkpoints_dir, tmp_path / "copy")
    (copy / "README.txt").write_text("a run")
    assert [path.name for path in list_checkpoints(copy)] == [checkpoint_name(step) for step in SHARED_RUN_STEPS]
    assert [path.name for path in llcv.list_checkpoints(result.checkpoints_dir)] == [p.name for p in result.checkpoints]


def test_list_checkpoints_of_a_missing_folder_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.*does not exist"):
        list_checkpoints(tmp_path / "nowhere")


def test_foreign_mlp_state_dict_loads_into_a_given_model_and_keeps_its_step(tmp_path):
    """Nothing needs inferring when the model is given; a step_N name still gives the step."""
    from torch import nn

    from llcv import load_checkpoint

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
    path = tmp_path / "step_00000020.pt"
    torch.save(mlp.state_dict(), path)
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3))
    loaded, info = load_checkpoint(path, model=fresh)
    assert info.step == 20 and info.model.num_classes == 3 and info.model.in_channels is None
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), mlp.state_dict().values()))
