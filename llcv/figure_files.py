"""Figures to files and bytes: the one encoding and atomic save every figure of llcv goes through.

Figures are built as ``matplotlib.figure.Figure`` objects, never through pyplot, so they render on
headless machines without choosing a backend, and importing llcv leaves a notebook's backend
alone. Shared by the run's figures (``llcv.figures``) and the calibration's
(``llcv.calibration.figures``), which is why it belongs to neither.
"""

from __future__ import annotations

import io
from pathlib import Path

from matplotlib.figure import Figure

from llcv.errors import SettingsError
from llcv.fileio import atomic_write

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
    content = figure_bytes(figure, fmt)
    return atomic_write(path, lambda handle: handle.write(content))


def figure_bytes(figure: Figure, fmt: str = "png", dpi: float = 150) -> bytes:
    """``figure`` encoded as png, pdf or svg, cropped to what is drawn (for files and embedding)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()
