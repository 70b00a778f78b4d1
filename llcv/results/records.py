"""``LLCRecord``: the typed view of one result record of ``estimate-all`` (docs/formats.md, "Record").

A record is one JSON file per (checkpoint, scope) in a settings-hash folder (``llcv.results``).
``LLCRecord`` is how llcv builds, writes and reads it: ``llcv.estimation.make_record`` builds
one, ``ResultsStore.write_record`` writes ``record.to_dict()``, and ``load_results`` returns
them, so readers use attributes (``record.result.llc_mean``, ``record.metrics.val_acc``) and the
derived properties below (``is_done``, ``llc_mean``, ``health``, ``kind``) instead of
re-deriving them from dicts.

Design decisions:

* **Files from older llcv.** Every field that records written by some earlier llcv lack is
  optional and defaults to None (or to an empty part: ``metrics``, a result's ``diagnostics`` and
  ``settings``); each says since when it exists. A record is dumped with ``exclude_unset``, so
  a field absent from a file stays absent when the record is written back, and a record made by
  ``make_record`` (which sets every field) is the same JSON, key for key, as before the typed view.
* **Files from newer llcv.** Every model keeps fields it does not know (``extra="allow"``): a
  record from a newer llcv with the same ``format_version`` loads, and writes back with those
  fields. A record whose ``format_version`` is newer than ``RECORD_FORMAT_VERSION`` is refused
  (``RecordError``): a new format version means old readers would misread it.
* **Types.** The types are those llcv has always written, checked by pydantic's default (lax)
  rules: a field of the wrong type makes the file "not a record" (``RecordError``, one line
  naming the first field at fault). A result's ``settings`` and ``versions`` stay plain dicts:
  they are the sampler settings and packages of the llcv that wrote them.
* **Across processes.** Device workers and Ray tasks return ``LLCRecord`` objects: pydantic
  models pickle, and this module is importable in every worker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llcv.errors import LLCVError
from llcv.fileio import finite_or_none
from llcv.health import HealthFailure

RECORD_FORMAT = "llcv-llc-record"
RECORD_FORMAT_VERSION = 1  # the newest record format this llcv reads and the one it writes
DEFAULT_SCOPE = "model"  # the scope of the whole model's record
Status = Literal["done", "failed"]
STATUSES: tuple[str, ...] = ("done", "failed")
ScopeKind = Literal["model", "block", "class"]
SCOPE_KINDS: tuple[str, ...] = ("model", "block", "class")


# How a result's nbeta_rule reads beside its nbeta in a figure or a report (llcv.figures.plotting, llcv.figures.report).
NBETA_RULE_WORDS = {"data": "n/ln n", "batch": "batch/ln batch", "set": "set"}


class RecordError(LLCVError):
    """A file that is not a readable result record: not JSON, not a record, or a newer format.

    ``load_results`` and the store skip such a file with a warning naming it; reading one
    directly (``LLCRecord.read``) raises this.
    """

    exit_code = 2


class _Part(BaseModel):
    """Every part of a record keeps fields it does not know, for files from a newer llcv."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    def to_dict(self) -> dict[str, Any]:
        """The part as written to disk: the fields it was given, JSON types, non-finite numbers as None."""
        return finite_or_none(self.model_dump(mode="json", exclude_unset=True))


class Fingerprint(_Part):
    """``fingerprint``: what a rerun compares to tell whether a checkpoint file changed."""

    size: int
    mtime_ns: int
    ends_sha256: str  # sha256 of the first and the last MiB


class CheckpointMetrics(_Part):
    """``metrics``: the checkpoint's training metrics; none for foreign checkpoints (``{}``)."""

    train_loss: float | None = None  # mean minibatch loss since the previous checkpoint; None at step 0
    val_loss: float | None = None
    val_acc: float | None = None


class ModelInfo(_Part):
    """``model``: the model the weights were loaded into (since model versions; absent before)."""

    name: str
    version: int | None = None  # registered here; None for a model_factory model
    checkpoint_version: int | None = None  # recorded in the checkpoint; None when it records none
    version_overridden: bool = False  # the mismatch was allowed (--allow-model-version-mismatch)
    # torchvision:/timm: models only (since llcv 0.12): the library release that built the model
    # here, and the one the checkpoint records
    library_version: str | None = None
    checkpoint_library_version: str | None = None


class WorkerInfo(_Part):
    """``worker``: the process that estimated the record."""

    host: str | None = None
    pid: int | None = None
    executor: str | None = None  # "local", "devices" or "ray"


class RecordDiagnostics(_Part):
    """A result's ``diagnostics`` (``llcv.sampling.result.LLCDiagnostics`` as stored)."""

    r_hat: float | None = None
    ess: float | None = None
    llc_mcse: float | None = None  # since llcv 0.4
    llc_se: float | None = None  # since llcv 0.9
    drift_z: float | None = None  # since llcv 0.4
    negative_chains: float | None = None  # since llcv 0.4
    diverged_chains: int | None = None
    nonfinite: bool | None = None
    warnings: list[str] = []


def ran_in(precision: str | None, choice: dict[str, Any] | None) -> str | None:
    """What a result's chains ran in (its ``precision`` and ``precision_choice``), for people:
    ``fp32``, ``bf16``, or either with ``, channels-last``."""
    if precision is not None and (choice or {}).get("channels_last"):
        return f"{precision}, channels-last"
    return precision


class PrecisionChoiceInfo(_Part):
    """A result's ``precision_choice`` (``llcv.sampling.precision.PrecisionChoice.provenance()``; since llcv 0.5)."""

    precision: Literal["fp32", "bf16"]
    reason: str = ""
    seconds_per_pass: dict[str, float | None] | None = None
    reused: bool = False
    channels_last: bool | None = None  # since llcv 0.8


class RecordResult(_Part):
    """A record's ``result``: the ``LLCResult`` as stored (``LLCResult.to_dict()``).

    Unlike ``llcv.sampling.result.LLCResult``, which is what an estimate returns now, every field may
    be missing here, as in results written before it existed. Absent fields read as None (or
    empty) and stay absent on disk.
    """

    llc_mean: float | None = None
    llc_std: float | None = None
    llc_per_chain: list[float | None] | None = None
    loss_trace: list[list[float | None]] | None = None
    burnin_loss_trace: list[list[float | None]] | None = None
    llc_trace: list[list[float | None]] | None = None
    init_loss: float | None = None
    init_loss_se: float | None = None  # since llcv 0.9
    nbeta: float | None = None
    nbeta_rule: Literal["data", "batch", "set"] | None = None  # since llcv 0.10
    burnin_steps: int | None = None  # since llcv 0.10
    burnin_rule: Literal["auto", "auto-capped", "set"] | None = None  # since llcv 0.10
    batchnorm_statistics: Literal["recomputed", "checkpoint", "batch", "none"] | None = None  # since llcv 0.4
    batchnorm_samples: int | None = None  # since llcv 0.4
    mala_acceptance: float | None = None
    mala_acceptance_per_chain: list[float | None] | None = None
    diagnostics: RecordDiagnostics = Field(default_factory=RecordDiagnostics)
    healthy: bool | None = None  # since llcv 0.4
    health_reasons: list[str] | None = None  # since llcv 0.4
    health_failures: list[HealthFailure] | None = None  # since llcv 0.12: health_reasons with their check and brief form
    settings: dict[str, Any] = {}  # the sampler settings this estimate used
    num_parameters: int | None = None
    num_samples_used: int | None = None
    chain_execution: Literal["batched", "sequential"] | None = None
    precision: Literal["fp32", "bf16"] | None = None  # since llcv 0.5
    precision_choice: PrecisionChoiceInfo | None = None  # since llcv 0.5
    elapsed_seconds: float | None = None
    device: str | None = None
    num_threads: int | None = None
    versions: dict[str, str | None] = {}

    @property
    def ran_in(self) -> str | None:
        """What the chains ran in (``fp32``, ``bf16``, with ``, channels-last`` where they ran in
        that layout); results before llcv 0.5 only have the setting (never "auto" then)."""
        choice = self.precision_choice.to_dict() if self.precision_choice is not None else None
        return ran_in(self.precision or self.settings.get("precision"), choice)


class LLCRecord(_Part):
    """One result record: a checkpoint's (and scope's) estimate or failure, as in docs/formats.md.

    Fields are those of the file, in its order; see the module docstring for optional and
    unknown fields. ``LLCRecord.read(path)`` reads a file, ``to_dict()`` is what is written.
    """

    format: Literal["llcv-llc-record"] = RECORD_FORMAT
    format_version: int = RECORD_FORMAT_VERSION
    status: Status
    checkpoint: str  # the checkpoint's file name
    checkpoint_path: str | None = None  # its absolute path when estimated
    fingerprint: Fingerprint | None = None  # None when the file could not be read
    scope: str = DEFAULT_SCOPE  # "model", a block's name ("layer3") or "class=7"
    scope_kind: ScopeKind | None = None  # since refined scopes; before, the name tells the kind (``kind``)
    scope_index: int | None = None  # since refined scopes
    step: int | None = None  # None when unknown (foreign checkpoints)
    epoch: float | None = None
    metrics: CheckpointMetrics = Field(default_factory=CheckpointMetrics)
    model: ModelInfo | None = None  # since model versions; None also when the checkpoint did not load
    settings_hash: str | None = None
    healthy: bool | None = None  # since llcv 0.4 (``health`` reads older records)
    health_reasons: list[str] | None = None  # since llcv 0.4
    result: RecordResult | None = None  # None for failures other than divergence
    error: str | None = None  # the reason, in one line, when failed
    elapsed_seconds: float | None = None
    finished: str | None = None  # ISO-8601 UTC timestamp
    worker: WorkerInfo | None = None

    def model_post_init(self, context: Any) -> None:
        # a record always names its format on disk, even one built without saying so
        self.__pydantic_fields_set__.update(("format", "format_version"))

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version > RECORD_FORMAT_VERSION:
            raise ValueError(_newer(version))
        return version

    # --- reading and writing

    @classmethod
    def from_dict(cls, payload: Any, source: str | Path | None = None) -> "LLCRecord":
        """A record from its JSON object (``json.load`` of a record file).

        Raises:
            RecordError: ``payload`` is not a record, is from a newer format, or holds a field of
                the wrong type; the message names ``source`` (a file) when given.
        """
        prefix = f"{source}: " if source is not None else ""
        if not isinstance(payload, Mapping):
            raise RecordError(f"{prefix}not an llcv result record (a JSON {type(payload).__name__}, not an object)")
        if payload.get("format") != RECORD_FORMAT:
            found = f"its format is {payload['format']!r}" if "format" in payload else "it has no format field"
            raise RecordError(f"{prefix}not an llcv result record ({found}, not {RECORD_FORMAT!r})")
        version = payload.get("format_version")
        if isinstance(version, int) and version > RECORD_FORMAT_VERSION:
            raise RecordError(f"{prefix}{_newer(version)}")
        try:
            return cls.model_validate(payload)
        except ValidationError as error:
            raise RecordError(f"{prefix}not a valid llcv result record: {_first_problem(error)}") from None

    @classmethod
    def read(cls, path: Path) -> "LLCRecord":
        """The record in a file.

        Raises:
            FileNotFoundError: there is no such file.
            RecordError: the file is unreadable, not JSON, or not a record (see ``from_dict``).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError) as error:
            raise RecordError(f"{path}: unreadable: {error}") from None
        try:  # pydantic's own JSON parser: several times faster than json.loads on long traces
            return cls.model_validate_json(text)
        except ValidationError:
            pass  # not a record: parse it again to say why, in words
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise RecordError(f"{path}: not valid JSON: {error}") from None
        return cls.from_dict(payload, source=path)

    @classmethod
    def coerce(cls, record: "LLCRecord | Mapping[str, Any]") -> "LLCRecord":
        """``record`` itself, or a record dict (the JSON of a file) validated into one.

        Raises:
            RecordError: a dict that is not a record.
        """
        return record if isinstance(record, cls) else cls.from_dict(record)

    # --- what readers need

    @property
    def is_done(self) -> bool:
        """The estimate finished (``status == "done"``); its LLC is in ``result``."""
        return self.status == "done"

    @property
    def is_failed(self) -> bool:
        """No estimate (``status == "failed"``); the reason is in ``error``."""
        return self.status == "failed"

    @property
    def is_whole_model(self) -> bool:
        return self.scope == DEFAULT_SCOPE

    @property
    def kind(self) -> ScopeKind:
        """``model``, ``block`` or ``class``: ``scope_kind``, or read from the scope's name in older records."""
        if self.scope_kind is not None:
            return self.scope_kind
        return "model" if self.scope == DEFAULT_SCOPE else "class" if self.scope.startswith("class=") else "block"

    @property
    def llc_mean(self) -> float | None:
        """The LLC (mean over the healthy chains); None without a result or when every chain diverged."""
        return self.result.llc_mean if self.result is not None else None

    @property
    def llc_std(self) -> float | None:
        """The standard deviation over the healthy chains; None with fewer than two, or without a result."""
        return self.result.llc_std if self.result is not None else None

    @property
    def llc_se(self) -> float | None:
        """The standard error of the LLC (the chains' and the initial loss's, docs/formats.md);
        None in records before llcv 0.9 or without a result."""
        return self.result.diagnostics.llc_se if self.result is not None else None

    @property
    def has_estimate(self) -> bool:
        """Done with an LLC to show (what the figure draws)."""
        return self.is_done and self.llc_mean is not None

    @property
    def num_parameters(self) -> int | None:
        """The number of sampled parameters d."""
        return self.result.num_parameters if self.result is not None else None

    @property
    def sampler_settings(self) -> dict[str, Any]:
        """The sampler settings this estimate used (``result.settings``); empty without a result."""
        return self.result.settings if self.result is not None else {}

    @property
    def health(self) -> tuple[bool | None, list[HealthFailure]]:
        """Whether the LLC can be read at face value, and why not: the failed health checks.

        A failed record is unhealthy with its error as the reason. A record written before llcv
        0.4 carries no verdict and gives ``(None, [])``, except that one whose chains partly
        diverged is unhealthy for that reason, the one check such records carry. A result written
        before llcv 0.12 recorded only each reason's sentence, read by ``HealthFailure.from_sentence``.
        """
        if self.is_failed:
            return False, [HealthFailure.of_error(str(self.error or "failed"))]
        result = self.result or RecordResult()
        healthy = self.healthy if self.healthy is not None else result.healthy
        if result.health_failures:
            return healthy, list(result.health_failures)
        reasons = (self.health_reasons if self.health_reasons is not None else result.health_reasons) or []
        if healthy is None:
            diverged = result.diagnostics.diverged_chains
            if diverged:
                chains = result.settings.get("num_chains") or len(result.llc_per_chain or [])
                said = f"{diverged} of {chains} chains diverged" if chains else f"{diverged} chain(s) diverged"
                return False, [HealthFailure("diverged", said, said)]
        return healthy, [HealthFailure.from_sentence(reason) for reason in reasons]

    @property
    def is_unhealthy(self) -> bool:
        """Judged not to be read (``health`` is False): failed, or a failed health check."""
        return self.health[0] is False

    @property
    def where(self) -> str:
        """``step 12``, or the checkpoint's name when its step is unknown."""
        return f"step {self.step}" if self.step is not None else str(self.checkpoint)

    def position(self, x: Literal["step", "epoch"]) -> float | None:
        """Where the record lies in training along ``x`` (``step`` or ``epoch``); None when unknown."""
        if x not in ("step", "epoch"):
            raise ValueError(f"position along {x!r}: use step or epoch")
        return self.step if x == "step" else self.epoch

    @property
    def precision_choice(self) -> dict[str, Any] | None:
        """How the chains' precision was chosen, as recorded (``PrecisionChoice.kept_from`` takes it)."""
        choice = self.result.precision_choice if self.result is not None else None
        return choice.to_dict() if choice is not None else None

    def scope_order(self) -> tuple:
        """The whole model, then blocks in the model's declared order, then classes by label."""
        index = self.scope_index
        if index is None:  # records written before scope_index: by the number in the name
            digits = re.findall(r"\d+", self.scope)
            index = int(digits[-1]) if digits else -1
        return (SCOPE_KINDS.index(self.kind), index, self.scope)

    def training_order(self) -> tuple:
        """Training order: by step, then by epoch, then by name; the whole model before other scopes."""
        step, epoch = self.step, self.epoch
        return (
            step is None,
            step if step is not None else 0,
            epoch is None,
            epoch if epoch is not None else 0.0,
            self.checkpoint,
            self.scope_order(),
        )


def _newer(version: int) -> str:
    return (
        f"written by a newer llcv (record format_version {version}; this llcv reads up to "
        f"{RECORD_FORMAT_VERSION}): upgrade llcv to read it"
    )


def _first_problem(error: ValidationError) -> str:
    """A validation error in one line: the first field at fault and what is wrong, and how many more."""
    problems = error.errors(include_url=False)
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "the record"
    if first["type"] == "missing":
        text = f"{where} is missing"
    else:
        shown = repr(first.get("input"))
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        text = f"{where}: {first['msg'].removeprefix('Value error, ')} (found {shown})"
    more = len(problems) - 1
    return text + (f"; and {more} more problem{'s' if more > 1 else ''}" if more else "")
