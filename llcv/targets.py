"""What an estimate runs on: one value that says where the weights are and how to rebuild the
model and its training data, and the loading of it.

``estimate``, ``calibrate`` and ``estimate-all`` all start here: the CLI builds one ``Target``
from its flags and settings, and everything after it (``estimate_all``, its jobs, executors and
scopes, the run's calibration) carries that value rather than its fields one by one. llcv
checkpoints name their model and dataset; foreign checkpoints need ``model_name`` or
``model_factory`` (and usually ``dataset``). The training split always comes with evaluation
transforms: LLC estimation never augments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, get_args

from torch import nn
from torch.utils.data import Dataset

from llcv.checkpoints import CheckpointInfo, load_checkpoint
from llcv.data import DatasetInfo, list_datasets, load_dataset
from llcv.errors import CheckpointError, DataError, SettingsError
from llcv.model_sources import ImportedFactory
from llcv.models import Stem, check_model_name

DEFAULT_FOREIGN_DATASET = "digits"


@dataclass
class LoadedTarget:
    """A loaded checkpoint with the data its LLC is measured on (``dataset_info`` is None for
    data passed in as a Dataset)."""

    model: nn.Module
    dataset: Dataset
    checkpoint: CheckpointInfo
    dataset_info: DatasetInfo | None


@dataclass(frozen=True)
class Target:
    """What to estimate: a checkpoint, the model its weights go into and the data they are measured on.

    Attributes:
        checkpoint: the weights; None in a run's target, which each checkpoint of the run
            completes (``at``).
        model_name, stem: the registered architecture of a foreign checkpoint (llcv
            checkpoints record theirs, and these are then ignored).
        model_factory: your own architecture: ``() -> nn.Module`` to load the weights into (the
            caller vouches for it, so neither its version nor its class count is checked), or an
            ``llcv.model_sources.ImportedFactory`` (``--model-factory package.module:function``,
            ``import_factory``), called with the class count and channels the checkpoint records.
            A checkpoint trained with a factory loads only with one given here.
        dataset: a dataset name, or the training data as a Dataset; None: the one the
            checkpoint records (``DEFAULT_FOREIGN_DATASET`` for foreign files).
        data_dir: where the named dataset lives; None: where the checkpoint says it was.
        image_size: the images' side; None: the size the checkpoint's model was trained on.
        allow_version_mismatch: load an llcv checkpoint saved with another version of its model
            (``load_checkpoint``; ``checkpoint.model_version_overridden`` then says so).
    """

    checkpoint: Path | None = None
    model_name: str | None = None
    stem: Stem | None = None
    model_factory: Callable[[], nn.Module] | ImportedFactory | None = None
    dataset: Dataset | str | None = None
    data_dir: str | None = None
    image_size: int | None = None
    allow_version_mismatch: bool = False

    def __post_init__(self) -> None:
        # Paths as given on a command line or in Python; kept as str/Path the same way everywhere.
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))

    def at(self, checkpoint: Path | str) -> Target:
        """This target with the weights of ``checkpoint``: one checkpoint of a run."""
        return replace(self, checkpoint=Path(checkpoint))

    def check(self, *, data_dir_here: bool = True) -> None:
        """Refuse an unknown dataset, model or stem, and (with ``data_dir_here``) a data folder
        that does not exist, before any work rather than once per checkpoint.

        Raises:
            DataError: an unknown dataset name, or a missing ``data_dir``.
            SettingsError: an unknown model name (registered, ``torchvision:``, ``timm:``) or stem.
        """
        if isinstance(self.dataset, str) and self.dataset not in list_datasets():
            raise DataError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(list_datasets())}")
        if self.model_name is not None:
            check_model_name(self.model_name)
        if self.stem is not None and self.stem not in get_args(Stem):
            raise SettingsError(f"stem {self.stem!r}: use {' or '.join(get_args(Stem))}")
        if data_dir_here and self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise DataError(f"data directory {self.data_dir} does not exist or is not a folder")

    def load_model(self) -> tuple[nn.Module, CheckpointInfo]:
        """The checkpoint's weights in their model, without the data.

        Raises:
            CheckpointError: the file is unreadable, records another version of its model (and
                the mismatch is not allowed), or does not fit the model.
        """
        if self.checkpoint is None:
            raise CheckpointError("no checkpoint: a run's target is completed with Target.at(checkpoint)")
        if isinstance(self.model_factory, ImportedFactory):
            return load_checkpoint(self.checkpoint, factory=self.model_factory)
        if self.model_factory is not None:
            return load_checkpoint(self.checkpoint, model=self.model_factory())
        return load_checkpoint(
            self.checkpoint, model_name=self.model_name, stem=self.stem, allow_version_mismatch=self.allow_version_mismatch
        )

    def load(self) -> LoadedTarget:
        """Load the checkpoint and the training split it was (or, for foreign files, is to be) measured on.

        Raises:
            CheckpointError: as ``load_model``, or the model's outputs do not match the dataset's classes.
            DataError: the dataset is missing or malformed.
        """
        model, info = self.load_model()
        if isinstance(self.dataset, Dataset):
            return LoadedTarget(model=model, dataset=self.dataset, checkpoint=info, dataset_info=None)
        recorded = info.dataset
        name = self.dataset or (recorded.name if recorded else DEFAULT_FOREIGN_DATASET)
        as_recorded = recorded is not None and recorded.name == name
        directory = self.data_dir if self.data_dir is not None else (recorded.data_dir if as_recorded else None)
        # the model was trained on images of the recorded size
        image_size = self.image_size if self.image_size is not None else (recorded.image_size if as_recorded else None)
        split, dataset_info = training_split(
            name, str(directory) if directory is not None else None, recorded.seed if recorded else 0, image_size
        )
        vouched = self.model_factory is not None and not isinstance(self.model_factory, ImportedFactory)
        checked = not vouched and info.model.num_classes is not None
        if checked and dataset_info.num_classes != info.model.num_classes:
            raise CheckpointError(
                f"checkpoint {self.checkpoint} has {info.model.num_classes} outputs but dataset {name!r} has "
                f"{dataset_info.num_classes} classes; pass the dataset it was trained on with --dataset"
            )
        return LoadedTarget(model=model, dataset=split, checkpoint=info, dataset_info=dataset_info)


@lru_cache(maxsize=4)
def training_split(name: str, data_dir: str | None, seed: int, image_size: int | None = None) -> tuple[Dataset, DatasetInfo]:
    """The training split with evaluation transforms; cached so a process reads a dataset once."""
    train, _, info = load_dataset(name, data_dir, seed, augment=False, image_size=image_size)
    return train, info
