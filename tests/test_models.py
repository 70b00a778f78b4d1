"""Tests for llcv.models: every registered model trains, stems are what they claim, the registry."""

from __future__ import annotations

import fnmatch

import pytest
import torch
from torch import nn

from llcv import models
from llcv.errors import SettingsError
from llcv.models import build_model, default_stem, list_models, model_blocks, model_version, register_model


# Every model with the CIFAR stem on 8 px inputs (cheap on a CPU), and the ImageNet stem once.
FORWARD_CASES = [(name, "cifar", 8) for name in list_models()] + [("resnet18", "imagenet", 32)]


@pytest.mark.parametrize("name, stem, image_size", FORWARD_CASES)
def test_every_model_runs_forward_and_backward_on_two_images(name, stem, image_size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=3, stem=stem)
    model.train()
    images = torch.randn(2, 3, image_size, image_size)
    logits = model(images)
    assert logits.shape == (2, 7)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 6])).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name}: {parameter_name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name}: {parameter_name} has a non-finite gradient"


@pytest.mark.parametrize("name", list_models())
def test_every_model_accepts_other_channel_counts(name):
    model = build_model(name, num_classes=3, in_channels=1, stem="cifar")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize("name", list_models())
def test_every_block_pattern_matches_some_parameter_and_blocks_do_not_overlap(name):
    with torch.device("meta"):  # names only: skip allocating and initialising the weights
        parameter_names = [parameter_name for parameter_name, _ in build_model(name, 10, 3, "cifar").named_parameters()]
    owner: dict[str, str] = {}
    for block, patterns in model_blocks(name).items():
        matched = [p for p in parameter_names if any(fnmatch.fnmatchcase(p, pattern) for pattern in patterns)]
        assert matched, f"{name}: block {block!r} ({patterns}) matches no parameter"
        for parameter_name in matched:
            assert parameter_name not in owner, f"{name}: {parameter_name} is in {owner.get(parameter_name)!r} and {block!r}"
            owner[parameter_name] = block
    if name.startswith("resnet"):
        assert set(owner) == set(parameter_names)  # the blocks partition every parameter


@pytest.mark.parametrize("in_channels", [1, 3])
def test_resnet18_stems_have_the_expected_first_layers(in_channels):
    cifar = build_model("resnet18", 10, in_channels, "cifar")
    assert cifar.conv1.weight.shape == (64, in_channels, 3, 3)
    assert cifar.conv1.stride == (1, 1) and cifar.conv1.padding == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)

    imagenet = build_model("resnet18", 10, in_channels, "imagenet")
    assert imagenet.conv1.weight.shape == (64, in_channels, 7, 7)
    assert imagenet.conv1.stride == (2, 2) and imagenet.conv1.padding == (3, 3)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert cifar.fc.out_features == imagenet.fc.out_features == 10


def test_cifar_stem_keeps_resolution_the_imagenet_stem_reduces_it():
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cifar = build_model("resnet18", 10, 3, "cifar").eval()
        imagenet = build_model("resnet18", 10, 3, "imagenet").eval()
        assert cifar.maxpool(cifar.conv1(images)).shape[-2:] == (32, 32)
        assert imagenet.maxpool(imagenet.conv1(images)).shape[-2:] == (8, 8)


@pytest.mark.parametrize("image_size, stem", [(16, "cifar"), (32, "cifar"), (64, "cifar"), (65, "imagenet"), (224, "imagenet"), (None, "imagenet")])
def test_default_stem_follows_the_image_size(image_size, stem):
    assert default_stem(image_size) == stem
    model = build_model("resnet18", 10, 3, image_size=image_size)
    assert model.conv1.kernel_size == ((3, 3) if stem == "cifar" else (7, 7))


def test_build_model_is_seeded_by_the_global_rng():
    torch.manual_seed(3)
    first = build_model("smallcnn", 4, 3).state_dict()
    torch.manual_seed(3)
    second = build_model("smallcnn", 4, 3).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(SettingsError) as raised:
        build_model("vgg11", 10, 3)
    message = str(raised.value)
    assert "vgg11" in message
    assert all(name in message for name in list_models())


def test_list_models_is_sorted_and_holds_the_builtins():
    names = list_models()
    assert names == sorted(names)
    assert {"smallcnn", "resnet18", "resnet34", "resnet50"} <= set(names)


def test_register_model_adds_a_name(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))  # leave the real registry alone
    calls = []

    @register_model("tiny-test", blocks={"all": ["*"]})
    def tiny(num_classes, in_channels, stem):
        calls.append((num_classes, in_channels, stem))
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 4 * 4, num_classes))

    assert "tiny-test" in list_models()
    assert model_blocks("tiny-test") == {"all": ("*",)}
    assert model_version("tiny-test") == 1  # the default; register_model(..., version=2) bumps it
    model = build_model("tiny-test", num_classes=5, in_channels=2, image_size=4)
    assert calls == [(5, 2, "cifar")]
    assert model(torch.randn(2, 2, 4, 4)).shape == (2, 5)
    # A registered name is a valid [model] name too.
    from llcv.settings import validate_section

    assert validate_section("model", {"name": "tiny-test"}).name == "tiny-test"


@pytest.mark.parametrize("size", [8, 12, 16, 32])
def test_smallcnn_pools_as_adaptive_average_pooling_does_at_every_input_size(size):
    from llcv.models import SmallCNN, _pooled

    model = SmallCNN(10, 3)
    images = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(size))
    hidden = torch.max_pool2d(torch.relu(model.conv2(torch.max_pool2d(torch.relu(model.conv1(images)), 2))), 2)
    assert torch.equal(_pooled(hidden, model.pool), model.pool(hidden))
