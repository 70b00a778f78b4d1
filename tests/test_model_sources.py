"""Any vision model: torchvision:NAME and timm:NAME by registry name, your own factory by import
path (--model-factory), and per-layer blocks read from any model's module tree."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from _helpers import FAST_FLAGS, unwrapped
from llcv import model_sources
from llcv.checkpoints import load_checkpoint, read_checkpoint, save_checkpoint
from llcv.cli import app
from llcv.errors import CheckpointError, SettingsError
from llcv.model_sources import ImportedFactory, check_registry_name, import_factory, module_blocks
from llcv.models import build_model, new_model

runner = CliRunner()

# torchvision's VisionTransformer at its smallest useful size: 16 px synthetic images in 4x4 patches.
TINY_VIT_ARGS = ["--model-arg", "patch_size=4", "--model-arg", "num_layers=1", "--model-arg", "num_heads=2",
                 "--model-arg", "hidden_dim=16", "--model-arg", "mlp_dim=32"]  # fmt: skip
TRAIN_FAST = ["--epochs", "1", "--batch-size", "256", "--checkpoint-every-epochs", "1", "--device", "cpu", "--lr", "0.01"]


def _invoke(*args: str):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def _train(tmp_path: Path, *args: str, dataset: str = "synthetic") -> Path:
    folder = tmp_path / "checkpoints"
    result = _invoke("train", "--dataset", dataset, "--checkpoints-dir", folder, *TRAIN_FAST, *args)
    assert result.exit_code == 0, result.output
    return folder


def _estimate_json(checkpoint: Path, *args: str) -> dict:
    result = _invoke("estimate", "--checkpoint", checkpoint, *FAST_FLAGS, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _last(folder: Path) -> Path:
    return sorted(folder.glob("step_*.pt"))[-1]


# --- torchvision ---------------------------------------------------------------------------------


def test_a_torchvision_vit_trains_and_estimates_from_its_checkpoint_alone(tmp_path):
    folder = _train(tmp_path, "--model", "torchvision:VisionTransformer", *TINY_VIT_ARGS)
    spec = read_checkpoint(_last(folder))["model"]
    assert spec["name"] == "torchvision:VisionTransformer" and spec["stem"] is None and spec["version"] is None
    # the image size comes from the data, and every construction argument is recorded
    assert spec["arguments"] == {"patch_size": 4, "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32, "image_size": 16}
    import torchvision

    assert spec["library_version"] == torchvision.__version__
    estimate = _estimate_json(_last(folder))  # no --model, no --model-arg
    assert estimate["llc_mean"] is not None


def test_torchvision_builders_get_the_data_size_and_channels():
    with torch.device("meta"):  # shapes only: a full-size ViT-B/16 would take seconds to initialise
        model, spec = new_model("torchvision:vit_b_16", 10, 1, image_size=32)
    assert spec["arguments"] == {"image_size": 32} and model.image_size == 32
    assert model.conv_proj.in_channels == 1 and model.heads.head.out_features == 10
    with torch.device("meta"):
        resnet, spec = new_model("torchvision:resnet18", 10, 1, image_size=8)
    assert spec["stem"] == "cifar" and resnet.conv1.kernel_size == (3, 3) and resnet.conv1.in_channels == 1
    assert isinstance(resnet.maxpool, nn.Identity)
    with torch.device("meta"):
        imagenet, spec = new_model("torchvision:resnet18", 10, 3, image_size=224)
    assert spec["stem"] == "imagenet" and imagenet.conv1.kernel_size == (7, 7)


def test_the_stem_is_refused_where_it_does_not_apply():
    with pytest.raises(SettingsError, match="torchvision's ResNets"):
        new_model("torchvision:vit_b_16", 10, 3, stem="cifar", image_size=32)


@pytest.mark.slow  # resnet18's 11 M weights: about 20 s on one CPU
def test_a_torchvision_resnet_with_the_cifar_stem_trains_and_estimates_on_digits(tmp_path):
    folder = _train(tmp_path, "--model", "torchvision:resnet18", "--image-size", "8", dataset="digits")
    assert read_checkpoint(_last(folder))["model"]["stem"] == "cifar"
    model, _ = load_checkpoint(_last(folder))
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, nn.Identity)
    assert _estimate_json(_last(folder))["llc_mean"] is not None


def test_unknown_registry_names_are_refused_with_close_matches(tmp_path):
    with pytest.raises(SettingsError, match="did you mean torchvision:resnet18"):
        check_registry_name("torchvision:resnet_18")
    result = _invoke("train", "--model", "torchvision:not_a_model", "--checkpoints-dir", tmp_path)
    assert result.exit_code == 2 and "unknown torchvision model 'not_a_model'" in unwrapped(result.output)


def test_a_library_release_other_than_the_recorded_one_is_refused_unless_allowed(tmp_path):
    model, spec = new_model("torchvision:VisionTransformer", 4, 3, image_size=16, arguments={
        "patch_size": 8, "num_layers": 1, "num_heads": 1, "hidden_dim": 8, "mlp_dim": 8})  # fmt: skip
    path = tmp_path / "step_00000000.pt"
    save_checkpoint(path, {"step": 0, "model": {**spec, "library_version": "0.1.0+cu118"}, "state_dict": model.state_dict()})
    with pytest.raises(CheckpointError, match="torchvision 0.1.0"):
        load_checkpoint(path)
    _, info = load_checkpoint(path, allow_version_mismatch=True)
    assert info.model_version_overridden
    # a local build tag is not another release
    save_checkpoint(path, {"step": 0, "model": {**spec, "library_version": spec["library_version"].split("+")[0] + "+other"}, "state_dict": model.state_dict()})
    assert not load_checkpoint(path)[1].model_version_overridden


def test_model_args_are_parsed_as_numbers_booleans_or_text():
    from llcv.cli_options import model_arguments

    assert model_arguments(["a=3", "b=0.5", "c=true", "d=avg"]) == {"a": 3, "b": 0.5, "c": True, "d": "avg"}


# --- timm ----------------------------------------------------------------------------------------


def test_a_timm_model_trains_and_estimates_from_its_checkpoint_alone(tmp_path):
    pytest.importorskip("timm")
    folder = _train(tmp_path, "--model", "timm:test_vit")
    spec = read_checkpoint(_last(folder))["model"]
    assert spec["name"] == "timm:test_vit" and spec["arguments"] == {"img_size": 16} and spec["in_channels"] == 3
    assert _estimate_json(_last(folder))["llc_mean"] is not None


def test_a_timm_cnn_is_built_without_an_image_size():
    pytest.importorskip("timm")
    _, spec = new_model("timm:test_resnet", 4, 1, image_size=16)
    assert spec["arguments"] == {}


def test_timm_missing_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` now raises ImportError
    model_sources._names.cache_clear()
    try:
        with pytest.raises(SettingsError, match=r"pip install 'llcv\[timm\]'"):
            build_model("timm:test_vit", 4, 3)
        result = _invoke("train", "--model", "timm:test_vit", "--checkpoints-dir", tmp_path)
        assert result.exit_code == 2 and "llcv[timm]" in unwrapped(result.output)
    finally:
        model_sources._names.cache_clear()


def test_an_unknown_timm_name_is_refused():
    pytest.importorskip("timm")
    with pytest.raises(SettingsError, match="unknown timm model"):
        check_registry_name("timm:no_such_net")


# --- your own factory ----------------------------------------------------------------------------


def test_a_factory_trains_then_estimate_all_per_layer_reads_its_blocks_from_the_module_tree(tmp_path):
    folder = _train(tmp_path, "--model-factory", "model_factories:tiny_net", "--model-arg", "width=3")
    spec = read_checkpoint(_last(folder))["model"]
    assert spec["factory"] == spec["name"] == "model_factories:tiny_net" and spec["arguments"] == {"width": 3}
    results = tmp_path / "results"
    result = _invoke(
        "estimate-all", "--checkpoints-dir", folder, "--results-dir", results, "--per-layer",
        "--model-factory", "model_factories:tiny_net", *FAST_FLAGS, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    scopes = {json.loads(path.read_text())["scope"] for path in results.glob("*/*.json") if path.name != "settings.json"}
    assert {"model", "features", "hidden", "head", "scale"} <= scopes
    # and the other commands: report reads the records, calibrate loads the checkpoint with the factory
    result = _invoke("report", "--results-dir", results, "--out", tmp_path / "report.html")
    assert result.exit_code == 0 and (tmp_path / "report.html").is_file(), result.output
    result = _invoke(
        "calibrate", "chains", "--checkpoint", _last(folder), "--model-factory", "model_factories:tiny_net",
        "--results-dir", tmp_path / "calibration", "--num-chains", "2", "--num-draws", "5", "--num-burnin-steps", "0",
        "--num-samples", "64", "--batch-size", "64", "--device", "cpu", "--format", "svg", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_device_workers_import_a_factory_by_its_path(tmp_path):
    """--devices sends the factory to each worker process as its import path (ImportedFactory
    pickles as the path), and each worker imports it again."""
    folder = _train(tmp_path, "--model-factory", "model_factories:tiny_net")
    results = tmp_path / "results"
    result = _invoke(
        "estimate-all", "--checkpoints-dir", folder, "--results-dir", results, "--devices", "cpu,cpu",
        "--model-factory", "model_factories:tiny_net", *FAST_FLAGS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    records = [json.loads(path.read_text()) for path in results.glob("*/step_*.json")]
    assert len(records) == len(list(folder.glob("step_*.pt"))) and all(record["status"] == "done" for record in records)
    assert "2 workers" in unwrapped(result.output)
    assert all(record["worker"]["pid"] != os.getpid() for record in records)  # estimated in the worker processes


def test_a_factory_checkpoint_without_the_flag_names_the_factory(tmp_path):
    folder = _train(tmp_path, "--model-factory", "model_factories:tiny_net")
    for command in (["estimate", "--checkpoint", _last(folder)], ["estimate-all", "--checkpoints-dir", folder, "--results-dir", tmp_path / "r"]):
        result = _invoke(*command, *FAST_FLAGS)
        assert result.exit_code == 2, result.output
        assert "--model-factory model_factories:tiny_net" in unwrapped(result.output)
    assert not (tmp_path / "r").exists()
    config = tmp_path / "llcv.toml"
    config.write_text('[model]\nfactory = "model_factories:tiny_net"\n')
    assert _estimate_json(_last(folder), "--config", str(config))["llc_mean"] is not None


def test_resuming_a_factory_run_asks_for_the_factory_again(tmp_path):
    folder = _train(tmp_path, "--model-factory", "model_factories:tiny_net", "--epochs", "2")
    first = sorted(folder.glob("step_*.pt"))[1]
    result = _invoke("train", "--resume-from-checkpoint", first)
    assert result.exit_code == 2 and "pass --model-factory model_factories:tiny_net again" in unwrapped(result.output)
    result = _invoke("train", "--resume-from-checkpoint", first, "--model-factory", "model_factories:tiny_net")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "path, message",
    [
        ("model_factories:not_a_module", "returned a str, not a torch.nn.Module"),
        ("no_such_package.nets:build", "module 'no_such_package.nets' does not import"),
        ("model_factories:missing", "has no function 'missing'"),
        ("model_factories", "use package.module:function"),
    ],
)
def test_a_bad_factory_is_one_message_and_exit_2(tmp_path, path, message):
    result = _invoke("train", "--model-factory", path, "--checkpoints-dir", tmp_path / "c", *TRAIN_FAST)
    assert result.exit_code == 2
    assert message in unwrapped(result.output) and "Traceback" not in result.output


def test_a_factory_gets_only_the_keywords_it_takes():
    assert isinstance(ImportedFactory("model_factories:tiny_net_any")(num_classes=3, in_channels=1), nn.Module)
    with pytest.raises(SettingsError, match="does not import"):
        import_factory("no_such_package:build")


def test_model_and_factory_together_are_refused(tmp_path):
    result = _invoke("train", "--model", "resnet18", "--model-factory", "model_factories:tiny_net", "--checkpoints-dir", tmp_path)
    assert result.exit_code == 2 and "give one" in unwrapped(result.output)


# --- blocks from the module tree -----------------------------------------------------------------


def test_module_blocks_are_the_parameter_owning_children_at_a_depth():
    from model_factories import tiny_net

    model = tiny_net(3, 1)
    assert module_blocks(model) == {"scale": ("scale",), "features": ("features.*",), "hidden": ("hidden.*",), "head": ("head.*",)}
    assert module_blocks(model, 2)["features.0"] == ("features.0.*",)  # the ReLU and the pool own nothing
    assert "features.1" not in module_blocks(model, 2)
    wrapped = nn.Sequential(model)  # a wrapper holding every parameter is read from its child down
    assert list(module_blocks(wrapped)) == ["0.scale", "0.features", "0.hidden", "0.head"]
    with pytest.raises(SettingsError):
        module_blocks(model, 0)
    vit = build_model("torchvision:VisionTransformer", 4, 3, arguments={
        "image_size": 16, "patch_size": 8, "num_layers": 2, "num_heads": 1, "hidden_dim": 8, "mlp_dim": 8})  # fmt: skip
    assert list(module_blocks(vit)) == ["class_token", "conv_proj", "encoder", "heads"]
    assert list(module_blocks(vit, 3)) == [
        "class_token", "conv_proj", "encoder.pos_embedding", "encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1",
        "encoder.ln", "heads.head",
    ]  # fmt: skip


def test_registered_models_keep_their_declared_blocks_unless_a_depth_is_given(tmp_path, trained_run):
    from llcv.estimation.job_spec import JobSpec
    from llcv.estimation.scopes import run_scopes
    from llcv.settings import SamplerSettings
    from llcv.targets import Target

    _, result = trained_run
    spec = JobSpec(settings=SamplerSettings(), settings_hash="x", target=Target())
    paths = result.checkpoints[:1]
    declared = [scope.name for scope in run_scopes(paths, spec, True, False, None)]
    assert declared == ["model", "conv1", "conv2", "fc1", "fc2"]
    derived = run_scopes(paths, spec, True, False, None, block_depth=1)
    assert [scope.params for scope in derived[1:]] == [("conv1.*",), ("conv2.*",), ("fc1.*",), ("fc2.*",)]
