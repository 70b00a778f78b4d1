"""Terminal rendering for the CLI: Rich progress, messages, and the error-to-exit-code boundary.

Only the CLI imports this module; library code reports through ``llcv.progress.Reporter``.
"""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llcv.errors import LLCVError
from llcv.progress import Reporter

# Exit codes, docs/conventions.md.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143

stdout = Console()
stderr = Console(stderr=True)


class Verbosity:
    """The global --verbose/--quiet choice, set once by the app callback."""

    level = 1  # 0 quiet, 1 normal, 2 verbose


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives (Slurm's time limit, preemption)."""


class RichReporter(Reporter):
    """Shows each reported loop as a Rich progress bar with live fields and an ETA."""

    def __init__(self, console: Console = stderr):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=Verbosity.level == 0,
            refresh_per_second=4,
        )
        self.tasks: dict[str, int] = {}

    def __enter__(self) -> "RichReporter":
        self.progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.stop()

    def start(self, key: str, description: str, total: int | None) -> None:
        if key in self.tasks:
            self.progress.reset(self.tasks[key], total=total, description=description, info="", visible=True)
        else:
            self.tasks[key] = self.progress.add_task(description, total=total, info="")

    def advance(self, key: str, amount: int = 1, **fields: object) -> None:
        if key not in self.tasks:
            return
        update = {"advance": amount}
        if fields:
            update["info"] = _Fields(fields)
        self.progress.update(self.tasks[key], **update)

    def finish(self, key: str) -> None:
        if key in self.tasks:
            task_id = self.tasks.pop(key)
            self.progress.stop_task(task_id)
            if key not in ("epochs", "checkpoints"):
                self.progress.update(task_id, visible=False)

    def note(self, message: str) -> None:
        if Verbosity.level > 0:
            self.progress.console.print(message, highlight=False, markup=False)


class _Fields:
    """Live fields rendered only when the progress display refreshes (values may be lazy)."""

    def __init__(self, fields: dict[str, object]):
        self.fields = fields

    def __str__(self) -> str:
        return "  ".join(f"{name} {value:.4g}" if not isinstance(value, str) else f"{name} {value}" for name, value in self.fields.items())

    def __format__(self, spec: str) -> str:
        return str(self)


def info(message: str) -> None:
    """A normal-verbosity message on stderr (stdout stays clean for data such as --json)."""
    if Verbosity.level > 0:
        stderr.print(message, highlight=False)


def debug(message: str) -> None:
    """A message shown only with --verbose."""
    if Verbosity.level > 1:
        stderr.print(message, highlight=False, style="dim")


def configure_logging() -> None:
    """Route the library's ``logging`` to stderr at the chosen verbosity."""
    level = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO}[Verbosity.level]
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=stderr, show_path=False)], force=True)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def command_boundary() -> Iterator[None]:
    """Turn user errors and interruptions into one message and the documented exit code."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except LLCVError as error:
        # escaped: messages name settings sections ([model], [data]) that markup would delete
        stderr.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]: stopped cleanly; rerun the same command to continue")
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        stderr.print("[yellow]terminated[/] (SIGTERM): stopped cleanly; rerun the same command to continue")
        sys.exit(EXIT_TERMINATED)
    finally:
        signal.signal(signal.SIGTERM, previous)


BATCHNORM_WORDS = {
    "recomputed": "eval mode, statistics recomputed for these weights on {samples:,} samples",
    "checkpoint": "eval mode, the checkpoint's saved statistics",
    "batch": "train mode, each minibatch's own statistics",
}


def render_llc_result(result, title: str) -> None:
    """The end-of-estimate table: LLC mean +- std, per chain, MALA, R-hat, ESS, warnings."""
    from rich.table import Table

    def number(value, spec: str = ".4g") -> str:
        return "—" if value is None else format(value, spec)

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    mean, std = result.llc_mean, result.llc_std
    table.add_row("LLC", "no healthy chain" if mean is None else f"{mean:.4g} ± {number(std)}")
    if result.healthy is not None:
        table.add_row("health", "[green]healthy[/]" if result.healthy else "[bold red]unhealthy[/]: " + "; ".join(result.health_reasons))
    table.add_row("per chain", ", ".join(number(value) for value in result.llc_per_chain))
    table.add_row("MALA acceptance", number(result.mala_acceptance, ".3f"))
    if result.mala_acceptance_per_chain:
        table.add_row("  per chain", ", ".join(number(value, ".3f") for value in result.mala_acceptance_per_chain))
    table.add_row("R-hat", number(result.diagnostics.r_hat, ".3f"))
    table.add_row("ESS", number(result.diagnostics.ess, ".0f"))
    table.add_row("diverged chains", str(result.diagnostics.diverged_chains))
    table.add_row("init loss", number(result.init_loss, ".5g"))
    if result.batchnorm_statistics not in (None, "none"):
        table.add_row("BatchNorm", BATCHNORM_WORDS[result.batchnorm_statistics].format(samples=result.batchnorm_samples))
    table.add_row("nbeta", number(result.nbeta, ".4g"))
    table.add_row("sampled parameters", f"{result.num_parameters:,}")
    table.add_row("samples", f"{result.num_samples_used:,}")
    table.add_row("time", f"{result.elapsed_seconds:.1f} s on {result.device} ({result.num_threads} threads)")
    if result.precision is not None:
        reason = (result.precision_choice or {}).get("reason", "")
        table.add_row("precision", result.precision + (f" ({reason})" if reason and reason != "asked for" else ""))
    stdout.print(table)
    for warning in result.diagnostics.warnings:
        stdout.print(f"[yellow]warning:[/] {warning}", highlight=False)


def render_selftest(rows, quick: bool, auto: bool = False, against: str | None = None) -> None:
    """The selftest table: true vs estimated LLC, each estimate "mean ± standard error (relative error)", and the verdict per case.

    With ``auto``, the estimate with calibrated settings sits beside the stored settings' one,
    and the verdict is the calibrated estimate's. With ``against``, the reference
    implementation's estimate at the stored settings and its time sit beside llcv's.
    """
    from rich.table import Table

    def estimate(mean, standard_error, relative_error) -> str:
        if mean is None:
            return "no healthy chain"
        return f"{mean:.3f} ± {standard_error or 0:.3f} ({'—' if relative_error is None else format(relative_error, '+.1%')})"

    def summary(errors: list[float]) -> str:
        return f"mean absolute error {sum(errors) / len(errors):.1%}, worst {max(errors):.1%}"

    goal = "truth within 3 standard errors" if quick else "within 15% of the truth"
    judged = "; verdict on the calibrated settings" if auto else ""
    table = Table(title=f"llcv selftest ({'quick' if quick else 'full size'}; goal: {goal}{judged})", title_justify="left")
    table.add_column("case", no_wrap=True, min_width=max((len(row.name) for row in rows), default=4))
    columns = ["true LLC", "stored settings"]
    if auto:
        columns += ["calibrated (epsilon, gamma)", "calibrated"]
    columns.append("time")
    if against:
        columns += [f"{against}, stored settings", f"{against} time"]
    for column in (*columns, "verdict"):
        table.add_column(column, justify="left" if column == "verdict" else "right")
    for row in rows:
        cells = [row.name, f"{row.true_llc:.3f}", estimate(row.llc_mean, row.standard_error, row.relative_error)]
        if auto:
            found = row.auto
            chosen = "none qualified" if found.epsilon is None else f"{found.epsilon:.3g}, {found.gamma:.3g}"
            cells += [chosen, estimate(found.llc_mean, found.standard_error, found.relative_error)]
        cells.append(f"{row.seconds + (row.auto.seconds if row.auto else 0.0):.1f} s")
        if against:
            reference = row.reference
            cells += [estimate(reference.llc_mean, reference.standard_error, reference.relative_error), f"{reference.seconds:.1f} s"]
        table.add_row(*cells, "[green]pass[/]" if row.passed else "[red]FAIL[/]")
    stdout.print(table)
    stored = [abs(row.relative_error) for row in rows if row.relative_error is not None]
    if against and stored:
        ours, theirs = sum(row.seconds for row in rows), sum(row.reference.seconds for row in rows)
        their_errors = [abs(row.reference.relative_error) for row in rows]
        stdout.print(f"stored settings, llcv: {summary(stored)}, {ours:.1f} s", highlight=False)
        stdout.print(f"stored settings, {against}: {summary(their_errors)}, {theirs:.1f} s", highlight=False)
    if auto:
        errors = [abs(row.auto.relative_error) for row in rows if row.auto.relative_error is not None]
        if errors:
            stdout.print(f"calibrated: {summary(errors)}", highlight=False)
    failed = sum(not row.passed for row in rows)
    stdout.print(f"{len(rows) - failed} passed, {failed} failed", highlight=False)


def render_demo(result) -> None:
    """Where the demo's outputs are, and the paragraph that reads its figure."""
    from rich.panel import Panel

    lines = [
        f"checkpoints        {result.checkpoints_dir}",
        f"calibration        {result.calibration_dir}  (sweep.json, sweep.csv, figures, recommended.json)",
        f"LLC estimates      {result.estimates_dir}  (one JSON per checkpoint, summary.csv)",
        f"figure             {result.figure}",
        f"report             {result.report}  (one page: the run, every estimate, calibration, traces; open it in a browser)",
    ]
    stdout.print(Panel("\n".join(lines), title="llcv demo: outputs", title_align="left"), highlight=False)
    stdout.print(Panel(result.reading, title="Reading the figure", title_align="left"), highlight=False)
