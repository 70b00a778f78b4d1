"""Figures and the report: the LLC over training of one or several runs, and the one-page HTML report.

The public face. ``runs`` reads each run's settings folder and decides what a figure shows
(which estimates are missing or unhealthy), ``plotting`` draws records (pure functions, no file
reading) and ``report`` writes the report page, with the run's calibration and a reading of
the figure in words. The modules behind this face are internal; the calibration's own figures
are ``llcv.calibration.figures``.
"""

from llcv.figures.plotting import UNHEALTHY_LABEL, llc_figure, plot_llc, plot_trace_thumbnail
from llcv.figures.report import ReportResult, calibration_reading, read_figure, render_report, write_report
from llcv.figures.runs import PlotResult, Run, llc_figure_of, plot_runs, read_run

__all__ = [
    "UNHEALTHY_LABEL",
    "PlotResult",
    "ReportResult",
    "Run",
    "calibration_reading",
    "llc_figure",
    "llc_figure_of",
    "plot_llc",
    "plot_runs",
    "plot_trace_thumbnail",
    "read_figure",
    "read_run",
    "render_report",
    "write_report",
]
