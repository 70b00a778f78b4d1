"""The exceptions llcv raises for problems a user can fix, and the exit code each maps to.

Library code raises these with a message written for the person at the terminal: it names
the file or setting at fault and says what was expected. The CLI prints the message alone
(no traceback) and exits with ``exit_code``; see docs/conventions.md ("Exit codes").

Every ``LLCVError`` subclass, with its exit code:

- ``SettingsError`` (2): bad usage or settings: an invalid value, an unknown key, a malformed config file.
- ``DataError`` (2): a dataset that is missing, malformed or unknown.
- ``CheckpointError`` (2): a checkpoint that cannot be read or does not fit the model.
- ``llcv.results.records.RecordError`` (2): a file that is not a readable result record (kept beside
  ``LLCRecord``, which raises it).
- ``EstimationError`` (1): the estimate ran but produced no usable number.
- ``llcv.fileio.WriteError`` (1): a file could not be written (kept beside ``atomic_write``).
"""


class LLCVError(Exception):
    """Base class for errors whose message is meant for the user."""

    exit_code = 1


class SettingsError(LLCVError):
    """Bad usage or settings: an invalid value, an unknown key, a malformed config file."""

    exit_code = 2


class DataError(LLCVError):
    """A dataset that is missing, malformed, or unknown."""

    exit_code = 2


class CheckpointError(LLCVError):
    """A checkpoint that cannot be read, is not a checkpoint, or does not fit the model."""

    exit_code = 2


class EstimationError(LLCVError):
    """The estimate ran but produced no usable number (for example, every chain diverged)."""

    exit_code = 1
