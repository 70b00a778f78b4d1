"""``calibrate_run``: one automatic calibration for every checkpoint of a run (``estimate-all --calibrate``).

A curve of LLCs over training compares like with like only when every checkpoint is estimated
with the same settings. So a run is calibrated once, by ``calibrate_auto`` on a reference
checkpoint (the run's last unless ``[estimate] calibrate_on`` names another by its step or
file), and every checkpoint is estimated with the sampler fields it recommends.

The calibration's files go to ``<results-dir>/calibration/<checkpoint-stem>/``
(``llcv.calibration.auto_files``), and its store makes a rerun reuse its trials: a finished
calibration runs no new trial, so the rerun lands in the same settings folder and resumes the
estimates. The workers of a sharded run may start together: a file lock on the calibration
folder lets one calibrate while the others wait, then reuse its finished store.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from filelock import FileLock, Timeout

from llcv.calibration import AUTO_SOURCE, RECOMMENDED_FILE, AutoCalibration, Budget, calibrate_and_save, output_dir
from llcv.checkpoints import list_checkpoints
from llcv.errors import EstimationError, SettingsError
from llcv.fileio import WriteError
from llcv.sampling import LossSpec
from llcv.progress import SILENT, Reporter
from llcv.results import DEFAULT_LOSS
from llcv.estimation.selection import select_checkpoints
from llcv.settings import AUTO_CALIBRATION_FIELDS, EstimateSettings, SamplerSettings
from llcv.targets import Target

# Where a run's calibrations go, inside its results folder.
CALIBRATION_FOLDER = "calibration"
LOCK_FILE = "calibration.lock"
# The sampler fields the search itself decides: a flag for one of them contradicts --calibrate.
SEARCHED_FIELDS = ("epsilon", "gamma", "num_burnin_steps")


@dataclass(frozen=True)
class RunCalibration:
    """The calibration a run is estimated with.

    Attributes:
        checkpoint: the reference checkpoint it ran on.
        directory: its files, ``<results-dir>/calibration/<checkpoint-stem>/``.
        calibration: what ``calibrate_auto`` found.
        settings: the run's sampler settings with the calibrated fields (``AUTO_CALIBRATION_FIELDS``).
    """

    checkpoint: Path
    directory: Path
    calibration: AutoCalibration
    settings: SamplerSettings

    @property
    def recommended_file(self) -> Path:
        """Its ``recommended.json``, which ``--from-calibration`` reads."""
        return self.directory / RECOMMENDED_FILE

    def settings_entry(self) -> dict[str, Any]:
        """The ``calibration`` entry of the results folder's settings.json (docs/formats.md)."""
        return {
            "source": AUTO_SOURCE,
            "checkpoint": str(self.checkpoint.resolve()),
            "recommended": str(self.recommended_file.resolve()),
            "reason": self.calibration.reason,
            "sensitivity": [entry.model_dump(mode="json") for entry in self.calibration.sensitivity],
            "settings_dependent": self.calibration.settings_dependent,
        }


def check_calibrate_request(from_calibration: Path | None, sampler_flags: Mapping[str, Any]) -> None:
    """Refuse what contradicts calibrating the run: a ``--from-calibration`` file, or a flag for a
    field the search decides (``SEARCHED_FIELDS``; ``sampler_flags`` holds the flags' [sampler] values, None where not given).

    Raises:
        SettingsError: naming what was given.
    """
    given = [f"--{field.replace('_', '-')}" for field in SEARCHED_FIELDS if sampler_flags.get(field) is not None]
    if from_calibration is not None:
        given.insert(0, "--from-calibration")
    if given:
        raise SettingsError(
            f"--calibrate ([estimate] calibrate) sets epsilon, gamma and the burn-in by calibrating the run; "
            f"drop {', '.join(given)}, or drop --calibrate"
        )


def reference_checkpoint(checkpoints_dir: Path | str, calibrate_on: int | Path | str | None = None) -> Path:
    """The checkpoint a run is calibrated on: the run's last, or the one ``calibrate_on`` names by
    its training step (``step_*.pt``), its file, or its file name in ``checkpoints_dir``.

    Raises:
        CheckpointError: the checkpoints folder does not exist.
        SettingsError: it holds no checkpoint, or ``calibrate_on`` names none of them.
    """
    paths = list_checkpoints(Path(checkpoints_dir))
    if not paths:
        raise SettingsError(f"checkpoints directory {checkpoints_dir} holds no checkpoint files (.pt, .pth, .pth.tar, .ckpt) to calibrate on")
    if calibrate_on is None:
        return paths[-1]
    if isinstance(calibrate_on, int):
        try:
            (path,) = select_checkpoints(paths, steps=[calibrate_on])
        except SettingsError as error:
            raise SettingsError(f"--calibrate-on {calibrate_on}: {error}") from None
        return path
    for candidate in (Path(calibrate_on), Path(checkpoints_dir) / calibrate_on):
        if candidate.is_file():
            return candidate
    raise SettingsError(
        f"--calibrate-on {calibrate_on}: no such checkpoint file, here or in {checkpoints_dir}; give a file or a training step"
    )


def calibrate_run(
    checkpoints_dir: Path | str,
    sampler: SamplerSettings,
    options: EstimateSettings | None = None,
    *,
    budget: Budget = Budget(),
    figure_format: str = "png",
    target: Target = Target(),
    loss: LossSpec = DEFAULT_LOSS,
    reporter: Reporter = SILENT,
) -> RunCalibration:
    """Calibrate a run once, on its reference checkpoint, for ``estimate_all`` to use at every checkpoint.

    Args:
        checkpoints_dir: the run's checkpoints.
        sampler: the run's sampler settings (``[sampler]``): the calibration's base (nbeta,
            batch size, samples, sampler, seed, precision); epsilon, gamma, the burn-in and the
            estimate's length are what it decides.
        options: ``[estimate]``: ``results_dir`` (the files go to its ``calibration`` folder),
            ``calibrate_on`` (``reference_checkpoint``), and ``device`` (or the first of ``devices``).
        budget: the most the search may spend.
        figure_format: png, pdf or svg.
        target, loss: as for ``estimate_all``.
        reporter: the search's progress ("calibrate") and notes.

    Returns:
        The calibration, with ``settings`` for ``estimate_all`` and ``settings_entry()`` for its
        settings.json.

    Raises:
        SettingsError: no checkpoint, or ``calibrate_on`` names none of the run's.
        CheckpointError, DataError: the reference checkpoint or its data cannot be loaded.
        EstimationError: the calibration found no usable settings (its trials and figures are written).
        WriteError: the calibration folder cannot be written.
    """
    options = options if options is not None else EstimateSettings()
    reference = reference_checkpoint(checkpoints_dir, options.calibrate_on)
    directory = output_dir(Path(options.results_dir) / CALIBRATION_FOLDER, reference)
    device = options.devices[0] if options.devices and options.devices != ["all"] else options.device
    reporter.note(f"calibrating on {reference.name} -> {directory}")
    with _calibration_lock(directory, reporter):
        loaded = target.at(reference).load()
        result = calibrate_and_save(
            directory, loaded, loss, device, base=sampler, budget=budget, figure_format=figure_format, reporter=reporter,
        )  # fmt: skip
    if result.recommended is None:
        raise EstimationError(f"calibrating on {reference.name} found no usable settings: {result.reason}; its trials and figures are in {directory}")
    settings = sampler.model_copy(update={field: getattr(result.recommended, field) for field in AUTO_CALIBRATION_FIELDS})
    return RunCalibration(checkpoint=reference, directory=directory, calibration=result, settings=settings)


@contextmanager
def _calibration_lock(directory: Path, reporter: Reporter) -> Iterator[None]:
    """Hold the calibration folder's lock, so that workers started together calibrate once: the
    first runs the search, the others wait and then reuse its stored trials."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"could not create {directory}: {error.strerror or error}") from None
    lock = FileLock(directory / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        reporter.note(f"another process is calibrating in {directory}; waiting to reuse its calibration")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
