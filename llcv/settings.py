"""Settings: one pydantic model per TOML section, and the single place where precedence is resolved.

An experiment is one TOML file with the sections ``[data]``, ``[model]``, ``[train]``,
``[sampler]``, ``[calibrate]``, ``[estimate]`` and ``[plot]``. Each command validates only the
sections it uses (unknown keys there are errors) and ignores the rest, so one file serves every
command. Precedence, lowest first (docs/conventions.md):

    model defaults < --config FILE < --from-calibration FILE (sampler fields only) < flags
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from llcv.errors import SettingsError

# fullmatch with ASCII digits: "$" would let "cpu\n" through and "\d" any script's digits, which torch refuses.
_DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def _check_device(value: str) -> str:
    if not _DEVICE_PATTERN.fullmatch(value):
        raise ValueError("must be one of auto, cpu, cuda, cuda:N, mps")
    return value


DeviceName = Annotated[str, AfterValidator(_check_device)]


def _file_in_the_way(path: Path) -> Path | None:
    """``path`` or its nearest existing parent when that is a file (nothing can be written below it)."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return None if candidate.is_dir() else candidate
        except OSError:  # not even listable (permissions): left to the write to report
            return None
    return None


def _check_folder(path: Path) -> Path:
    blocking = _file_in_the_way(path)
    if blocking == path:
        raise ValueError("is a file, expected a folder")
    if blocking is not None:
        raise ValueError(f"{blocking} is a file, so it cannot hold a folder")
    return path


def _check_output_file(path: Path) -> Path:
    if path.is_dir():
        raise ValueError("is a folder, expected a file name such as llc.png")
    blocking = _file_in_the_way(path.parent)
    if blocking is not None:
        raise ValueError(f"{blocking} is a file, so it cannot hold {path.name}")
    return path


# Output locations are checked when the settings are resolved, so a results folder that is a
# file is a settings error (exit 2) before any work, not a failed write after it.
FolderPath = Annotated[Path, AfterValidator(_check_folder)]
OutputFilePath = Annotated[Path, AfterValidator(_check_output_file)]


class _Section(BaseModel):
    # allow_inf_nan=False: `--epsilon inf` is a mistake, and JSON (settings.json, checkpoints)
    # would write it as null, so the written settings would not be the ones used.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DataSettings(_Section):
    """``[data]``: which dataset, where it lives, and how it is split."""

    dataset: str = "digits"  # a name from llcv.data.list_datasets()
    data_dir: Path | None = None  # None: the dataset's documented default folder
    download: bool = False  # fetch CIFAR-10 where the internet is reachable
    image_size: PositiveInt | None = None  # folder, imagenet1k and digits (8: their own pixels); None: the dataset's default
    num_workers: NonNegativeInt = 0  # DataLoader workers, capped at the CPUs; resume stays bit-exact with any number
    seed: NonNegativeInt = 0  # the train/validation split

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from llcv.data import list_datasets

        if name not in list_datasets():
            raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(list_datasets())}")
        return name


class ModelSettings(_Section):
    """``[model]``: the architecture; class count and input channels come from the dataset.

    ``name`` is a registered model, ``torchvision:NAME`` or ``timm:NAME`` (docs/api.md, "Models");
    ``factory`` (``package.module:function``) is your own architecture instead, imported only
    because this setting names it. ``allow_version_mismatch`` and ``factory`` are the fields the
    commands that load checkpoints read (``estimate``, ``estimate-all``, ``calibrate``; ``train``
    when resuming).
    """

    name: str = "smallcnn"  # a name from llcv.models.list_models(), torchvision:NAME or timm:NAME
    stem: Literal["cifar", "imagenet"] | None = None  # None: cifar for inputs of 64 px or less (llcv's and torchvision's ResNets)
    # package.module:function returning an nn.Module, called with num_classes and in_channels where
    # it takes them; importing it runs that code, so only a flag or a config file names it.
    factory: str | None = None
    # Keyword arguments of a torchvision:/timm: builder or of the factory (image_size, depth, ...);
    # recorded in every checkpoint, so loading needs them no more.
    arguments: dict[str, int | float | bool | str] = {}
    # Load checkpoints whose recorded model version (or torchvision/timm release) differs from the
    # one here (a change that kept the weights' shapes but not the function); read by every command that loads one.
    allow_version_mismatch: bool = False

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from llcv.models import check_model_name

        try:
            return check_model_name(name)
        except SettingsError as error:
            raise ValueError(str(error)) from None

    @field_validator("factory")
    @classmethod
    def _factory_path(cls, path: str | None, info: ValidationInfo) -> str | None:
        module, colon, function = (path or "").partition(":")
        if path is not None and (not colon or not module or not function):
            raise ValueError("use package.module:function")
        # name is validated first (field order); a name other than the default is a second architecture
        name = info.data.get("name", "smallcnn")
        if path is not None and name != "smallcnn":
            raise ValueError(f"name {name!r} and factory {path!r} both name the architecture; give one")
        return path


class TrainSettings(_Section):
    """``[train]``: the optimiser, the schedule and which checkpoints to keep."""

    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 0.05
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # sgd only
    weight_decay: NonNegativeFloat = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_every_epochs: PositiveInt = 30  # step schedule: decay every this many epochs
    step_factor: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1  # step schedule: multiply lr by this
    seed: NonNegativeInt = 0  # initialisation, data order and augmentation
    device: DeviceName = "auto"
    checkpoints_dir: FolderPath = Path("checkpoints")
    checkpoint_every_epochs: NonNegativeInt = 1  # 0: no epoch-end checkpoints
    log_checkpoints: NonNegativeInt = 0  # K log-spaced checkpoints over the run's steps
    resume_from_checkpoint: Path | None = None


class SamplerSettings(_Section):
    """``[sampler]``: SGLD around a checkpoint, in the researchers' vocabulary.

    ``epsilon`` is the step size and ``gamma`` the localization strength; devinterp calls them
    ``lr`` and ``localization`` (translated in one place, ``llcv.sampling``). ``nbeta`` is n*beta,
    the inverse temperature: ``"data"``, Watanabe's ``n / ln(n)`` over the n samples the chains
    draw from; ``"batch"``, devinterp's default ``batch_size / ln(batch_size)``; or a number
    (``llcv.sampling.resolve_nbeta``). ``num_burnin_steps`` ``"auto"`` burns in until the chains
    have relaxed from the checkpoint, at most a few times the draws' steps
    (``llcv.sampling.resolve_burnin``).
    """

    epsilon: PositiveFloat = 1e-4
    gamma: NonNegativeFloat = 100.0
    # The temperature belongs to the data, not to the minibatch: with "batch" an estimate changes
    # whenever only the batch size does (docs/calibration.md, "The temperature").
    nbeta: PositiveFloat | Literal["data", "batch"] = "data"
    num_chains: PositiveInt = 4
    num_draws: PositiveInt = 200
    # "auto": 2 / (epsilon * gamma) steps, the chains' relaxation from the checkpoint, capped at
    # AUTO_BURNIN_DRAW_FACTOR times the draws' steps (llcv.relaxation.auto_burnin_steps).
    num_burnin_steps: NonNegativeInt | Literal["auto"] = "auto"
    num_steps_bw_draws: PositiveInt = 1
    batch_size: PositiveInt = 256
    num_samples: PositiveInt | None = None  # None: the whole training split
    sampler: Literal["sgld", "rmsprop_sgld"] = "sgld"
    # batch: BatchNorm normalises each batch by its own statistics, which follow the weights as
    # they move (the function training descended; dropout stays off). eval: the running statistics,
    # frozen while sampling. train: the whole model in train mode, devinterp's behaviour.
    bn_mode: Literal["batch", "eval", "train"] = "batch"
    # eval mode: "recompute" re-estimates every BatchNorm layer's running statistics for the
    # checkpoint's weights before sampling (on a copy); "checkpoint" uses the saved ones, which
    # lag the weights early in training (docs/calibration.md).
    bn_stats: Literal["recompute", "checkpoint"] = "recompute"
    bn_samples: PositiveInt | None = 4096  # recompute on this many seeded samples (the same at every checkpoint); None: all
    divergence_bound: PositiveFloat | None = None  # None: derived from the sampled parameter count
    # MALA acceptance costs one more forward and backward pass per measured step on minibatches
    # (both ends of a step are scored on that step's batch), so estimates leave it off unless asked;
    # calibration sweeps always measure it.
    mala: bool = False
    mala_every: PositiveInt = 1  # measure the acceptance of the move into every k-th draw only
    seed: NonNegativeInt = 0  # numpy SeedSequence takes non-negative integers only
    # bf16: forward/backward under autocast; weights, noise, update stay fp32. auto: bf16 where the
    # device has it natively and a timed trial on the run's model finds it clearly faster, and for
    # convolutional chains run one at a time the faster memory layout as well (llcv.sampling.precision).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    chain_mode: Literal["auto", "batched", "sequential"] = "auto"  # auto: batched (vmap) for small models that allow it
    # The initial loss is measured on at most this many samples (a seeded subset, the same at every
    # checkpoint), so its cost stays a small share of sampling on CIFAR- or ImageNet-sized data.
    init_loss_samples: PositiveInt | None = 4096  # None: every sampled sample
    params: list[str] | None = None  # glob patterns over parameter names; others stay frozen (weight-refined LLC)
    classes: list[NonNegativeInt] | None = None  # only samples with these labels (data-refined LLC)

    # Both fields are a number or a word: checked before pydantic's union, whose error would
    # list every member's complaint instead of saying what the field takes.
    @field_validator("nbeta", mode="before")
    @classmethod
    def _check_nbeta(cls, value: Any) -> Any:
        # Settings written before llcv 0.10 (settings.json, result records) say null for the
        # temperature that was then the default: devinterp's batch rule.
        if value is None:
            return "batch"
        if value in ("data", "batch"):
            return value
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if 0 < number < math.inf:
                return value
        raise ValueError("must be data, batch or a positive number")

    @field_validator("num_burnin_steps", mode="before")
    @classmethod
    def _check_burnin(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        if isinstance(value, str) and value.isdecimal():
            return int(value)
        if isinstance(value, float) and value.is_integer() and value >= 0:
            return int(value)
        raise ValueError("must be auto or a whole number of steps, 0 or more")


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"K/N"`` or ``(K, N)`` as ``(K, N)``, with 0 <= K < N: the one parser of shards:
    ``EstimateSettings.shard`` validates with it and ``llcv.estimation.selection`` splits checkpoints by it.

    Raises:
        SettingsError: malformed, or K outside 0..N-1.
    """
    if shard is None:
        return None
    if isinstance(shard, str):
        parts = shard.split("/")
        if len(parts) != 2 or not all(part.strip().isdecimal() for part in parts):  # isdigit() admits "²", which int() refuses
            raise SettingsError(f"shard {shard!r}: use K/N with 0 <= K < N, e.g. 0/4")
        shard = (int(parts[0]), int(parts[1]))
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise SettingsError(f"shard {index}/{count}: use K/N with 0 <= K < N, e.g. 0/4")
    return index, count


def _check_shard(value: str | None) -> str | None:
    try:
        parse_shard(value)
    except SettingsError:
        raise ValueError("must be K/N with 0 <= K < N, e.g. 0/4") from None
    return value


# The automatic calibration's budget when none is given, in chain-steps (steps x chains); here,
# not in llcv.calibration.auto, because settings cannot import the calibration, which imports them.
DEFAULT_BUDGET_STEPS = 400_000


class CalibrateSettings(_Section):
    """``[calibrate]``: the (epsilon, gamma, nbeta) grid and the rule that picks from it, and the
    automatic calibration's budget."""

    epsilons: list[PositiveFloat] = [1e-6, 1e-5, 1e-4, 1e-3]
    gammas: list[NonNegativeFloat] = [1.0, 10.0, 100.0, 1000.0]
    nbetas: list[PositiveFloat] | None = None  # None: the sampler's nbeta
    num_chains: PositiveInt = 2
    num_draws: PositiveInt = 200
    # None: each row burns in until its chains have relaxed from the checkpoint, 2 / (epsilon * gamma)
    # steps, where that is at most 4 times num_draws (llcv.calibration.row_burnin_steps).
    num_burnin_steps: NonNegativeInt | None = None
    target_acceptance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.9
    # The rule (docs/calibration.md): share of chains whose mean LLC lies significantly below 0,
    # |Geweke z| of the LLC trace, R-hat.
    max_negative_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    max_drift_z: PositiveFloat = 3.0
    max_r_hat: Annotated[float, Field(ge=1.0)] = 1.1
    max_trace_drift: NonNegativeFloat = 0.1  # `calibrate curve`'s verdict: relative change over the second half
    results_dir: FolderPath = Path("results/calibration")
    format: Literal["png", "pdf", "svg"] = "png"
    device: DeviceName = "auto"
    # `calibrate auto` (and `estimate-all --calibrate`): the most its search may spend, in
    # chain-steps (SGLD steps x chains) and/or seconds; None: no limit of that kind.
    budget_steps: PositiveInt | None = DEFAULT_BUDGET_STEPS
    budget_seconds: PositiveFloat | None = None


def _split_devices(value: Any) -> Any:
    # `--devices cuda:0,cuda:1` arrives as one string; a TOML file may give the string or a list
    return [part.strip() for part in value.split(",")] if isinstance(value, str) else value


def _check_devices(names: list[str] | None) -> list[str] | None:
    if names is None:
        return None
    if not names:
        raise ValueError("give at least one device, e.g. cuda:0,cuda:1, or all")
    if "all" in names and len(names) > 1:
        raise ValueError("all stands alone: it means every CUDA GPU of this machine")
    for name in names:
        # not auto: it would pick the same device for every worker, so the list says which
        if name != "all" and (name == "auto" or not _DEVICE_PATTERN.fullmatch(name)):
            raise ValueError(f"{name!r}: each device must be cpu, cuda, cuda:N or mps (or the whole list all)")
    return names


DeviceList = Annotated[list[str] | None, BeforeValidator(_split_devices), AfterValidator(_check_devices)]


class EstimateSettings(_Section):
    """``[estimate]``: which checkpoints, where results go, and how work is spread."""

    results_dir: FolderPath = Path("results/llc_estimations")
    every_nth: PositiveInt = 1
    steps: list[NonNegativeInt] | None = None
    force: bool = False
    device: DeviceName = "auto"
    # One worker process per device on this machine, e.g. ["cuda:0", "cuda:1"] or "cpu,cpu"; "all":
    # every CUDA GPU here. Replaces device; None: one process on device.
    devices: DeviceList = None
    shard: Annotated[str | None, AfterValidator(_check_shard)] = None  # "K/N"
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    cpus_per_task: PositiveInt | None = None  # ray: CPUs and torch threads per task; None: 1, or CPUs per GPU
    claim_timeout_seconds: PositiveFloat = 600.0  # a claim whose heartbeat is older is taken over
    per_layer: bool = False  # also one LLC per block of the model (weight-refined), beside the whole model
    # per_layer's blocks from the module tree, this many levels down (llcv.model_sources.module_blocks);
    # None: a registered model's declared blocks, else depth 1 (the top-level children).
    block_depth: PositiveInt | None = None
    per_class: bool = False  # also one LLC per class (data-refined); [sampler] classes then picks which classes
    # Calibrate once (`calibrate auto`) on a reference checkpoint and estimate every checkpoint
    # with its settings; calibrate_on: that checkpoint's training step or file (None: the run's last).
    calibrate: bool = False
    calibrate_on: NonNegativeInt | Path | None = None

    @field_validator("calibrate_on", mode="before")
    @classmethod
    def _step_or_file(cls, value: Any) -> Any:
        # `--calibrate-on 1000` arrives as text: a whole number is a step, anything else a file
        return int(value) if isinstance(value, str) and value.isdecimal() else value


class PlotSettings(_Section):
    """``[plot]``: the LLC-over-training figure."""

    out: OutputFilePath = Path("results/llc_plots/llc.png")
    x: Literal["step", "epoch"] = "step"
    log_x: bool = False
    mark_transitions: bool = False
    per_parameter: bool = False  # divide each curve by its number of sampled parameters d


class SettingsBundle(BaseModel):
    """The resolved sections one command uses; sections it does not use stay None."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataSettings | None = None
    model: ModelSettings | None = None
    train: TrainSettings | None = None
    sampler: SamplerSettings | None = None
    calibrate: CalibrateSettings | None = None
    estimate: EstimateSettings | None = None
    plot: PlotSettings | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The used sections as JSON-compatible types (for checkpoints and result files)."""
        return self.model_dump(mode="json", exclude_none=True)


SECTION_MODELS: dict[str, type[_Section]] = {
    "data": DataSettings,
    "model": ModelSettings,
    "train": TrainSettings,
    "sampler": SamplerSettings,
    "calibrate": CalibrateSettings,
    "estimate": EstimateSettings,
    "plot": PlotSettings,
}

# Exactly the fields a calibration's recommended.json carries (docs/formats.md): the pick, and
# the burn-in its sweep row qualified with. Files written before llcv 0.7 lack the burn-in.
CALIBRATION_FIELDS = ("epsilon", "gamma", "nbeta", "sampler", "num_burnin_steps")
LEGACY_CALIBRATION_FIELDS = ("epsilon", "gamma", "nbeta", "sampler")
# `calibrate auto` also decides the estimate's length, and says why beside the fields: its
# annotations, which `--from-calibration` leaves out of the settings.
AUTO_CALIBRATION_FIELDS = (*CALIBRATION_FIELDS, "batch_size", "num_draws", "num_chains")
AUTO_CALIBRATION_ANNOTATIONS = ("source", "reason", "sensitivity", "settings_dependent", "checkpoint")


def read_config(path: Path) -> dict[str, Any]:
    """Read a TOML experiment file.

    Raises:
        SettingsError: the file is missing, unreadable, or not valid TOML.
    """
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise SettingsError(f"config file {path} is a directory, expected a TOML file") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"config file {path} is not valid TOML: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"config file {path} cannot be read: {error}") from None
    for section, body in raw.items():
        if section not in SECTION_MODELS:
            raise SettingsError(
                f"config file {path}: unknown section or top-level key {section!r}; "
                f"the sections are {', '.join(f'[{name}]' for name in SECTION_MODELS)}"
            )
        if not isinstance(body, dict):
            raise SettingsError(f"config file {path}: [{section}] must be a table of settings")
    return raw


def read_calibration(path: Path) -> dict[str, Any]:
    """Read a ``recommended.json`` written by ``llcv calibrate sweep`` or ``llcv calibrate auto``.

    Returns:
        The sampler fields it sets: ``CALIBRATION_FIELDS`` (the ``LEGACY_CALIBRATION_FIELDS`` of an
        older sweep's file), or ``AUTO_CALIBRATION_FIELDS`` without the auto file's annotations.

    Raises:
        SettingsError: the file is missing, not JSON, or holds neither a sweep's exact fields nor
            the auto fields with nothing but ``AUTO_CALIBRATION_ANNOTATIONS`` beside them.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SettingsError(f"calibration file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SettingsError(f"calibration file {path} is not readable JSON: {error}") from None
    if isinstance(raw, dict) and set(raw) in (set(CALIBRATION_FIELDS), set(LEGACY_CALIBRATION_FIELDS)):
        return raw
    if isinstance(raw, dict) and set(AUTO_CALIBRATION_FIELDS) <= set(raw) <= {*AUTO_CALIBRATION_FIELDS, *AUTO_CALIBRATION_ANNOTATIONS}:
        return {field: raw[field] for field in AUTO_CALIBRATION_FIELDS}
    found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
    raise SettingsError(
        f"calibration file {path} must hold exactly {', '.join(CALIBRATION_FIELDS)} (from calibrate sweep), or those "
        f"with {', '.join(AUTO_CALIBRATION_FIELDS[len(CALIBRATION_FIELDS):])} and the notes {', '.join(AUTO_CALIBRATION_ANNOTATIONS)} "
        f"(from calibrate auto); found {found}"
    )


def format_validation_error(error: ValidationError, section: str) -> str:
    """One line per invalid field, ``section.field: message (got value)``."""
    lines = []
    for problem in error.errors():
        # a key with a newline or nothing in it (a quoted TOML key) is quoted, so each field stays one line
        location = ".".join(str(part) if str(part).isprintable() and str(part) else repr(part) for part in (section, *problem["loc"]))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown setting"
        shown = str(problem["input"]) if isinstance(problem["input"], Path) else problem["input"]
        got = "" if problem["type"] in ("extra_forbidden", "missing") else f" (got {shown!r})"
        lines.append(f"{location}: {message}{got}")
    return "\n".join(lines)


def validate_section(section: str, values: Mapping[str, Any]) -> _Section:
    """Validate one section's raw values into its settings model.

    Raises:
        SettingsError: naming every invalid field.
    """
    try:
        return SECTION_MODELS[section].model_validate(dict(values))
    except ValidationError as error:
        raise SettingsError(format_validation_error(error, section)) from None


def load_settings(
    sections: Sequence[str],
    config: Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    calibration: Path | None = None,
    base: Mapping[str, Mapping[str, Any]] | None = None,
) -> SettingsBundle:
    """Resolve the given sections: defaults < base < config file < calibration file < overrides.

    Args:
        sections: the sections this command uses, e.g. ``("data", "model", "train")``.
        config: a TOML experiment file; sections not named in ``sections`` are ignored.
        overrides: per-section values from the command line; None values mean "not given".
        calibration: a ``recommended.json``; it sets the sampler fields it holds (``read_calibration``).
        base: values beneath the config file, e.g. the settings stored in a checkpoint being resumed.

    Raises:
        SettingsError: a file cannot be read or a value is invalid; the message names the field.
    """
    raw = read_config(config) if config is not None else {}
    overrides = overrides or {}
    resolved = {}
    for section in sections:
        values = {**(base or {}).get(section, {}), **raw.get(section, {})}
        if section == "sampler" and calibration is not None:
            values.update(read_calibration(calibration))
        values.update({key: value for key, value in overrides.get(section, {}).items() if value is not None})
        resolved[section] = validate_section(section, values)
    return SettingsBundle(**resolved)
