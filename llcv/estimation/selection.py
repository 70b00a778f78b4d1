"""Which checkpoints, and which of their records, one ``estimate_all`` worker estimates.

``select_checkpoints`` narrows a run's checkpoints (every K-th, given steps, a shard);
``shard_of`` and ``shard_name`` place a record in one of N shares by a stable hash of its name,
so that N workers started with ``--shard 0/N`` .. ``--shard N-1/N`` split a run without talking
to each other, and a rerun or a widened run never reshuffles the shares. Shards are parsed by
``llcv.settings.parse_shard`` (the ``[estimate]`` setting and ``estimate_all`` alike).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from llcv.errors import SettingsError
from llcv.results import DEFAULT_SCOPE, step_from_name
from llcv.settings import parse_shard

__all__ = ["parse_shard", "select_checkpoints", "shard_name", "shard_of"]


def shard_of(name: str, count: int) -> int:
    """The share a checkpoint belongs to: a stable hash of its file name, so shares never reshuffle."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % count


def shard_name(checkpoint: str, scope: str = DEFAULT_SCOPE) -> str:
    """What a record's share is hashed from: the checkpoint's file name, plus the scope for refined ones
    (so the whole model's share is its file name's, and a checkpoint's scopes spread over the shares)."""
    return checkpoint if scope == DEFAULT_SCOPE else f"{checkpoint}__{scope}"


def select_checkpoints(
    paths: Sequence[Path],
    *,
    every_nth: int = 1,
    steps: Sequence[int] | None = None,
    shard: str | tuple[int, int] | None = None,
) -> list[Path]:
    """The checkpoints one worker estimates, in training order.

    Args:
        paths: all checkpoints, in training order (``list_checkpoints``).
        every_nth: every K-th checkpoint starting with the first, plus the last (a coarse pass
            that a plain rerun fills in later).
        steps: only the checkpoints at these steps (``step_*.pt`` names).
        shard: ``K/N``: only those whose file-name hash falls in share K of N.

    Raises:
        SettingsError: both ``every_nth`` and ``steps``, or a requested step has no checkpoint.
    """
    paths = list(paths)
    if steps is not None and every_nth != 1:
        raise SettingsError("--every-nth and --steps choose checkpoints in two ways; give only one")
    if every_nth < 1:
        raise SettingsError(f"every_nth must be at least 1, got {every_nth}")
    if steps is not None:
        by_step = {step_from_name(path.name): path for path in paths}
        absent = sorted(set(steps) - set(by_step))
        if absent:
            known = sorted(step for step in by_step if step is not None)
            raise SettingsError(
                f"no checkpoint at step(s) {', '.join(map(str, absent))}; the steps present are "
                f"{', '.join(map(str, known)) or 'none (only step_*.pt files have a step in their name)'}"
            )
        wanted = set(steps)
        paths = [path for path in paths if step_from_name(path.name) in wanted]
    elif every_nth > 1 and paths:
        chosen = paths[::every_nth]
        paths = chosen if chosen[-1] == paths[-1] else [*chosen, paths[-1]]
    parsed = parse_shard(shard)
    if parsed is not None:
        index, count = parsed
        paths = [path for path in paths if shard_of(path.name, count) == index]
    return paths
