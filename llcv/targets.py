"""What an estimate runs on: a checkpoint's model and its training split, rebuilt from metadata.

``estimate``, ``calibrate`` and ``estimate-all`` all start here. llcv checkpoints name their
model and dataset; foreign checkpoints need ``model_name`` (and usually ``dataset``). The
training split always comes with evaluation transforms: LLC estimation never augments.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from llcv.checkpoints import CheckpointInfo, load_checkpoint
from llcv.data import DatasetInfo, load_dataset
from llcv.errors import CheckpointError
from llcv.models import Stem

DEFAULT_FOREIGN_DATASET = "digits"


@dataclass
class EstimationTarget:
    """A loaded checkpoint with the data its LLC is measured on."""

    model: nn.Module
    dataset: Dataset
    checkpoint: CheckpointInfo
    dataset_info: DatasetInfo


@lru_cache(maxsize=4)
def training_split(name: str, data_dir: str | None, seed: int, image_size: int | None = None) -> tuple[Dataset, DatasetInfo]:
    """The training split with evaluation transforms; cached so a process reads a dataset once."""
    train, _, info = load_dataset(name, data_dir, seed, augment=False, image_size=image_size)
    return train, info


def load_target(
    checkpoint: Path,
    *,
    model_name: str | None = None,
    stem: Stem | None = None,
    dataset: str | None = None,
    data_dir: Path | str | None = None,
    image_size: int | None = None,
    allow_version_mismatch: bool = False,
) -> EstimationTarget:
    """Load ``checkpoint`` and the training split it was (or, for foreign files, is to be) measured on.

    Args:
        checkpoint: an llcv or foreign checkpoint file.
        model_name, stem: the architecture of a foreign checkpoint (ignored for llcv files).
        dataset, data_dir, image_size: override the dataset recorded in the checkpoint.
        allow_version_mismatch: load an llcv checkpoint saved with another version of its model
            (``load_checkpoint``; ``target.checkpoint.model_version_overridden`` then says so).

    Raises:
        CheckpointError: the file is unreadable, records another version of its model (and the
            mismatch is not allowed), or its model does not fit the dataset.
        DataError: the dataset is missing or malformed.
    """
    model, info = load_checkpoint(checkpoint, model_name=model_name, stem=stem, allow_version_mismatch=allow_version_mismatch)
    recorded = info.dataset
    name = dataset or (recorded.name if recorded else DEFAULT_FOREIGN_DATASET)
    directory = data_dir if data_dir is not None else (recorded.data_dir if recorded and recorded.name == name else None)
    seed = recorded.seed if recorded else 0
    if image_size is None and recorded and recorded.name == name:
        image_size = recorded.image_size  # the model was trained on images of this size
    split, dataset_info = training_split(name, str(directory) if directory is not None else None, seed, image_size)
    if info.model.num_classes is not None and dataset_info.num_classes != info.model.num_classes:
        raise CheckpointError(
            f"checkpoint {checkpoint} has {info.model.num_classes} outputs but dataset {name!r} has "
            f"{dataset_info.num_classes} classes; pass the dataset it was trained on with --dataset"
        )
    return EstimationTarget(model=model, dataset=split, checkpoint=info, dataset_info=dataset_info)
