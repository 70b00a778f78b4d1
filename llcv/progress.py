"""The reporting hook through which library functions show progress; they never print.

Library functions take a ``Reporter`` and call ``start``/``advance``/``finish`` for each long
loop and ``note`` for one-line messages. The base class does nothing but log notes, so library
calls are silent by default; the CLI passes a Rich implementation (``llcv.console``).
"""

from __future__ import annotations

import logging

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
