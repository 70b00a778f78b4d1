"""Refined scopes: what one record of ``estimate_all`` measures, the whole model, a block or a class.

A run estimates the whole model at every checkpoint and, with ``per_layer`` or ``per_class``, one
more record per block (a weight-refined LLC: only that block's parameters are sampled) or per
class (a data-refined LLC: the loss on that class's samples only). ``refined_scopes`` lists the
scopes, ``scope_settings`` turns the run's sampler settings into one scope's, ``class_refinement``
reads ``[sampler] classes`` as the classes to refine when ``per_class`` is on, and ``run_scopes``
resolves a run's ``per_layer`` / ``per_class`` / ``blocks`` against its first checkpoint, so a
mistake fails before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from llcv.checkpoints import CheckpointInfo
from llcv.errors import LLCVError, SettingsError
from llcv.estimation.job_spec import JobSpec
from llcv.sampling import LLCResult
from llcv.results import LLCRecord
from llcv.results import DEFAULT_SCOPE, check_scope
from llcv.sampling import nbeta_rule, resolve_nbeta, select_parameters
from llcv.settings import SamplerSettings


@dataclass(frozen=True)
class Scope:
    """What one record measures: the whole model, one block's weights, or one class's data.

    A refined scope replaces one sampler field for its own estimate and leaves the rest, and the
    settings hash, as they are: a block scope samples only ``params`` (the rest of the model is
    frozen at the checkpoint), a class scope measures the loss on ``classes`` only.

    Attributes:
        name: the record's ``scope``: ``model``, a block's name (``layer3``), or ``class=7``.
        kind: ``model``, ``block`` or ``class``.
        index: the order within its kind: a block's place in the model's declared blocks, a class's label.
        params: a block's parameter-name glob patterns.
        classes: a class scope's labels.
    """

    name: str = DEFAULT_SCOPE
    kind: Literal["model", "block", "class"] = "model"
    index: int = 0
    params: tuple[str, ...] | None = None
    classes: tuple[int, ...] | None = None


WHOLE_MODEL = Scope()


def refined_scopes(blocks: Mapping[str, Sequence[str]] | None = None, classes: Sequence[int] | None = None) -> list[Scope]:
    """The whole model, then one scope per block (in the given order), then one per class.

    Args:
        blocks: {block name: parameter-name glob patterns}, e.g. ``llcv.models.model_blocks("resnet18")``.
        classes: labels, each measured on its own.

    Raises:
        SettingsError: a block name is not usable in a file name, or a block has no pattern.
    """
    scopes = [WHOLE_MODEL]
    for index, (name, patterns) in enumerate((blocks or {}).items()):
        if name == DEFAULT_SCOPE or name.startswith("class="):
            raise SettingsError(f"block name {name!r} is reserved for the whole model or a class; rename the block")
        if isinstance(patterns, str) or not patterns:
            raise SettingsError(f"block {name!r}: give a list of parameter-name patterns, e.g. ['{name}.*']")
        scopes.append(Scope(check_scope(name), "block", index, params=tuple(patterns)))
    for label in sorted(set(classes or ())):
        scopes.append(Scope(f"class={label}", "class", int(label), classes=(int(label),)))
    return scopes


def scope_settings(settings: SamplerSettings, scope: Scope, dataset: Dataset) -> SamplerSettings:
    """The sampler settings of one scope: the run's settings with the scope's ``params`` or ``classes``.

    A class scope also keeps every curve at one temperature and within its data: when ``nbeta``
    is a rule (``"data"``, n / ln n, or ``"batch"``, batch_size / ln(batch_size) with the minibatch
    capped by the data), it is fixed at the whole model's value, since a class holds fewer
    samples than the whole data and may hold fewer than a minibatch (``scope_result`` records
    the rule); and ``num_samples`` caps the class's samples instead of failing when the class
    has fewer.
    """
    if scope.kind == "model":
        return settings
    changes: dict[str, Any] = {}
    if scope.params is not None:
        changes["params"] = list(scope.params)
    if scope.classes is not None:
        from llcv.data import dataset_targets

        changes["classes"] = list(scope.classes)
        whole = len(dataset) if settings.num_samples is None else min(settings.num_samples, len(dataset))
        if nbeta_rule(settings.nbeta) != "set":
            changes["nbeta"] = resolve_nbeta(settings.nbeta, whole, settings.batch_size)
        if settings.num_samples is not None:
            available = int(torch.isin(dataset_targets(dataset), torch.tensor(scope.classes)).sum())
            if settings.num_samples >= available:
                changes["num_samples"] = None
    return SamplerSettings.model_validate({**settings.model_dump(), **changes})


def scope_result(result: LLCResult, settings: SamplerSettings) -> LLCResult:
    """A scope's estimate as its record tells it: with the run's ``settings``' temperature rule as
    its ``nbeta_rule``, since a class scope's nbeta, a number in its own settings
    (``scope_settings``), was the whole model's by that rule."""
    return result.model_copy(update={"nbeta_rule": nbeta_rule(settings.nbeta)})


def class_refinement(settings: SamplerSettings, per_class: bool | Sequence[int]) -> tuple[SamplerSettings, bool | list[int]]:
    """A run's sampler settings and ``per_class`` when ``[sampler] classes`` may name the classes to refine.

    With ``per_class`` (``llcv estimate-all --per-class --classes 0,3,7``) the listed classes each
    get their own LLC, and the run's settings, its whole-model estimate and its settings hash keep
    all the data. Without ``per_class``, ``classes`` restricts every estimate and nothing changes.

    Returns:
        The run's sampler settings and the ``per_class`` to give ``run_scopes`` (True, or the labels).
    """
    if per_class is True and settings.classes is not None:
        return settings.model_copy(update={"classes": None}), list(settings.classes)
    return settings, per_class


def same_refinement(record: LLCRecord | Mapping[str, Any], scope: Scope) -> bool:
    """Whether a record of a refined scope was made with the scope's current patterns or labels
    (a model's blocks may be redeclared between runs)."""
    recorded = LLCRecord.coerce(record).sampler_settings  # the settings the estimate used
    if scope.params is not None and recorded.get("params") != list(scope.params):
        return False
    return scope.classes is None or recorded.get("classes") == list(scope.classes)


def run_scopes(
    paths: Sequence[Path],
    spec: JobSpec,
    per_layer: bool,
    per_class: bool | Sequence[int],
    blocks: Mapping[str, Sequence[str]] | Sequence[str] | None,
    block_depth: int | None = None,
) -> list[Scope]:
    """The scopes of this run: the whole model, then the blocks and classes asked for.

    With ``per_layer``, ``blocks`` is None (every block of the model), a list of its blocks'
    names, or {name: parameter-name patterns} declaring the blocks. A model's blocks are the
    ones its registration declares; for any other model (torchvision:, timm:, a factory) and
    whenever ``block_depth`` is given, they are read from its module tree
    (``llcv.model_sources.module_blocks``: the children that own parameters, ``block_depth``
    levels down, 1 by default). Blocks and classes are read from the first checkpoint that
    loads (its model, its class count, or the given dataset's labels), and each block is
    checked to match a parameter, so a mistake fails before any work rather than once per checkpoint.
    """
    if blocks is not None and not per_layer:
        raise SettingsError("blocks= is used by per_layer; pass EstimateSettings(per_layer=True) as well")
    if not per_layer and per_class is False:
        return [WHOLE_MODEL]
    if per_layer and spec.settings.params is not None:
        raise SettingsError("per-layer estimates choose their own parameters; leave the sampler's params unset")
    if per_class is not False and spec.settings.classes is not None:  # class_refinement has moved them into per_class
        raise SettingsError("per-class estimates choose their own classes; pass the classes to per_class (--per-class --classes) instead")
    model, info = _first_model(paths, spec)
    chosen_blocks: dict[str, Sequence[str]] = {}
    if per_layer:
        if isinstance(blocks, Mapping):
            declared, wanted = dict(blocks), list(blocks)
        else:  # None (every block) or the names of some, as the model's registration declares them
            declared = _model_blocks(model, info.model.name, spec, block_depth)
            wanted = list(declared) if blocks is None else [blocks] if isinstance(blocks, str) else list(blocks)
        unknown = [name for name in wanted if name not in declared]
        if unknown:
            raise SettingsError(f"unknown block(s) {', '.join(unknown)}; the model's blocks are {', '.join(declared)}")
        chosen_blocks = {name: declared[name] for name in wanted}
        for name, patterns in chosen_blocks.items():
            try:
                select_parameters(model, list(patterns) if not isinstance(patterns, str) else [patterns])
            except SettingsError as problem:
                raise SettingsError(f"block {name!r} ({', '.join(patterns)}): {problem}") from None
    labels: list[int] = []
    if per_class is not False:
        present = _class_labels(info, spec)
        labels = present if per_class is True else [int(label) for label in per_class]
        unknown = sorted(set(labels) - set(present))
        if unknown:
            raise SettingsError(f"unknown class(es) {', '.join(map(str, unknown))}; the labels are {_ranges(present)}")
    return refined_scopes(chosen_blocks, labels)


def _first_model(paths: Sequence[Path], spec: JobSpec) -> tuple[nn.Module, CheckpointInfo]:
    """The model of the first checkpoint that loads (raises the first one's error if none does)."""
    first_error: LLCVError | None = None
    for path in paths:
        try:
            return spec.target.at(path).load_model()
        except LLCVError as problem:
            first_error = first_error or problem
    if first_error is not None:
        raise first_error
    raise SettingsError("no checkpoint selected, so the model's blocks and classes are unknown")


def _model_blocks(model: nn.Module, model_name: str, spec: JobSpec, block_depth: int | None) -> dict[str, Sequence[str]]:
    """The blocks a registered model declares; else, or with ``block_depth``, its module tree's."""
    from llcv.model_sources import module_blocks
    from llcv.models import list_models, model_blocks

    registered = spec.target.model_factory is None and model_name in list_models()
    declared = model_blocks(model_name) if registered and block_depth is None else {}
    return declared or dict(module_blocks(model, block_depth or 1))


def _class_labels(info: CheckpointInfo, spec: JobSpec) -> list[int]:
    """The labels of the given dataset, else 0..C-1 for the checkpoint's C outputs."""
    if isinstance(spec.target.dataset, Dataset):
        from llcv.data import dataset_targets

        return sorted(set(dataset_targets(spec.target.dataset).tolist()))
    if info.model.num_classes is None:
        raise SettingsError(f"cannot tell the classes of {info.path}: pass the dataset to choose per-class scopes from")
    return list(range(info.model.num_classes))


def _ranges(labels: Sequence[int]) -> str:
    labels = sorted(labels)
    if labels and labels == list(range(labels[0], labels[-1] + 1)) and len(labels) > 3:
        return f"{labels[0]}..{labels[-1]}"
    return ", ".join(map(str, labels))
