"""The CLI's terminal: Rich consoles and progress bars, messages, verbosity, and the error-to-exit-code boundary.

Only the CLI imports this module (``llcv.cli_render`` draws each command's results with it);
library code reports through ``llcv.progress.Reporter``.
"""

from __future__ import annotations

import logging
import signal
import sys
from contextlib import contextmanager
from functools import partial
from typing import Callable, Iterator

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


_STOPS = (KeyboardInterrupt, Terminated)

# A stop that Python swallowed: a signal's handler runs between any two bytecodes, so its
# exception can be raised inside a finalizer (a __del__, a weakref callback, a generator closed by
# the garbage collector), where Python prints "Exception ignored" and carries on. The command would
# then run to its end as if never stopped. The boundary keeps such a stop here, and the next
# progress event raises it again, in the command's own code (``raise_swallowed_stop``).
_swallowed_stops: list[type[BaseException]] = []


def _keep_swallowed_stops(unraisable, otherwise: Callable) -> None:
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, _STOPS):
        _swallowed_stops.append(unraisable.exc_type)
    else:
        otherwise(unraisable)


def raise_swallowed_stop() -> None:
    """Raise again a Ctrl-C or SIGTERM that a finalizer swallowed since the last call, if any."""
    if _swallowed_stops:
        stop = _swallowed_stops[0]
        _swallowed_stops.clear()
        raise stop()


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
        raise_swallowed_stop()  # every long loop reports here: the surest place to stop it
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
    """A normal-verbosity message on stderr (stdout stays clean for data such as --json).

    Plain text: nothing in it is read as Rich markup, so paths, labels and reasons with square
    brackets (``[model]``, ``step_1.pt [layer3]``) print as written.
    """
    if Verbosity.level > 0:
        stderr.print(message, highlight=False, markup=False)


def debug(message: str) -> None:
    """A message shown only with --verbose; plain text, as for ``info``."""
    if Verbosity.level > 1:
        stderr.print(message, highlight=False, markup=False, style="dim")


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
    previous_unraisable_hook = sys.unraisablehook
    sys.unraisablehook = partial(_keep_swallowed_stops, otherwise=previous_unraisable_hook)
    _swallowed_stops.clear()
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
        sys.unraisablehook = previous_unraisable_hook
