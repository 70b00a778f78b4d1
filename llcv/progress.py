"""The reporting hook through which library functions show progress; they never print.

Library functions take a ``Reporter`` and call ``start``/``advance``/``finish`` for each long
loop and ``note`` for one-line messages. The base class does nothing but log notes, so library
calls are silent by default; the CLI passes a Rich implementation (``llcv.console``). A worker
process reports through a ``ForwardingReporter``, whose events the main process ``replay``s.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

logger = logging.getLogger("llcv")


class Reporter:
    """Receives progress events. Subclass and override what you want to show."""

    def start(self, key: str, description: str, total: int | None) -> None:
        """A loop named ``key`` begins, with ``total`` units of work (None when unknown)."""

    def advance(self, key: str, amount: int = 1, **fields: object) -> None:
        """``amount`` more units of ``key`` are done; ``fields`` are live values (loss, accuracy)."""

    def finish(self, key: str) -> None:
        """The loop ``key`` has ended (completed or interrupted)."""

    def note(self, message: str) -> None:
        """A one-line message for the user, such as an epoch summary or a warning."""
        logger.info(message)


SILENT = Reporter()


Event = tuple
"""A reporter call as a picklable tuple: ``("start", key, description, total)``,
``("advance", key, amount, fields)``, ``("finish", key)`` or ``("note", message)``."""


@dataclass
class _Unsent:
    amount: int = 0
    fields: dict[str, object] = field(default_factory=dict)
    sent: float = 0.0  # time.monotonic() of the last event sent for this loop


class ForwardingReporter(Reporter):
    """A worker process's reporter: sends every call as an ``Event`` for ``replay`` in the main process.

    Keys become ``label/key`` and descriptions and notes start with ``label``, so the loops of
    several workers show apart in one display. Advances are sent at most once per ``interval``
    seconds per loop, with the latest live values as plain numbers: a tensor (a loss still on the
    GPU) is read once per event, not once per step, and the pipe carries a few events a second.

    Args:
        send: delivers one event to the main process (a ``multiprocessing`` connection's ``send``).
        label: which worker this is, e.g. ``cuda:1``.
        interval: seconds between two advance events of one loop.
    """

    def __init__(self, send: Callable[[Event], None], label: str, interval: float = 0.25):
        self.send = send
        self.label = label
        self.interval = interval
        self._unsent: dict[str, _Unsent] = {}

    def start(self, key: str, description: str, total: int | None) -> None:
        self._unsent[key] = _Unsent(sent=time.monotonic())
        self.send(("start", self._key(key), f"{self.label} · {description}", total))

    def advance(self, key: str, amount: int = 1, **fields: object) -> None:
        unsent = self._unsent.setdefault(key, _Unsent())
        unsent.amount += amount
        if fields:
            unsent.fields = fields
        if time.monotonic() - unsent.sent >= self.interval:
            self._flush(key)

    def finish(self, key: str) -> None:
        self._flush(key)
        self._unsent.pop(key, None)
        self.send(("finish", self._key(key)))

    def note(self, message: str) -> None:
        self.send(("note", f"{self.label}: {message}"))

    def _key(self, key: str) -> str:
        return f"{self.label}/{key}"

    def _flush(self, key: str) -> None:
        unsent = self._unsent.get(key)
        if unsent is None or not (unsent.amount or unsent.fields):
            return
        fields = {name: value if isinstance(value, str) else float(value) for name, value in unsent.fields.items()}
        self.send(("advance", self._key(key), unsent.amount, fields))
        self._unsent[key] = _Unsent(sent=time.monotonic())


def replay(event: Event, reporter: Reporter) -> None:
    """Make the call a ``ForwardingReporter`` sent as ``event`` on ``reporter``."""
    kind, *args = event
    if kind == "advance":
        key, amount, fields = args
        reporter.advance(key, amount, **fields)
    elif kind in ("start", "finish", "note"):
        getattr(reporter, kind)(*args)
    else:
        raise ValueError(f"not a reporter event: {event!r}")
