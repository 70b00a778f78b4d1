"""The chains' minibatches (``SamplingData``): seeded streams, full-size batches, and the dataset
preloaded onto the device when it fits.

Separate from ``llcv.sampling`` because a run prepares it once and hands it to the estimate of
every checkpoint (and calibration to every grid point): it is the data side of sampling, with no
knowledge of chains or weights.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from llcv.data import subset
from llcv.errors import SettingsError
from llcv.settings import SamplerSettings

# Datasets up to this size are materialised as tensors on the device once, so a sampling step
# is an index gather instead of a DataLoader round trip.
PRELOAD_LIMIT_BYTES = 2 * 1024**3


class SamplingData:
    """Minibatches for the chains: seeded, full-size, and on the device when the data fits.

    Build it once and pass it to ``estimate_llc`` for every checkpoint of a run, so the
    dataset is read (and moved to the device) only once.
    """

    def __init__(self, data: Dataset | DataLoader, settings: SamplerSettings, device: torch.device):
        self.loader = data if isinstance(data, DataLoader) else None
        self.device = device
        self._unfiltered: Dataset | None = None
        if self.loader is not None and settings.classes is not None:
            raise SettingsError("classes= needs a Dataset, not a DataLoader: llcv must choose the samples itself")
        if self.loader is not None:
            self.num_samples = len(self.loader.dataset)
            self.batch_size = self.loader.batch_size or 1
            self.tensors = None
            return
        dataset = data
        # BatchNorm statistics describe the model's function on the whole training data, so a
        # class's scope normalises with those of every class, as the whole model's does.
        if settings.classes is not None:
            self._unfiltered = data
            dataset = subset(dataset, classes=settings.classes, seed=settings.seed)
        if settings.num_samples is not None and settings.num_samples < len(dataset):
            dataset = subset(dataset, num_samples=settings.num_samples, seed=settings.seed)
        if len(dataset) == 0:
            raise SettingsError("the dataset for sampling is empty")
        self.dataset = dataset
        self.num_samples = len(dataset)
        self.batch_size = min(settings.batch_size, self.num_samples)
        self.tensors = self._preload(dataset)

    @property
    def is_full_batch(self) -> bool:
        """Every minibatch is the whole (preloaded) dataset, so all chains can share it."""
        return self.loader is None and self.tensors is not None and self.batch_size == self.num_samples

    def full_batches(self) -> Iterator:
        """The whole dataset as one batch, forever (order does not change a mean loss)."""
        while True:
            yield self.tensors

    def _preload(self, dataset: Dataset) -> list[torch.Tensor] | None:
        first = dataset[0]
        item_bytes = sum(torch.as_tensor(part).numel() * torch.as_tensor(part).element_size() for part in first)
        if item_bytes * len(dataset) > PRELOAD_LIMIT_BYTES:
            return None
        loader = DataLoader(dataset, batch_size=1024, shuffle=False, generator=torch.Generator())
        columns = [torch.cat(parts).to(self.device) for parts in zip(*loader)]
        return columns

    def batches(self, seed: int) -> Iterator:
        """An endless stream of full-size minibatches in a seeded order (reshuffled every pass)."""
        if self.loader is not None:
            while True:
                for batch in self.loader:
                    yield _to_device(batch, self.device)
        for indices in self._index_stream(seed):
            yield self._gather(indices)

    def stacked_batches(self, seeds: list[int]) -> Iterator:
        """Minibatches for several chains at once, stacked along a leading chain dimension."""
        if self.loader is not None or self.tensors is None:
            streams = [self.batches(seed) for seed in seeds]
            while True:
                yield [torch.stack(columns) for columns in zip(*(next(stream) for stream in streams))]
        streams = [self._index_stream(seed) for seed in seeds]
        while True:
            yield self._gather(torch.stack([next(stream) for stream in streams]))

    def _index_stream(self, seed: int) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        pending = torch.empty(0, dtype=torch.long)
        while True:
            while len(pending) < self.batch_size:
                pending = torch.cat([pending, torch.randperm(self.num_samples, generator=generator)])
            indices, pending = pending[: self.batch_size], pending[self.batch_size :]
            yield indices

    def passes(self, max_samples: int | None = None, seed: int = 0, batch_size: int | None = None) -> Iterator:
        """One pass over the samples in minibatches (of ``batch_size``, the chains' by default;
        a DataLoader's own), for the initial loss.

        With ``max_samples`` below the sample count, the pass covers a seeded random subset of
        that many samples (the same subset for every checkpoint of a run, like the chains' batches).
        """
        if self.loader is not None:
            seen = 0
            for batch in self.loader:
                if max_samples is not None and seen >= max_samples:
                    return
                seen += len(batch[0]) if isinstance(batch, (list, tuple)) else 1
                yield _to_device(batch, self.device)
            return
        indices = torch.arange(self.num_samples)
        if max_samples is not None and max_samples < self.num_samples:
            indices = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values
        size = batch_size or self.batch_size
        for start in range(0, len(indices), size):
            yield self._gather(indices[start : start + size])

    def statistics_batches(self, max_samples: int | None = None, seed: int = 0) -> Iterator:
        """Minibatches for recomputing BatchNorm statistics: ``passes``, except that a class's
        scope reads the whole training data it was chosen from (a seeded subset of ``max_samples``)."""
        if self.loader is not None or self._unfiltered is None:
            yield from self.passes(max_samples, seed)
            return
        dataset = self._unfiltered
        if max_samples is not None and max_samples < len(dataset):
            dataset = subset(dataset, num_samples=max_samples, seed=seed)
        for batch in DataLoader(dataset, batch_size=self.batch_size, shuffle=False):
            yield _to_device(batch, self.device)

    def _gather(self, indices: torch.Tensor):
        if self.tensors is not None:
            device_indices = indices.to(self.device)
            return [column[device_indices] for column in self.tensors]
        items = [self.dataset[index] for index in indices.tolist()]
        return _to_device(torch.utils.data.default_collate(items), self.device)


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return [_to_device(part, device) for part in batch]
    return batch
