"""Figures: pure functions from records to a matplotlib Figure, and one atomic save helper.

Nothing here reads result folders or prints; callers pass the data in. Figures are built as
``matplotlib.figure.Figure`` objects, never through pyplot, so they render on headless machines
without choosing a backend, and importing llcv leaves a notebook's backend alone.

Why one module: every figure of llcv, the calibration's and the run's, shares the encoding and
save helpers and one set of conventions (hollow marks an unhealthy estimate, ★ a recommendation),
and the report draws from all of them.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from llcv.errors import SettingsError
from llcv.fileio import atomic_write
from llcv.health import sweep_row_verdict
from llcv.records import NBETA_RULE_WORDS, LLCRecord, RecordResult
from llcv.results import find_transitions

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


# Calibration figures (llcv calibrate sweep | auto | curve | chains).


def _grid_edges(values: list[float]) -> tuple[list[float], bool]:
    """Cell edges for a heatmap axis, and whether it is logarithmic (all values positive).

    On a logarithmic axis the edges sit at geometric midpoints, so every cell is centred on its
    value; otherwise (a zero in the grid) cells are equal-width and labelled with the values.
    """
    import numpy as np

    values = sorted(values)
    if all(value > 0 for value in values):
        logs = np.log10(values)
        half = np.diff(logs) / 2 if len(values) > 1 else np.array([0.5])
        edges = np.concatenate([[logs[0] - half[0]], logs[:-1] + half, [logs[-1] + half[-1]]])
        return list(10**edges), True
    return [index - 0.5 for index in range(len(values) + 1)], False


def _place(values: list[float], value: float, logarithmic: bool) -> float:
    return value if logarithmic else sorted(values).index(value)


def plot_sweep_heatmap(rows: list[dict], title: str, rule: Mapping[str, float], recommended: int | None = None) -> Figure:
    """MALA acceptance and LLC over epsilon x gamma, one pair of panels per nbeta.

    Cells show their value; diverged combinations are grey and say so, qualifying ones are
    outlined, the others name the first rule they fail (judged by ``rule``'s thresholds, a
    sweep's ``rule``), and the row at index ``recommended`` carries a star.
    """
    import numpy as np
    from matplotlib.colors import Normalize, SymLogNorm

    epsilons = sorted({row["epsilon"] for row in rows})
    gammas = sorted({row["gamma"] for row in rows})
    nbetas = sorted({row["nbeta"] for row in rows})
    x_edges, x_log = _grid_edges(epsilons)
    y_edges, y_log = _grid_edges(gammas)
    recommended = rows[recommended] if recommended is not None else None
    llc_values = [abs(row["llc_mean"]) for row in rows if row["llc_mean"] is not None and not row["diverged"]]
    # Symmetric-log colours centred on 0: negative LLCs blue, positive red, and values that differ
    # by orders of magnitude across the grid stay distinguishable.
    largest = max(llc_values, default=1.0) or 1.0
    llc_norm = SymLogNorm(linthresh=min(1.0, largest), vmin=-largest, vmax=largest, base=10)

    figure = Figure(figsize=(11, 4.2 * len(nbetas)), layout="constrained")
    axes = figure.subplots(len(nbetas), 2, squeeze=False)
    panels = [("mala_acceptance", "MALA acceptance", "viridis", Normalize(0, 1)), ("llc_mean", "LLC (mean over chains)", "coolwarm", llc_norm)]
    for row_index, nbeta in enumerate(nbetas):
        for column, (field, label, cmap, norm) in enumerate(panels):
            axis = axes[row_index][column]
            grid = np.full((len(gammas), len(epsilons)), np.nan)
            for row in rows:
                if row["nbeta"] == nbeta and row[field] is not None and not row["diverged"]:
                    grid[gammas.index(row["gamma"]), epsilons.index(row["epsilon"])] = row[field]
            mesh = axis.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(grid), cmap=cmap, norm=norm)
            axis.set_facecolor("0.85")
            figure.colorbar(mesh, ax=axis, label=label)
            for row in rows:
                if row["nbeta"] != nbeta:
                    continue
                x, y = _place(epsilons, row["epsilon"], x_log), _place(gammas, row["gamma"], y_log)
                if row["diverged"]:
                    text = "diverged"
                elif row[field] is None:
                    text = "n/a"
                else:
                    text = f"{row[field]:.2f}" if field == "mala_acceptance" else f"{row[field]:.3g}"
                    if failed := sweep_row_verdict(row, rule):
                        text += f"\n✗ {failed}"
                if row is recommended:
                    text = "★ " + text
                axis.text(x, y, text, ha="center", va="center", fontsize=8, color="black",
                          bbox=dict(boxstyle="round,pad=0.15", facecolor="white", alpha=0.6, linewidth=0))
                if row.get("qualifies"):
                    i, j = epsilons.index(row["epsilon"]), gammas.index(row["gamma"])
                    axis.add_patch(_cell_outline(x_edges, y_edges, i, j))
            if x_log:
                axis.set_xscale("log")
            else:
                axis.set_xticks(range(len(epsilons)), [f"{value:g}" for value in epsilons])
            if y_log:
                axis.set_yscale("log")
            else:
                axis.set_yticks(range(len(gammas)), [f"{value:g}" for value in gammas])
            axis.set_xlabel("epsilon (step size)")
            axis.set_ylabel("gamma (localization)")
            axis.set_title(f"{label}, nbeta = {nbeta:.4g}", fontsize=10)
    figure.suptitle(title + "\noutlined: qualifies under the rule; ✗: the first rule it fails; ★: recommended", fontsize=10)
    return figure


def _cell_outline(x_edges: list[float], y_edges: list[float], i: int, j: int):
    from matplotlib.patches import Rectangle

    x0, x1, y0, y1 = x_edges[i], x_edges[i + 1], y_edges[j], y_edges[j + 1]
    return Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="black", linewidth=2.0)


def plot_sweep_traces(rows: list[dict], traces: list[list[float | None]], title: str) -> Figure:
    """The per-draw LLC (mean over chains) of every combination: a panel per (gamma, nbeta), a line per epsilon.

    Diverged combinations are dashed; the y range follows the non-diverged traces, so a blown-up
    chain does not flatten the others.
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    epsilons = sorted({row["epsilon"] for row in rows})
    gammas = sorted({row["gamma"] for row in rows})
    nbetas = sorted({row["nbeta"] for row in rows})
    norm = LogNorm(min(epsilons), max(epsilons)) if min(epsilons) > 0 and len(epsilons) > 1 else Normalize(min(epsilons), max(epsilons) + 1e-300)
    viridis = colormaps["viridis"]

    def colors(value: float):  # the yellow end of viridis is unreadable on white
        return viridis(0.85 * value)

    arrays = [np.array([np.nan if value is None else value for value in trace], dtype=float) for trace in traces]
    healthy = np.concatenate([array[np.isfinite(array)] for row, array in zip(rows, arrays) if not row["diverged"]] or [np.array([])])
    figure = Figure(figsize=(3.6 * len(gammas) + 1.5, 3.0 * len(nbetas) + 0.8), layout="constrained")
    axes = figure.subplots(len(nbetas), len(gammas), squeeze=False, sharex=True, sharey=True)
    for row, array in zip(rows, arrays):
        axis = axes[nbetas.index(row["nbeta"])][gammas.index(row["gamma"])]
        label = f"{row['epsilon']:g}" + (" (diverged)" if row["diverged"] else "") + (" ✓" if row.get("qualifies") else "")
        axis.plot(np.arange(1, len(array) + 1), array, color=colors(norm(row["epsilon"])), linewidth=1.0,
                  linestyle="--" if row["diverged"] else "-", label=label)
    symlog = False
    if healthy.size:
        low, high = np.percentile(healthy, [0.5, 99.5])
        margin = 0.1 * (high - low or abs(high) or 1.0)
        axes[0][0].set_ylim(min(low, 0.0) - margin, high + margin)
        typical = [np.median(np.abs(array[np.isfinite(array)])) for row, array in zip(rows, arrays) if not row["diverged"] and np.isfinite(array).any()]
        if max(typical) > 20 * max(min(typical), 1.0):  # traces orders of magnitude apart: symmetric log scale
            symlog = True
            axes[0][0].set_yscale("symlog", linthresh=1.0)
            axes[0][0].set_ylim(min(low, 0.0) - 1.0, high * 1.5)
    for i, nbeta in enumerate(nbetas):
        for j, gamma in enumerate(gammas):
            axis = axes[i][j]
            axis.axhline(0.0, color="0.5", linewidth=0.8)
            axis.set_title(f"gamma = {gamma:g}, nbeta = {nbeta:.4g}", fontsize=9)
            axis.legend(title="epsilon", fontsize=7, title_fontsize=7, loc="best")
            if i == len(nbetas) - 1:
                axis.set_xlabel("draw")
            if j == 0:
                axis.set_ylabel("per-draw LLC" + (" (symmetric log scale)" if symlog else ""))
    figure.suptitle(title + "\nper-draw LLC = nbeta (L(w) - L(w*)), mean over chains; ✓: qualifies", fontsize=10)
    return figure


def plot_calibration_trials(trials: Sequence[Mapping[str, Any]], title: str, pick: int | None = None) -> Figure:
    """Each trial of an automatic calibration: its LLC with a ±2 standard-error bar against epsilon.

    Epsilon is on a log axis and each gamma has its colour. A trial at another batch size than
    the first trial's (the sensitivity check's doubled batch) is a square, slightly to the right;
    the trial at index ``pick`` is ringed; unhealthy trials are hollow and labelled with their
    status, and those without an LLC (diverged) are a cross at the foot of the axis.

    Args:
        trials: ``llcv.calibration.trials.Trial`` fields as mappings, in the order they ran.
    """
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    figure = Figure(figsize=(8.5, 4.8), layout="constrained")
    axis = figure.subplots()
    gammas = sorted({trial["gamma"] for trial in trials})
    colors = {gamma: f"C{index % 10}" for index, gamma in enumerate(gammas)}
    first_batch = trials[0]["batch_size"] if trials else None
    foot = blended_transform_factory(axis.transData, axis.transAxes)
    for index, trial in enumerate(trials):
        color, other_batch = colors[trial["gamma"]], trial["batch_size"] != first_batch
        epsilon = trial["epsilon"] * (1.04 if other_batch else 1.0)  # beside the same epsilon at the first batch
        if trial["llc"] is None:
            axis.plot(epsilon, 0.04, "x", color=color, markersize=8, transform=foot, clip_on=False)
            axis.annotate(trial["status"], (epsilon, 0.04), xycoords=foot, xytext=(5, 3), textcoords="offset points", fontsize=7, color=color)
            continue
        healthy = trial["status"] == "ok"
        bar = None if trial["se"] is None else 2 * trial["se"]
        axis.errorbar(epsilon, trial["llc"], yerr=bar, fmt="s" if other_batch else "o", color=color, markersize=7, capsize=3,
                      markerfacecolor=color if healthy else "white", markeredgewidth=1.5)  # fmt: skip
        if not healthy:
            axis.annotate(trial["status"], (epsilon, trial["llc"]), xytext=(6, -3), textcoords="offset points", fontsize=7, color=color)
        if index == pick:
            axis.plot(epsilon, trial["llc"], "o", markersize=17, markerfacecolor="none", markeredgecolor="black", markeredgewidth=1.5)
    axis.set_xscale("log")
    axis.axhline(0.0, color="0.5", linewidth=0.8)
    axis.set_xlabel("epsilon (step size)")
    axis.set_ylabel("LLC ± 2 standard errors")
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[gamma], label=f"gamma {gamma:.3g}") for gamma in gammas]
    other_batches = sorted({trial["batch_size"] for trial in trials} - {first_batch})
    if other_batches:
        handles.append(Line2D([], [], marker="s", linestyle="", color="0.4", label=f"batch {', '.join(map(str, other_batches))} (not {first_batch})"))
    if any(trial["status"] != "ok" for trial in trials):
        handles.append(Line2D([], [], marker="o", linestyle="", color="0.4", markerfacecolor="white", label="unhealthy: hollow, status beside it"))
    if pick is not None:
        handles.append(Line2D([], [], marker="o", linestyle="", markersize=12, markerfacecolor="none", markeredgecolor="black", label="the pick"))
    if handles:
        axis.legend(handles=handles, fontsize=8, loc="best")
    figure.suptitle(title, fontsize=10)
    return figure


def plot_calibration_traces(trials: Sequence[Mapping[str, Any]], title: str, pick: int | None = None) -> Figure:
    """Each trial's chain-mean per-draw LLC over its steps, one panel per trial, the measured burn-in shaded.

    A trace that still climbs or falls after its burn-in has not settled; the dotted line is the
    trial's LLC (the mean after the burn-in). The y range follows the middle 98% of a trace, so a
    diverging chain does not flatten the rest.

    Args:
        trials: ``llcv.calibration.trials.Trial`` fields as mappings; ``trace`` holds block means
            over the trial's ``steps``.
        pick: the index of the recommended trial, starred.
    """
    import math

    import numpy as np

    columns = min(3, max(len(trials), 1))
    rows = max(1, math.ceil(len(trials) / columns))
    figure = Figure(figsize=(max(3.8 * columns + 0.4, 8.0), 2.5 * rows + 1.1), layout="constrained")  # wide enough for the title
    axes = figure.subplots(rows, columns, squeeze=False)
    for index, (axis, trial) in enumerate(zip(axes.flat, trials)):
        trace = np.array([np.nan if value is None else value for value in trial["trace"]], dtype=float)
        if trace.size:
            width = trial["steps"] / trace.size  # each point is the mean of a block of steps
            axis.plot((np.arange(trace.size) + 0.5) * width, trace, color="tab:blue", linewidth=1.0)
            finite = trace[np.isfinite(trace)]
            if finite.size:
                low, high = np.percentile(finite, [1, 99])
                if trial["llc"] is not None:
                    low, high = min(low, trial["llc"]), max(high, trial["llc"])
                margin = 0.08 * (high - low or abs(high) or 1.0)
                axis.set_ylim(low - margin, high + margin)
        if trial["burnin"] is not None:
            axis.axvspan(0, trial["burnin"], color="0.88")
        if trial["llc"] is not None:
            axis.axhline(trial["llc"], color="black", linestyle=":", linewidth=1.0)
        burnin = "no burn-in settled" if trial["burnin"] is None else f"burn-in {trial['burnin']:,}"
        axis.set_title(
            f"{'★ ' if index == pick else ''}#{index + 1}: epsilon {trial['epsilon']:.3g}, gamma {trial['gamma']:.3g}, "
            f"batch {trial['batch_size']}\n{trial['status']}, {burnin} of {trial['steps']:,} steps"
            + ("" if trial["from_checkpoint"] else ", continued"),
            fontsize=8,
        )
        axis.tick_params(labelsize=7)
        axis.set_xlabel("step", fontsize=8)
        axis.set_ylabel("chain-mean LLC", fontsize=8)
    for axis in list(axes.flat)[len(trials) :]:
        axis.set_visible(False)
    if not trials:
        axes[0][0].set_visible(True)
        axes[0][0].text(0.5, 0.5, "no trial ran", ha="center", va="center", transform=axes[0][0].transAxes)
    continued = "; continued: from where the trial before left the chains" if any(not trial["from_checkpoint"] for trial in trials) else ""
    figure.suptitle(
        f"{title}\nthe chains' mean per-draw LLC; shaded: the burn-in measured on them; dotted: the trial's LLC; ★ the pick{continued}",
        fontsize=9,
    )
    return figure


def plot_curve(curve, title: str) -> Figure:
    """One chain's per-draw and running LLC over SGLD steps, burn-in shaded, with the verdict."""
    import numpy as np

    figure = Figure(figsize=(9, 4.5), layout="constrained")
    axis = figure.subplots()
    burnin = np.array([np.nan if value is None else value for value in curve.burnin_llc], dtype=float)
    draws = np.array([np.nan if value is None else value for value in curve.llc], dtype=float)
    running = np.array([np.nan if value is None else value for value in curve.running_llc], dtype=float)
    if len(burnin):
        axis.axvspan(0, len(burnin), color="0.9", label=f"burn-in ({len(burnin)} steps, discarded)")
        axis.plot(np.arange(1, len(burnin) + 1), burnin, color="0.55", linewidth=0.8)
    axis.plot(curve.draw_steps, draws, color="tab:blue", linewidth=0.8, alpha=0.7, label="per-draw LLC")
    axis.plot(curve.draw_steps, running, color="tab:red", linewidth=2.0, label="running mean")
    if curve.verdict == "peaks" and curve.peak_draw is not None:
        axis.plot(curve.draw_steps[curve.peak_draw], draws[curve.peak_draw], "kv", markersize=8, label="largest peak")
    axis.axhline(0.0, color="0.4", linewidth=0.8)
    finite = np.concatenate([draws[np.isfinite(draws)], burnin[np.isfinite(burnin)]])
    if finite.size:
        low, high = np.percentile(finite, [0.5, 99.5]) if curve.verdict == "diverged" else (finite.min(), finite.max())
        margin = 0.05 * (high - low or 1.0)
        axis.set_ylim(min(low, 0.0) - margin, high + margin)
    axis.set_xlabel("SGLD step")
    axis.set_ylabel("LLC = nbeta (L(w) - L(w*))")
    axis.legend(fontsize=8, loc="best")
    drift = "n/a" if curve.trace_drift is None else f"{curve.trace_drift:+.1%}"
    peak = "n/a" if curve.peak_score is None else f"{curve.peak_score:.1f}"
    mala = "n/a" if curve.mala_acceptance is None else f"{curve.mala_acceptance:.3f}"
    axis.text(
        0.01, 0.98,
        f"verdict: {curve.verdict}\ndrift {drift} (limit {curve.max_trace_drift:.0%})\n"
        f"peak {peak} robust sd (limit {curve.peak_threshold:g})\nMALA acceptance {mala}",
        transform=axis.transAxes, va="top", fontsize=8,
        bbox=dict(boxstyle="round", facecolor="white", alpha=0.8),
    )
    figure.suptitle(title, fontsize=10)
    return figure


def plot_chains(chains, title: str) -> Figure:
    """Every chain's running LLC with the mean over chains and a +-1 std band."""
    import numpy as np

    figure = Figure(figsize=(9, 4.5), layout="constrained")
    axis = figure.subplots()
    draws = None
    for index, running in enumerate(chains.running_llc):
        values = np.array([np.nan if value is None else value for value in running], dtype=float)
        draws = np.arange(1, len(values) + 1)
        diverged = chains.result.llc_per_chain[index] is None
        axis.plot(draws, values, linewidth=0.9, alpha=0.8, linestyle="--" if diverged else "-",
                  label=f"chain {index + 1}" + (" (diverged)" if diverged else ""))
    mean = np.array([np.nan if value is None else value for value in chains.running_mean], dtype=float)
    std = np.array([np.nan if value is None else value for value in chains.running_std], dtype=float)
    if draws is not None and np.isfinite(mean).any():
        axis.plot(draws, mean, color="black", linewidth=2.0, label="mean over chains")
        if np.isfinite(std).any():
            axis.fill_between(draws, mean - std, mean + std, color="black", alpha=0.15, label="± 1 std")
    axis.axhline(0.0, color="0.4", linewidth=0.8)
    axis.set_xlabel("draw")
    axis.set_ylabel("running LLC")
    axis.legend(fontsize=8, loc="best", ncol=2)

    def number(value, spec):
        return "n/a" if value is None else format(value, spec)

    axis.text(
        0.99, 0.02,
        f"LLC {number(chains.llc_mean, '.4g')} ± {number(chains.llc_std, '.3g')}\nR-hat {number(chains.r_hat, '.3f')}, "
        f"ESS {number(chains.ess, '.0f')}\nMALA acceptance {number(chains.mala_acceptance, '.3f')}",
        transform=axis.transAxes, ha="right", va="bottom", fontsize=8,
        bbox=dict(boxstyle="round", facecolor="white", alpha=0.8),
    )
    figure.suptitle(title, fontsize=10)
    return figure


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
