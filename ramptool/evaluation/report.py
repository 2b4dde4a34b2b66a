"""Reports of evaluations: rich tables, JSON, a markdown table ready to paste, and PNG charts.

Every file is written atomically, so an interrupted run never leaves a half-written report next to good ones.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import platform
from pathlib import Path

import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from ramptool.checkpoints.format import resolve
from ramptool.evaluation.autoattack import installed_version
from ramptool.evaluation.suite import UPPER_BOUND
from ramptool.evaluation.unseen import ADVERSARIES
from ramptool.evaluation.unseen import UPPER_BOUND as UNSEEN_UPPER_BOUND
from ramptool.loggers.base import scalars
from ramptool.runtime.files import atomic_write
from ramptool.version import __version__

NORM_ORDER = ("linf", "l2", "l1")
ATTACK_LABELS = {"apgd": "APGD-CE + APGD-T, AutoAttack's settings on ramptool's APGD",
                 "autoattack": "AutoAttack (pyautoattack)", "apgd-ce": "APGD-CE, one run from x"}


def write_json(path: Path, data) -> Path:
    text = json.dumps(data, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)


def write_text(path: Path, text: str) -> Path:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return Path(path)


# how every figure names the norms (and the union), in axes, legends and titles alike
DISPLAY_NAMES = {"linf": "l∞", "l2": "l2", "l1": "l1", "union": "union", "clean": "clean"}
FIGURE_FORMATS = ("png", "pdf", "svg")  # the PNG to look at, the vector files for a paper


def display(column: str) -> str:
    return DISPLAY_NAMES.get(column, column)


def save_figure(figure, path: Path) -> Path:
    """``path`` (a PNG) and, beside it, the same figure as PDF and SVG; the PNG's path."""
    path = Path(path)
    for kind in FIGURE_FORMATS:
        atomic_write(path.with_suffix(f".{kind}"),
                     lambda tmp, kind=kind: figure.savefig(tmp, format=kind, dpi=200, bbox_inches="tight"))
    return path


def eps_text(value: float) -> str:
    """'8/255' for an eps that is k/255 and has no short decimal form, else the number ('0.1', '12')."""
    short = f"{value:g}"
    k = round(value * 255)
    if float(short) != value and 0 < k and abs(value * 255 - k) < 1e-6:
        return f"{k}/255"
    return short


def eps_line(eps: dict[str, float], given: dict[str, str] | None = None) -> str:
    given = given or {}
    return ", ".join(f"{norm} {given.get(norm) or eps_text(value)}" for norm, value in eps.items())


def attack_label(report: dict) -> str:
    """'APGD-CE + APGD-T, ... (fast, 100 steps)'; an upper bound says so first."""
    label = ATTACK_LABELS.get(report["attack"], report["attack"])
    if report["attack"] == "apgd" and report.get("version") == "standard":
        label = label.replace("APGD-T", "APGD-T + FAB-T + Square")
    detail = report.get("version", "fast") if report["attack"] == "autoattack" else f"{report['steps']} steps"
    prefix = f"{UPPER_BOUND}: " if report.get("grade") == UPPER_BOUND else ""
    return f"{prefix}{label} ({detail})"


def provenance(checkpoint=None, device=None) -> dict:
    """Where a number comes from: versions, date, machine, and the checkpoint's sha256."""
    record = {"ramptool": __version__, "torch": torch.__version__, "autoattack": installed_version(),
              "python": platform.python_version(), "platform": platform.platform(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if device is not None:
        record["device"] = str(device) if str(device) == "cpu" or not torch.cuda.is_available() else \
            f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    if checkpoint is not None:
        checkpoint = resolve(checkpoint)  # a run folder means its model file
        digest = hashlib.sha256()
        with open(checkpoint, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        record["checkpoint"], record["checkpoint_sha256"] = str(checkpoint), digest.hexdigest()
    return record


# ------------------------------------------------------------------------------------------ union reports

def accuracy_columns(reports: dict[str, dict]) -> list[str]:
    """clean, the norms (linf, l2, l1 first, then any plugin norm), union."""
    norms = {norm for report in reports.values() for norm in report["norms"]}
    ordered = [norm for norm in NORM_ORDER if norm in norms] + sorted(norms - set(NORM_ORDER))
    return ["clean", *ordered, "union"]


def is_bound(report: dict, column: str) -> bool:
    return (report.get("grade") == UPPER_BOUND and column != "clean") or column in report.get("upper_bounds", [])


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy on n points: unlike accuracy ± its standard error it is
    not [0, 0] at 0/20, and it stays inside [0, 1]."""
    n = max(n, 1)
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def logged_numbers(reports: dict[str, dict]) -> dict[str, dict[str, float]]:
    """model -> column -> number of an evaluation's reports, for the loggers: each one's accuracies (flattened:
    ``corruption/severity``) and its top-level clean and mean accuracy; a number that is an upper bound says so
    in its name, ``union (upper bound)``."""
    table = {}
    for model, report in reports.items():
        accuracy = report.get("accuracy")
        row = scalars(accuracy) if isinstance(accuracy, dict) else {}
        row.update({key: float(report[key]) for key in ("clean", "mean")
                    if isinstance(report.get(key), int | float) and key not in row})
        bounded = report.get("bound") == UNSEEN_UPPER_BOUND
        table[model] = {f"{column} (upper bound)" if is_bound(report, column.split("/")[0]) or
                        (bounded and column != "clean") else column: value for column, value in row.items()}
    return table


def percent_cell(report: dict, column: str, with_error: bool = False) -> str:
    """'48.2' ('48.2 [44.0, 52.5]' with its 95% Wilson interval), '≤48.2' for an upper bound, '-' when the model
    was not evaluated on that column."""
    if column not in report["accuracy"]:
        return "-"
    value = report["accuracy"][column]
    low, high = wilson_interval(value, report["n"])
    interval = f" [{100 * low:.1f}, {100 * high:.1f}]" if with_error else ""
    return f"{'≤' if is_bound(report, column) else ''}{100 * value:.1f}{interval}"


def settings_line(report: dict) -> str:
    cascade = ", union-only cascade (≤: upper bound)" if report.get("union_only") else ""
    return (f"{attack_label(report)}, {report['n']} points, eps {eps_line(report['eps'], report.get('eps_given'))}"
            f"{cascade}")


def table_title(reports: dict[str, dict], what: str = "robust accuracy (%)") -> str:
    bound = any(report.get("grade") == UPPER_BOUND for report in reports.values())
    return f"{what}, {UPPER_BOUND}" if bound else what


def union_table(reports: dict[str, dict], title: str | None = None, columns=None) -> Table:
    columns = columns or accuracy_columns(reports)
    table = Table(title=title or table_title(reports))
    table.add_column("model")
    for column in columns:
        table.add_column(column, justify="right", style="bold" if column == "union" else None)
    table.add_column("seconds", justify="right")
    for name, report in reports.items():
        table.add_row(name, *[percent_cell(report, column) for column in columns],
                      f"{sum(report['seconds'].values()):.0f}")
    return table


def print_union_table(reports: dict[str, dict], console: Console | None = None) -> None:
    console = console or Console()
    console.print(union_table(reports))
    for name, report in reports.items():
        console.print(f"{name}: {settings_line(report)}", highlight=False)


def markdown_table(reports: dict[str, dict], columns=None, settings=settings_line, title: str | None = None) -> str:
    """The table ready to paste, each accuracy with its 95% Wilson interval, under ``title`` if given."""
    columns = columns or accuracy_columns(reports)
    lines = [f"{title}, [95% Wilson interval]", ""] if title else []
    lines += ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, report in reports.items():
        lines.append(f"| {name} | " + " | ".join(percent_cell(report, column, with_error=True)
                                                 for column in columns) + " |")
    lines.append("")
    lines.extend(f"- {name}: {settings(report)}" for name, report in reports.items())
    return "\n".join(lines) + "\n"


def union_plot_title(reports: dict[str, dict]) -> str:
    """The models, the attack, eps and n: a chart that travels alone still says what it shows."""
    first = next(iter(reports.values()))
    sizes = sorted({report["n"] for report in reports.values()})
    return (f"{', '.join(reports)}\n{attack_label(first)}\neps {eps_line(first['eps'], first.get('eps_given'))}, "
            f"n={'/'.join(map(str, sizes))}")


def plot_union_bars(reports: dict[str, dict], path: Path, columns=None, title: str | None = None) -> Path:
    """Bars per model and column with their 95% Wilson intervals; the numbers are in report.md."""
    columns = columns or accuracy_columns(reports)
    figure = Figure(figsize=(min(7.0, 1.2 + 0.75 * len(columns) * max(1, len(reports)) ** 0.5), 3.0))
    axes = figure.subplots()
    width = 0.8 / len(reports)
    for offset, (name, report) in enumerate(reports.items()):
        positions = [i + (offset - (len(reports) - 1) / 2) * width for i in range(len(columns))]
        values = [report["accuracy"].get(column, 0.0) for column in columns]
        intervals = [wilson_interval(value, report["n"]) for value in values]
        errors = [[100 * (value - low) for value, (low, _) in zip(values, intervals)],
                  [100 * (high - value) for value, (_, high) in zip(values, intervals)]]
        axes.bar(positions, [100 * value for value in values], width, yerr=errors, capsize=2, label=name)
    axes.set_xticks(range(len(columns)), [display(column) for column in columns], fontsize=8)
    axes.set_ylabel("accuracy (%), bars: 95% Wilson interval", fontsize=8)
    axes.set_ylim(0, 105)
    axes.tick_params(axis="y", labelsize=8)
    axes.set_title(title or union_plot_title(reports), fontsize=7)
    if len(reports) > 1:
        axes.legend(fontsize=7)
    return save_figure(figure, path)


def write_union_reports(reports: dict[str, dict], out_dir, provenance_record: dict | None = None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    document = {"provenance": provenance_record or provenance(), "models": reports}
    return {"json": write_json(out_dir / "report.json", document),
            "markdown": write_text(out_dir / "report.md", markdown_table(reports, title=table_title(reports))),
            "png": plot_union_bars(reports, out_dir / "report.png")}


# ------------------------------------------------------------------------------------------ eps curve

def curve_title(curves: dict[str, dict]) -> str:
    first = next(iter(curves.values()))
    reference = first.get("reference_eps") or {}
    marked = f", dashed: eps {eps_line(reference)}" if reference else ""
    return f"{', '.join(curves)}: {attack_label(first)}, n={first['n']}{marked}"


def plot_curves(curves: dict[str, dict], path: Path) -> Path:
    """One panel per norm, one line per model (each curve starts at its clean accuracy, eps 0)."""
    first = next(iter(curves.values()))
    norms = list(first["eps_values"])
    figure = Figure(figsize=(4 * len(norms), 3.8), layout="constrained")
    axes = figure.subplots(1, len(norms), squeeze=False)
    for axis, norm in zip(axes[0], norms):
        for name, curve in curves.items():
            xs = [0.0, *curve["eps_values"][norm]]
            ys = [100 * curve["clean"], *[100 * value for value in curve["accuracy"][norm]]]
            order = sorted(range(len(xs)), key=lambda i: xs[i])
            axis.plot([xs[i] for i in order], [ys[i] for i in order], marker="o",
                      label=name if len(curves) > 1 else None)
        reference = first.get("reference_eps", {}).get(norm)
        if reference is not None:
            axis.axvline(reference, linestyle="--", color="gray", label=f"eps {eps_text(reference)}")
        if axis.get_legend_handles_labels()[0]:  # one model without a reference eps: nothing to label
            axis.legend(fontsize=8)
        axis.set_xlabel(f"{display(norm)} eps")
        axis.set_ylabel("robust accuracy (%)")
        axis.set_ylim(0, 105)
        axis.set_title(display(norm))
    figure.suptitle(curve_title(curves), fontsize=9)
    return save_figure(figure, path)


def curve_table(curves: dict[str, dict]) -> Table:
    first = next(iter(curves.values()))
    table = Table(title=table_title(curves, "robust accuracy (%) vs eps"))
    table.add_column("norm")
    table.add_column("eps", justify="right")
    for name in curves:
        table.add_column(name if len(curves) > 1 else "accuracy", justify="right")
    for norm, values in first["eps_values"].items():
        for index, value in enumerate(values):
            table.add_row(norm, eps_text(value), *[f"{100 * curve['accuracy'][norm][index]:.1f}"
                                                   for curve in curves.values()])
    return table


def write_curve_report(curves: dict[str, dict], out_dir) -> dict[str, Path]:
    """One model: curve.json and curve.png in ``out_dir``. Several: each one's curve.json in its own folder
    and all of them in one curve.png."""
    out_dir = Path(out_dir)
    if len(curves) == 1:
        written = {"json": write_json(out_dir / "curve.json", next(iter(curves.values())))}
    else:
        written = {f"json {name}": write_json(out_dir / name / "curve.json", curve) for name, curve in curves.items()}
    return {**written, "png": plot_curves(curves, out_dir / "curve.png")}


# ------------------------------------------------------------------------------------------ corruptions

def corruption_table(report: dict, title: str | None = None) -> Table:
    severities = report["severities"]
    clean = f" (clean {100 * report['clean']:.1f})" if report["clean"] is not None else ""
    prefix = f"{title}: " if title else ""
    table = Table(title=f"{prefix}accuracy (%) under common corruptions, {report['n']} points{clean}")
    table.add_column("corruption")
    for severity in severities:
        table.add_column(f"s{severity}", justify="right")
    table.add_column("mean", justify="right", style="bold")
    for corruption, row in report["accuracy"].items():
        table.add_row(corruption, *[f"{100 * row[str(s)]:.1f}" for s in severities],
                      f"{100 * report['corruption_mean'][corruption]:.1f}")
    table.add_row("mean", *[f"{100 * report['severity_mean'][str(s)]:.1f}" for s in severities],
                  f"{100 * report['mean']:.1f}", style="bold")
    return table


def plot_corruption_heatmap(report: dict, path: Path, name: str | None = None) -> Path:
    corruptions, severities = list(report["accuracy"]), report["severities"]
    grid = [[100 * report["accuracy"][c][str(s)] for s in severities] for c in corruptions]
    figure = Figure(figsize=(1.2 + 0.9 * len(severities), 0.9 + 0.38 * len(corruptions)))
    axes = figure.subplots()
    image = axes.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    for row, values in enumerate(grid):
        for column, value in enumerate(values):
            axes.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=7,
                      color="white" if value < 60 else "black")
    axes.set_xticks(range(len(severities)), [str(s) for s in severities])
    axes.set_yticks(range(len(corruptions)), corruptions)
    axes.set_xlabel("severity")
    clean = f", clean {100 * report['clean']:.1f}" if report["clean"] is not None else ""
    model = f"{name}: " if name else ""
    axes.set_title(f"{model}accuracy (%) under common corruptions, n={report['n']}\nmean "
                   f"{100 * report['mean']:.1f}{clean}", fontsize=8)
    figure.colorbar(image, ax=axes)
    return save_figure(figure, path)


def write_corruption_report(report: dict, out_dir, name: str | None = None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {"json": write_json(out_dir / "corruptions.json", report),
            "png": plot_corruption_heatmap(report, out_dir / "corruptions.png", name)}


def chance_note(name: str, report: dict) -> str | None:
    """One line naming the (corruption, severity) cells at or below chance for this model, if any."""
    cells = report.get("at_chance") or []
    if not cells:
        return None
    return (f"note: {name}: at or below chance ({100 * report['chance']:.1f}%, the most frequent class) under "
            f"{', '.join(cells)}: these corruptions remove the signal, so they measure nothing about robustness")


def corruption_comparison_table(reports: dict[str, dict]) -> Table:
    """Models side by side: each corruption's accuracy averaged over severities."""
    first = next(iter(reports.values()))
    table = Table(title=f"accuracy (%) under common corruptions, mean over severities "
                        f"{','.join(map(str, first['severities']))}, {first['n']} points")
    table.add_column("corruption")
    for name in reports:
        table.add_column(name, justify="right")
    for corruption in first["corruption_mean"]:
        table.add_row(corruption, *[f"{100 * r['corruption_mean'][corruption]:.1f}" for r in reports.values()])
    if all(r["clean"] is not None for r in reports.values()):
        table.add_row("clean", *[f"{100 * r['clean']:.1f}" for r in reports.values()])
    table.add_row("mean", *[f"{100 * r['mean']:.1f}" for r in reports.values()], style="bold")
    return table


def write_corruption_comparison(reports: dict[str, dict], out_dir) -> dict[str, Path]:
    out_dir = Path(out_dir)
    first = next(iter(reports.values()))
    lines = ["| corruption | " + " | ".join(reports) + " |", "|---|" + "---:|" * len(reports)]
    for corruption in first["corruption_mean"]:
        lines.append(f"| {corruption} | "
                     + " | ".join(f"{100 * r['corruption_mean'][corruption]:.1f}" for r in reports.values()) + " |")
    lines.append("| **mean** | " + " | ".join(f"**{100 * r['mean']:.1f}**" for r in reports.values()) + " |")
    summary = {name: {"checkpoint": r["checkpoint"], "mean": r["mean"], "clean": r["clean"],
                      "corruption_mean": r["corruption_mean"], "report": f"{name}/corruptions.json"}
               for name, r in reports.items()}
    return {"json": write_json(out_dir / "corruptions-comparison.json", summary),
            "md": write_text(out_dir / "corruptions-comparison.md", "\n".join(lines) + "\n")}


# ------------------------------------------------------------------------------------------ unseen adversaries

def unseen_columns(reports: dict[str, dict]) -> list[str]:
    """clean, the adversaries (in the paper's order), their mean, their union, and the corruption mean if any."""

    present = {name for report in reports.values() for name in report["adversaries"]}
    columns = ["clean", *[name for name in ADVERSARIES if name in present], "mean", "union"]
    if any("corruptions" in report["accuracy"] for report in reports.values()):
        columns.append("corruptions")
    return columns


def unseen_settings_line(report: dict) -> str:
    budgets = ", ".join(f"{name}={value:g}" for name, value in report["budgets"].items())
    attacks = f"{report['steps']} steps" + (f", Sparse-RS {report['queries']} queries" if "l0" in report["budgets"]
                                           else "")
    corruptions = report.get("corruptions")
    extra = (f"; corruptions: mean of {len(corruptions['corruptions'])} corruptions x {len(corruptions['severities'])}"
             f" severities on {corruptions['n']} points ({corruptions['source']})" if corruptions else "")
    return f"{report['n']} points, budgets {budgets}, {attacks}, seed {report['seed']}; {report['bound']}{extra}"


def print_unseen_table(reports: dict[str, dict], console: Console | None = None) -> None:
    console = console or Console()
    console.print(union_table(reports, title=f"accuracy (%) under unseen adversaries: {UNSEEN_UPPER_BOUND}",
                              columns=unseen_columns(reports)))
    for name, report in reports.items():
        console.print(f"{name}: {unseen_settings_line(report)}", highlight=False)


def write_unseen_reports(reports: dict[str, dict], out_dir) -> dict[str, Path]:
    out_dir = Path(out_dir)
    columns = unseen_columns(reports)
    return {"json": write_json(out_dir / "report.json", {"models": reports}),
            "markdown": write_text(out_dir / "report.md", markdown_table(reports, columns, unseen_settings_line)),
            "png": plot_union_bars(reports, out_dir / "report.png", columns,
                                   title="accuracy under unseen adversaries (upper bounds)")}
