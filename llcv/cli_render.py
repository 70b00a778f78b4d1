"""What each command shows: tables and results on stdout, messages on stderr, or one JSON document.

The commands in ``llcv.cli`` call these with the library's result objects; nothing here computes
a result. Text from data (file names, reasons, labels) is escaped wherever Rich markup is on, and
``console.info`` prints plain text, so a ``[model]`` or ``[layer3]`` in it prints as written.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import typer
from rich import box
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from llcv import console
from llcv.calibration import (
    KNOB_NAMES,
    RECOMMENDED_FILE,
    SETTINGS_DEPENDENT,
    TRIAL_CHAINS,
    payload_dict,
    percent_words,
    sensitivity_sentence,
    sensitivity_verdict,
    spent_words,
)
from llcv.health import sweep_row_verdict
from llcv.relaxation import relaxation_steps
from llcv.models import model_version
from llcv.results import ran_in
from llcv.results import health_label


def number(value: float | None, spec: str = ".4g") -> str:
    """``value`` formatted, or a dash where there is none."""
    return "—" if value is None else format(value, spec)


def show_settings(settings, read: Mapping[str, Sequence[str]] | None = None) -> None:
    """``-v``: the resolved settings; ``read`` limits a section to the fields the command reads."""
    shown = settings.to_json_dict()
    for section, fields in (read or {}).items():
        if section in shown:
            shown[section] = {field: value for field, value in shown[section].items() if field in fields}
    console.debug("resolved settings:\n" + json.dumps(shown, indent=2, default=str))


def emit_json(payload: Any) -> None:
    """--json: the command's data as one JSON document on stdout (paths as strings)."""
    typer.echo(json.dumps(payload, default=str))


def render_training(result) -> None:
    """Where the checkpoints went and how the run ended."""
    metrics = result.final_metrics
    console.info(
        f"wrote {len(result.checkpoints)} checkpoints to {result.checkpoints_dir} ({result.num_steps} steps); "
        f"final val loss {number(metrics.get('val_loss'), '.4f')}, val acc {number(metrics.get('val_acc'), '.3f')}"
    )


def render_version_override(checkpoint: Path, info) -> None:
    """The warning for a checkpoint loaded into another version of its model."""
    spec = info.model
    console.info(
        f"warning: {checkpoint.name} was saved with {spec.name} version {spec.version}, "
        f"loaded anyway into version {model_version(spec.name)} (--allow-model-version-mismatch)"
    )


BATCHNORM_WORDS = {
    "recomputed": "eval mode, statistics recomputed for these weights on {samples:,} samples",
    "checkpoint": "eval mode, the checkpoint's saved statistics",
    "batch": "each minibatch normalised by its own statistics",
}


def standard_error_text(result) -> str:
    """An estimate's standard error with its parts: the chains' (with their MCSE) and the initial loss's."""
    diagnostics = result.diagnostics
    if diagnostics.llc_se is None:
        return f"MCSE {number(diagnostics.llc_mcse, '.2g')}"  # results before llcv 0.9
    initial = None if result.init_loss_se is None else result.nbeta * result.init_loss_se
    chains = math.sqrt(max(diagnostics.llc_se**2 - (initial or 0.0) ** 2, 0.0))  # llc_se is their hypot
    if initial == 0:
        initial_part = "initial loss exact (every sample counted)"
    elif initial is None:
        initial_part = "initial loss's error unknown (one minibatch: raise init_loss_samples)"
    else:
        initial_part = f"initial loss {initial:.2g} (measured on a subset)"
    return f"{diagnostics.llc_se:.2g}: chains {chains:.2g} (MCSE {number(diagnostics.llc_mcse, '.2g')}), {initial_part}"


def nbeta_text(result) -> str:
    """The temperature and how it was chosen: ``197.8 (n/ln n of 1,438 samples)``; the number alone
    for results before llcv 0.10, which did not record it."""
    how = {
        "data": f" (n/ln n of {result.num_samples_used:,} samples)",
        "batch": " (batch/ln batch, devinterp's)",
        "set": " (set)",
        None: "",
    }[result.nbeta_rule]
    return number(result.nbeta, ".4g") + how


def burnin_text(result) -> str:
    """The burn-in and how it was chosen: ``200 (auto: 2/(epsilon*gamma))``, ``800 (auto, cut short
    by its cap; needs 2,000)``, ``100 (set)``; the setting for results before llcv 0.10."""
    if result.burnin_rule is None:
        return str(result.settings.get("num_burnin_steps"))
    if result.burnin_rule == "auto-capped":
        needed = relaxation_steps(result.settings["epsilon"], result.settings["gamma"])
        needs = "no burn-in is enough at gamma 0" if math.isinf(needed) else f"needs {needed:,}"
        return f"{result.burnin_steps:,} (auto, cut short by its cap; {needs})"
    return f"{result.burnin_steps:,} " + ("(auto: 2/(epsilon*gamma))" if result.burnin_rule == "auto" else "(set)")


def render_llc_result(result, title: str) -> None:
    """The end-of-estimate table: LLC mean +- std, its standard error, per chain, MALA, R-hat, ESS, warnings."""
    table = Table(title=escape(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    mean, std = result.llc_mean, result.llc_std
    table.add_row("LLC", "no healthy chain" if mean is None else f"{mean:.4g} ± {number(std)}")
    if mean is not None:
        table.add_row("standard error", escape(standard_error_text(result)))
    if result.healthy is not None:
        table.add_row("health", "[green]healthy[/]" if result.healthy else "[bold red]unhealthy[/]: " + escape("; ".join(result.health_reasons)))
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
    table.add_row("nbeta", nbeta_text(result))
    table.add_row("burn-in", burnin_text(result))
    table.add_row("sampled parameters", f"{result.num_parameters:,}")
    table.add_row("samples", f"{result.num_samples_used:,}")
    table.add_row("time", escape(f"{result.elapsed_seconds:.1f} s on {result.device} ({result.num_threads} threads)"))
    if result.precision is not None:
        reason = (result.precision_choice or {}).get("reason", "")
        ran = ran_in(result.precision, result.precision_choice)
        table.add_row("precision", escape(ran + (f" ({reason})" if reason and reason != "asked for" else "")))
    console.stdout.print(table)
    for warning in result.diagnostics.warnings:
        console.stdout.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


def render_estimate(result, checkpoint: Path, json_output: bool) -> None:
    """`estimate`: the result as JSON, or its table."""
    if json_output:
        emit_json(result.to_dict())
    else:
        render_llc_result(result, f"LLC of {checkpoint.name}")


def render_estimate_summary(summary, json_output: bool) -> None:
    """`estimate-all`'s end summary: as JSON (every EstimateSummary field, plus ok and num_done), or as text."""
    if json_output:
        emit_json({**dataclasses.asdict(summary), "ok": summary.ok, "num_done": summary.num_done})
        return
    out = console.stdout
    total = len(summary.selected)
    state = "stopped" if summary.interrupted else "finished"
    scopes = list(getattr(summary, "scopes", None) or ["model"])
    unit = "checkpoint(s)" if len(scopes) == 1 else f"estimate(s) over {len(scopes)} scopes ({', '.join(scopes)})"
    out.print(
        escape(
            f"estimate-all {state} in {summary.elapsed_seconds:.1f} s: {summary.num_done} of {total} {unit} done "
            f"({len(summary.computed)} now, {len(summary.already_done)} before), {len(summary.failed)} failed, "
            f"{len(summary.elsewhere)} in progress elsewhere, {len(summary.left)} left"
        ),
        highlight=False,
    )
    # labels ("step_1.pt [layer3]") and reasons ("[model] ...") keep their brackets
    for name, reason in summary.failed.items():
        out.print(f"[red]failed[/] {escape(name)}: {escape(reason)}", highlight=False)
    if summary.elsewhere:
        out.print(f"claimed by other workers: {escape(', '.join(summary.elsewhere))}", highlight=False)
    if summary.left:
        out.print(f"left to do (rerun the same command): {escape(', '.join(summary.left))}", highlight=False)
    if summary.failed and not summary.interrupted:
        out.print("a rerun retries the failed checkpoints", highlight=False)
    out.print(f"results in {escape(str(summary.folder))}", highlight=False)


def render_sweep(result, title: str) -> None:
    """The sweep table: one row per combination, the recommended one starred."""
    base = result.base
    nbetas = {row["nbeta"] for row in result.rows}
    one_nbeta = len(nbetas) == 1
    title += f" ({base.num_chains} chains x {base.num_draws} draws, {result.burnin_label}" + (f", nbeta {next(iter(nbetas)):.4g})" if one_nbeta else ")")
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # llc_final is left to sweep.csv / sweep.json, so the table fits an 80-column terminal.
    columns = ["epsilon", "gamma", *([] if one_nbeta else ["nbeta"]), "MALA", "LLC", "± MCSE", "neg", "drift z", "R-hat", "verdict"]
    for column in columns:
        if column == "verdict":
            table.add_column(column, min_width=13, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    recommended = result.recommended_index
    for index, row in enumerate(result.rows):
        verdict = "★ recommended" if index == recommended else "ok" if row["qualifies"] else escape(sweep_row_verdict(row, result.rule))
        cells = [f"{row['epsilon']:g}", f"{row['gamma']:g}", *([] if one_nbeta else [f"{row['nbeta']:.4g}"])]
        cells += [number(row["mala_acceptance"], ".2f"), number(row["llc_mean"], ".3g"), number(row["llc_mcse"], ".2g")]
        cells += [number(row["negative_chains"], ".2f"), number(row["drift_z"], "+.1f"), number(row["r_hat"], ".2f"), verdict]
        table.add_row(*cells, style="bold green" if index == recommended else "dim" if row["diverged"] else None)
    console.stdout.print(table)


def render_sweep_outcome(result, checkpoint: Path, out: Path, json_output: bool) -> None:
    """`calibrate sweep`: the table (or JSON), then the recommendation or why there is none."""
    if json_output:
        emit_json(result.to_dict())
    else:
        render_sweep(result, f"Sweep of {checkpoint.name}")
    if result.recommended is None:
        console.stderr.print(f"[bold red]error:[/] {escape(result.reason)}", highlight=False)
        console.info(f"table and figures in {out}; no recommended.json written")
        return
    console.info(f"recommended: {result.reason}")
    console.info(f"wrote {out / 'recommended.json'} (use it with --from-calibration), sweep.json, sweep.csv and figures in {out}")


def auto_trials_table(result, title: str) -> Table:
    """An automatic calibration's trials, in the order they ran, the pick starred (the drift z is in trials.csv)."""
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, show_edge=False)
    for column in ("#", "epsilon", "gamma", "batch", "steps", "burn-in", "LLC", "± se", "ESS", "R-hat"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("status", min_width=8, overflow="fold")
    for index, trial in enumerate(result.trials):
        picked = index == result.pick
        status = "★ pick" if picked else escape(trial.status) + ("" if trial.from_checkpoint else " (continued)")
        if trial.reference_diverged:
            status += " (the larger step diverged beside it)"
        table.add_row(
            str(index + 1), f"{trial.epsilon:.3g}", f"{trial.gamma:.3g}", str(trial.batch_size), f"{trial.steps:,}",
            number(trial.burnin, ","), number(trial.llc, ".4g"), number(trial.se, ".2g"), number(trial.ess, ".0f"),
            number(trial.r_hat, ".2f"), status, style="bold green" if picked else None if trial.ok else "dim",
        )  # fmt: skip
    return table


def sensitivity_table(sensitivity, title: str) -> Table:
    """How the pick's LLC moves when each knob changes: the LLC after the change, the move with its
    standard error and relative to the LLC, and the verdict (the pick's LLC, the same on every row, is
    left to the title, so the table fits an 80-column terminal)."""
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True, show_edge=False)
    for column in ("knob", "value → changed", "LLC", "move ± se", "relative"):
        table.add_column(column, justify="left" if column == "knob" else "right", no_wrap=True)
    table.add_column("verdict", min_width=len("settings-dependent"), overflow="fold")
    for entry in sensitivity:
        spec = ".0f" if entry.knob == "batch_size" else ".2g"
        bound = "≥ " if entry.at_least else ""
        move = "—" if entry.move is None else f"{bound}{entry.move:+.2g} ± {number(entry.move_se, '.2g')}"
        relative = "—" if entry.relative is None else bound + percent_words(entry.relative, signed=True)
        verdict = sensitivity_verdict(entry)
        style = {"settings-dependent": "bold red", "holds": "green"}.get(verdict, "yellow")
        table.add_row(
            KNOB_NAMES.get(entry.knob, entry.knob), f"{entry.value:{spec}} → {entry.changed_to:{spec}}",
            # a lower bound's changed trial had not relaxed: its LLC says so where it is shown
            number(entry.llc_changed, ".4g") + (" unrelaxed" if entry.at_least else ""), move, relative, f"[{style}]{escape(verdict)}[/]",
        )  # fmt: skip
    return table


def recommended_words(settings) -> str:
    """The sampler fields a calibration decided, in one line."""
    return (
        f"epsilon={settings.epsilon:g}, gamma={settings.gamma:g}, nbeta={settings.nbeta}, {settings.sampler}, "
        f"burn-in {settings.num_burnin_steps:,} steps, {settings.num_chains} chains x {settings.num_draws:,} draws, batch {settings.batch_size}"
    )


def render_auto_outcome(result, checkpoint: Path, out: Path, json_output: bool) -> None:
    """`calibrate auto`: the trials, the sensitivity, what was spent, and the recommendation or why there is none (or JSON)."""
    if json_output:
        emit_json(payload_dict(result))
    else:
        console.stdout.print(auto_trials_table(result, f"Trials on {checkpoint.name} (nbeta {result.nbeta:.4g}, {TRIAL_CHAINS} chains each)"))
        if result.sensitivity and result.pick is not None:
            pick = result.trials[result.pick]
            criterion = f"settings-dependent: it moves by more than {SETTINGS_DEPENDENT:.0%} of the LLC beyond 2 standard errors"
            title = f"Sensitivity of the pick's LLC, {number(pick.llc, '.4g')} ± {number(pick.se, '.2g')} ({criterion})"
            console.stdout.print(sensitivity_table(result.sensitivity, title))
        console.stdout.print(f"spent: {escape(spent_words(result.spent))}", highlight=False)
    if result.recommended is None:
        console.stderr.print(f"[bold red]error:[/] calibrate auto found no usable settings: {escape(result.reason)}", highlight=False)
        console.info(f"trials and figures in {out}; no recommended.json written")
        return
    console.info(f"recommended: {recommended_words(result.recommended)}")
    console.info(f"why: {result.reason}")
    console.info(
        f"wrote {out / RECOMMENDED_FILE} (use it with --from-calibration), calibration.json, trials.csv and figures in {out}"
    )


def render_run_calibration(calibrated) -> None:
    """`estimate-all --calibrate`: the settings the run's calibration chose, how they hold, and where its files are."""
    result = calibrated.calibration
    console.info(f"calibrated on {calibrated.checkpoint.name} ({spent_words(result.spent)})")
    console.info(f"recommended for every checkpoint (flags still override): {recommended_words(result.recommended)}")
    console.info(f"sensitivity: {sensitivity_sentence(result.sensitivity)}")
    console.info(f"calibration files in {calibrated.directory}")


def render_curve(curve, out: Path, figure_format: str, json_output: bool) -> None:
    """`calibrate curve`: the verdict and its numbers (or JSON), and where the files are."""
    if json_output:
        emit_json(curve.to_dict())
    else:
        style = {"stable": "bold green", "diverged": "bold red"}.get(curve.verdict, "bold yellow")
        console.stdout.print(f"[{style}]{escape(curve.verdict)}[/]: {escape(curve.verdict_reason)}", highlight=False)
        mala = number(curve.mala_acceptance, ".3f")
        console.stdout.print(f"LLC {number(curve.llc_mean)} (one chain), MALA acceptance {mala}", highlight=False)
    console.info(f"wrote curve.json and curve.{figure_format} in {out}")


def render_chains(chains, title: str, out: Path, figure_format: str, json_output: bool) -> None:
    """`calibrate chains`: the chains' table (or JSON), and where the files are."""
    if json_output:
        emit_json(chains.to_dict())
    else:
        render_llc_result(chains.result, title)
    console.info(f"wrote chains.json and chains.{figure_format} in {out}")


def render_transitions(runs) -> None:
    """One line per candidate transition: where, the LLC and the losses there, and what kind."""
    out = console.stdout
    out.print("candidate transitions (the slope of LLC against log-step changes sign or peaks):", highlight=False, markup=False)
    for run in runs:
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        if not run.transitions:
            out.print(f"  {prefix}none (fewer than three estimates past step 0, or no turn in the curve)", highlight=False, markup=False)
        for item in run.transitions:
            out.print(
                f"  {prefix}step {number(item.step, 'd')} (epoch {number(item.epoch, '.3g')}, {item.checkpoint}): "
                f"LLC {item.llc:.4g}, train loss {number(item.train_loss, '.4f')}, val loss {number(item.val_loss, '.4f')}: {item.kind}",
                highlight=False,
                markup=False,
            )


def render_plot(result, mark_transitions: bool) -> None:
    """`plot`: what each run holds, the transitions if asked, the file, and the checkpoints not to read."""
    for run in result.runs:
        how = "as asked" if run.asked else "the most recent" + (f"; --settings picks one of {', '.join(run.other_hashes)}" if run.other_hashes else "")
        console.info(f"{run.label}: {len(run.records)} result(s) with settings {run.settings_hash} ({how})")
        if run.refined_scopes:
            console.info(f"{run.label}: refined scopes {', '.join(run.refined_scopes)}")
        if run.missing:
            console.info(f"{run.label}: partial results, {len(run.missing)} checkpoint(s) still missing")
        elif run.missing is None:
            console.info(f"{run.label}: the checkpoints folder is not reachable here, so missing checkpoints are unknown")
    if mark_transitions:
        render_transitions(result.runs)
    console.info(f"wrote {result.path}")
    for run in result.runs:  # which whole-model estimates the figure says not to read, and why
        unhealthy = run.unhealthy
        if not unhealthy:
            continue
        listed = ", ".join(health_label(record, record.health[1]) for record in unhealthy[:5])
        listed += f", and {len(unhealthy) - 5} more" if len(unhealthy) > 5 else ""
        marks = "hollow markers" + ("; × where there is no estimate" if any(record.is_failed for record in unhealthy) else "")
        prefix = f"{run.label}: " if len(result.runs) > 1 else ""
        console.info(
            f"{prefix}{len(unhealthy)} of {len(run.whole)} checkpoints are unhealthy ({marks}): {listed}; see health_reasons in summary.csv"
        )


def render_report(result, calibration: Path | None) -> None:
    """`report`: each run in one line, the calibrations shown, and the page written."""
    for run in result.runs:
        if run.missing is None:
            missing = "missing checkpoints unknown (checkpoints folder not reachable)"
        else:
            missing = f"{len(run.missing)} checkpoint(s) not estimated yet" if run.missing else "none missing"
        console.info(
            f"{run.label}: {len(run.whole)} checkpoint(s) with settings {run.settings_hash}, "
            f"{len(run.unhealthy)} unhealthy or failed, {missing}"
        )
    absent = f"none readable in {calibration}" if calibration else "none found beside the results (name a folder with --calibration)"
    shown = [f"{folder} (sweep)" for folder in result.sweeps] + [f"{folder} (auto)" for folder in result.autos]
    console.info(f"calibrations: {', '.join(shown) or absent}")
    console.info(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB); open it in a browser")


def family_table(families, auto: bool = False) -> Table:
    """The selftest's errors per family: cases, how many within 15% (healthy estimates only: the
    others are counted beside it), the median, 90th percentile and worst of the absolute relative
    errors (the worst shown with its sign), and what they cost."""
    settings = "calibrated" if auto else "stored"
    table = Table(title=f"errors per family ({settings} settings; |relative error|)", title_justify="left")
    for column in ("family", "cases", "within 15%", "median", "90th pct", "worst", "time"):
        table.add_column(column, justify="left" if column == "family" else "right")
    for summary in families:
        notes = [f"{count} {what}" for count, what in ((summary.no_estimate, "no estimate"), (summary.unhealthy, "unhealthy")) if count]
        missing = f" ({', '.join(notes)})" if notes else ""
        table.add_row(
            escape(summary.family), str(summary.count), f"{summary.within_tolerance}{missing}", number(summary.median, ".1%"),
            number(summary.p90, ".1%"), number(summary.worst_signed, "+.1%"), f"{summary.seconds:.0f} s",
        )  # fmt: skip
    return table


def render_selftest(rows, quick: bool, auto=None, against: str | None = None, json_output: bool = False, families: Sequence = ()) -> None:
    """The selftest table: true vs estimated LLC, each estimate "mean ± standard error (relative error)", and the verdict per case;
    under it, ``families``, the errors per family (``llcv.selftest.family_summary`` of the rows).

    With ``auto`` (the ``llcv.selftest.AutoCheck`` the cases were calibrated with), the estimate
    with calibrated settings sits beside the stored settings' one, and the verdict is the
    calibrated estimate's; a calibration that found its pick settings-dependent is marked. With ``against``, the reference
    implementation's estimate at the stored settings and its time sit beside llcv's.
    --json prints ``{"cases": [one object per row], "families": [one object per family]}``.
    """
    if json_output:
        emit_json({"cases": [dataclasses.asdict(row) for row in rows], "families": [dataclasses.asdict(f) for f in families]})
        return
    out = console.stdout
    out.print(_selftest_table(rows, quick, auto, against))
    if families:
        out.print(family_table(families, auto))
    for line in [*_selftest_totals(rows, auto, against), *_localization_lines(rows, auto)]:
        out.print(line, highlight=False, markup=False)
    failed = sum(not row.passed for row in rows)
    out.print(f"{len(rows) - failed} passed, {failed} failed", highlight=False, markup=False)


def _selftest_estimate(mean, standard_error, relative_error) -> str:
    """One estimate as a selftest cell: "mean ± standard error (relative error)"."""
    if mean is None:
        return "no healthy chain"
    return f"{mean:.3f} ± {standard_error or 0:.3f} ({'—' if relative_error is None else format(relative_error, '+.1%')})"


def _selftest_table(rows, quick: bool, auto, against: str | None) -> Table:
    """One row per case: the truth, each estimate, the time and the verdict."""
    goal = "truth within 3 standard errors" if quick else "within 15% of the truth"
    judged = f"; verdict on the settings calibrated with {auto.sampler}" if auto else ""
    table = Table(title=f"llcv selftest ({'quick' if quick else 'full size'}; goal: {goal}{judged})", title_justify="left")
    table.add_column("case", no_wrap=True, min_width=max((len(row.name) for row in rows), default=4))
    columns = ["true LLC", "stored settings"]
    if auto:
        columns += ["calibrated (epsilon, gamma)", "calibrated"]
    columns.append("time")
    if against:
        columns += [f"{escape(against)}, stored settings", f"{escape(against)} time"]
    for column in (*columns, "verdict"):
        table.add_column(column, justify="left" if column == "verdict" else "right")
    for row in rows:
        cells = [escape(row.name), f"{row.true_llc:.3f}", _selftest_estimate(row.llc_mean, row.standard_error, row.relative_error)]
        if auto:
            found = row.auto
            chosen = "none found" if found.epsilon is None else f"{found.epsilon:.3g}, {found.gamma:.3g}"
            if found.settings_dependent:
                chosen += f" (depends on {', '.join(found.settings_dependent)})"
            if found.unresolved:
                chosen += f" (unresolved: {', '.join(found.unresolved)})"
            if found.not_measured:
                chosen += f" (not measured: {', '.join(found.not_measured)})"
            estimate = _selftest_estimate(found.llc_mean, found.standard_error, found.relative_error)
            cells += [chosen, estimate + (", unhealthy" if found.unhealthy else "")]
        cells.append(f"{row.seconds + (row.auto.seconds if row.auto else 0.0):.1f} s")
        if against:
            reference = row.reference
            cells += [_selftest_estimate(reference.llc_mean, reference.standard_error, reference.relative_error), f"{reference.seconds:.1f} s"]
        table.add_row(*cells, "[green]pass[/]" if row.passed else "[red]FAIL[/]")
    return table


def _selftest_totals(rows, auto, against: str | None) -> list[str]:
    """The errors and time of each way of estimating, over every case (the reference's, the calibrated one's)."""

    def summary(errors: list[float]) -> str:
        return f"mean absolute error {sum(errors) / len(errors):.1%}, worst {max(errors):.1%}"

    lines = []
    stored = [abs(row.relative_error) for row in rows if row.relative_error is not None]
    if against and stored:
        ours, theirs = sum(row.seconds for row in rows), sum(row.reference.seconds for row in rows)
        their_errors = [abs(row.reference.relative_error) for row in rows]
        lines.append(f"stored settings, llcv: {summary(stored)}, {ours:.1f} s")
        lines.append(f"stored settings, {against}: {summary(their_errors)}, {theirs:.1f} s")
    errors = [abs(row.auto.relative_error) for row in rows if row.auto.relative_error is not None] if auto else []
    if errors:
        seconds, steps = sum(row.auto.seconds for row in rows), sum(row.auto.chain_steps for row in rows)
        lines.append(
            f"calibrated ({auto.sampler}, budget {auto.budget.chain_steps:,} chain-steps a case): {summary(errors)}; "
            f"calibrations and estimates {steps:,} chain-steps, {seconds:.0f} s"
        )
        unhealthy = [row.name for row in rows if row.auto.unhealthy]
        if unhealthy:
            lines.append(f"calibrated estimates that are unhealthy (their errors are not the estimator's to quote): {', '.join(unhealthy)}")
    return lines


def _localization_lines(rows, auto) -> list[str]:
    """Where a case knows what an exact sampler reads at the calibrated gamma: how much of the
    calibrated estimate's error is the sampler's and how much the localization's."""
    lines = []
    for row in rows if auto else ():
        found = row.auto
        if found.localized_llc is not None and found.llc_mean is not None:
            split = (
                f"the estimate is {found.llc_mean / found.localized_llc - 1:+.1%} from that, the rest of its error is the localization's"
                if found.healthy is not False else "the estimate is unhealthy, so its error cannot be split"
            )
            lines.append(
                f"{row.name}: an exact sampler reads {found.localized_llc:.4g} at the calibrated gamma {found.gamma:.3g} "
                f"({found.localized_llc / row.true_llc - 1:+.1%} from the truth); {split}"
            )  # fmt: skip
    return lines


def render_demo(result) -> None:
    """Where the demo's outputs are, and the paragraph that reads its figure."""
    lines = [
        f"checkpoints        {result.checkpoints_dir}",
        f"calibration        {result.calibration_dir}  (calibration.json, trials.csv, figures, recommended.json)",
        f"LLC estimates      {result.estimates_dir}  (one JSON per checkpoint, summary.csv)",
        f"figure             {result.figure}",
        f"report             {result.report}  (one page: the run, every estimate, calibration, traces; open it in a browser)",
    ]
    console.stdout.print(Panel(escape("\n".join(lines)), title="llcv demo: outputs", title_align="left"), highlight=False)
    console.stdout.print(Panel(escape(result.reading), title="Reading the figure", title_align="left"), highlight=False)
