"""docs/RESULTS.md and its figures, from what ``runner`` measured: tables (mean ± std over seeds), paired
comparisons of RAMP with every baseline, the Fig. 1 analogue, the from-scratch runs, and a verdict per claim of
the paper, each computed from the numbers by the criterion it states."""

from __future__ import annotations

import datetime
import os
import platform
from collections import defaultdict
from pathlib import Path

import torch
from matplotlib.figure import Figure

from ramptool.evaluation.report import attack_label, save_figure, write_text
from reproduce.plan import (
    BASELINES,
    FIGURE_ONE,
    FINETUNE_METHODS,
    RAMP_DEFAULT,
    SCRATCH_METHODS,
    STRONG_ATTACK_METHODS,
    Budget,
    steps_of,
)
from reproduce.runner import Measured
from reproduce.stats import PairedComparison, mean_std, paired_comparison

COLUMNS = ("clean", "linf", "l2", "l1", "union")
HEADERS = {"clean": "clean", "linf": "l∞", "l2": "l2", "l1": "l1", "union": "union"}
START_LABEL = "l∞-AT (start)"
LABELS = {**FINETUNE_METHODS, **STRONG_ATTACK_METHODS}  # method key -> (label, fields)


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def pct_pm(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if len(values) > 1 else pct(mean)


def signed(value: float) -> str:
    return f"{100 * value:+.1f}"


class Results:
    """The measured models grouped by method: ``finetune[key]`` and ``scratch[key]`` list one per seed."""

    def __init__(self, measured: list[Measured]):
        self.start = next(m for m in measured if m.job is None)
        self.finetune: dict[str, list[Measured]] = defaultdict(list)
        self.scratch: dict[str, list[Measured]] = defaultdict(list)
        for model in measured:
            if model.job is not None:
                group = self.finetune if model.job.group == "finetune" else self.scratch
                group[model.job.key].append(model)
        for group in (self.finetune, self.scratch):
            for models in group.values():
                models.sort(key=lambda m: m.job.seed)

    def values(self, models: list[Measured], column: str) -> list[float]:
        return [m.accuracy[column] for m in models]

    def mean(self, key: str, column: str) -> float:
        return mean_std(self.values(self.finetune[key], column))[0]

    def compare(self, a: list[Measured], b: list[Measured], column: str = "union") -> PairedComparison:
        return paired_comparison([m.flags[column] for m in a], [m.flags[column] for m in b])


# ------------------------------------------------------------------------------------------ tables

def accuracy_row(label: str, models: list[Measured], results: Results, speed_reference: float | None) -> str:
    cells = [pct_pm(results.values(models, column)) for column in COLUMNS]
    cells.append(pct_pm([m.corruption_mean for m in models]))
    speeds = [m.seconds_per_epoch for m in models if m.seconds_per_epoch is not None]
    if speeds:
        seconds = mean_std(speeds)[0]
        ratio = f" ({seconds / speed_reference:.2f}x)" if speed_reference else ""
        cells.append(f"{seconds:.{0 if seconds >= 10 else 1}f}{ratio}")
    else:
        cells.append("-")
    return f"| {label} | " + " | ".join(cells) + " |"


def accuracy_table(results: Results, group: dict[str, list[Measured]], labels: dict, reference: str | None,
                   with_start: bool) -> list[str]:
    header = "| model | " + " | ".join(HEADERS[c] for c in COLUMNS) + " | corruptions | s/epoch |"
    lines = [header, "|---|" + "---:|" * (len(COLUMNS) + 2)]
    if with_start:
        lines.append(accuracy_row(START_LABEL, [results.start], results, None))
    speed_reference = (mean_std([m.seconds_per_epoch for m in group[reference]])[0]
                       if reference in group else None)
    for key, models in group.items():
        lines.append(accuracy_row(labels[key][0], models, results, speed_reference))
    return lines


def comparison_row(label: str, comparison: PairedComparison) -> str:
    per_seed = ", ".join(signed(d) for d in comparison.per_seed)
    discordant = ", ".join(f"{b}:{c}" for b, c in comparison.discordant)
    p_values = ", ".join(f"{p:.2g}" for p in comparison.p_values)
    return (f"| {label} | {per_seed} | {signed(comparison.mean)} ± {100 * comparison.std:.1f} | "
            f"[{signed(comparison.low)}, {signed(comparison.high)}] | {discordant} | {p_values} |")


def comparison_header(first: str) -> list[str]:
    return [f"| {first} | Δ union per seed | mean ± std | 95% interval | only A : only B | McNemar p |",
            "|---|---|---:|---:|---|---|"]


def verdict(comparison: PairedComparison) -> str:
    if comparison.low > 0:
        return "higher"
    if comparison.high < 0:
        return "lower"
    return "indistinguishable"


# ------------------------------------------------------------------------------------------ figures

def figure_one(results: Results, path: Path) -> Path:
    """The paper's Fig. 1 at this scale: l∞, l2, l1 and union accuracy of the start model and after one epoch of
    l1-only / E-AT / RAMP fine-tuning (mean over seeds, bars: one standard deviation)."""
    groups = [(START_LABEL, [results.start])] + [(LABELS[k][0], results.finetune[k]) for k in FIGURE_ONE
                                                  if k in results.finetune]
    columns = ("linf", "l2", "l1", "union")
    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    width = 0.8 / len(groups)
    for offset, (label, models) in enumerate(groups):
        stats = [mean_std(results.values(models, c)) for c in columns]
        positions = [i + (offset - (len(groups) - 1) / 2) * width for i in range(len(columns))]
        bars = axes.bar(positions, [100 * m for m, _ in stats], width, yerr=[100 * s for _, s in stats],
                        capsize=3, label=label)
        for bar, (mean, _) in zip(bars, stats):
            axes.annotate(pct(mean), (bar.get_x() + bar.get_width() / 2, 0.5), ha="center", va="bottom",
                          fontsize=7, color="white")
    axes.set_xticks(range(len(columns)), [HEADERS[c] for c in columns])
    axes.set_ylabel("robust accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_title("after one epoch of fine-tuning the l∞-AT model (mean ± std over seeds)")
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def union_figure(results: Results, path: Path) -> Path:
    """Union accuracy of every fine-tuning method, one dot per seed."""
    keys = list(results.finetune)
    figure = Figure(figsize=(8, 0.35 * len(keys) + 1.2))
    axes = figure.subplots()
    for row, key in enumerate(keys):
        values = [100 * v for v in results.values(results.finetune[key], "union")]
        axes.plot(values, [row] * len(values), "o", color="C3" if key.startswith("ramp") else "C0", alpha=0.7)
        axes.plot([sum(values) / len(values)], [row], "|", color="black", markersize=14)
    axes.axvline(100 * results.start.accuracy["union"], color="grey", linestyle=":", label=START_LABEL)
    axes.set_yticks(range(len(keys)), [LABELS[k][0] for k in keys])
    axes.invert_yaxis()
    axes.set_xlabel("union accuracy (%) per seed; | mean")
    axes.legend(fontsize=8, loc="lower right")
    return save_figure(figure, path)


def curve_figure(results: Results, path: Path) -> Path:
    """Clean, each norm and union accuracy on the validation points against optimizer steps, one line per method
    (its first seed); step 0 is the start model."""
    curves = {key: models[0].curve for key, models in results.finetune.items() if models and models[0].curve}
    figure = Figure(figsize=(3.1 * len(COLUMNS), 3.2), layout="constrained")
    axes = figure.subplots(1, len(COLUMNS), sharey=True)
    for panel, column in zip(axes, COLUMNS):
        for key, curve in curves.items():
            steps = [0, *sorted(curve)]
            values = [results.start.curve.get(0, results.start.accuracy)[column], *(curve[s][column]
                                                                                  for s in sorted(curve))]
            panel.plot(steps, [100 * v for v in values], "o-", markersize=3, label=LABELS[key][0])
        panel.set_title(HEADERS[column])
        panel.set_xlabel("optimizer steps")
    axes[0].set_ylabel("accuracy on validation points (%)")
    axes[-1].legend(fontsize=7)
    return save_figure(figure, path)


def curve_table(results: Results) -> list[str]:
    rows = ["| model | steps | " + " | ".join(HEADERS[c] for c in COLUMNS) + " |",
            "|---|---:|" + "---:|" * len(COLUMNS)]
    if 0 in results.start.curve:
        rows.append(f"| {START_LABEL} | 0 | " + " | ".join(pct(results.start.curve[0][c]) for c in COLUMNS) + " |")
    for key, models in results.finetune.items():
        for step, accuracy in sorted(models[0].curve.items()) if models else []:
            rows.append(f"| {LABELS[key][0]} | {step} | " + " | ".join(pct(accuracy[c]) for c in COLUMNS) + " |")
    return rows


# ------------------------------------------------------------------------------------------ claims

def claims(results: Results) -> list[str]:
    """The paper's claims at this scale, each with its criterion and the numbers that decide it."""
    lines = []
    start_linf = results.start.accuracy["linf"]
    if "l1" in results.finetune:
        l1_linf = results.mean("l1", "linf")
        kept = l1_linf / start_linf if start_linf else 0.0
        holds = kept <= 0.5
        lines.append(f"- **One epoch of l1-only fine-tuning collapses l∞ robustness** (RAMP, Fig. 1). Criterion: it "
                     f"keeps at most half of the start's l∞ accuracy. l∞ {pct(start_linf)} → {pct(l1_linf)} "
                     f"({100 * kept:.0f}% kept): **{'reproduced' if holds else 'not reproduced'}**.")
    if "l1" in results.finetune and "e-at" in results.finetune:
        eat_linf, l1_linf = results.mean("e-at", "linf"), results.mean("l1", "linf")
        holds = l1_linf < eat_linf < start_linf
        lines.append(f"- **E-AT keeps part of it.** Criterion: E-AT's l∞ lies between l1-only's and the start's. "
                     f"l1-only {pct(l1_linf)}, E-AT {pct(eat_linf)}, start {pct(start_linf)}: "
                     f"**{'reproduced' if holds else 'not reproduced'}**.")
    if RAMP_DEFAULT in results.finetune and "e-at" in results.finetune:
        linf = results.compare(results.finetune[RAMP_DEFAULT], results.finetune["e-at"], "linf")
        outcome = {"higher": "reproduced", "lower": "not reproduced (RAMP keeps less)",
                   "indistinguishable": "not resolved (indistinguishable)"}[verdict(linf)]
        lines.append(f"- **RAMP keeps more l∞ robustness than E-AT.** Criterion: the 95% paired interval of RAMP's "
                     f"minus E-AT's l∞ accuracy lies above 0. {signed(linf.mean)} points, "
                     f"[{signed(linf.low)}, {signed(linf.high)}]: **{outcome}**.")
    baselines = [k for k in BASELINES if k in results.finetune]
    if RAMP_DEFAULT in results.finetune and baselines:
        outcomes = {k: results.compare(results.finetune[RAMP_DEFAULT], results.finetune[k]) for k in baselines}
        better = [k for k, c in outcomes.items() if verdict(c) == "higher"]
        worse = [k for k, c in outcomes.items() if verdict(c) == "lower"]
        tied = [k for k, c in outcomes.items() if verdict(c) == "indistinguishable"]
        names = lambda keys: ", ".join(LABELS[k][0] for k in keys) or "none"  # noqa: E731
        holds = not worse and not tied
        lines.append(f"- **RAMP has the highest union accuracy after fine-tuning.** Criterion: RAMP's (KL, λ 0.5) "
                     f"union is higher than every baseline's, by a 95% paired interval above 0. Higher than: "
                     f"{names(better)}; indistinguishable from: {names(tied)}; lower than: {names(worse)}: "
                     f"**{'reproduced' if holds else 'not reproduced'}**.")
    for key in ("ramp", "ramp-gp"):
        if key in results.scratch and "e-at" in results.scratch:
            comparison = results.compare(results.scratch[key], results.scratch["e-at"])
            outcome = {"higher": "reproduced", "lower": "not reproduced (lower)",
                       "indistinguishable": "not resolved (indistinguishable)"}[verdict(comparison)]
            lines.append(f"- **From scratch, {SCRATCH_METHODS[key][0]} beats E-AT on the union** (paper: 44.6 vs "
                         f"42.4 with GP). {signed(comparison.mean)} points, [{signed(comparison.low)}, "
                         f"{signed(comparison.high)}] (one seed, interval over test points): **{outcome}**.")
    return lines


# ------------------------------------------------------------------------------------------ the page

def span_minutes(log_entries: list[dict]) -> float:
    """Minutes from the first job's start to the last job's end (across invocations, pauses included)."""
    if not log_entries:
        return 0.0
    ends = [datetime.datetime.fromisoformat(e["finished_at"]).timestamp() for e in log_entries]
    starts = [end - e["seconds"] for end, e in zip(ends, log_entries)]
    return (max(ends) - min(starts)) / 60


def machine_line(log_entries: list[dict]) -> str:
    training = [e for e in log_entries if e["kind"] == "train"]
    loads = [v for e in training for v in (e["load_before"], e["load_after"])]
    load = (f"1-minute load average {min(loads):.1f}-{max(loads):.1f} at the start and end of the training runs"
            if loads else "no training run in this invocation's log")
    threads = sorted({e["threads"] for e in log_entries}) or [torch.get_num_threads()]
    processes = sorted({e.get("processes", 1) for e in log_entries}) or [1]
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
            f"{', '.join(map(str, processes))} process(es) (torchrun) with {', '.join(map(str, threads))} thread(s) "
            f"each; {load}")


def costs(log_entries: list[dict]) -> list[str]:
    parts = defaultdict(float)
    for entry in log_entries:
        group = "scratch" if "/scratch/" in entry["name"] else "fine-tuning"
        name = {"train": f"training ({group})", "evaluate": "adversarial evaluation",
                "corruptions": "corruption evaluation"}[entry["kind"]]
        parts[name] += entry["seconds"]
    return [f"| {name} | {seconds / 60:.1f} |" for name, seconds in parts.items()]


def render(measured: list[Measured], budget: Budget, provenance: dict, log_entries: list[dict],
           figures: Path, page: Path, investigation: list[str] | None = None) -> str:
    """The whole RESULTS page (and its figures in ``figures``), as markdown."""
    results = Results(measured)
    figures.mkdir(parents=True, exist_ok=True)
    fig_one = figure_one(results, figures / "fig1-finetune.png")
    union_plot = union_figure(results, figures / "union-by-method.png")
    relative = lambda path: os.path.relpath(path, page.parent)  # noqa: E731
    eps = results.start.evaluation["eps"]
    lines = ["# Reproducing RAMP on Fashion-MNIST", ""]
    if not budget.autoattack_grade:
        lines += [f"> **Smoke run (`--{budget.name}`)**: tiny budgets and a weakened evaluation "
                  f"({budget.evaluation}); the numbers below are upper bounds and mean nothing. They only show that "
                  f"the pipeline runs.", ""]
    lines += [
        f"Generated by `{provenance['command']}` from commit `{provenance['commit']}` on {provenance['date']}; do "
        f"not edit by hand, rerun it (finished runs and evaluations in `{provenance['root']}` are reused).",
        "",
        "## How it was run",
        "",
        f"- Wall time: the run folder's jobs took {sum(e['seconds'] for e in log_entries) / 60:.1f} min, one after "
        f"the other ({span_minutes(log_entries):.1f} min from the first one's start to the last one's end, pauses "
        f"between invocations included; this invocation: {provenance['wall_minutes']:.1f} min, finished jobs "
        f"reused).",
        f"- Machine: {machine_line(log_entries)}.",
        f"- Threat model (the dataset defaults): l∞ {eps['linf']:g}, l2 {eps['l2']:g}, l1 {eps['l1']:g}.",
        "- Start: the shipped l∞-AT small CNN (`recipes/checkpoints/fmnist-linf-at.safetensors`).",
        f"- Fine-tuning, every method at the same budget: {budget.finetune_epochs} epoch(s) on the first "
        f"{budget.finetune_subset:,} training points ({steps_of(budget):,} optimizer steps), Adam lr 5e-4 "
        f"(piecewise-ft), batch 128, APGD-10 training attacks, pair (l∞, l1) for E-AT and RAMP; "
        f"seeds {', '.join(map(str, budget.seeds))} (the batch order and the random choices; the same start).",
        *([f"- From scratch: {budget.scratch_epochs} epoch(s) on the first {budget.scratch_subset:,} training "
           f"points, Adam lr 1e-3 (cosine), seed {budget.seeds[0]}."] if budget.scratch_methods else []),
        f"- Evaluation: the first {results.start.evaluation['n']} test points, {attack_label(results.start.evaluation)}"
        f", clean / each norm / union per point; common corruptions: mean accuracy over "
        f"{len(budget.corruptions) if budget.corruptions else 15} corruptions x 5 severities on the first "
        f"{budget.corruption_n} test points. s/epoch: the training run's own timing (ratio to E-AT's).",
        "",
        "| part | minutes |", "|---|---:|", *costs(log_entries), "",
        f"## Fine-tuning the l∞-AT model (mean ± std over {len(budget.seeds)} seeds)", "",
        *accuracy_table(results, results.finetune, LABELS, "e-at", with_start=True), "",
        f"![union accuracy per method]({relative(union_plot)})", "",
        "## RAMP against each baseline (union accuracy, paired)", "",
        f"A = {LABELS[RAMP_DEFAULT][0]}, the fine-tuning defaults fixed before any result was seen; "
        "B = the baseline. Δ = A − B in points, per seed (paired by seed) and its mean ± std over seeds; the 95% "
        "interval is a paired bootstrap over the test points (2000 resamples, the same points for every seed); "
        "only A : only B counts the points one model keeps in the union and the other loses (McNemar's discordant "
        "pairs), per seed, with the exact McNemar p-value.", "",
    ]
    if RAMP_DEFAULT in results.finetune:
        lines += comparison_header("B")
        ramp = results.finetune[RAMP_DEFAULT]
        lines += [comparison_row(LABELS[k][0], results.compare(ramp, results.finetune[k]))
                  for k in BASELINES if k in results.finetune]
        lines.append("")
    baselines = [k for k in BASELINES if k in results.finetune]
    if baselines:
        strongest = max(baselines, key=lambda k: results.mean(k, "union"))
        variants = [k for k in results.finetune if k.startswith("ramp")]
        untuned = (f"The variants were not tuned: all {len(variants)} ran, and picking the best of them on these test "
                   f"points would be tuning on the test set." if len(variants) > 1 else
                   "RAMP's other pairings and lambdas are in the extended plan (`python -m reproduce --extended`), "
                   "not run for this page.")
        lines += [f"RAMP (A) against the strongest baseline by mean union, {LABELS[strongest][0]} (B). "
                  f"{untuned}", "", *comparison_header("A")]
        lines += [comparison_row(LABELS[k][0], results.compare(results.finetune[k],
                                                                          results.finetune[strongest]))
                  for k in results.finetune if k.startswith("ramp")]
        lines.append("")
    lines += ["## Fig. 1 at this scale", "", f"![Fig. 1 analogue]({relative(fig_one)})", ""]
    if any(models and models[0].curve for models in results.finetune.values()):
        curves = curve_figure(results, figures / "learning-curves.png")
        lines += [f"## Learning curves (seed {budget.seeds[0]}, {budget.curve_n} validation points)", "",
                  "Each method's first-seed run keeps its model after these optimizer steps; each is evaluated as "
                  "above, on validation points (training indices 50,000-59,999, which no model trained on).", "",
                  f"![learning curves]({relative(curves)})", "", *curve_table(results), ""]
    if results.scratch:
        lines += [f"## From scratch (seed {budget.seeds[0]})", "",
                  *accuracy_table(results, results.scratch, SCRATCH_METHODS, "e-at", with_start=False), ""]
        if "e-at" in results.scratch:
            lines += comparison_header("A vs B")
            lines += [comparison_row(f"{SCRATCH_METHODS[k][0]} vs E-AT",
                                     results.compare(results.scratch[k], results.scratch["e-at"]))
                      for k in results.scratch if k != "e-at"]
            lines.append("")
    elif budget.name != "quick":
        lines += ["## From scratch", "", "Not run for this page: the from-scratch E-AT, MAX, RAMP and RAMP + GP "
                  "runs are in the extended plan (`python -m reproduce --extended`, about 80 more minutes on 2 CPU "
                  "cores).", ""]
    lines += ["## Where ramptool reproduces the paper, and where not", "", *claims(results), ""]
    if investigation:
        lines += investigation
    return "\n".join(lines) + "\n"


def write(measured, budget, provenance, log_entries, page: Path, investigation=None) -> Path:
    page = Path(page)
    text = render(measured, budget, provenance, log_entries, page.parent / "results", page, investigation)
    return write_text(page, text)
