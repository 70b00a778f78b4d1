"""docs/your-model.md end to end, at test sizes: a model llcv has no registration for, on a standard
dataset read from files in its own format, through `llcv train`, `estimate-all` and `report`, with
no model flag after training except a factory's, which is never imported on a checkpoint's word."""

from __future__ import annotations

import json
from pathlib import Path

import torchvision
from typer.testing import CliRunner

from llcv.cli import app
from test_datasets import _write_cifar100, _write_idx, _write_svhn
from test_model_sources import TINY_VIT_ARGS
from test_report import check_page

runner = CliRunner()
TRAIN = ["--epochs", "1", "--batch-size", "64", "--checkpoint-every-epochs", "1", "--device", "cpu", "--lr", "0.01"]
ESTIMATE = ["--epsilon", "1e-5", "--gamma", "100", "--num-chains", "2", "--num-draws", "8", "--num-burnin-steps", "0",
            "--batch-size", "32", "--num-samples", "64", "--device", "cpu"]  # fmt: skip


def _invoke(*args) -> str:
    result = runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _train_estimate_report(tmp_path: Path, dataset: str, data_dir: Path, model: list[str], again: list[str]) -> list[dict]:
    """Train on the files, estimate every checkpoint with only ``again`` repeated, write the report;
    the records, after checking each is done and the report names every checkpoint."""
    checkpoints, results = tmp_path / "checkpoints", tmp_path / "results"
    _invoke("train", "--dataset", dataset, "--data-dir", data_dir, "--checkpoints-dir", checkpoints, *model, *TRAIN)
    _invoke("estimate-all", "--checkpoints-dir", checkpoints, "--results-dir", results, *ESTIMATE, *again)
    (folder,) = [path for path in results.iterdir() if (path / "settings.json").is_file()]
    records = [json.loads(path.read_text()) for path in sorted(folder.glob("step_*.json"))]
    names = sorted(path.name for path in checkpoints.glob("step_*.pt"))
    assert [record["checkpoint"] for record in records] == names and all(record["status"] == "done" for record in records)
    page = check_page(Path(_report(results, tmp_path / "report.html")))
    assert [row[0] for row in page.rows["checkpoints"]] == names
    return records


def _report(results: Path, out: Path) -> Path:
    _invoke("report", "--results-dir", results, "--out", out)
    return out


def test_a_torchvision_vit_on_mnist_files(tmp_path):
    data = _write_idx(tmp_path / "mnist", gzipped=True)
    records = _train_estimate_report(tmp_path, "mnist", data, ["--model", "torchvision:VisionTransformer", *TINY_VIT_ARGS], [])
    assert {record["model"]["name"] for record in records} == {"torchvision:VisionTransformer"}
    # the release that built the model is in every record, beside the one its checkpoint records
    assert {(record["model"]["library_version"], record["model"]["checkpoint_library_version"]) for record in records} == {
        (torchvision.__version__, torchvision.__version__)
    }


def test_a_timm_model_on_cifar100_files(tmp_path):
    data = _write_cifar100(tmp_path / "cifar-100-python")
    records = _train_estimate_report(tmp_path, "cifar100", data, ["--model", "timm:test_vit"], [])
    assert {record["model"]["name"] for record in records} == {"timm:test_vit"}


def test_a_factory_model_on_svhn_files(tmp_path):
    data = _write_svhn(tmp_path / "svhn")
    factory = ["--model-factory", "model_factories:tiny_net"]
    records = _train_estimate_report(tmp_path, "svhn", data, factory, factory)
    assert {record["model"]["name"] for record in records} == {"model_factories:tiny_net"}
