"""The calibration's figures (``llcv calibrate sweep | auto | curve | chains``): pure functions
from sweep rows, trials, curves and chains to a matplotlib Figure; the callers save them
(``llcv.figure_files.save_figure``). The conventions are the run figure's: hollow marks an
unhealthy estimate, a ring or a star the recommendation.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from matplotlib.figure import Figure

from llcv.health import sweep_row_verdict


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
