"""Figures: pure functions from records to a matplotlib Figure, and one atomic save helper.

Nothing here reads result folders or prints; callers pass the data in. The backend is Agg, so
figures render on headless machines and in tests.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # noqa: E402

from llcv.errors import SettingsError  # noqa: E402
from llcv.fileio import atomic_write  # noqa: E402

FIGURE_FORMATS = ("png", "pdf", "svg")


def save_figure(figure: Figure, path: Path) -> Path:
    """Write ``figure`` atomically in the format named by the file's suffix (png, pdf or svg).

    Raises:
        SettingsError: the suffix is not a supported format.
        WriteError: the file could not be written.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FIGURE_FORMATS:
        raise SettingsError(f"figure {path}: the suffix must be one of .png, .pdf, .svg")
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=150, bbox_inches="tight")
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
