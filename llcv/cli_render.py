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
from llcv.health import short_reason
from llcv.models import model_version
from llcv.records import ran_in
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
    table.add_row("nbeta", number(result.nbeta, ".4g"))
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
        verdict = "★ recommended" if index == recommended else "ok" if row["qualifies"] else escape(short_reason(row["reason"]))
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
        listed = ", ".join(health_label(record, reasons) for record, reasons in unhealthy[:5])
        listed += f", and {len(unhealthy) - 5} more" if len(unhealthy) > 5 else ""
        marks = "hollow markers" + ("; × where there is no estimate" if any(record.is_failed for record, _ in unhealthy) else "")
        prefix = f"{run.label}: " if len(result.runs) > 1 else ""
        console.info(
            f"{prefix}{len(unhealthy)} of {len(run.whole)} checkpoints are unhealthy ({marks}): {listed}; see health_reasons in summary.csv"
        )


def render_report(result, calibration: Path | None) -> None:
    """`report`: each run in one line, the calibration sweeps shown, and the page written."""
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
    console.info(f"calibration sweeps: {', '.join(str(folder) for folder in result.sweeps) or absent}")
    console.info(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB); open it in a browser")


def render_selftest(rows, quick: bool, auto: bool = False, against: str | None = None, json_output: bool = False) -> None:
    """The selftest table: true vs estimated LLC, each estimate "mean ± standard error (relative error)", and the verdict per case.

    With ``auto``, the estimate with calibrated settings sits beside the stored settings' one,
    and the verdict is the calibrated estimate's. With ``against``, the reference
    implementation's estimate at the stored settings and its time sit beside llcv's.
    """
    if json_output:
        emit_json([dataclasses.asdict(row) for row in rows])
        return

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
        columns += [f"{escape(against)}, stored settings", f"{escape(against)} time"]
    for column in (*columns, "verdict"):
        table.add_column(column, justify="left" if column == "verdict" else "right")
    for row in rows:
        cells = [escape(row.name), f"{row.true_llc:.3f}", estimate(row.llc_mean, row.standard_error, row.relative_error)]
        if auto:
            found = row.auto
            chosen = "none qualified" if found.epsilon is None else f"{found.epsilon:.3g}, {found.gamma:.3g}"
            cells += [chosen, estimate(found.llc_mean, found.standard_error, found.relative_error)]
        cells.append(f"{row.seconds + (row.auto.seconds if row.auto else 0.0):.1f} s")
        if against:
            reference = row.reference
            cells += [estimate(reference.llc_mean, reference.standard_error, reference.relative_error), f"{reference.seconds:.1f} s"]
        table.add_row(*cells, "[green]pass[/]" if row.passed else "[red]FAIL[/]")
    out = console.stdout
    out.print(table)
    stored = [abs(row.relative_error) for row in rows if row.relative_error is not None]
    if against and stored:
        ours, theirs = sum(row.seconds for row in rows), sum(row.reference.seconds for row in rows)
        their_errors = [abs(row.reference.relative_error) for row in rows]
        out.print(f"stored settings, llcv: {summary(stored)}, {ours:.1f} s", highlight=False, markup=False)
        out.print(f"stored settings, {against}: {summary(their_errors)}, {theirs:.1f} s", highlight=False, markup=False)
    if auto:
        errors = [abs(row.auto.relative_error) for row in rows if row.auto.relative_error is not None]
        if errors:
            out.print(f"calibrated: {summary(errors)}", highlight=False, markup=False)
    failed = sum(not row.passed for row in rows)
    out.print(f"{len(rows) - failed} passed, {failed} failed", highlight=False, markup=False)


def render_demo(result) -> None:
    """Where the demo's outputs are, and the paragraph that reads its figure."""
    lines = [
        f"checkpoints        {result.checkpoints_dir}",
        f"calibration        {result.calibration_dir}  (sweep.json, sweep.csv, figures, recommended.json)",
        f"LLC estimates      {result.estimates_dir}  (one JSON per checkpoint, summary.csv)",
        f"figure             {result.figure}",
        f"report             {result.report}  (one page: the run, every estimate, calibration, traces; open it in a browser)",
    ]
    console.stdout.print(Panel(escape("\n".join(lines)), title="llcv demo: outputs", title_align="left"), highlight=False)
    console.stdout.print(Panel(escape(result.reading), title="Reading the figure", title_align="left"), highlight=False)
