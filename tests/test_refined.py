"""Refined LLCs over training: estimate_all per block and per class, their records, resume, shards, and the figure.

The engine's refinements themselves (a regression's bias-only and weight-only lambda, frozen
weights, class subsets) are tested in test_sampling.py; here they run across checkpoints.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from _helpers import copy_checkpoints, fast_settings
from conftest import make_train_settings
from llcv.data import dataset_targets
from llcv.errors import SettingsError
from llcv.estimation.run import EstimateJob, estimate_all, plan_run
from llcv.models import SmallCNN, model_blocks
from llcv.figures.plotting import llc_figure, plot_llc
from llcv.results import load_results, results_dataframe, settings_hash
from llcv.sampling import data_nbeta
from llcv.estimation.scopes import Scope, refined_scopes
from llcv.settings import EstimateSettings, SamplerSettings
from llcv.targets import training_split
from llcv.targets import Target

RESNET_BLOCKS = ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
# One chain of two draws on 16 images, no burn-in: the records' shape is under test, not the numbers.
TINY = dict(num_chains=1, num_draws=2, num_burnin_steps=0, batch_size=16, num_samples=16)


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory) -> Path:
    """resnet18 (CIFAR stem) trained for one step on `synthetic` (16x16): checkpoints at steps 0 and 1."""
    from llcv.training import train

    directory = tmp_path_factory.mktemp("resnet-run") / "checkpoints"
    settings = make_train_settings(directory, model={"name": "resnet18", "stem": "cifar"}, epochs=1, batch_size=512)
    result = train(settings)
    assert [path.name for path in result.checkpoints] == ["step_00000000.pt", "step_00000001.pt"]
    return result.checkpoints_dir


@pytest.fixture(scope="module")
def per_layer(resnet_run, tmp_path_factory):
    """A per-layer estimate-all of the resnet run, done once for the tests that read it."""
    results = tmp_path_factory.mktemp("per-layer") / "results"
    summary = estimate_all(resnet_run, SamplerSettings(**TINY), EstimateSettings(results_dir=results, device="cpu", per_layer=True))
    return results, summary


@pytest.fixture
def smallcnn_checkpoints(trained_run, tmp_path) -> Path:
    _, result = trained_run
    return copy_checkpoints(result.checkpoints_dir, tmp_path / "checkpoints", steps=[0, 16])


def _record_files(folder: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("step_*.json")}


# --- per layer


def test_per_layer_writes_one_record_per_block_plus_the_model_and_resumes(resnet_run, per_layer):
    results, summary = per_layer
    settings = SamplerSettings(**TINY)
    assert summary.ok and summary.scopes == ["model", *RESNET_BLOCKS]
    folder = results / settings_hash(settings)  # the scopes' own params do not move the hash folder
    assert summary.folder == folder and [path.name for path in results.iterdir()] == [folder.name]
    expected = {f"step_{step:08d}{'' if scope == 'model' else '__' + scope}.json" for step in (0, 1) for scope in summary.scopes}
    assert set(_record_files(folder)) == expected

    blocks = model_blocks("resnet18")
    for step in (0, 1):
        records = {record.scope: record for record in load_results(results) if record.step == step}
        assert list(records) == ["model", *RESNET_BLOCKS]  # training order: whole model, then blocks as declared
        whole = records.pop("model")
        assert whole.result.settings["params"] is None and whole.scope_kind == "model"
        for index, (name, record) in enumerate(records.items()):
            assert record.status == "done" and record.settings_hash == folder.name
            assert (record.scope_kind, record.scope_index) == ("block", index)
            assert record.result.settings["params"] == list(blocks[name])
        # the ResNet's blocks partition its parameters
        assert sum(record.result.num_parameters for record in records.values()) == whole.result.num_parameters
    assert records["fc"].result.num_parameters == 512 * 4 + 4

    before = _record_files(folder)
    again = estimate_all(resnet_run, settings, EstimateSettings(results_dir=results, device="cpu", per_layer=True))
    assert again.computed == [] and len(again.already_done) == len(expected)
    assert _record_files(folder) == before


def test_the_figure_draws_one_curve_per_block_beside_the_whole_model(per_layer, tmp_path):
    results, _ = per_layer
    records = load_results(results)
    figure = llc_figure({"resnet18": records})
    top, blocks_axis = figure.axes[0], figure.axes[1]
    assert blocks_axis.get_title(loc="left") == "per block (6 blocks)"
    labels = [line.get_label() for line in blocks_axis.get_lines()]
    assert labels == ["whole model", *RESNET_BLOCKS]
    legend = [text.get_text() for text in blocks_axis.get_legend().get_texts()]
    assert legend[: len(labels)] == labels and legend[len(labels) :] in ([], ["unhealthy: hollow"])  # short chains: often unhealthy
    assert len(top.get_lines()) == 1  # the whole model alone on top, as without refinements
    fc = {record.step: record.result for record in records if record.scope == "fc"}
    assert list(blocks_axis.get_lines()[-1].get_ydata()) == pytest.approx([fc[0].llc_mean, fc[1].llc_mean])

    normalised = llc_figure({"resnet18": records}, per_parameter=True)
    line = normalised.axes[1].get_lines()[-1]
    assert list(line.get_ydata()) == pytest.approx([fc[step].llc_mean / fc[step].num_parameters for step in (0, 1)])
    assert normalised.axes[1].get_ylabel().startswith("LLC / d")

    out = plot_llc(records, tmp_path / "blocks.png", per_parameter=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(results_dataframe(records).query("scope_kind == 'block'")) == 12


# --- per class


def test_per_class_writes_one_record_per_class_at_the_whole_models_temperature(smallcnn_checkpoints, tmp_path):
    settings = fast_settings()  # num_samples 128 caps each class too; a class with fewer uses all of its samples
    per_class = EstimateSettings(results_dir=tmp_path / "results", device="cpu", per_class=True)
    summary = estimate_all(smallcnn_checkpoints, settings, per_class)
    assert summary.ok and summary.scopes == ["model", "class=0", "class=1", "class=2", "class=3"]
    folder = tmp_path / "results" / settings_hash(settings)
    assert len(_record_files(folder)) == 2 * 5 and (folder / "step_00000016__class=2.json").is_file()

    train, _ = training_split("synthetic", None, 0)
    counts = torch.bincount(dataset_targets(train), minlength=4).tolist()
    records = load_results(tmp_path / "results")
    whole = next(record for record in records if record.scope == "model")
    assert whole.result.nbeta == pytest.approx(data_nbeta(settings.num_samples))  # n / ln n of the whole model's data
    for record in records:
        result = record.result
        assert result.nbeta == pytest.approx(whole.result.nbeta)  # one temperature for every curve
        assert result.nbeta_rule == "data"  # a class's number is the whole model's by the run's rule
        if record.scope != "model":
            label = int(record.scope.split("=")[1])
            assert result.settings["classes"] == [label] and record.scope_index == label
            assert result.num_samples_used == min(counts[label], settings.num_samples)
            assert result.num_parameters == whole.result.num_parameters

    # with per_class, the sampler's classes name the classes to refine; the whole model keeps all the data
    chosen = estimate_all(smallcnn_checkpoints, fast_settings(classes=[3, 1]), per_class)
    assert chosen.scopes == ["model", "class=1", "class=3"] and chosen.computed == [] and chosen.folder == folder


def test_shards_split_the_scopes_of_a_checkpoint_without_duplicates(smallcnn_checkpoints, tmp_path):
    settings = fast_settings(num_chains=1, num_draws=4)
    per_class = EstimateSettings(results_dir=tmp_path / "results", device="cpu", per_class=True)
    shares = [estimate_all(smallcnn_checkpoints, settings, per_class.model_copy(update={"shard": f"{index}/3"})) for index in range(3)]
    computed = [name for share in shares for name in share.computed]
    assert len(computed) == len(set(computed)) == 2 * 5
    assert all(share.computed for share in shares)
    assert estimate_all(smallcnn_checkpoints, settings, per_class).computed == []


# --- blocks of a researcher's own model, and mistakes


def test_a_model_factory_brings_its_own_blocks_or_has_its_module_trees_and_redeclared_blocks_are_redone(smallcnn_checkpoints, tmp_path):
    train, _ = training_split("synthetic", None, 0)
    settings = fast_settings(num_chains=1, num_draws=4)

    def run(blocks):
        options = EstimateSettings(results_dir=tmp_path / "results", device="cpu", steps=[16], per_layer=True)
        return estimate_all(smallcnn_checkpoints, settings, options, blocks=blocks, target=Target(model_factory=lambda: SmallCNN(4, 3), dataset=train))

    first = run({"features": ["conv*"], "head": ["fc2.*"]})
    assert first.ok and first.scopes == ["model", "features", "head"]
    head = load_results(tmp_path / "results")[-1]
    assert head.scope == "head" and head.result.num_parameters == 64 * 4 + 4

    second = run({"features": ["conv*"], "head": ["fc1.*", "fc2.*"]})
    assert second.computed == ["step_00000016.pt [head]"]  # features unchanged, head redeclared

    per_layer = EstimateSettings(results_dir=tmp_path / "r", device="cpu", steps=[16], per_layer=True)
    # without blocks=, a factory's model has its module tree's blocks (llcv.model_sources.module_blocks)
    derived = plan_run(smallcnn_checkpoints, settings, per_layer, Target(model_factory=lambda: SmallCNN(4, 3), dataset=train))
    assert [(scope.name, scope.params) for scope in derived.scopes[1:]] == [
        ("conv1", ("conv1.*",)), ("conv2", ("conv2.*",)), ("fc1", ("fc1.*",)), ("fc2", ("fc2.*",))
    ]
    with pytest.raises(SettingsError, match="block 'head' \\(decoder.\\*\\).*conv1, conv2, fc1, fc2"):
        run({"head": ["decoder.*"]})
    with pytest.raises(SettingsError, match="unknown block\\(s\\) layer9; the model's blocks are conv1, conv2, fc1, fc2"):
        estimate_all(smallcnn_checkpoints, settings, per_layer, blocks=["conv1", "layer9"])

    # names pick some of a registered model's blocks, in the order given
    some = estimate_all(smallcnn_checkpoints, settings, per_layer, blocks=["fc2", "conv1"])
    assert some.ok and some.scopes == ["model", "fc2", "conv1"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(estimate=dict(per_layer=True), settings=dict(params=["fc2.*"])), "leave the sampler's params unset"),
        (dict(estimate=dict(per_class=True), settings=dict(classes=[2, 9])), "unknown class\\(es\\) 9; the labels are 0..3"),
        (dict(blocks={"x": ["fc2.*"]}), "per_layer=True"),
        (dict(estimate=dict(per_class=True), blocks=["fc2"]), "per_layer=True"),
    ],
)
def test_refinements_the_run_cannot_take_fail_before_any_work(smallcnn_checkpoints, tmp_path, options, message):
    settings = fast_settings(**options.pop("settings", {}))
    run = EstimateSettings(results_dir=tmp_path / "results", device="cpu", **options.pop("estimate", {}))
    with pytest.raises(SettingsError, match=message):
        estimate_all(smallcnn_checkpoints, settings, run, **options)
    assert not (tmp_path / "results").exists()


def test_scopes_are_named_for_files_and_travel_to_workers():
    scopes = refined_scopes({"stem": ("conv1.*", "bn1.*"), "fc": ["fc.*"]}, [7, 2])
    assert [(scope.name, scope.kind, scope.index) for scope in scopes] == [
        ("model", "model", 0), ("stem", "block", 0), ("fc", "block", 1), ("class=2", "class", 2), ("class=7", "class", 7),
    ]  # fmt: skip
    for bad in ({"model": ["fc.*"]}, {"a/b": ["fc.*"]}, {"fc": "fc.*"}, {"fc": []}):
        with pytest.raises(SettingsError):
            refined_scopes(bad)
    import pickle

    job = EstimateJob(Path("step_00000001.pt"), Scope("layer3", "block", 3, params=("layer3.*",)))
    assert pickle.loads(pickle.dumps(job)) == job and job.key == "step_00000001__layer3" and job.label == "step_00000001.pt [layer3]"


@pytest.mark.slow
def test_the_ray_executor_estimates_scopes_like_the_local_one(smallcnn_checkpoints, tmp_path):
    ray = pytest.importorskip("ray")
    # classes: with per_class, the classes to refine; fp32: "auto" is timed apart in this process and in Ray's
    settings = fast_settings(num_chains=1, num_draws=4, classes=[0, 1], precision="fp32")
    local = estimate_all(smallcnn_checkpoints, settings, EstimateSettings(results_dir=tmp_path / "local", device="cpu", per_class=True))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        options = EstimateSettings(results_dir=tmp_path / "ray", device="cpu", per_class=True, executor="ray", cpus_per_task=1)
        remote = estimate_all(smallcnn_checkpoints, settings, options)
    finally:
        ray.shutdown()
    assert remote.ok and sorted(remote.computed) == sorted(local.computed)
    for mine, theirs in zip(load_results(tmp_path / "local"), load_results(tmp_path / "ray")):
        assert (theirs.scope, theirs.worker.executor) == (mine.scope, "ray") and theirs.worker.pid != os.getpid()
        assert theirs.result.llc_mean == pytest.approx(mine.result.llc_mean, rel=1e-4, abs=1e-6)
    assert json.loads((tmp_path / "ray" / remote.settings_hash / "settings.json").read_text())["settings_hash"] == local.settings_hash


@pytest.mark.parametrize(
    ("nbeta", "expected"),
    [("data", data_nbeta(300)), ("batch", 64 / math.log(64)), (5.0, 5.0)],
)
def test_a_class_scope_keeps_the_whole_models_temperature_by_either_rule(nbeta, expected):
    """Each class holds 100 of the 300 samples: its own n / ln n would be another temperature."""
    from torch.utils.data import TensorDataset

    from llcv.estimation.scopes import scope_settings

    dataset = TensorDataset(torch.zeros(300, 1), torch.arange(300) % 3)
    settings = SamplerSettings(nbeta=nbeta, batch_size=64)
    scoped = scope_settings(settings, Scope("class=1", "class", 1, classes=(1,)), dataset)
    assert scoped.nbeta == pytest.approx(expected) and scoped.classes == [1]
    assert scope_settings(settings, Scope("fc", "block", 0, params=("fc.*",)), dataset).nbeta == nbeta  # blocks keep the rule
