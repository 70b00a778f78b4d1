"""Atomic file writes: a reader, a crash or ``kill -9`` never sees half a file.

Every file llcv produces (checkpoints, result records, sweep tables, figures) goes through
``atomic_write``: the content is written to a temporary file in the same folder, flushed to
disk, then renamed over the target. A failed write (full disk, read-only filesystem) removes
the temporary file and leaves any previous version of the target untouched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Sequence

from llcv.errors import LLCVError


# mkstemp creates files readable by their owner only; the renamed file should get the mode an
# ordinary open() would give it, so colleagues sharing a results folder can read it. Reading
# the umask means setting it, so do it once, at import, before any threads start.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


class WriteError(LLCVError):
    """A file could not be written; the previous version, if any, is intact."""

    exit_code = 1


def write_temporary(folder: Path, prefix: str, write: Callable[[IO[bytes]], Any], created: list[Path] | None = None) -> Path:
    """A complete, fsynced new file ``folder/<prefix><random>.tmp`` written through ``write(handle)``.

    The building block of ``atomic_write``, for callers that put the file in place themselves
    (``llcv.estimation.claims`` links it, which fails when the target exists, where a rename would replace it).
    ``created``: a list the temporary's path is appended to the moment it exists, so that a caller
    interrupted before this function returns can still remove it.

    Raises:
        OSError: the file could not be written; no temporary file is left behind.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _signals_held():
        # Ctrl-C or SIGTERM between creating the file and recording it would orphan it.
        descriptor, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
        temporary = Path(name)
        if created is not None:
            created.append(temporary)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.chmod(temporary, _FILE_MODE)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` through ``write(handle)`` on a temporary file, then rename it into place.

    Raises:
        WriteError: the folder or the disk refused the write; names the file and the reason.
    """
    path = Path(path)
    created: list[Path] = []
    try:
        os.replace(write_temporary(path.parent, f".{path.name}.", write, created), path)
    except OSError as error:
        reason = error.strerror or str(error)
        raise WriteError(f"could not write {path}: {reason}; any previous version of it is intact") from None
    finally:
        # Once renamed, the temporary's name is gone; before, whatever stopped us leaves it here.
        for temporary in created:
            temporary.unlink(missing_ok=True)
    return path


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the few instructions inside (they arrive right after)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing to hold them with
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def atomic_write_text(path: Path, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, recursively, for JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def atomic_write_json(path: Path, payload: Any) -> Path:
    """Atomically write JSON (indented, non-finite floats refused so files stay standard JSON)."""
    return atomic_write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def csv_text(fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """A CSV table of ``rows`` in the column order ``fields``, header first; an empty cell for None."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({field: "" if row[field] is None else row[field] for field in fields})
    return buffer.getvalue()
