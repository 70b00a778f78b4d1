"""The run's figures: pure functions from records to a matplotlib Figure (the LLC over training,
with refined scopes and training metrics, and an estimate's trace thumbnail).

Nothing here reads result folders or prints; callers pass the data in, and save through
``llcv.figure_files``. The calibration's figures are ``llcv.calibration.figures``.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from llcv.errors import SettingsError
from llcv.figure_files import save_figure
from llcv.results import NBETA_RULE_WORDS, LLCRecord, RecordResult
from llcv.results import find_transitions


def plot_trace_thumbnail(result: RecordResult | dict) -> Figure:
    """A thumbnail of one estimate's chains: per-draw LLC faint, running mean solid, the estimate dashed.

    Chains whose running means settle together have mixed; one apart from the others, or a
    trend, shows at a glance. The y range covers the running means and the middle 90% of the
    per-draw values: per-draw LLCs are skewed by rare high-loss draws, and a range that held
    every spike would flatten the running means into a line.

    Args:
        result: a record's ``result`` (or an ``LLCResult`` as a dict); ``llc_trace`` is chains x
            draws, null after a chain diverged.
    """
    import numpy as np

    if not isinstance(result, RecordResult):
        result = RecordResult.model_validate(result)
    traces = np.array([[np.nan if value is None else value for value in chain] for chain in result.llc_trace or []], dtype=float)
    draws = np.arange(1, traces.shape[-1] + 1)
    # each chain's running mean: where its estimate settles, and whether the chains agree
    running = np.cumsum(np.nan_to_num(traces), axis=-1) / draws
    running[~np.isfinite(traces)] = np.nan
    figure = Figure(figsize=(3.0, 1.5), layout="constrained")
    axis = figure.subplots()
    for index, (chain, mean) in enumerate(zip(traces, running)):
        axis.plot(draws, chain, color=f"C{index % 10}", linewidth=0.5, alpha=0.35)
        axis.plot(draws, mean, color=f"C{index % 10}", linewidth=1.4)
    if result.llc_mean is not None:
        axis.axhline(result.llc_mean, color="black", linestyle="--", linewidth=1.0)
    finite = traces[np.isfinite(traces)]
    if finite.size:
        low, high = np.percentile(finite, [5, 95])
        low, high = min(low, np.nanmin(running)), max(high, np.nanmax(running))
        margin = 0.08 * (high - low or abs(high) or 1.0)
        axis.set_ylim(low - margin, high + margin)
    axis.margins(x=0)
    axis.locator_params(nbins=4)
    axis.tick_params(labelsize=7, length=2, pad=1)
    axis.set_xlabel("draw", fontsize=7, labelpad=1)
    return figure


# The LLC-over-training figure (llcv plot).

_FAILED_COLOR = "#d62728"


def _as_runs(results, labels=None) -> dict[str, list[LLCRecord]]:
    """``results`` as {label: records}: a mapping as given, one list of records, or a list of such lists.

    Records are ``LLCRecord`` objects or their JSON dicts (validated here).
    """
    from collections.abc import Mapping

    if isinstance(results, Mapping):
        return {str(label): _records(records) for label, records in results.items()}
    results = list(results)
    if not results or isinstance(results[0], (LLCRecord, Mapping)):
        return {(labels[0] if labels else "LLC"): _records(results)}
    names = list(labels) if labels else [f"run {index + 1}" for index in range(len(results))]
    if len(names) != len(results):
        raise SettingsError(f"{len(names)} labels for {len(results)} runs; give one label per run")
    return {str(name): _records(records) for name, records in zip(names, results)}


def _records(records) -> list[LLCRecord]:
    return [LLCRecord.coerce(record) for record in records]


def _whole_model(records: list[LLCRecord]) -> list[LLCRecord]:
    return [record for record in records if record.is_whole_model]


def _refined(records: list[LLCRecord]) -> dict[str, dict[str, list[LLCRecord]]]:
    """A run's refined records as {kind: {scope: records}}: blocks in declared order, classes by label."""
    groups: dict[str, dict[str, list[LLCRecord]]] = {}
    for record in sorted(records, key=LLCRecord.scope_order):
        if record.kind != "model":
            groups.setdefault(record.kind, {}).setdefault(record.scope, []).append(record)
    return groups


def _llc_points(records: list[LLCRecord], field: str, per_parameter: bool):
    """Positions, means, stds and unhealthy flags of the done records with an estimate, divided by d if asked."""
    import numpy as np

    done = [record for record in records if record.position(field) is not None and record.has_estimate]
    done.sort(key=lambda record: record.position(field))
    scale = np.array([float(record.num_parameters or 1) if per_parameter else 1.0 for record in done])
    xs = np.array([record.position(field) for record in done], dtype=float)
    means = np.array([record.llc_mean for record in done], dtype=float) / scale
    stds = np.array([record.llc_std or 0.0 for record in done], dtype=float) / scale
    unhealthy = np.array([record.is_unhealthy for record in done], dtype=bool)
    return xs, means, stds, unhealthy


def _draw_points(axis, xs, means, unhealthy, color, markersize: float, **line) -> bool:
    """A curve through every point: healthy (and unjudged) points filled, unhealthy ones hollow
    in the curve's colour. Returns whether any point is hollow."""
    import numpy as np

    axis.plot(xs, means, color=color, marker="o", markersize=markersize, markevery=[int(i) for i in np.flatnonzero(~unhealthy)], **line)
    if unhealthy.any():
        # above a transition's triangle (zorder 6), and wide enough to ring it
        axis.scatter(xs[unhealthy], means[unhealthy], s=(2.5 * markersize) ** 2, facecolors="none", edgecolors=color,
                     linewidths=1.4, zorder=7)  # fmt: skip
    return bool(unhealthy.any())


def _unhealthy_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], marker="o", markersize=6, markerfacecolor="none", markeredgecolor="0.3", linestyle="none")


UNHEALTHY_LABEL = "unhealthy estimate (diverged, not mixed, drifting, ...): hollow"


def _scope_colors(kind: str, count: int) -> list:
    """Blocks shade from dark (input side) to light (output side); classes get distinct colours."""
    from matplotlib import colormaps

    if kind == "block":
        return [colormaps["viridis"](0.88 * index / max(count - 1, 1)) for index in range(count)]
    if count <= 10:
        return [colormaps["tab10"](index) for index in range(count)]
    if count <= 20:
        return [colormaps["tab20"](index) for index in range(count)]
    return [colormaps["turbo"](index / (count - 1)) for index in range(count)]


def _draw_refined(
    axis, title: str, kind: str, scopes: dict[str, list[LLCRecord]], whole: list[LLCRecord], field: str, per_parameter: bool
) -> None:
    """One panel of refined curves (one per block or class) with the whole model's curve for reference."""
    from matplotlib.transforms import blended_transform_factory

    xs, means, _, _ = _llc_points(whole, field, per_parameter)
    axis.plot(xs, means, color="black", linestyle="--", linewidth=1.4, label="whole model")
    failed, hollow = [], False
    for (scope, records), color in zip(scopes.items(), _scope_colors(kind, len(scopes))):
        xs, means, stds, unhealthy = _llc_points(records, field, per_parameter)
        hollow = _draw_points(axis, xs, means, unhealthy, color, 2.5, linewidth=1.3, label=scope) or hollow
        axis.fill_between(xs, means - stds, means + stds, color=color, alpha=0.12, linewidth=0)
        failed += [record.position(field) for record in records if record.is_failed and record.position(field) is not None]
    if failed:
        axis.scatter(failed, [0.03] * len(failed), marker="x", s=40, color=_FAILED_COLOR, label="failed (no estimate)",
                     transform=blended_transform_factory(axis.transData, axis.transAxes), zorder=5)  # fmt: skip
    handles, labels = axis.get_legend_handles_labels()
    if hollow:
        handles.append(_unhealthy_handle())
        labels.append("unhealthy: hollow")
    axis.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                ncol=1 + (len(handles) - 1) // 18, title="block" if kind == "block" else "class", title_fontsize=7)  # fmt: skip
    axis.set_title(title, fontsize=9, loc="left")
    axis.set_ylabel("LLC / d" if per_parameter else "LLC")
    axis.grid(alpha=0.3)
    if per_parameter:
        _log_if_spread(axis)


def _log_if_spread(axis) -> None:
    """A symmetric-log y axis when the curves span more than two decades (per-parameter LLCs of
    small and large blocks do), linear within the smallest curve's level so noise around 0 stays readable."""
    import numpy as np

    levels = []
    for line in axis.get_lines():
        values = np.abs(np.asarray(line.get_ydata(), dtype=float))
        values = values[np.isfinite(values) & (values > 0)]
        if values.size:
            levels.append(float(np.median(values)))
    if len(levels) > 1 and max(levels) > 100 * min(levels):
        axis.set_yscale("symlog", linthresh=min(levels), linscale=2.0)
        axis.set_ylabel(f"{axis.get_ylabel()} (symmetric log)")


def _axis_field(runs: dict[str, list[LLCRecord]], x: str) -> str:
    """``x`` if every record has it; otherwise the other of step and epoch when every record has that."""
    records = [record for run in runs.values() for record in run]
    for field in (x, "epoch" if x == "step" else "step"):
        if all(record.position(field) is not None for record in records):
            return field
    return "epoch" if x == "step" else "step"


def _settings_line(records: list[LLCRecord]) -> str | None:
    for record in records:
        settings = record.sampler_settings  # a plain dict: the sampler settings of the llcv that wrote it
        if settings:
            result = record.result
            nbeta = "unknown" if result.nbeta is None else format(result.nbeta, ".3g")
            if result.nbeta_rule in ("data", "batch"):  # results before llcv 0.10 did not record it
                nbeta += f" ({NBETA_RULE_WORDS[result.nbeta_rule]})"
            return (
                f"{settings.get('sampler', 'sgld')} ε={settings.get('epsilon'):g}, γ={settings.get('gamma'):g}, "
                f"nβ={nbeta}, {settings.get('num_chains')} chains × "
                f"{settings.get('num_draws')} draws, seed {settings.get('seed')} · settings {record.settings_hash}"
            )
    return None


def llc_figure(
    runs: dict[str, list[LLCRecord | dict]],
    *,
    x: str = "step",
    log_x: bool = False,
    transitions: dict[str, list] | None = None,
    missing: dict[str, int | None] | None = None,
    per_parameter: bool = False,
) -> Figure:
    """LLC mean ± std against training time per run, with loss and accuracy in a panel below.

    Every estimate stays on its run's curve; unhealthy ones (``LLCRecord.health``: diverged
    chains, no mixing, drift, ...) are hollow, failed checkpoints a red × at the bottom.

    Refined records (``estimate-all --per-layer`` / ``--per-class``) get a panel per run and
    kind between the two: one curve per block or class, beside the run's whole-model curve
    (dashed black).

    Args:
        runs: {label: result records} (``llcv.results.load_results``; ``LLCRecord`` objects or their JSON dicts).
        per_parameter: divide every curve (and its band) by its number of sampled parameters d,
            so blocks of very different sizes compare as LLC per parameter.
        x: ``step`` or ``epoch``; where some checkpoints lack it, the other is used (and the axis says so).
        log_x: a symmetric-log x axis, so step 0 stays on it.
        transitions: {label: ``llcv.results.Transition`` list} to mark.
        missing: {label: number of checkpoints without a record yet (None: unknown)}.
    """
    runs = _as_runs(runs)
    refined = {label: _refined(records) for label, records in runs.items()}
    runs = {label: _whole_model(records) for label, records in runs.items()}
    transitions = transitions or {}
    field = _axis_field(runs, x)
    panels = [(label, kind, scopes) for label, kinds in refined.items() for kind, scopes in kinds.items()]
    figure, top, refined_axes, bottom = _llc_axes(len(panels))
    for axis, (label, kind, scopes) in zip(refined_axes, panels):
        title = _refined_title(kind, len(scopes), label if len(runs) > 1 else None)
        _draw_refined(axis, title, kind, scopes, runs[label], field, per_parameter)
    accuracy_axis = bottom.twinx()
    hollow = failed = False
    for (label, records), color in zip(runs.items(), [f"C{index % 10}" for index in range(len(runs))]):
        placed = [record for record in records if record.position(field) is not None]
        hollow = _draw_whole_model(top, placed, label, color, field, per_parameter) or hollow
        failed = failed or any(record.is_failed for record in placed)
        _draw_training_metrics(bottom, accuracy_axis, placed, color, field)
        _draw_transitions(top, [top, *refined_axes, bottom], transitions.get(label, []), color, field, per_parameter)
    _label_whole_model(top, per_parameter, failed=failed, hollow=hollow, transitions=any(transitions.values()), titled=bool(panels))
    _label_training_metrics(bottom, accuracy_axis)
    positions = [record.position(field) for records in runs.values() for record in records]
    _set_training_axis(bottom, [position for position in positions if position is not None], field, x, log_x)
    figure.suptitle(_llc_title(runs, missing or {}, positions.count(None), field, per_parameter), fontsize=10)
    return figure


def _llc_axes(num_refined: int):
    """The figure and its axes, sharing x: the whole model on top, a refined panel each, the training metrics below."""
    figure = Figure(figsize=(9 + (1.5 if num_refined else 0), 7 + 2.8 * num_refined), layout="constrained")
    axes = figure.subplots(2 + num_refined, 1, sharex=True, height_ratios=[3, *[2.6] * num_refined, 2])
    return figure, axes[0], list(axes[1:-1]), axes[-1]


def _refined_title(kind: str, count: int, label: str | None) -> str:
    """``per block (6 blocks)``, with the run's label where several runs share the figure."""
    plural = {"block": "blocks", "class": "classes"}[kind] if count > 1 else kind
    return f"per {kind} ({count} {plural})" + (f": {label}" if label is not None else "")


def _draw_whole_model(axis, placed: list[LLCRecord], label: str, color, field: str, per_parameter: bool) -> bool:
    """One run's whole-model curve with its ± std band, and a red × at the foot for each failed
    checkpoint. Returns whether any point is hollow."""
    from matplotlib.transforms import blended_transform_factory

    xs, means, stds, unhealthy = _llc_points(placed, field, per_parameter)
    # Unhealthy estimates stay on the curve, so its shape shows, but hollow: not to be read.
    hollow = _draw_points(axis, xs, means, unhealthy, color, 3.5, linewidth=1.6, label=label)
    axis.fill_between(xs, means - stds, means + stds, color=color, alpha=0.2, linewidth=0)
    failed = [record.position(field) for record in placed if record.is_failed]
    if failed:
        axis.scatter(failed, [0.03] * len(failed), marker="x", s=60, color=_FAILED_COLOR,
                     transform=blended_transform_factory(axis.transData, axis.transAxes), zorder=5)  # fmt: skip
    return hollow


def _draw_training_metrics(loss_axis, accuracy_axis, placed: list[LLCRecord], color, field: str) -> None:
    """One run's validation and train loss (solid, dotted) and validation accuracy (dashed, right axis)."""
    for metric, style in (("val_loss", "-"), ("train_loss", ":")):
        points = [(record.position(field), getattr(record.metrics, metric)) for record in placed]
        points = [(position, value) for position, value in points if value is not None]
        if points:
            loss_axis.plot(*zip(*points), color=color, linestyle=style, linewidth=1.3)
    accuracy = [(record.position(field), record.metrics.val_acc) for record in placed]
    accuracy = [(position, value) for position, value in accuracy if value is not None]
    if accuracy:
        accuracy_axis.plot(*zip(*accuracy), color=color, linestyle="--", linewidth=1.1, alpha=0.8)


def _draw_transitions(top, axes: list, transitions: list, color, field: str, per_parameter: bool) -> None:
    """One run's candidate transitions: a dotted vertical line through every panel, and ▼ on its LLC on top."""
    for transition in transitions:
        position = getattr(transition, field, None)
        if position is None:
            continue
        for axis in axes:
            axis.axvline(position, color=color, linestyle=(0, (2, 3)), linewidth=0.9, alpha=0.7)
        if not per_parameter:  # a transition's LLC is the whole model's, not per parameter
            top.scatter([position], [transition.llc], marker="v", s=60, color=color, edgecolors="black", zorder=6)


def _label_whole_model(axis, per_parameter: bool, *, failed: bool, hollow: bool, transitions: bool, titled: bool) -> None:
    """The top panel's legend (the runs, then each kind of mark drawn: failed, hollow, transitions),
    y label, title (when refined panels follow, to tell it from them) and grid."""
    from matplotlib.lines import Line2D

    handles, labels = axis.get_legend_handles_labels()
    if failed:
        handles.append(Line2D([], [], color=_FAILED_COLOR, marker="x", linestyle="none"))
        labels.append("failed (no estimate)")
    if hollow:
        handles.append(_unhealthy_handle())
        labels.append(UNHEALTHY_LABEL)
    if transitions:
        handles.append(Line2D([], [], marker="v", color="0.4", markeredgecolor="black", linestyle="none"))
        labels.append("candidate transition")
    axis.legend(handles, labels, fontsize=8, loc="best")
    axis.set_ylabel("LLC / d (per sampled parameter)" if per_parameter else "LLC (mean ± std over chains)")
    if titled:
        axis.set_title("whole model", fontsize=9, loc="left")
    axis.grid(alpha=0.3)


def _label_training_metrics(loss_axis, accuracy_axis) -> None:
    """The bottom panel's axis labels, accuracy range, grid and legend of line styles."""
    from matplotlib.lines import Line2D

    loss_axis.set_ylabel("loss of the model as trained")
    accuracy_axis.set_ylabel("validation accuracy")
    accuracy_axis.set_ylim(0, 1.02)
    loss_axis.grid(alpha=0.3)
    loss_axis.legend(
        [Line2D([], [], color="0.3", linestyle=style) for style in ("-", ":", "--")],
        # The training metrics evaluate the model as trained (its saved BatchNorm statistics),
        # not the recomputed statistics the LLC is sampled with, so the panel says which loss it is.
        ["validation loss (eval mode, saved BatchNorm statistics)", "train loss (training batches since previous checkpoint)",
         "validation accuracy (right)"],
        fontsize=8, loc="best",
    )  # fmt: skip


def _set_training_axis(axis, positions: list[float], field: str, x: str, log_x: bool) -> None:
    """The shared x axis: its label (saying when ``x`` gave way to the other field), and the
    symmetric-log scale if asked, linear below the first positive position so step 0 stays on it."""
    from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

    axis.set_xlabel(field if field == x else f"{field} ({x} unknown for some checkpoints)")
    positive = [position for position in positions if position > 0]
    if not (log_x and positive):
        return
    threshold = min(positive)
    axis.set_xscale("symlog", linthresh=threshold, linscale=0.3)
    axis.xaxis.set_major_locator(SymmetricalLogLocator(linthresh=threshold, base=10, subs=[1.0, 2.0, 5.0]))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    smallest = 0.0 if any(position <= 0 for position in positions) else threshold / 1.3  # no empty negative half on a symlog axis
    axis.set_xlim(smallest, max(positive) * 1.3)


def _llc_title(runs: dict[str, list[LLCRecord]], missing: dict[str, int | None], unplaced: int, field: str, per_parameter: bool) -> str:
    """``LLC over training`` and beneath it the sampler settings (once if the runs share them), the
    checkpoints not estimated yet, the records without a position, and the per-parameter scaling."""
    subtitle = []
    settings_lines = {label: _settings_line(records) for label, records in runs.items()}
    distinct = {line for line in settings_lines.values() if line}
    if len(distinct) == 1:
        subtitle.append(distinct.pop())
    else:
        subtitle.extend(f"{label}: {line}" for label, line in settings_lines.items() if line)
    for label, count in missing.items():
        prefix = f"{label}: " if len(runs) > 1 else ""
        if count is None:
            subtitle.append(f"{prefix}the checkpoints folder is not reachable, so missing checkpoints are unknown")
        elif count:
            subtitle.append(f"{prefix}partial results: {count} checkpoint(s) not estimated yet")
    if unplaced:
        subtitle.append(f"{unplaced} record(s) without a {field} are not drawn")
    if per_parameter:
        subtitle.append("each curve divided by its number of sampled parameters d")
    return "LLC over training" + ("\n" + "\n".join(subtitle) if subtitle else "")


def plot_llc(
    results,
    out: Path,
    *,
    labels: list[str] | None = None,
    x: str = "step",
    log_x: bool = False,
    mark_transitions: bool = False,
    missing: dict[str, int | None] | None = None,
    per_parameter: bool = False,
) -> Path:
    """Draw the LLC-over-training figure and write it to ``out`` (format from its suffix).

    Args:
        results: records of one run (``load_results``), a list of such lists (named by ``labels``),
            or a mapping {label: records}.
        out: the figure file, ``.png``, ``.pdf`` or ``.svg``.
        labels: legend names when ``results`` is a list of runs.
        x, log_x, missing, per_parameter: see ``llc_figure``; refined records (per block or
            class) are drawn in their own panels.
        mark_transitions: mark ``llcv.results.find_transitions`` on each run's curve.

    Returns:
        The path written.

    Raises:
        SettingsError: an unsupported suffix, or labels that do not match the runs.
        WriteError: the file could not be written.
    """
    runs = _as_runs(results, labels)
    transitions = {label: find_transitions(records, x) for label, records in runs.items()} if mark_transitions else None
    figure = llc_figure(runs, x=x, log_x=log_x, transitions=transitions, missing=missing, per_parameter=per_parameter)
    return save_figure(figure, out)
